//! `cargo run --release --example bench [-- --quick] [--only push,pull,lag,links,resync,overload]`: replhub against the
//! real stack (local Redis → replhub → nginx mTLS → Webdis → remote Redis,
//! all on this machine), with the one-request-per-key reference measured in
//! the same run. Prints one table: figures, ratios to the reference, targets.
//!
//! Throughput counts distinct keys present and correct at the destination,
//! divided by the time from the first source write until the last is there.
//! The machine is shared and noisy: compare ratios, not absolute figures.

#[allow(dead_code, reason = "the support tree is shared with the integration tests, which use the rest of it")]
#[path = "../support/mod.rs"]
mod support;

mod reference;

use std::time::{Duration, Instant};

use replhub::resp::Value;
use support::faults::rss_mib;
use support::hub::{Hub, LinkSpec, config_yaml, metric_value};
use support::redis::RedisConn;
use support::stack::{Stack, StackOptions};

/// One row of the result table.
struct Row {
    workload: String,
    figure: String,
    target: String,
    pass: bool,
}

struct Bench {
    stack: Stack,
    quick: bool,
    rows: Vec<Row>,
    /// keys/s of the reference, measured first.
    reference: f64,
}

const VALUE: &[u8; 16] = b"0123456789abcdef";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only push,lag`: run only these workloads (the reference always runs).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|list| list.iter().any(|w| w == name));
    // The release replhub next to this example (target/release/examples/bench → target/release/replhub).
    if let Some(bin) = std::env::current_exe().ok().and_then(|exe| exe.parent()?.parent().map(|d| d.join("replhub")))
        && bin.exists()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("REPLHUB_BIN", &bin) };
    }
    println!("replhub binary: {}", support::hub::replhub_bin().display());
    let stack = Stack::start(StackOptions::default());
    let mut bench = Bench { stack, quick, rows: Vec::new(), reference: 0.0 };
    bench.reference();
    type Workload = (&'static str, fn(&mut Bench));
    let workloads: [Workload; 6] = [
        ("push", Bench::push_throughput),
        ("pull", Bench::pull_throughput),
        ("lag", Bench::lag),
        ("links", Bench::many_links),
        ("resync", Bench::resync_unchanged),
        ("overload", Bench::overload),
    ];
    for (name, run) in workloads {
        if wanted(name) {
            run(&mut bench);
        }
    }
    bench.print();
}

impl Bench {
    fn scale(&self, full: usize) -> usize {
        if self.quick { full / 10 } else { full }
    }

    fn flush(&self) {
        for conn in [&mut self.stack.local().conn(), &mut self.stack.remote().conn()] {
            conn.cmd(&[b"FLUSHALL"]);
        }
    }

    fn row(&mut self, workload: &str, figure: String, target: &str, pass: bool) {
        println!("  {workload}: {figure}  [{}; target {target}]", if pass { "ok" } else { "MISSED" });
        self.rows.push(Row { workload: workload.to_string(), figure, target: target.to_string(), pass });
    }

    fn hub(&self, links: &[LinkSpec]) -> Hub {
        let port = Hub::admin_port();
        let yaml = config_yaml(&self.stack, port, links);
        let hub = Hub::start(self.stack.dir(), &yaml, port);
        hub.wait_ready(Duration::from_secs(60));
        hub
    }

    /// The reference: one HTTP request per key over 8 keep-alive connections.
    fn reference(&mut self) {
        self.flush();
        let keys = self.scale(100_000);
        let elapsed = reference::one_request_per_key(&self.stack, "ref:", keys, VALUE, 8);
        let present = dbsize(&mut self.stack.remote().conn());
        assert_eq!(present, keys, "the reference must have written every key");
        self.reference = keys as f64 / elapsed.as_secs_f64();
        let figure = format!("{:.0} keys/s ({keys} keys in {:.2} s)", self.reference, elapsed.as_secs_f64());
        self.row("reference: one request per key, 8 connections", figure, "(reference)", true);
    }

    /// Push: pipelined local SETs; time until every key is present remotely.
    fn push_throughput(&mut self) {
        self.flush();
        let keys = self.scale(400_000);
        let hub = self.hub(&[LinkSpec::new("push", "push", "p:")]);
        let cpu_before = cpu_seconds(hub.pid());
        let elapsed = replicate(&mut self.stack.local().conn(), &mut self.stack.remote().conn(), "p:", keys);
        let cpu = cpu_seconds(hub.pid()) - cpu_before;
        verify(&mut self.stack.remote().conn(), "p:", keys);
        let rate = keys as f64 / elapsed.as_secs_f64();
        let ratio = rate / self.reference;
        let overflows = hub.metric("replhub_resyncs_total{link=\"push\",reason=\"overflow\"}").unwrap_or(0.0);
        drop(hub);
        let figure = format!(
            "{rate:.0} keys/s ({keys} keys in {:.2} s) = {ratio:.1}× reference; replhub used {cpu:.1} CPU-s, {overflows} overflow resyncs",
            elapsed.as_secs_f64()
        );
        self.row("push throughput (16-byte strings)", figure, "≥ 6× reference", ratio >= 6.0);
    }

    /// Pull: pipelined remote SETs; time until every key is present locally.
    fn pull_throughput(&mut self) {
        self.flush();
        let keys = self.scale(200_000);
        let hub = self.hub(&[LinkSpec::new("pull", "pull", "q:")]);
        let elapsed = replicate(&mut self.stack.remote().conn(), &mut self.stack.local().conn(), "q:", keys);
        verify(&mut self.stack.local().conn(), "q:", keys);
        let rate = keys as f64 / elapsed.as_secs_f64();
        let ratio = rate / self.reference;
        drop(hub);
        let figure =
            format!("{rate:.0} keys/s ({keys} keys in {:.2} s) = {ratio:.1}× reference", elapsed.as_secs_f64());
        self.row("pull throughput (16-byte strings)", figure, "≥ 1.5× reference", ratio >= 1.5);
    }

    /// Lag at 5,000 writes/s: client write → that key's keyspace event on the remote.
    fn lag(&mut self) {
        self.flush();
        let hub = self.hub(&[LinkSpec::new("lag", "push", "lag:")]);
        let mut remote = self.stack.remote().conn();
        remote.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"KEA"]);
        let seconds = if self.quick { 3 } else { 10 };
        let total = 5_000 * seconds;
        let port = self.stack.remote().port();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let listener = std::thread::spawn(move || {
            let mut sub = RedisConn::connect(port).expect("subscriber");
            sub.cmd(&[b"PSUBSCRIBE", b"__keyspace@0__:lag:*"]);
            ready_tx.send(()).expect("ready");
            let mut seen = vec![None; total];
            let mut remaining = total;
            sub.set_timeout(Duration::from_secs(20)).expect("timeout");
            while remaining > 0 {
                let Ok(Value::Array(items)) = sub.read_reply() else { break };
                let Some(channel) = items.get(2).and_then(Value::as_bytes) else { continue };
                let index = std::str::from_utf8(&channel[b"__keyspace@0__:lag:".len()..])
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok());
                if let Some(i) = index.filter(|i| *i < total)
                    && seen[i].is_none()
                {
                    seen[i] = Some(Instant::now());
                    remaining -= 1;
                }
            }
            seen
        });
        ready_rx.recv().expect("subscriber ready");
        let mut local = self.stack.local().conn();
        let start = Instant::now();
        let mut sent = Vec::with_capacity(total);
        // 50 writes every 10 ms = 5,000 writes/s.
        for tick in 0..(total / 50) {
            let due = start + Duration::from_millis(10 * tick as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let keys: Vec<String> = (tick * 50..tick * 50 + 50).map(|i| format!("lag:{i}")).collect();
            let commands: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), VALUE]).collect();
            let at = Instant::now();
            local.pipeline(&commands).expect("local writes");
            sent.extend(std::iter::repeat_n(at, 50));
        }
        let seen = listener.join().expect("listener");
        drop(hub);
        let mut lags: Vec<f64> = sent
            .iter()
            .zip(&seen)
            .filter_map(|(sent, seen)| seen.map(|s| s.saturating_duration_since(*sent).as_secs_f64() * 1000.0))
            .collect();
        let missing = total - lags.len();
        lags.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            lags.get(((lags.len() as f64 * p) as usize).min(lags.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
        };
        let (p50, p99) = (pct(0.50), pct(0.99));
        let figure = format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms over {total} writes ({missing} events missing)",
            lags.last().copied().unwrap_or(f64::NAN)
        );
        self.row("lag at 5,000 writes/s (write → remote event)", figure, "p99 ≤ 50 ms", p99 <= 50.0 && missing == 0);
    }

    /// 500 push links in one process: start-up, memory, connections, reload.
    fn many_links(&mut self) {
        self.flush();
        let count = 500;
        let links: Vec<LinkSpec> = (0..count)
            .map(|i| LinkSpec::new(&format!("l{i}"), "push", &format!("s{i}:")).remote_prefix(&format!("site:s{i}:")))
            .collect();
        let port = Hub::admin_port();
        let yaml = config_yaml(&self.stack, port, &links);
        let started = Instant::now();
        let hub = Hub::start(self.stack.dir(), &yaml, port);
        hub.wait_ready(Duration::from_secs(120));
        let ready = started.elapsed();
        // One key per link, to see every link replicate.
        let mut local = self.stack.local().conn();
        let keys: Vec<String> = (0..count).map(|i| format!("s{i}:k")).collect();
        let commands: Vec<Vec<&[u8]>> = keys.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), VALUE]).collect();
        local.pipeline(&commands).expect("writes");
        let mut remote = self.stack.remote().conn();
        support::poll_until(Duration::from_secs(30), || (dbsize(&mut remote) >= count).then_some(()))
            .expect("every link replicated its key");
        let rss = rss_mib(hub.pid());
        let local_conns = client_count(&mut local).saturating_sub(1);
        let nginx_conns = connections_to(hub.pid(), self.stack.nginx().port());
        let pass = ready <= Duration::from_secs(30) && rss <= 150.0 && local_conns <= 20;
        let figure = format!(
            "ready in {:.1} s, RSS {rss:.0} MiB, {local_conns} connections to the local Redis, {nginx_conns} to the remote (one pool)",
            ready.as_secs_f64()
        );
        self.row("500 push links in one process", figure, "ready ≤ 30 s, RSS ≤ 150 MiB, ≤ 20 local connections", pass);

        // Reload changing one link: applied in ≤ 2 s, none of the other 499 restarted.
        let mut changed = links.clone();
        changed[0] = LinkSpec::new("l0", "push", "s0new:").remote_prefix("site:s0new:");
        let yaml = config_yaml(&self.stack, port, &changed);
        let t0 = Instant::now();
        hub.replace_config(&yaml);
        let applied = support::poll_until(Duration::from_secs(30), || {
            local.set("s0new:probe", "x");
            remote.get("site:s0new:probe").map(|_| t0.elapsed())
        })
        .expect("the changed link replicates");
        let metrics = hub.metrics();
        let restarted = (1..count)
            .filter(|i| metric_value(&metrics, &format!("replhub_link_starts_total{{link=\"l{i}\"}}")) != Some(1.0))
            .count();
        let figure = format!(
            "applied in {:.2} s; {restarted} of the other {} links restarted",
            applied.as_secs_f64(),
            count - 1
        );
        self.row(
            "reload changing 1 of 500 links",
            figure,
            "≤ 2 s, 0 restarted",
            applied <= Duration::from_secs(2) && restarted == 0,
        );
    }

    /// Resync of a namespace where nothing differs: digests, not values.
    fn resync_unchanged(&mut self) {
        self.flush();
        let keys = self.scale(1_000_000);
        for conn in [&mut self.stack.local().conn(), &mut self.stack.remote().conn()] {
            write_keys(conn, "r:", keys);
        }
        let access_log_before = std::fs::metadata(self.stack.nginx().access_log()).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        let hub = self.hub(&[LinkSpec::new("resync", "push", "r:")]);
        let done = support::poll_until(Duration::from_secs(300), || {
            (hub.metric("replhub_resyncs_total{link=\"resync\",reason=\"startup\"}") == Some(1.0))
                .then(|| started.elapsed())
        })
        .expect("the startup resync finished");
        let copied = hub.metric("replhub_keys_replicated_total{link=\"resync\",direction=\"push\"}").unwrap_or(-1.0);
        drop(hub);
        let moved = response_bytes_since(&self.stack.nginx().access_log(), access_log_before);
        let data = keys * (VALUE.len() + 10);
        let figure = format!(
            "{keys} keys compared in {:.1} s; {copied} copied; {:.1} MiB of replies vs {:.1} MiB of data",
            done.as_secs_f64(),
            moved as f64 / (1 << 20) as f64,
            data as f64 / (1 << 20) as f64
        );
        self.row(
            "resync, 1,000,000 keys, nothing differs",
            figure,
            "≤ 60 s, far less than the data",
            done <= Duration::from_secs(60) && copied == 0.0,
        );
    }

    /// The destination stalls while the source writes far more distinct keys
    /// than the dirty set holds: memory stays bounded, the link resyncs.
    fn overload(&mut self) {
        self.flush();
        // More distinct keys than the dirty set holds, whatever the scale.
        let keys = replhub::link::DIRTY_CAPACITY * 3 / 2;
        let hub = self.hub(&[LinkSpec::new("over", "push", "o:")]);
        let webdis_pid = self.stack.webdis_mut().pid().expect("webdis runs");
        // SAFETY: plain kill(2) on a child we own.
        unsafe { libc::kill(webdis_pid as i32, libc::SIGSTOP) };
        let mut local = self.stack.local().conn();
        let mut peak = 0.0f64;
        for chunk in 0..keys / 10_000 {
            let names: Vec<String> = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| format!("o:{i}")).collect();
            let commands: Vec<Vec<&[u8]>> = names.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), VALUE]).collect();
            local.pipeline(&commands).expect("writes");
            peak = peak.max(rss_mib(hub.pid()));
        }
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            peak = peak.max(rss_mib(hub.pid()));
        }
        // SAFETY: as above.
        unsafe { libc::kill(webdis_pid as i32, libc::SIGCONT) };
        let mut remote = self.stack.remote().conn();
        let converged = support::poll_until(Duration::from_secs(300), || (dbsize(&mut remote) >= keys).then_some(()));
        let overflows = hub.metric("replhub_resyncs_total{link=\"over\",reason=\"overflow\"}").unwrap_or(0.0);
        drop(hub);
        let figure = format!(
            "{keys} distinct keys while Webdis was stopped: peak RSS {peak:.0} MiB, {overflows} overflow resync(s), {}",
            if converged.is_some() { "all present afterwards" } else { "NOT all present afterwards" }
        );
        self.row(
            "overload (destination stalled)",
            figure,
            "bounded memory, resync instead",
            converged.is_some() && overflows >= 1.0 && peak <= 300.0,
        );
    }

    fn print(&self) {
        println!("\n| workload | figure | target | result |\n|---|---|---|---|");
        for row in &self.rows {
            println!(
                "| {} | {} | {} | {} |",
                row.workload,
                row.figure,
                row.target,
                if row.pass { "ok" } else { "missed" }
            );
        }
    }
}

/// Writes `keys` keys `prefix{i}` = VALUE with pipelined SETs.
fn write_keys(conn: &mut RedisConn, prefix: &str, keys: usize) {
    for start in (0..keys).step_by(2_000) {
        let names: Vec<String> = (start..(start + 2_000).min(keys)).map(|i| format!("{prefix}{i}")).collect();
        let commands: Vec<Vec<&[u8]>> = names.iter().map(|k| vec![&b"SET"[..], k.as_bytes(), VALUE]).collect();
        conn.pipeline(&commands).expect("pipelined writes");
    }
}

/// Writes `keys` keys at the source and returns the time until the
/// destination holds them all.
fn replicate(source: &mut RedisConn, destination: &mut RedisConn, prefix: &str, keys: usize) -> Duration {
    let started = Instant::now();
    write_keys(source, prefix, keys);
    support::poll_until(Duration::from_secs(300), || (dbsize(destination) >= keys).then(|| started.elapsed()))
        .unwrap_or_else(|| panic!("only {} of {keys} keys arrived", dbsize(destination)))
}

/// Every key present with the right value.
fn verify(conn: &mut RedisConn, prefix: &str, keys: usize) {
    for start in (0..keys).step_by(5_000) {
        let names: Vec<String> = (start..(start + 5_000).min(keys)).map(|i| format!("{prefix}{i}")).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(names.iter().map(|n| n.as_bytes()));
        let Value::Array(values) = conn.cmd(&args) else { panic!("MGET failed") };
        for (name, value) in names.iter().zip(values) {
            assert_eq!(
                value.as_bytes().map(|b| b.as_ref()),
                Some(&VALUE[..]),
                "{name} is not correct at the destination"
            );
        }
    }
}

fn dbsize(conn: &mut RedisConn) -> usize {
    conn.cmd(&[b"DBSIZE"]).as_integer().unwrap_or(0) as usize
}

fn client_count(conn: &mut RedisConn) -> usize {
    match conn.cmd(&[b"CLIENT", b"LIST"]) {
        Value::Bulk(text) => text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
        _ => 0,
    }
}

/// Established TCP connections of `pid` to 127.0.0.1:`port`.
fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let wanted = format!(":{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9 && fields[2].ends_with(&wanted) && fields[3] == "01" && inodes.contains(fields[9])
        })
        .count()
}

/// Sum of `$body_bytes_sent` in the access log after `offset` (our log format: 5th field).
fn response_bytes_since(log: &std::path::Path, offset: u64) -> u64 {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(offset as usize).min(text.len())..]).into_owned();
    text.lines()
        .filter_map(|line| {
            let after_request = line.split('"').nth(2)?;
            after_request.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// CPU time (user + system) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses): utime and stime are fields 14 and 15 of the line.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second.max(1.0)
}
