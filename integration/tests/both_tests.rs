//! Issue 3, the replication engine, against the real stack: `both` links
//! (initial union, no write-back, no ping-pong, links that stay apart,
//! conflicts resolved by the rule) and a fleet of two sites sharing one
//! remote.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::engine_tests::{
    Val, WAIT, assert_no_leftovers, echoes, hub_dir, key, read_entry, redis, replicated, snapshot, wait_equal,
    yaml_path,
};
use crate::support::hub::{Hub, LinkSpec, config_yaml};
use crate::support::poll_until;
use crate::support::redis::{RedisConn, RedisServer};
use crate::support::stack::{Stack, StackOptions};

/// Waits until `f` holds; panics with `what` and the hub's log otherwise.
fn wait_for(hub: &Hub, what: &str, mut f: impl FnMut() -> bool) {
    if poll_until(WAIT, || f().then_some(())).is_none() {
        panic!("{what} (within {WAIT:?})\n{}", hub.log_tail(60));
    }
}

/// Waits until a `both` link has made `push` copies to the remote and `pull`
/// to the local side in all, and every one of them has had its echo
/// suppressed: each write replhub makes causes exactly one keyspace event on
/// the key (the write script's RENAME or DEL), so once things are quiet
/// `echoes_suppressed == push + pull`. Fewer echoes means one went uncounted
/// or was taken for a genuine change; more copies means a write-back or a
/// ping-pong.
fn wait_counts(hub: &Hub, link: &str, push: f64, pull: f64) {
    let reached = poll_until(WAIT, || {
        let (p, q, e) = counters(hub, link);
        (p >= push && q >= pull && e == p + q).then_some(())
    });
    let (p, q, e) = counters(hub, link);
    if reached.is_none() || (p, q) != (push, pull) {
        panic!(
            "{link}: {p} copies to the remote (expected {push}), {q} to the local side (expected {pull}), \
             {e} echoes suppressed (expected one per copy)\n{}",
            hub.log_tail(60)
        );
    }
}

/// (push, pull, echoes) of a link.
fn counters(hub: &Hub, link: &str) -> (f64, f64, f64) {
    (replicated(hub, link, "push"), replicated(hub, link, "pull"), echoes(hub, link))
}

/// Two `both` links on one local Redis, cross-mapped so that each one's
/// local prefix is the other's remote prefix (lx: local "bx:" ↔ remote "by:",
/// ly: local "by:" ↔ remote "bx:"). Covers the initial union (a key only on
/// one side is copied to the other; present on both and different: the
/// remote wins without a base), no write-back of a copy (the pull counter
/// stays put, the echo is suppressed: exact counts), no ping-pong after a
/// hub write (counters stop growing), and that the two links never feed
/// each other.
#[test]
fn both_initial_union_no_write_back_no_ping_pong_and_links_stay_apart() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    redis!(local, "SET", "bx:local-only", "L");
    redis!(local, "HSET", "bx:both", "f", "local");
    redis!(remote, "RPUSH", "by:remote-only", "R");
    redis!(remote, "HSET", "by:both", "f", "remote", "g", "remote");
    redis!(local, "SET", "by:y-local", "YL");
    redis!(remote, "SET", "bx:y-remote", "YR", "PX", "60000");

    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("lx", "both", "bx:").remote_prefix("by:"),
        LinkSpec::new("ly", "both", "by:").remote_prefix("bx:"),
    ];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    wait_startup_resyncs(&hub, &["lx", "ly"]);
    let ctx = || hub.log_tail(60);
    let union = wait_equal(&mut local, b"bx:", &mut remote, b"by:", &ctx);
    let keys: Vec<&[u8]> = union.keys().map(Vec::as_slice).collect();
    assert_eq!(keys, vec![&b"both"[..], b"local-only", b"remote-only"]);
    let remote_hash = Val::Hash(vec![(b"f".to_vec(), b"remote".to_vec()), (b"g".to_vec(), b"remote".to_vec())]);
    assert_eq!(union[&b"both"[..]].val, remote_hash, "without a base, the remote wins");
    let y_union = wait_equal(&mut local, b"by:", &mut remote, b"bx:", &ctx);
    assert_eq!(y_union.len(), 2);
    assert!(y_union[&b"y-remote"[..]].pttl > 0, "the TTL came along");

    // One copy per differing key, and the echo of each suppressed.
    wait_counts(&hub, "lx", 1.0, 2.0);
    wait_counts(&hub, "ly", 1.0, 1.0);

    // Local writes are copied once each to the remote and never back.
    for i in 0..10 {
        redis!(local, "SET", format!("bx:k{i}"), format!("v{i}"));
    }
    wait_for(&hub, "bx:k* copied", || (0..10).all(|i| remote.get(format!("by:k{i}")).is_some()));
    wait_counts(&hub, "lx", 11.0, 2.0);

    // Remote writes are copied once each to the local side and never back.
    for i in 0..10 {
        redis!(remote, "HSET", format!("by:r{i}"), "f", format!("v{i}"));
    }
    wait_for(&hub, "by:r* copied", || (0..10).all(|i| read_entry(&mut local, format!("bx:r{i}").as_bytes()).is_some()));
    wait_counts(&hub, "lx", 11.0, 12.0);

    // No ping-pong: after a later write is through, nothing else moved.
    redis!(local, "SET", "bx:marker", "m");
    wait_for(&hub, "the marker is copied", || remote.get("by:marker").is_some());
    wait_counts(&hub, "lx", 12.0, 12.0);
    wait_equal(&mut local, b"bx:", &mut remote, b"by:", &ctx);

    // ly saw none of it, on either server, and lx sees none of ly's traffic.
    wait_counts(&hub, "ly", 1.0, 1.0);
    redis!(local, "SET", "by:k3", "v3");
    redis!(remote, "SET", "bx:k4", "v4");
    wait_for(&hub, "by:k3 copied by ly", || remote.get("bx:k3").as_deref() == Some(b"v3"));
    wait_for(&hub, "bx:k4 copied by ly", || local.get("by:k4").as_deref() == Some(b"v4"));
    wait_counts(&hub, "ly", 2.0, 2.0);
    wait_counts(&hub, "lx", 12.0, 12.0);
    let x_state = wait_equal(&mut local, b"bx:", &mut remote, b"by:", &ctx);
    let y_state = wait_equal(&mut local, b"by:", &mut remote, b"bx:", &ctx);
    assert_eq!(x_state.len(), 24, "bx: holds its own keys only");
    assert_eq!(y_state.len(), 4, "by: holds its own keys only");
    assert_no_leftovers(&mut local, &mut remote);
}

/// One step of the conflict hammer: a write of some kind on key `k`. The
/// other side and replhub write the same key meanwhile, so a command may
/// meet a type it does not expect (WRONGTYPE): that is part of the race.
fn hammer_write(conn: &mut RedisConn, k: &[u8], side: &str, n: u64) {
    let value = format!("{side}-{n}");
    let v = value.as_bytes();
    let commands: Vec<Vec<&[u8]>> = match n % 7 {
        0..=2 => vec![vec![b"SET", k, v]],
        3 => vec![vec![b"DEL", k], vec![b"HSET", k, b"side", side.as_bytes(), b"n", v]],
        4 => vec![vec![b"DEL", k]],
        5 => vec![vec![b"SET", k, v, b"PX", b"60000"]],
        _ => vec![vec![b"DEL", k], vec![b"RPUSH", k, side.as_bytes(), v]],
    };
    for command in commands {
        conn.cmd(&command);
    }
}

/// Waits until replhub's startup resync of each link is done (the base of
/// a `both` link is the state both sides had then).
fn wait_startup_resyncs(hub: &Hub, links: &[&str]) {
    for link in links {
        hub.wait_metric_at_least(&format!("replhub_resyncs_total{{link=\"{link}\",reason=\"startup\"}}"), 1.0, WAIT);
    }
}

/// Freezes (SIGSTOP) or thaws (SIGCONT) the hub and waits until the kernel says so.
fn freeze(hub: &mut Hub, frozen: bool) {
    hub.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT });
    let stat = format!("/proc/{}/stat", hub.pid());
    let state = || {
        std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| s.rsplit(')').next()?.split_whitespace().next().map(str::to_string))
    };
    let done = poll_until(WAIT, || (state().as_deref().is_some_and(|st| (st == "T") == frozen)).then_some(()));
    assert!(done.is_some(), "replhub did not {} (state {:?})", if frozen { "stop" } else { "continue" }, state());
}

/// Two links, `conflict: remote_wins` ("cr:") and `local_wins` ("cl:").
/// First a real race: two threads write the same keys on both sides in a
/// tight loop for 400 ms; afterwards both sides converge to equal states
/// (same keys, types, values, TTL within 1 s) and stop changing. Then
/// deterministic conflicts: with replhub frozen (SIGSTOP), both sides change
/// the same keys (value against value, delete against value, type change
/// against TTL change); once it runs again, the rule's side wins each one,
/// deletes included.
#[test]
fn both_conflicting_writes_converge_and_the_rule_decides() {
    let stack = Stack::start(StackOptions::default());
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let prefixes: [(&str, &[u8], &[u8]); 2] = [("cr", b"cr:", b"site-a:cr:"), ("cl", b"cl:", b"site-a:cl:")];
    for (_, lp, rp) in prefixes {
        for i in 1..=4 {
            redis!(local, "SET", key(lp, format!("k{i}")), "orig");
            redis!(remote, "SET", key(rp, format!("k{i}")), "orig");
        }
    }
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("cr", "both", "cr:").remote_prefix("site-a:cr:").with("conflict: remote_wins"),
        LinkSpec::new("cl", "both", "cl:").remote_prefix("site-a:cl:").with("conflict: local_wins"),
    ];
    let mut hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    wait_startup_resyncs(&hub, &["cr", "cl"]);
    for (_, lp, rp) in prefixes {
        wait_equal(&mut local, lp, &mut remote, rp, &|| hub.log_tail(60));
    }

    // The race.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [("local", stack.local().port()), ("remote", stack.remote().port())]
        .into_iter()
        .map(|(side, port)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = RedisConn::connect(port).expect("connect");
                let (mut n, started) = (if side == "local" { 0u64 } else { 3 }, Instant::now());
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_millis(400) {
                    for (_, lp, rp) in [("cr", &b"cr:"[..], &b"site-a:cr:"[..]), ("cl", b"cl:", b"site-a:cl:")] {
                        let p = if side == "local" { lp } else { rp };
                        hammer_write(&mut conn, &key(p, format!("h{}", n % 5)), side, n);
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let writes: Vec<u64> = writers.into_iter().map(|w| w.join().expect("a writer panicked")).collect();
    assert!(writes.iter().all(|n| *n > 50), "the writers wrote too little to race: {writes:?}");
    for (link, lp, rp) in prefixes {
        let state = wait_equal(&mut local, lp, &mut remote, rp, &|| format!("link {link}\n{}", hub.log_tail(80)));
        assert!(state.len() >= 4, "{link}: {} keys", state.len());
    }
    // Converged for good: later writes go through, nothing else is copied.
    for (link, lp, rp) in prefixes {
        let before = (replicated(&hub, link, "push"), replicated(&hub, link, "pull"));
        redis!(local, "SET", key(lp, "marker"), "m");
        wait_for(&hub, "the marker is copied", || remote.get(key(rp, "marker")).is_some());
        redis!(remote, "SET", key(rp, "marker2"), "m");
        wait_for(&hub, "the second marker is copied", || local.get(key(lp, "marker2")).is_some());
        let moved = || (replicated(&hub, link, "push"), replicated(&hub, link, "pull"));
        wait_for(&hub, "the markers are counted", || moved().0 > before.0 && moved().1 > before.1);
        assert_eq!(
            moved(),
            (before.0 + 1.0, before.1 + 1.0),
            "{link}: the states had converged, only the markers move"
        );
        wait_equal(&mut local, lp, &mut remote, rp, &|| hub.log_tail(60));
    }

    // Deterministic conflicts while replhub is frozen.
    freeze(&mut hub, true);
    for (_, lp, rp) in prefixes {
        let (l, r) = (|s: &str| key(lp, s), |s: &str| key(rp, s));
        redis!(local, "SET", l("k1"), "L1");
        redis!(remote, "SET", r("k1"), "R1");
        redis!(local, "DEL", l("k2"));
        redis!(remote, "SET", r("k2"), "R2");
        redis!(local, "SET", l("k3"), "L3");
        redis!(remote, "DEL", r("k3"));
        redis!(local, "DEL", l("k4"));
        redis!(local, "HSET", l("k4"), "f", "L4");
        redis!(remote, "PEXPIRE", r("k4"), "60000");
    }
    freeze(&mut hub, false);
    let show = |s: &str| Some(Val::Str(s.as_bytes().to_vec()));
    for (link, lp, rp) in prefixes {
        let state = wait_equal(&mut local, lp, &mut remote, rp, &|| format!("link {link}\n{}", hub.log_tail(80)));
        let get = |k: &str| state.get(k.as_bytes()).map(|e| e.val.clone());
        if link == "cr" {
            assert_eq!(get("k1"), show("R1"), "remote_wins: the remote value wins");
            assert_eq!(get("k2"), show("R2"), "remote_wins: the remote value beats a local delete");
            assert_eq!(get("k3"), None, "remote_wins: a remote delete wins");
            assert_eq!(get("k4"), show("orig"), "remote_wins: the remote's TTL change beats a local type change");
            assert!(state[&b"k4"[..]].pttl > 0, "with its TTL");
        } else {
            assert_eq!(get("k1"), show("L1"), "local_wins: the local value wins");
            assert_eq!(get("k2"), None, "local_wins: a local delete wins");
            assert_eq!(get("k3"), show("L3"), "local_wins: the local value beats a remote delete");
            let hash = Val::Hash(vec![(b"f".to_vec(), b"L4".to_vec())]);
            assert_eq!(get("k4"), Some(hash), "local_wins: the local type change wins");
            assert_eq!(state[&b"k4"[..]].pttl, -1, "without the remote's TTL");
        }
    }
    assert_no_leftovers(&mut local, &mut remote);
}

/// A fleet: two replhub processes (site A with the site-a certificate and
/// its own local Redis, site B with the site-b certificate and another local
/// Redis) push their own namespaces into the same remote ("site-a:data:",
/// "site-b:data:") and both pull the shared "global:" namespace. Each site
/// sees the global keys, the remote sees both sites' keys, and neither site
/// sees the other's.
#[test]
fn both_fleet_of_two_sites_shares_one_remote() {
    let stack = Stack::start(StackOptions::default());
    let site_b_redis = RedisServer::start_new(stack.dir(), "redis-local-b", None, &[]).expect("second local Redis");
    let (mut local_a, mut local_b, mut remote) = (stack.local().conn(), site_b_redis.conn(), stack.remote().conn());
    redis!(local_a, "SET", "data:a1", "from A");
    redis!(local_b, "HSET", "data:b1", "f", "from B");
    redis!(remote, "SET", "global:g1", "shared");
    redis!(remote, "SADD", "global:g2", "x", "y");

    let port_a = Hub::admin_port();
    let site_a_links = [
        LinkSpec::new("data", "push", "data:").remote_prefix("site-a:data:"),
        LinkSpec::new("global", "pull", "global:"),
    ];
    let hub_a = Hub::start(&hub_dir(&stack, "site-a"), &config_yaml(&stack, port_a, &site_a_links), port_a);

    // Site B's config, written out in full: its certificate, its Redis.
    let port_b = Hub::admin_port();
    let pki = stack.pki();
    let site_b = pki.client(crate::support::pki::SITE_B);
    let yaml_b = format!(
        r#"version: 1
admin:
  listen: "127.0.0.1:{port_b}"
defaults:
  local:
    url: "{local_url}"
  remote:
    url: "{remote_url}"
    tls:
      ca: {ca}
      cert: {cert}
      key: {key}
  heartbeat: {{ interval: "500ms", timeout: "3s" }}
links:
  - name: data
    direction: push
    local: {{ prefix: "data:" }}
    remote: {{ prefix: "site-b:data:" }}
  - name: global
    direction: pull
    local: {{ prefix: "global:" }}
"#,
        local_url = site_b_redis.url(),
        remote_url = stack.remote_url(),
        ca = yaml_path(&pki.ca_cert()),
        cert = yaml_path(&site_b.cert),
        key = yaml_path(&site_b.key),
    );
    let hub_b = Hub::start(&hub_dir(&stack, "site-b"), &yaml_b, port_b);
    hub_a.wait_ready(Duration::from_secs(20));
    hub_b.wait_ready(Duration::from_secs(20));
    let ctx = || format!("site A:\n{}\nsite B:\n{}", hub_a.log_tail(40), hub_b.log_tail(40));

    let check = |local_a: &mut RedisConn, local_b: &mut RedisConn, remote: &mut RedisConn| {
        wait_equal(local_a, b"data:", remote, b"site-a:data:", &ctx);
        wait_equal(local_b, b"data:", remote, b"site-b:data:", &ctx);
        wait_equal(remote, b"global:", local_a, b"global:", &ctx);
        wait_equal(remote, b"global:", local_b, b"global:", &ctx);
    };
    check(&mut local_a, &mut local_b, &mut remote);

    // Live changes on every side.
    redis!(remote, "SET", "global:g3", "later", "PX", "60000");
    redis!(remote, "SREM", "global:g2", "x");
    redis!(local_a, "SET", "data:a2", "A again");
    redis!(local_b, "SET", "data:b2", "B again");
    redis!(local_b, "DEL", "data:b1");
    check(&mut local_a, &mut local_b, &mut remote);

    // Each site holds its own data and the global keys, nothing of the other site.
    let all_keys = |conn: &mut RedisConn| -> Vec<String> {
        conn.keys("*").iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    };
    assert_eq!(all_keys(&mut local_a), ["data:a1", "data:a2", "global:g1", "global:g2", "global:g3"]);
    assert_eq!(all_keys(&mut local_b), ["data:b2", "global:g1", "global:g2", "global:g3"]);
    let remote_keys: Vec<String> =
        all_keys(&mut remote).into_iter().filter(|k| !k.starts_with("__replhub__:hb:")).collect();
    assert_eq!(
        remote_keys,
        ["global:g1", "global:g2", "global:g3", "site-a:data:a1", "site-a:data:a2", "site-b:data:b2"]
    );
    assert_eq!(snapshot(&mut remote, b"site-b:").len(), 1, "site B's namespace holds its key only");
    for hub in [&hub_a, &hub_b] {
        assert!(
            replicated(hub, "data", "push") >= 2.0 && replicated(hub, "global", "pull") >= 3.0,
            "{}",
            hub.metrics()
        );
    }
    assert_no_leftovers(&mut local_a, &mut remote);
    drop((hub_a, hub_b));
}
