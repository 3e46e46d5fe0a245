//! Issue 3, the replication engine, against the real stack: `push` and
//! `pull` links (initial sync, every type and kind of change, TTLs, binary
//! safety, large values, prefixes, foreign types, periodic resync, a refused
//! client certificate).
//!
//! The helpers here (snapshots of a namespace read back with plain commands,
//! waiting until two namespaces are equal, MONITOR recording) are shared with
//! `both_tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use replhub::resp::{Value, printable};

use crate::support::hub::{Hub, LinkSpec, config_yaml, yaml_str};
use crate::support::poll_until;
use crate::support::redis::RedisConn;
use crate::support::stack::{Stack, StackOptions};

/// How long replication may take before a test gives up.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// `redis!(*conn, "SET", key, value)`: runs a command, any mix of `&str`,
/// `Vec<u8>`, byte literals and `String` as arguments; panics on an error reply.
macro_rules! redis {
    ($conn:expr, $($arg:expr),+ $(,)?) => {
        $crate::engine_tests::run_cmd(&mut $conn, &[$(AsRef::<[u8]>::as_ref(&$arg)),+])
    };
}
pub(crate) use redis;

/// Runs one command; panics when Redis answers with an error.
pub(crate) fn run_cmd(conn: &mut RedisConn, args: &[&[u8]]) -> Value {
    let reply = conn.cmd(args);
    if let Value::Error(e) = &reply {
        let shown: Vec<String> = args.iter().map(|a| printable(a, 40)).collect();
        panic!("{} failed: {}", shown.join(" "), printable(e, 200));
    }
    reply
}

/// `prefix` followed by `suffix`.
pub(crate) fn key(prefix: &[u8], suffix: impl AsRef<[u8]>) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(suffix.as_ref());
    k
}

/// A KEYS/SCAN pattern matching exactly the keys that start with `prefix`.
pub(crate) fn prefix_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'*');
    out
}

/// The strings of an array reply; `None` for anything else (e.g. WRONGTYPE
/// when the key changed type since its TYPE was read).
fn bulks(value: Value) -> Option<Vec<Vec<u8>>> {
    match value {
        Value::Array(items) => items.into_iter().map(|v| v.as_bytes().map(|b| b.to_vec())).collect(),
        _ => None,
    }
}

fn pairs(items: Vec<Vec<u8>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    items.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

/// A key's value as read back with plain commands (hash fields and set
/// members sorted, so the servers' internal order does not matter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val {
    Str(Vec<u8>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    List(Vec<Vec<u8>>),
    Set(Vec<Vec<u8>>),
    /// In ZRANGE order, scores as Redis prints them.
    Zset(Vec<(Vec<u8>, Vec<u8>)>),
    /// A type replhub does not copy (stream, …).
    Other(String),
}

/// One key: value and PTTL (-1 without expiry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub val: Val,
    pub pttl: i64,
    /// When it expires (the PTTL taken from when it was read): snapshots of
    /// large namespaces take a while, so PTTLs read at different moments are
    /// compared as points in time.
    pub expires: Option<Instant>,
}

impl Entry {
    /// Same value, and expiries within a second of each other.
    pub fn same(&self, other: &Entry) -> bool {
        self.val == other.val
            && match (self.expires, other.expires) {
                (None, None) => true,
                (Some(a), Some(b)) => a.max(b) - a.min(b) <= Duration::from_secs(1),
                _ => false,
            }
    }

    /// A short description (never the whole value: some are 16 MiB).
    pub fn describe(&self) -> String {
        let flat =
            |p: &[(Vec<u8>, Vec<u8>)]| -> Vec<Vec<u8>> { p.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect() };
        let (ty, owned): (&str, Vec<Vec<u8>>) = match &self.val {
            Val::Str(v) => ("string", vec![v.clone()]),
            Val::Hash(p) => ("hash", flat(p)),
            Val::Zset(p) => ("zset", flat(p)),
            Val::List(v) => ("list", v.clone()),
            Val::Set(v) => ("set", v.clone()),
            Val::Other(t) => (t.as_str(), Vec::new()),
        };
        let items: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let bytes: usize = items.iter().map(|i| i.len()).sum();
        let head: Vec<u8> = items.iter().flat_map(|i| i.iter().copied().chain([b'|'])).take(48).collect();
        format!("{ty} of {} items / {bytes} bytes [{}] pttl {}", items.len(), printable(&head, 48), self.pttl)
    }
}

/// Suffix → entry for every key under a prefix.
pub(crate) type Snapshot = BTreeMap<Vec<u8>, Entry>;

/// Reads one key; `None` when it does not exist (or vanished meanwhile).
/// Replication may replace the key between the commands that read it, so a
/// read is repeated until TYPE is the same before and after it.
pub(crate) fn read_entry(conn: &mut RedisConn, k: &[u8]) -> Option<Entry> {
    let type_of = |conn: &mut RedisConn| match conn.cmd(&[b"TYPE", k]) {
        Value::Simple(t) => String::from_utf8_lossy(&t).into_owned(),
        other => panic!("TYPE: {}", other.describe()),
    };
    for _ in 0..100 {
        let ty = type_of(conn);
        let val = match ty.as_str() {
            "none" => return None,
            "string" => match conn.cmd(&[b"GET", k]) {
                Value::Bulk(b) => Some(Val::Str(b.to_vec())),
                _ => None,
            },
            "hash" => bulks(conn.cmd(&[b"HGETALL", k])).map(|items| {
                let mut p = pairs(items);
                p.sort();
                Val::Hash(p)
            }),
            "list" => bulks(conn.cmd(&[b"LRANGE", k, b"0", b"-1"])).map(Val::List),
            "set" => bulks(conn.cmd(&[b"SMEMBERS", k])).map(|mut m| {
                m.sort();
                Val::Set(m)
            }),
            "zset" => bulks(conn.cmd(&[b"ZRANGE", k, b"0", b"-1", b"WITHSCORES"])).map(|i| Val::Zset(pairs(i))),
            other => Some(Val::Other(other.to_string())),
        };
        let pttl = match conn.cmd(&[b"PTTL", k]) {
            Value::Integer(p) => p,
            other => panic!("PTTL: {}", other.describe()),
        };
        let expires = u64::try_from(pttl).ok().map(|p| Instant::now() + Duration::from_millis(p));
        match val {
            Some(val) if pttl != -2 && type_of(conn) == ty => return Some(Entry { val, pttl, expires }),
            _ => continue,
        }
    }
    panic!("{} keeps changing type while it is read", printable(k, 60))
}

/// Every key under `prefix`, by suffix.
pub(crate) fn snapshot(conn: &mut RedisConn, prefix: &[u8]) -> Snapshot {
    let mut out = Snapshot::new();
    for k in conn.keys(prefix_pattern(prefix)) {
        if let Some(entry) = read_entry(conn, &k) {
            out.insert(k[prefix.len()..].to_vec(), entry);
        }
    }
    out
}

/// What differs between two snapshots (keys in `ignore` left out).
pub(crate) fn differences(a: &Snapshot, b: &Snapshot, ignore: &[Vec<u8>]) -> Vec<String> {
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    let show = |e: Option<&Entry>| e.map_or_else(|| "absent".to_string(), Entry::describe);
    keys.into_iter()
        .filter(|k| !ignore.contains(k))
        .filter(|k| !matches!((a.get(*k), b.get(*k)), (Some(x), Some(y)) if x.same(y)))
        .map(|k| format!("  {}: {}  <>  {}", printable(k, 60), show(a.get(k)), show(b.get(k))))
        .collect()
}

/// Waits until the namespace `ap` on `a` equals `bp` on `b` (same keys,
/// types, exact bytes, TTLs within 1 s), ignoring the suffixes in `ignore`.
/// Returns the snapshot of `a`; panics with the differences and `context()`.
pub(crate) fn wait_equal_except(
    a: &mut RedisConn,
    ap: &[u8],
    b: &mut RedisConn,
    bp: &[u8],
    ignore: &[Vec<u8>],
    context: &dyn Fn() -> String,
) -> Snapshot {
    let mut last = Vec::new();
    let equal = poll_until(WAIT, || {
        let sa = snapshot(a, ap);
        let sb = snapshot(b, bp);
        last = differences(&sa, &sb, ignore);
        last.is_empty().then_some(sa)
    });
    equal.unwrap_or_else(|| {
        panic!(
            "\"{}\" and \"{}\" did not become equal within {WAIT:?}:\n{}\n{}",
            printable(ap, 60),
            printable(bp, 60),
            last.join("\n"),
            context()
        )
    })
}

/// [`wait_equal_except`] without exceptions.
pub(crate) fn wait_equal(
    a: &mut RedisConn,
    ap: &[u8],
    b: &mut RedisConn,
    bp: &[u8],
    context: &dyn Fn() -> String,
) -> Snapshot {
    wait_equal_except(a, ap, b, bp, &[], context)
}

/// A metric sample of `hub`, 0 when absent.
pub(crate) fn metric(hub: &Hub, name: &str, labels: &str) -> f64 {
    hub.metric(&format!("{name}{{{labels}}}")).unwrap_or(0.0)
}

/// `replhub_keys_replicated_total` of a link in one direction.
pub(crate) fn replicated(hub: &Hub, link: &str, direction: &str) -> f64 {
    metric(hub, "replhub_keys_replicated_total", &format!("link=\"{link}\",direction=\"{direction}\""))
}

/// `replhub_echoes_suppressed_total` of a link.
pub(crate) fn echoes(hub: &Hub, link: &str) -> f64 {
    metric(hub, "replhub_echoes_suppressed_total", &format!("link=\"{link}\""))
}

/// Every `replhub_errors_total` sample of a link: kind → value.
pub(crate) fn errors(hub: &Hub, link: &str) -> BTreeMap<String, f64> {
    let head = format!("replhub_errors_total{{link=\"{link}\",kind=\"");
    hub.metrics()
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&head)?;
            let (kind, value) = rest.split_once("\"} ")?;
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Records everything a redis-server executes (MONITOR), scripts' own
/// commands included (`[0 lua] "TYPE" "key"`), until [`Monitor::finish`].
pub(crate) struct Monitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<u8>>,
}

impl Monitor {
    pub fn start(port: u16) -> Monitor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("cannot connect for MONITOR");
        stream.write_all(b"MONITOR\r\n").expect("cannot send MONITOR");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let mut ok = Vec::new();
        let mut byte = [0u8; 1];
        while !ok.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).expect("no reply to MONITOR");
            ok.push(byte[0]);
        }
        assert_eq!(ok, b"+OK\r\n", "MONITOR");
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => log.extend_from_slice(&chunk[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stopped.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            log
        });
        Monitor { stop, thread }
    }

    /// Stops recording (after a quiet 100 ms) and returns the log.
    pub fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the MONITOR thread panicked")
    }
}

/// The lines of a MONITOR log that replhub caused (scripts' commands and
/// EVALs: the tests themselves never run scripts) and that mention `needle`.
pub(crate) fn hub_lines_mentioning(log: &[u8], needle: &[u8]) -> Vec<String> {
    log.split(|&b| b == b'\n')
        .filter(|line| line.windows(needle.len()).any(|w| w == needle))
        .filter(|line| {
            let text = String::from_utf8_lossy(line).to_ascii_lowercase();
            text.contains("[0 lua]") || text.contains("] \"eval") || text.contains("] \"psubscribe")
        })
        .map(|line| printable(line, 300))
        .collect()
}

/// Keys replhub keeps for itself on a server (`__replhub__:` prefix).
pub(crate) fn reserved_keys(conn: &mut RedisConn) -> Vec<String> {
    conn.keys("__replhub__*").iter().map(|k| printable(k, 100)).collect()
}

/// Asserts that replhub left nothing of its own on the servers but heartbeat
/// keys on the remote (no scratch or staging keys).
pub(crate) fn assert_no_leftovers(local: &mut RedisConn, remote: &mut RedisConn) {
    assert_eq!(reserved_keys(local), Vec::<String>::new(), "replhub keys left on the local Redis");
    let remote_keys = reserved_keys(remote);
    let others: Vec<&String> = remote_keys.iter().filter(|k| !k.starts_with("__replhub__:hb:")).collect();
    assert!(others.is_empty(), "replhub keys other than heartbeats left on the remote: {others:?}");
}

/// Deterministic pseudo-random bytes (xorshift64).
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Number of log lines of `hub` that contain every one of `needles`.
pub(crate) fn log_count(hub: &Hub, needles: &[&str]) -> usize {
    hub.log().lines().filter(|line| needles.iter().all(|n| line.contains(n))).count()
}

/// A directory for one hub inside the stack's directory.
pub(crate) fn hub_dir(stack: &Stack, name: &str) -> std::path::PathBuf {
    let dir = stack.dir().join(name);
    std::fs::create_dir_all(&dir).expect("cannot create the hub directory");
    dir
}

/// The full-YAML path string of a file.
pub(crate) fn yaml_path(path: &Path) -> String {
    yaml_str(&path.display().to_string())
}

// ---------------------------------------------------------------------------
// push and pull: initial sync, every type, every kind of change

/// One link `mirror` (push or pull) between local "app:" and remote
/// "site-a:app:": the initial sync, then one change of every kind on the
/// source, each followed by a check that the destination namespace equals
/// the source's. Keys outside the namespaces are planted on both servers and
/// must be neither read nor written (MONITOR sees every command replhub
/// runs, scripts' own included).
fn mirror_every_kind_of_change(push: bool) {
    let stack = Stack::start(StackOptions::default());
    let (lp, rp) = (b"app:".to_vec(), b"site-a:app:".to_vec());
    let (mut src, mut dst) = if push {
        (stack.local().conn(), stack.remote().conn())
    } else {
        (stack.remote().conn(), stack.local().conn())
    };
    let (sp, dp) = if push { (lp.clone(), rp.clone()) } else { (rp.clone(), lp.clone()) };
    let s = |suffix: &str| key(&sp, suffix);
    let d = |suffix: &str| key(&dp, suffix);

    // The source namespace before the link starts.
    redis!(src, "SET", s("s"), "hello");
    redis!(src, "SET", s("n"), "10");
    redis!(src, "HSET", s("h"), "f1", "v1", "f2", "v2", "f3", "v3");
    redis!(src, "RPUSH", s("l"), "a", "b", "c", "d");
    redis!(src, "SADD", s("set"), "x", "y", "z");
    redis!(src, "ZADD", s("z"), "1", "m1", "2.5", "m2", "-3", "m3");
    redis!(src, "SET", s("ttl"), "t", "PX", "60000");
    redis!(src, "SET", s("same"), "src-value");
    redis!(src, "SET", s("empty"), "");
    // The destination namespace: two keys the source lacks (deleted: 2 of 5
    // keys, below max_delete_fraction 0.5), three replaced whole.
    redis!(dst, "SET", d("same"), "dst-old");
    redis!(dst, "HSET", d("h"), "f9", "old");
    redis!(dst, "SET", d("l"), "not a list");
    redis!(dst, "SET", d("stale1"), "a");
    redis!(dst, "SET", d("stale2"), "b");
    // Outside both namespaces: on each server, the other side's prefix and an unrelated key.
    let src_decoys = [(key(&dp, "decoy-src"), "ds"), (b"other:decoy-src".to_vec(), "os"), (b"appdecoy".to_vec(), "a")];
    let dst_decoys =
        [(key(&sp, "decoy-dst"), "dd"), (b"other:decoy-dst".to_vec(), "od"), (b"site-a:appdecoy".to_vec(), "s")];
    for (k, v) in &src_decoys {
        redis!(src, "SET", k, v);
    }
    for (k, v) in &dst_decoys {
        redis!(dst, "SET", k, v);
    }

    let monitors = [Monitor::start(stack.local().port()), Monitor::start(stack.remote().port())];
    let port = Hub::admin_port();
    let spec = LinkSpec::new("mirror", if push { "push" } else { "pull" }, "app:").remote_prefix("site-a:app:");
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &[spec]), port);
    let ctx = || hub.log_tail(60);

    // Initial sync: the destination namespace is the source's, exactly.
    let first = wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);
    assert_eq!(first.len(), 9, "{:?}", first.keys().map(|k| printable(k, 40)).collect::<Vec<_>>());
    assert_eq!(dst.get(d("same")).as_deref(), Some(&b"src-value"[..]));
    assert_eq!(read_entry(&mut dst, &d("h")).map(|e| e.val), read_entry(&mut src, &s("h")).map(|e| e.val));
    assert_eq!(dst.get(d("stale1")), None);
    let pttl = read_entry(&mut dst, &d("ttl")).expect("ttl copied").pttl;
    assert!((58_000..=60_000).contains(&pttl), "the TTL is carried: {pttl}");

    // One change of every kind, each checked on its own.
    let steps: Vec<(&str, Vec<Vec<Vec<u8>>>)> = vec![
        ("SET", vec![cmd(&["SET"], &s("s"), &["world"])]),
        ("INCR", vec![cmd(&["INCR"], &s("n"), &[])]),
        ("APPEND", vec![cmd(&["APPEND"], &s("s"), &["!!"])]),
        ("SETRANGE", vec![vec![b"SETRANGE".to_vec(), s("s"), b"2".to_vec(), b"\x00\xff".to_vec()]]),
        ("HSET+HDEL", vec![cmd(&["HSET"], &s("h"), &["f4", "v4"]), cmd(&["HDEL"], &s("h"), &["f1"])]),
        ("LPOP", vec![cmd(&["LPOP"], &s("l"), &[])]),
        ("RPOP+RPUSH", vec![cmd(&["RPOP"], &s("l"), &[]), cmd(&["RPUSH"], &s("l"), &["e"])]),
        ("SREM", vec![cmd(&["SREM"], &s("set"), &["x"])]),
        ("SADD", vec![cmd(&["SADD"], &s("set"), &["w"])]),
        ("ZREM", vec![cmd(&["ZREM"], &s("z"), &["m1"])]),
        ("ZADD+ZINCRBY", vec![cmd(&["ZADD"], &s("z"), &["7", "m4"]), cmd(&["ZINCRBY"], &s("z"), &["1.5", "m2"])]),
        ("PEXPIRE", vec![cmd(&["PEXPIRE"], &s("s"), &["60000"])]),
        ("PERSIST", vec![cmd(&["PERSIST"], &s("s"), &[])]),
        ("DEL", vec![cmd(&["DEL"], &s("same"), &[])]),
        ("UNLINK", vec![cmd(&["UNLINK"], &s("empty"), &[])]),
        ("SET empty", vec![cmd(&["SET"], &s("empty2"), &[""])]),
    ];
    for (label, commands) in steps {
        for c in &commands {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            run_cmd(&mut src, &args);
        }
        let context = || format!("after {label}\n{}", hub.log_tail(60));
        wait_equal(&mut src, &sp, &mut dst, &dp, &context);
    }
    assert_eq!(dst.get(d("s")).as_deref(), Some(&b"wo\x00\xffd!!"[..]));
    assert_eq!(read_entry(&mut dst, &d("s")).map(|e| e.pttl), Some(-1), "PERSIST removes the TTL");
    assert_eq!(dst.get(d("same")), None);

    // TTL: the destination's PTTL is within a second of the source's.
    redis!(src, "PEXPIRE", s("h"), "30000");
    wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);
    let (a, b) = (read_entry(&mut src, &s("h")).unwrap().pttl, read_entry(&mut dst, &d("h")).unwrap().pttl);
    assert!(a > 0 && b > 0 && a.abs_diff(b) <= 1000, "PTTL {a} vs {b}");

    // Expiry: a key that expires at the source goes at the destination.
    redis!(src, "SET", s("short"), "v", "PX", "2500");
    poll_until(WAIT, || dst.get(d("short"))).unwrap_or_else(|| panic!("short-lived key not copied\n{}", ctx()));
    poll_until(WAIT, || (src.get(s("short")).is_none() && dst.get(d("short")).is_none()).then_some(()))
        .unwrap_or_else(|| panic!("the expired key stayed\n{}", ctx()));
    wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);

    // RENAME inside the namespace, out of it, and into it.
    redis!(src, "RENAME", s("s"), s("s2"));
    wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);
    assert_eq!(dst.get(d("s")), None, "the old name is gone");
    assert_eq!(dst.get(d("s2")).as_deref(), Some(&b"wo\x00\xffd!!"[..]), "the new name is there");
    redis!(src, "RENAME", s("l"), "outside:l");
    redis!(src, "SET", "outside:in", "came in");
    redis!(src, "RENAME", "outside:in", s("in"));
    wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);
    assert_eq!(dst.get(d("in")).as_deref(), Some(&b"came in"[..]));
    assert_eq!(read_entry(&mut dst, b"outside:l"), None, "a key renamed out of the namespace is not copied");

    // A stream is skipped with one warning, and the link goes on.
    redis!(src, "XADD", s("stream"), "*", "f", "v");
    redis!(src, "XADD", s("stream"), "*", "f", "w");
    redis!(src, "SET", s("after-stream"), "marker");
    wait_equal_except(&mut src, &sp, &mut dst, &dp, &[b"stream".to_vec()], &ctx);
    assert_eq!(read_entry(&mut dst, &d("stream")), None, "a stream is not copied");
    redis!(src, "XADD", s("stream"), "*", "f", "x");
    redis!(src, "SET", s("after-stream"), "marker 2");
    wait_equal_except(&mut src, &sp, &mut dst, &dp, &[b"stream".to_vec()], &ctx);
    let warnings = log_count(&hub, &["not replicated by this link", "stream"]);
    assert_eq!(warnings, 1, "one warning for the stream type\n{}", hub.log_tail(80));
    redis!(src, "DEL", s("stream"));
    wait_equal(&mut src, &sp, &mut dst, &dp, &ctx);

    // Nothing outside the namespaces was read or written, on either server.
    let [local_monitor, remote_monitor] = monitors;
    for (server, log) in [("local", local_monitor.finish()), ("remote", remote_monitor.finish())] {
        let touched = hub_lines_mentioning(&log, b"decoy");
        assert!(touched.is_empty(), "replhub touched keys outside its namespace on the {server} Redis: {touched:#?}");
    }
    for (k, v) in &src_decoys {
        assert_eq!(src.get(k).as_deref(), Some(v.as_bytes()), "{}", printable(k, 40));
        assert_eq!(dst.get(k), None, "{} must not be copied", printable(k, 40));
    }
    for (k, v) in &dst_decoys {
        assert_eq!(dst.get(k).as_deref(), Some(v.as_bytes()), "{}", printable(k, 40));
    }
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    assert_no_leftovers(&mut local, &mut remote);
    assert!(replicated(&hub, "mirror", if push { "push" } else { "pull" }) >= 10.0, "{}", hub.metrics());
}

/// A command as owned arguments: `words`, then `k`, then `rest`.
fn cmd(words: &[&str], k: &[u8], rest: &[&str]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    out.push(k.to_vec());
    out.extend(rest.iter().map(|r| r.as_bytes().to_vec()));
    out
}

#[test]
fn engine_push_mirrors_initial_state_and_every_kind_of_change() {
    mirror_every_kind_of_change(true);
}

#[test]
fn engine_pull_mirrors_initial_state_and_every_kind_of_change() {
    mirror_every_kind_of_change(false);
}

// ---------------------------------------------------------------------------
// binary safety and large values

/// Every byte in keys, fields, members and values; empty strings; a 16 MiB
/// string and a list whose encoded form exceeds 4 MiB (both go through the
/// chunked staging path), pushed (local "bin:" → remote "site-a:bin:") and
/// pulled (remote "site-a:binp:" → local "binp:"), at the initial sync and
/// again as live changes.
#[test]
fn engine_binary_keys_values_and_large_values_push_and_pull() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let all: Vec<u8> = (0..=255).collect();
    let reversed: Vec<u8> = all.iter().rev().copied().collect();
    let odd_suffix = b"k\x00\xff\r\n %/?.+#*[]\\\x80".to_vec();

    let fill = |conn: &mut RedisConn, p: &[u8], seed: u64| {
        redis!(*conn, "SET", key(p, "all"), all);
        redis!(*conn, "SET", key(p, &odd_suffix), reversed);
        redis!(*conn, "SET", key(p, &all), "a key of all 256 bytes");
        redis!(*conn, "SET", key(p, "empty"), "");
        redis!(*conn, "HSET", key(p, "h"), all, reversed, "", "", b"\x00", b"\xff");
        redis!(*conn, "SADD", key(p, "set"), all, "", b"\xff\x00");
        redis!(*conn, "ZADD", key(p, "z"), "1", all, "-inf", "", "3.14159", b"\xff\x00", "inf", "top");
        redis!(*conn, "RPUSH", key(p, "l"), "", all, "", b"\x00");
        redis!(*conn, "SET", key(p, "big"), noise(16 << 20, seed));
        // 30,000 elements of 64 random bytes: about 5.5 MB percent-encoded.
        for chunk in 0..30u64 {
            let mut args: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), key(p, "biglist")];
            args.extend((0..1000).map(|i| noise(64, seed ^ (chunk * 1000 + i + 1))));
            run_cmd(conn, &args.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
    };
    fill(&mut local, b"bin:", 1);
    fill(&mut remote, b"site-a:binp:", 2);

    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("bin", "push", "bin:").remote_prefix("site-a:bin:"),
        LinkSpec::new("binp", "pull", "binp:").remote_prefix("site-a:binp:"),
    ];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let ctx = || hub.log_tail(60);
    let pushed = wait_equal(&mut local, b"bin:", &mut remote, b"site-a:bin:", &ctx);
    let pulled = wait_equal(&mut remote, b"site-a:binp:", &mut local, b"binp:", &ctx);
    for snap in [&pushed, &pulled] {
        assert_eq!(snap.len(), 10);
        assert_eq!(snap[&b"all"[..]].val, Val::Str(all.clone()));
        assert_eq!(snap[&odd_suffix].val, Val::Str(reversed.clone()));
        assert_eq!(snap[&all].val, Val::Str(b"a key of all 256 bytes".to_vec()));
        assert_eq!(snap[&b"empty"[..]].val, Val::Str(Vec::new()));
        assert!(matches!(&snap[&b"biglist"[..]].val, Val::List(l) if l.len() == 30_000));
        assert!(matches!(&snap[&b"big"[..]].val, Val::Str(v) if v.len() == 16 << 20));
    }

    // Live changes of the large values (staged again) and of binary members.
    for (conn, p) in [(&mut local, &b"bin:"[..]), (&mut remote, &b"site-a:binp:"[..])] {
        redis!(*conn, "SETRANGE", key(p, "big"), (10u32 << 20).to_string(), all);
        redis!(*conn, "RPUSH", key(p, "biglist"), all);
        redis!(*conn, "LSET", key(p, "biglist"), "7", "");
        redis!(*conn, "HSET", key(p, "h"), b"\x00\x01", all);
        redis!(*conn, "HDEL", key(p, "h"), b"\x00");
        redis!(*conn, "SREM", key(p, "set"), "");
        redis!(*conn, "ZINCRBY", key(p, "z"), "2", all);
        redis!(*conn, "APPEND", key(p, &odd_suffix), all);
    }
    wait_equal(&mut local, b"bin:", &mut remote, b"site-a:bin:", &ctx);
    wait_equal(&mut remote, b"site-a:binp:", &mut local, b"binp:", &ctx);
    assert_eq!(remote.get(key(b"site-a:bin:", &odd_suffix)), Some([reversed.clone(), all.clone()].concat()));
    for (conn, p) in [(&mut local, &b"bin:"[..]), (&mut remote, &b"site-a:binp:"[..])] {
        redis!(*conn, "SET", key(p, "empty"), "", "PX", "60000");
        redis!(*conn, "SET", key(p, b"new\x00\xff"), "");
        redis!(*conn, "DEL", key(p, "big"));
    }
    wait_equal(&mut local, b"bin:", &mut remote, b"site-a:bin:", &ctx);
    wait_equal(&mut remote, b"site-a:binp:", &mut local, b"binp:", &ctx);
    assert_eq!(local.get(key(b"binp:", b"new\x00\xff")), Some(Vec::new()));
    assert_no_leftovers(&mut local, &mut remote);
}

/// A TTL is carried within a second even when the copy takes a while: a
/// value too large for one request is uploaded in chunks first (here the
/// remote stalls during the upload for 2.5 s, a fault of that length, not a
/// wait for replication), and the PTTL read from the source must not be
/// applied afterwards as if no time had passed since the read.
#[test]
fn engine_ttl_stays_exact_when_a_staged_copy_is_slow() {
    let mut stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let port = Hub::admin_port();
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &[LinkSpec::new("p", "push", "p:")]), port);
    let ctx = || hub.log_tail(60);
    hub.wait_metric_at_least("replhub_resyncs_total{link=\"p\",reason=\"startup\"}", 1.0, WAIT);
    // 2 MiB of random bytes: about 6 MB percent-encoded, so it is staged.
    let value = noise(2 << 20, 21);
    stack.remote_mut().pause();
    redis!(local, "SET", "p:big", &value, "PX", "60000");
    std::thread::sleep(Duration::from_millis(2500));
    stack.remote_mut().resume();
    let copied = poll_until(WAIT, || (remote.cmd(&[b"EXISTS", b"p:big"]) == Value::Integer(1)).then_some(()));
    assert!(copied.is_some(), "p:big was not copied\n{}", ctx());
    let source = read_entry(&mut local, b"p:big").expect("p:big").pttl;
    let copy = read_entry(&mut remote, b"p:big").expect("p:big").pttl;
    assert!(
        copy.abs_diff(source) <= 1000,
        "the copy's PTTL is {copy} ms, the source's {source} ms: {} ms apart\n{}",
        copy - source,
        ctx()
    );
    let snap = wait_equal(&mut local, b"p:", &mut remote, b"p:", &ctx);
    assert_eq!(snap[&b"big"[..]].val, Val::Str(value));
}

// ---------------------------------------------------------------------------
// prefixes: mapping, glob characters, nothing outside the namespace

/// Prefixes full of glob characters (`* ? [ ] \`), mapped to different
/// remote prefixes, push and pull: keys that the unescaped patterns would
/// match are planted on both servers and must never be read or written.
#[test]
fn engine_glob_prefixes_touch_nothing_outside_the_namespace() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let (push_local, push_remote) = (b"g*?[x]\\:".to_vec(), b"r*?[x]\\:push:".to_vec());
    let (pull_local, pull_remote) = (b"h*?[x]\\:".to_vec(), b"r*?[x]\\:pull:".to_vec());

    redis!(local, "SET", key(&push_local, "k1"), "v1");
    redis!(local, "HSET", key(&push_local, "h"), "f", "v");
    redis!(remote, "SET", key(&push_remote, "stale"), "gone soon");
    redis!(remote, "SET", key(&push_remote, "k1"), "old");
    redis!(remote, "SET", key(&pull_remote, "p1"), "pv1");
    redis!(remote, "RPUSH", key(&pull_remote, "pl"), "a", "b");
    // Each matches the unescaped pattern of a namespace (e.g. `g*?[x]\:*`).
    let local_decoys: [&[u8]; 3] = [b"gAAx:decoy", b"gxx:decoy2", b"hAAx:decoy"];
    let remote_decoys: [&[u8]; 3] = [b"rAAx:push:decoy", b"rAAx:pull:decoy", b"r*?[x]\\:pushdecoy"];
    for k in local_decoys {
        redis!(local, "SET", k, "decoy value");
    }
    for k in remote_decoys {
        redis!(remote, "SET", k, "decoy value");
    }

    let monitors = [Monitor::start(stack.local().port()), Monitor::start(stack.remote().port())];
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("gpush", "push", "g*?[x]\\:").remote_prefix("r*?[x]\\:push:"),
        LinkSpec::new("gpull", "pull", "h*?[x]\\:").remote_prefix("r*?[x]\\:pull:"),
    ];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let ctx = || hub.log_tail(60);
    wait_equal(&mut local, &push_local, &mut remote, &push_remote, &ctx);
    wait_equal(&mut remote, &pull_remote, &mut local, &pull_local, &ctx);
    assert_eq!(remote.get(key(&push_remote, "k1")).as_deref(), Some(&b"v1"[..]));

    // Live writes, in the namespaces and on the decoys.
    redis!(local, "SET", key(&push_local, "k3"), "v3");
    redis!(local, "DEL", key(&push_local, "k1"));
    redis!(remote, "SET", key(&pull_remote, "p2"), "pv2");
    redis!(remote, "LPOP", key(&pull_remote, "pl"));
    for k in local_decoys {
        redis!(local, "APPEND", k, "+");
    }
    for k in remote_decoys {
        redis!(remote, "APPEND", k, "+");
    }
    redis!(local, "SET", b"gAAx:decoy-new", "x");
    redis!(remote, "SET", b"rAAx:pull:decoy-new", "x");
    wait_equal(&mut local, &push_local, &mut remote, &push_remote, &ctx);
    wait_equal(&mut remote, &pull_remote, &mut local, &pull_local, &ctx);

    let [local_monitor, remote_monitor] = monitors;
    for (server, log) in [("local", local_monitor.finish()), ("remote", remote_monitor.finish())] {
        let touched = hub_lines_mentioning(&log, b"decoy");
        assert!(touched.is_empty(), "replhub touched keys outside its namespaces on the {server} Redis: {touched:#?}");
    }
    for k in local_decoys {
        assert_eq!(local.get(k).as_deref(), Some(&b"decoy value+"[..]));
    }
    for k in remote_decoys {
        assert_eq!(remote.get(k).as_deref(), Some(&b"decoy value+"[..]));
    }
    // Each server holds exactly the namespaces, the decoys and replhub's heartbeats.
    let mut expected_local: BTreeSet<Vec<u8>> = local_decoys.iter().map(|k| k.to_vec()).collect();
    expected_local.insert(b"gAAx:decoy-new".to_vec());
    for (p, names) in [(&push_local, &["k3", "h"][..]), (&pull_local, &["p1", "p2", "pl"][..])] {
        expected_local.extend(names.iter().map(|n| key(p, n)));
    }
    assert_eq!(local.keys("*").into_iter().collect::<BTreeSet<_>>(), expected_local);
    let mut expected_remote: BTreeSet<Vec<u8>> = remote_decoys.iter().map(|k| k.to_vec()).collect();
    expected_remote.insert(b"rAAx:pull:decoy-new".to_vec());
    for (p, names) in [(&push_remote, &["k3", "h"][..]), (&pull_remote, &["p1", "p2", "pl"][..])] {
        expected_remote.extend(names.iter().map(|n| key(p, n)));
    }
    let remote_user_keys: BTreeSet<Vec<u8>> =
        remote.keys("*").into_iter().filter(|k| !k.starts_with(b"__replhub__:hb:")).collect();
    assert_eq!(remote_user_keys, expected_remote);
    assert_no_leftovers(&mut local, &mut remote);
}

// ---------------------------------------------------------------------------
// types the link does not replicate

/// `types: [string]` links, push and pull: keys of other types are neither
/// copied nor deleted at the initial sync or later, and a destination key of
/// a non-replicated type under a replicated source key is left alone with a
/// warning and counted in `replhub_errors_total{kind="destination_type"}`.
#[test]
fn engine_non_replicated_types_are_never_touched() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    // push: local "ts:" → remote "site-a:ts:"
    redis!(local, "SET", "ts:a", "1");
    redis!(local, "HSET", "ts:h", "f", "local hash");
    redis!(local, "SET", "ts:clash", "local string");
    redis!(remote, "SET", "site-a:ts:a", "old");
    redis!(remote, "HSET", "site-a:ts:h2", "f", "remote hash");
    redis!(remote, "HSET", "site-a:ts:clash", "f", "remote hash");
    redis!(remote, "RPUSH", "site-a:ts:list", "x");
    // pull: remote "site-a:tp:" → local "tp:"
    redis!(remote, "SET", "site-a:tp:a", "r1");
    redis!(remote, "HSET", "site-a:tp:h", "f", "remote hash");
    redis!(remote, "SET", "site-a:tp:clash", "remote string");
    redis!(local, "HSET", "tp:clash", "f", "local hash");
    redis!(local, "SADD", "tp:set", "m");

    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("strs", "push", "ts:").remote_prefix("site-a:ts:").with("types: [string]"),
        LinkSpec::new("strp", "pull", "tp:").remote_prefix("site-a:tp:").with("types: [string]"),
    ];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let ctx = || hub.log_tail(60);
    let wait = |what: &str, f: &mut dyn FnMut() -> bool| {
        poll_until(WAIT, || f().then_some(())).unwrap_or_else(|| panic!("{what}\n{}", ctx()));
    };
    wait("push copied ts:a", &mut || remote.get("site-a:ts:a").as_deref() == Some(b"1"));
    wait("pull copied tp:a", &mut || local.get("tp:a").as_deref() == Some(b"r1"));

    // Live changes of both kinds.
    redis!(local, "HSET", "ts:h", "g", "more");
    redis!(local, "SET", "ts:clash", "again");
    redis!(local, "SET", "ts:b", "2");
    redis!(remote, "HSET", "site-a:tp:h", "g", "more");
    redis!(remote, "SET", "site-a:tp:clash", "again");
    redis!(remote, "SET", "site-a:tp:b", "2");
    wait("push copied ts:b", &mut || remote.get("site-a:ts:b").as_deref() == Some(b"2"));
    wait("pull copied tp:b", &mut || local.get("tp:b").as_deref() == Some(b"2"));
    for link in ["strs", "strp"] {
        wait("the clash is counted", &mut || errors(&hub, link).get("destination_type").copied().unwrap_or(0.0) >= 1.0);
    }
    assert!(log_count(&hub, &["has a type this link does not replicate", "clash"]) >= 2, "{}", hub.log_tail(60));

    let hash = |conn: &mut RedisConn, k: &str| read_entry(conn, k.as_bytes()).map(|e| e.val);
    let one = |f: &str, v: &str| Some(Val::Hash(vec![(f.as_bytes().to_vec(), v.as_bytes().to_vec())]));
    assert_eq!(hash(&mut remote, "site-a:ts:h"), None, "a local hash is not pushed");
    assert_eq!(hash(&mut remote, "site-a:ts:h2"), one("f", "remote hash"), "a remote hash is not deleted");
    assert_eq!(hash(&mut remote, "site-a:ts:clash"), one("f", "remote hash"), "nor overwritten");
    assert_eq!(hash(&mut remote, "site-a:ts:list"), Some(Val::List(vec![b"x".to_vec()])));
    assert_eq!(hash(&mut local, "tp:h"), None, "a remote hash is not pulled");
    assert_eq!(hash(&mut local, "tp:clash"), one("f", "local hash"), "a local hash is not overwritten");
    assert_eq!(hash(&mut local, "tp:set"), Some(Val::Set(vec![b"m".to_vec()])), "nor a local set deleted");
    assert!(hub.get("/healthz").is_some_and(|(s, _)| s == 200), "the process is alive");
}

// ---------------------------------------------------------------------------
// FLUSHDB and the periodic resync

/// FLUSHDB causes no keyspace event per key; only a resync notices it. With
/// `resync_interval: "2s"` (and `max_delete_fraction: 1.0`, since a flush
/// deletes everything) the periodic resync catches a FLUSHDB of either
/// server, for a push and a pull link.
#[test]
fn engine_flushdb_is_caught_by_the_periodic_resync() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    for i in 0..5 {
        redis!(local, "SET", format!("fp:{i}"), format!("local {i}"));
        redis!(remote, "SET", format!("site-a:fq:{i}"), format!("remote {i}"));
    }
    let port = Hub::admin_port();
    let tuning = ["resync_interval: \"2s\"", "max_delete_fraction: 1.0"];
    let links = [
        LinkSpec::new("fp", "push", "fp:").remote_prefix("site-a:fp:").with(tuning[0]).with(tuning[1]),
        LinkSpec::new("fq", "pull", "fq:").remote_prefix("site-a:fq:").with(tuning[0]).with(tuning[1]),
    ];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let ctx = || hub.log_tail(60);
    wait_equal(&mut local, b"fp:", &mut remote, b"site-a:fp:", &ctx);
    wait_equal(&mut remote, b"site-a:fq:", &mut local, b"fq:", &ctx);

    // The local Redis is emptied: push deletes the remote copies, pull restores the local ones.
    redis!(local, "FLUSHDB");
    let restored = wait_equal(&mut remote, b"site-a:fq:", &mut local, b"fq:", &ctx);
    assert_eq!(restored.len(), 5);
    let emptied = wait_equal(&mut local, b"fp:", &mut remote, b"site-a:fp:", &ctx);
    assert!(emptied.is_empty());
    redis!(local, "SET", "fp:after", "v");
    wait_equal(&mut local, b"fp:", &mut remote, b"site-a:fp:", &ctx);

    // The remote Redis is emptied: push restores, pull deletes.
    redis!(remote, "FLUSHDB");
    let restored = wait_equal(&mut local, b"fp:", &mut remote, b"site-a:fp:", &ctx);
    assert_eq!(restored.len(), 1);
    let emptied = wait_equal(&mut remote, b"site-a:fq:", &mut local, b"fq:", &ctx);
    assert!(emptied.is_empty());
    for link in ["fp", "fq"] {
        let periodic = metric(&hub, "replhub_resyncs_total", &format!("link=\"{link}\",reason=\"periodic\""));
        assert!(periodic >= 1.0, "{link}: {periodic} periodic resyncs\n{}", hub.metrics());
    }
}

// ---------------------------------------------------------------------------
// errors: a refused client certificate

/// A link whose client certificate nginx refuses (issued by a foreign CA)
/// reports not-up in `/readyz` and counts the refusals, while another link
/// of the same process keeps replicating; the process never crashes.
#[test]
fn engine_refused_certificate_fails_one_link_while_another_replicates() {
    let stack = Stack::start(StackOptions::default());
    let rogue = stack.pki().client(crate::support::pki::ROGUE);
    let port = Hub::admin_port();
    let rogue_tls =
        format!("remote: {{ tls: {{ cert: {}, key: {} }} }}", yaml_path(&rogue.cert), yaml_path(&rogue.key));
    let links = [
        LinkSpec::new("good", "push", "good:").remote_prefix("site-a:good:"),
        LinkSpec::new("rogue", "push", "rogue:").with(&rogue_tls),
        LinkSpec::new("rogue-pull", "pull", "roguep:").with(&rogue_tls),
    ];
    let mut hub = Hub::start(stack.dir(), &config_yaml(&stack, port, &links), port);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    redis!(local, "SET", "good:k", "v");
    redis!(local, "SET", "rogue:k", "v");
    let copied = poll_until(WAIT, || remote.get("site-a:good:k"));
    assert_eq!(copied.as_deref(), Some(&b"v"[..]), "{}", hub.log_tail(60));
    for link in ["rogue", "rogue-pull"] {
        let refused = poll_until(WAIT, || errors(&hub, link).get("client_cert_refused").copied().filter(|n| *n >= 1.0));
        assert!(refused.is_some(), "{link}: {:?}\n{}", errors(&hub, link), hub.log_tail(60));
    }
    let (status, body) = hub.get("/readyz").expect("the admin server answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("rogue:") && body.contains("rogue-pull:"), "{body}");
    assert!(!body.lines().any(|l| l.starts_with("good:")), "{body}");
    let good_up = poll_until(WAIT, || (metric(&hub, "replhub_link_up", "link=\"good\"") == 1.0).then_some(()));
    assert!(good_up.is_some(), "{}", hub.metrics());
    assert_eq!(metric(&hub, "replhub_link_up", "link=\"rogue\""), 0.0);
    assert_eq!(remote.get("rogue:k"), None);
    // The good link goes on replicating; the process keeps running.
    redis!(local, "SET", "good:k", "v2");
    let copied = poll_until(WAIT, || remote.get("site-a:good:k").filter(|v| v == b"v2"));
    assert!(copied.is_some(), "{}", hub.log_tail(60));
    assert!(hub.is_running(), "{}", hub.log_tail(60));
}

/// The largest values the issue names: a 64 MiB string pushed (staged in
/// 8 MiB PUT chunks under nginx's 64 MiB body limit) and another pulled
/// (one `.raw` reply of 64 MiB), byte for byte.
#[test]
fn engine_64_mib_values_push_and_pull() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    for conn in [&mut local, &mut remote] {
        conn.set_timeout(Duration::from_secs(60)).expect("longer timeouts for 64 MiB replies");
    }
    let pushed = noise(64 << 20, 64);
    let pulled = noise(64 << 20, 65);
    run_cmd(&mut local, &[b"SET", b"huge:up", &pushed]);
    run_cmd(&mut remote, &[b"SET", b"huge:down", &pulled]);
    let port = Hub::admin_port();
    let links = [LinkSpec::new("up", "push", "huge:up"), LinkSpec::new("down", "pull", "huge:down")];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let arrived = poll_until(Duration::from_secs(60), || {
        let up = remote.cmd(&[b"STRLEN", b"huge:up"]).as_integer() == Some(64 << 20);
        let down = local.cmd(&[b"STRLEN", b"huge:down"]).as_integer() == Some(64 << 20);
        (up && down).then_some(())
    });
    assert!(arrived.is_some(), "the 64 MiB values did not arrive\n{}", hub.log_tail(40));
    assert!(remote.get("huge:up").as_deref() == Some(&pushed[..]), "the pushed value differs");
    assert!(local.get("huge:down").as_deref() == Some(&pulled[..]), "the pulled value differs");
    assert!(reserved_keys(&mut remote).iter().all(|k| !k.contains("stage")), "no staging key is left behind");
}
