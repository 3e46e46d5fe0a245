//! Fault tolerance (issue 6): every fault of the matrix, while writers run on
//! both sides, ends with every acknowledged write at its destination; a slow
//! or garbage-speaking remote makes its link not-up without disturbing the
//! others; resyncs never resurrect deletes or wipe a namespace.

use std::time::Duration;

use crate::support::faults::{Fault, Scenario, rss_mib};
use crate::support::hub::{Hub, LinkSpec, config_yaml, metric_value, yaml_str};
use crate::support::poll_until;
use crate::support::proxy::{DelayProxy, Garbage, GarbageServer};
use crate::support::stack::{Stack, StackOptions};

fn assert_clean(outcome: &crate::support::faults::Outcome, hub: &Hub) {
    assert!(outcome.written > 0, "the writers wrote nothing during {}", outcome.fault);
    assert_eq!(
        outcome.lost,
        0,
        "{}: {} of {} acknowledged writes lost\n{}",
        outcome.fault,
        outcome.lost,
        outcome.written,
        hub.log_tail(60)
    );
    assert!(outcome.converged.is_some(), "{}: did not converge\n{}", outcome.fault, hub.log_tail(60));
}

#[test]
fn restarts_of_every_server_lose_no_acknowledged_write() {
    let mut scenario = Scenario::start("3s");
    for fault in [
        Fault::RemoteRedisRestart,
        Fault::WebdisRestart,
        Fault::NginxRestart,
        Fault::NginxReload,
        Fault::LocalRedisRestart,
    ] {
        scenario.start_writers(Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(300));
        let outcome = scenario.run(fault, Duration::from_secs(30));
        assert_clean(&outcome, &scenario.hub);
        if fault == Fault::RemoteRedisRestart {
            // Silent for the stream (Webdis hangs forever): only the heartbeat notices.
            let detected = outcome.detected.expect("a remote Redis restart must be detected");
            assert!(detected <= Duration::from_secs(15), "detected after {detected:?}");
            assert!(
                scenario.hub.metric("replhub_resyncs_total{link=\"pull\",reason=\"heartbeat\"}").unwrap_or(0.0) >= 1.0
            );
        }
    }
    assert!(scenario.hub.is_running(), "the process must survive every fault");
}

#[test]
fn ten_thousand_local_writes_during_a_30_s_outage_all_arrive_afterwards() {
    let mut scenario = Scenario::start("3s");
    scenario.start_writers(Duration::from_millis(4));
    let outcome = scenario.run(Fault::RemoteUnreachable(Duration::from_secs(30)), Duration::from_secs(30));
    assert!(outcome.written >= 10_000, "only {} writes during the outage", outcome.written);
    assert_clean(&outcome, &scenario.hub);
    assert!(
        outcome.detected.is_some_and(|d| d <= Duration::from_secs(15)),
        "outage not detected: {:?}",
        outcome.detected
    );
    assert!(outcome.peak_rss_mib < 100.0, "memory grew to {:.0} MiB during the outage", outcome.peak_rss_mib);
}

#[test]
fn a_slow_remote_still_gets_every_key_in_bounded_memory() {
    let stack = Stack::start(StackOptions::default());
    let proxy = DelayProxy::start(stack.nginx().port(), Duration::from_secs(2));
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("slow", "push", "s:")
            .with(&format!("remote: {{ url: {} }}", yaml_str(&format!("https://localhost:{}/", proxy.port()))))
            .with("heartbeat: { interval: \"3s\", timeout: \"20s\" }"),
        LinkSpec::new("slowpull", "pull", "sp:")
            .with(&format!("remote: {{ url: {} }}", yaml_str(&format!("https://localhost:{}/", proxy.port()))))
            .with("heartbeat: { interval: \"3s\", timeout: \"20s\" }"),
    ];
    let hub = Hub::start(stack.dir(), &config_yaml(&stack, port, &links), port);
    let mut local = stack.local().conn();
    let mut remote = stack.remote().conn();
    let mut peak = 0.0f64;
    for round in 0..5 {
        for i in 0..200 {
            local.set(format!("s:{round}:{i}"), "v");
        }
        remote.set(format!("sp:{round}"), "w");
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_mib(hub.pid()));
    }
    let arrived = poll_until(Duration::from_secs(40), || {
        let pushed = (0..5).all(|r| (0..200).all(|i| remote.get(format!("s:{r}:{i}")).is_some()));
        let pulled = (0..5).all(|r| local.get(format!("sp:{r}")).is_some());
        (pushed && pulled).then_some(())
    });
    assert!(arrived.is_some(), "keys did not arrive through the slow remote\n{}", hub.log_tail(60));
    assert!(peak < 100.0, "memory grew to {peak:.0} MiB");
}

#[test]
fn a_remote_answering_garbage_makes_only_its_link_not_up() {
    let stack = Stack::start(StackOptions::default());
    let servers: Vec<(Garbage, GarbageServer)> =
        [Garbage::RandomBytes, Garbage::TruncatedResp, Garbage::EndlessChunk, Garbage::Html]
            .into_iter()
            .map(|g| (g, GarbageServer::start(g)))
            .collect();
    let port = Hub::admin_port();
    let mut links = vec![LinkSpec::new("healthy", "push", "ok:")];
    for (i, (_, server)) in servers.iter().enumerate() {
        for direction in ["push", "pull"] {
            let remote = format!(
                "remote: {{ url: {}, insecure_plaintext: true, prefix: \"g{i}{direction}:\" }}",
                yaml_str(&server.url())
            );
            links.push(
                LinkSpec::new(&format!("garbage{i}{direction}"), direction, &format!("g{i}{direction}:")).with(&remote),
            );
        }
    }
    let mut hub = Hub::start(stack.dir(), &config_yaml(&stack, port, &links), port);
    // Every garbage link is reported not-up, with an error counted; the healthy one works.
    let listed = |body: &str, name: &str| body.lines().any(|l| l.starts_with(&format!("{name}:")));
    let readyz = poll_until(Duration::from_secs(20), || {
        let (status, body) = hub.get("/readyz")?;
        let garbage_listed = (0..servers.len())
            .all(|i| listed(&body, &format!("garbage{i}push")) && listed(&body, &format!("garbage{i}pull")));
        (status == 503 && garbage_listed && !listed(&body, "healthy")).then_some(body)
    });
    assert!(
        readyz.is_some(),
        "garbage links not-up, the healthy one up: {:?}\n{}",
        hub.get("/readyz"),
        hub.log_tail(40)
    );
    let mut local = stack.local().conn();
    let mut remote = stack.remote().conn();
    local.set("ok:after", "fine");
    assert!(poll_until(Duration::from_secs(10), || remote.get("ok:after")).is_some(), "{}", hub.log_tail(40));
    // Each kind of garbage is counted as an error (an endless chunk only
    // once a deadline passes: the CONFIG probe's 5 s, or a stream's framing check).
    let errors_of = |metrics: &str, i: usize| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("replhub_errors_total{{link=\"garbage{i}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let counted = poll_until(Duration::from_secs(30), || {
        let metrics = hub.metrics();
        (0..servers.len()).all(|i| errors_of(&metrics, i) >= 1.0).then_some(metrics)
    });
    let metrics = counted.unwrap_or_else(|| {
        let metrics = hub.metrics();
        let silent: Vec<Garbage> =
            servers.iter().enumerate().filter(|(i, _)| errors_of(&metrics, *i) < 1.0).map(|(_, (g, _))| *g).collect();
        panic!("no error counted for {silent:?}\n{}", hub.log_tail(40))
    });
    assert!(metric_value(&metrics, "replhub_link_up{link=\"healthy\"}") == Some(1.0));
    assert!(hub.is_running(), "the process must not die");
    assert!(!hub.log().contains("panicked"), "a panic was logged:\n{}", hub.log_tail(60));
}

#[test]
fn an_emptied_local_redis_does_not_wipe_the_remote_namespace() {
    let mut stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [LinkSpec::new("mirror", "push", "m:")];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let mut local = stack.local().conn();
    for i in 0..20 {
        local.set(format!("m:{i}"), "v");
    }
    let mut remote = stack.remote().conn();
    assert!(poll_until(Duration::from_secs(10), || (remote.keys("m:*").len() == 20).then_some(())).is_some());
    // The local Redis comes back empty (no persistence): the resync after the
    // reconnect would delete all 20 remote keys, more than max_delete_fraction.
    stack.local_mut().restart();
    let refused = poll_until(Duration::from_secs(20), || {
        let (status, body) = hub.get("/readyz")?;
        (status == 503 && body.contains("mirror") && body.contains("max_delete_fraction")).then_some(body)
    });
    assert!(
        refused.is_some(),
        "the link must report the refused resync: {:?}\n{}",
        hub.get("/readyz"),
        hub.log_tail(40)
    );
    assert_eq!(stack.remote().conn().keys("m:*").len(), 20, "no remote key may be deleted");
    assert!(hub.log().contains("raise max_delete_fraction"), "the error says how to allow it");
}

#[test]
fn a_delete_made_while_the_hub_was_down_is_replicated_not_undone() {
    let stack = Stack::start(StackOptions::default());
    let state_dir = stack.dir().join("state");
    let port = Hub::admin_port();
    let link = LinkSpec::new("shared", "both", "sh:").remote_prefix("site:sh:");
    let yaml = format!(
        "{}state_dir: {}\n",
        config_yaml(&stack, port, std::slice::from_ref(&link)),
        yaml_str(&state_dir.display().to_string())
    );
    let mut hub = Hub::start_ready(stack.dir(), &yaml, port);
    let mut local = stack.local().conn();
    let mut remote = stack.remote().conn();
    for i in 0..10 {
        local.set(format!("sh:{i}"), "v");
    }
    assert!(poll_until(Duration::from_secs(10), || (remote.keys("site:sh:*").len() == 10).then_some(())).is_some());
    hub.signal(libc::SIGTERM);
    assert_eq!(hub.wait_exit(Duration::from_secs(15)).and_then(|s| s.code()), Some(0), "{}", hub.log_tail(30));
    // While the hub is down, one key is deleted locally.
    local.cmd(&[b"DEL", b"sh:3"]);
    let hub = Hub::start_ready(stack.dir(), &yaml, port);
    let deleted = poll_until(Duration::from_secs(15), || remote.get("site:sh:3").is_none().then_some(()));
    assert!(deleted.is_some(), "the delete must reach the remote (no resurrection)\n{}", hub.log_tail(40));
    assert!(local.get("sh:3").is_none(), "the key must not come back locally");
    assert_eq!(remote.keys("site:sh:*").len(), 9);
}

#[test]
fn notifications_switched_off_on_the_remote_are_noticed_and_switched_back_on() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [LinkSpec::new("pull", "pull", "n:")];
    let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
    let mut remote = stack.remote().conn();
    // As after a restart of a Redis whose flags were set at run time.
    remote.cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]);
    remote.set("n:while-off", "1");
    // The stream stays open and the probe still reaches it, but no keyspace
    // event arrives: the heartbeat times out (3 s in tests), the link
    // reconnects, sets the flags again and resyncs.
    let mut local = stack.local().conn();
    let arrived = poll_until(Duration::from_secs(20), || local.get("n:while-off"));
    assert!(arrived.is_some(), "{}", hub.log_tail(40));
    assert!(remote.config_get("notify-keyspace-events").contains('K'), "the flags must be back");
    assert!(hub.metric("replhub_resyncs_total{link=\"pull\",reason=\"heartbeat\"}").unwrap_or(0.0) >= 1.0);
    remote.set("n:after", "2");
    assert!(poll_until(Duration::from_secs(10), || local.get("n:after")).is_some(), "events flow again");
}

/// A hub whose only link talks to a remote that answers after 30 s, with
/// a 1 s `shutdown_timeout`, and a key waiting to be copied.
fn hub_with_a_copy_stuck_in_flight(stack: &Stack) -> (Hub, DelayProxy) {
    let proxy = DelayProxy::start(stack.nginx().port(), Duration::from_secs(30));
    let port = Hub::admin_port();
    let link = LinkSpec::new("stuck", "push", "st:")
        .with(&format!("remote: {{ url: {} }}", yaml_str(&format!("https://localhost:{}/", proxy.port()))));
    let yaml = config_yaml(stack, port, &[link]).replace("shutdown_timeout: \"10s\"", "shutdown_timeout: \"1s\"");
    let hub = Hub::start(stack.dir(), &yaml, port);
    assert!(poll_until(Duration::from_secs(10), || hub.get("/healthz")).is_some(), "{}", hub.log_tail(20));
    stack.local().conn().set("st:waiting", "v");
    (hub, proxy)
}

#[test]
fn a_shutdown_cut_short_by_the_deadline_exits_1_and_a_second_signal_exits_130() {
    let stack = Stack::start(StackOptions::default());
    let (mut hub, _proxy) = hub_with_a_copy_stuck_in_flight(&stack);
    let started = std::time::Instant::now();
    hub.signal(libc::SIGTERM);
    let status = hub.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "copies cut short by shutdown_timeout exit 1\n{}",
        hub.log_tail(20)
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the deadline is 1 s, it took {:?}", started.elapsed());
    assert!(hub.log().contains("cut short"), "the log says copies were cut short\n{}", hub.log_tail(20));

    let (mut hub, _proxy) = hub_with_a_copy_stuck_in_flight(&stack);
    let started = std::time::Instant::now();
    hub.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    hub.signal(libc::SIGINT);
    let status = hub.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "a second signal exits at once with 130\n{}",
        hub.log_tail(20)
    );
    assert!(started.elapsed() < Duration::from_millis(900), "it took {:?}", started.elapsed());
}
