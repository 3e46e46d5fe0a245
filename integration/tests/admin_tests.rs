//! Issue 4, the admin server and the process: `/metrics` (every contract
//! metric with its labels for every link, before any event), `/healthz`,
//! `/readyz` (through a remote outage), `/status` (exactly the contract's
//! fields), the listen address (only the configured one, moved on reload),
//! and graceful shutdown on SIGTERM and SIGINT (exit 0, promptly, copies in
//! flight finished), with `--log-format json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::reload_tests::{SOON, metric, scrape, start_hub, starts, status, wait, wait_links_up, wait_metric};
use crate::support::hub::{Hub, LinkSpec, config_yaml};
use crate::support::pki::SITE_A;
use crate::support::stack::{Stack, StackOptions};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{k="v",…} value` lines; returns the samples and the `# TYPE` of each family.
fn parse_metrics(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            if let (Some(name), Some(ty)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}').unwrap_or(rest), line)),
        };
        samples.push(Sample { name, labels, value });
    }
    (samples, types)
}

fn parse_labels(text: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "bad labels in {line:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The samples named `name` whose labels include all of `with`.
fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && with.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect()
}

/// The value of exactly one sample `name{with…}`.
fn one(samples: &[Sample], name: &str, with: &[(&str, &str)], text: &str) -> f64 {
    match find(samples, name, with).as_slice() {
        [sample] => sample.value,
        other => panic!("expected one sample {name} {with:?}, found {}:\n{text}", other.len()),
    }
}

fn not_after_of_site_a(stack: &Stack) -> f64 {
    let pem = std::fs::read(stack.pki().client(SITE_A).cert).expect("cannot read site-a.pem");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("not PEM");
    pem.parse_x509().expect("not a certificate").validity().not_after.timestamp() as f64
}

#[test]
fn metrics_show_every_contract_series_for_every_link_before_any_event() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("a", "push", "a:").remote_prefix("site-a:a:"),
        LinkSpec::new("p", "pull", "p:").remote_prefix("central:p:"),
        LinkSpec::new("x", "both", "x:").remote_prefix("site-a:x:"),
    ];
    let hub = start_hub(&stack, &config_yaml(&stack, port, &links), port, &["a", "p", "x"]);
    for link in ["a", "p", "x"] {
        wait_metric(&hub, &format!("replhub_resyncs_total{{link=\"{link}\",reason=\"startup\"}}"), 1.0);
    }
    let text = scrape(&hub);
    let (samples, types) = parse_metrics(&text);

    let expected_types = [
        ("replhub_config_last_reload_successful", "gauge"),
        ("replhub_config_reloads", "counter"),
        ("replhub_link_up", "gauge"),
        ("replhub_link_starts", "counter"),
        ("replhub_keys_replicated", "counter"),
        ("replhub_replication_lag_seconds", "histogram"),
        ("replhub_resyncs", "counter"),
        ("replhub_echoes_suppressed", "counter"),
        ("replhub_dirty_keys", "gauge"),
        ("replhub_cert_expiry_timestamp_seconds", "gauge"),
        ("replhub_build_info", "gauge"),
    ];
    for (family, ty) in expected_types {
        let declared = types.get(family).or_else(|| types.get(&format!("{family}_total")));
        assert_eq!(declared.map(String::as_str), Some(ty), "# TYPE of {family}:\n{text}");
    }

    assert_eq!(one(&samples, "replhub_config_last_reload_successful", &[], &text), 1.0);
    assert_eq!(one(&samples, "replhub_config_reloads_total", &[("result", "success")], &text), 0.0);
    assert_eq!(one(&samples, "replhub_config_reloads_total", &[("result", "failure")], &text), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(one(&samples, "replhub_build_info", &[("version", version)], &text), 1.0);

    let not_after = not_after_of_site_a(&stack);
    for (link, directions) in [("a", &["push"][..]), ("p", &["pull"][..]), ("x", &["push", "pull"][..])] {
        let l = ("link", link);
        assert_eq!(one(&samples, "replhub_link_up", &[l], &text), 1.0, "link {link}");
        assert_eq!(one(&samples, "replhub_link_starts_total", &[l], &text), 1.0, "link {link}");
        assert_eq!(one(&samples, "replhub_echoes_suppressed_total", &[l], &text), 0.0, "link {link}");
        assert_eq!(one(&samples, "replhub_cert_expiry_timestamp_seconds", &[l], &text), not_after, "link {link}");
        for reason in ["startup", "reconnect", "heartbeat", "overflow", "periodic"] {
            let resyncs = one(&samples, "replhub_resyncs_total", &[l, ("reason", reason)], &text);
            assert_eq!(resyncs, if reason == "startup" { 1.0 } else { 0.0 }, "link {link} reason {reason}");
        }
        for direction in directions {
            let ld = [l, ("direction", *direction)];
            assert_eq!(one(&samples, "replhub_keys_replicated_total", &ld, &text), 0.0, "{ld:?}");
            assert_eq!(one(&samples, "replhub_dirty_keys", &ld, &text), 0.0, "{ld:?}");
            assert_eq!(one(&samples, "replhub_replication_lag_seconds_count", &ld, &text), 0.0, "{ld:?}");
            one(&samples, "replhub_replication_lag_seconds_sum", &ld, &text);
            let buckets = find(&samples, "replhub_replication_lag_seconds_bucket", &ld);
            assert!(buckets.len() >= 2, "{ld:?}: buckets {buckets:?}");
            assert!(buckets.iter().any(|b| b.labels.get("le").map(String::as_str) == Some("+Inf")), "{ld:?}");
        }
    }
    // Only configured links have series.
    let labelled: BTreeSet<&str> = samples.iter().filter_map(|s| s.labels.get("link").map(String::as_str)).collect();
    assert_eq!(labelled, BTreeSet::from(["a", "p", "x"]), "{text}");
}

#[test]
fn readyz_is_not_ready_before_every_link_is_up() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    // Many links make the start-up long enough to look at it closely.
    let links: Vec<LinkSpec> = (0..300)
        .map(|i| LinkSpec::new(&format!("l{i}"), "push", &format!("l{i}:")).remote_prefix(&format!("site-a:l{i}:")))
        .collect();
    let hub = Hub::start(stack.dir(), &config_yaml(&stack, port, &links), port);
    // The very first answer, polling as fast as the server answers from the moment it listens.
    let deadline = Instant::now() + SOON;
    let (code, body) = loop {
        if let Some(answer) = hub.get("/readyz") {
            break answer;
        }
        assert!(Instant::now() < deadline, "/readyz never answered\n{}", hub.log_tail(40));
    };
    // No link can have connected and synced yet.
    assert_eq!(code, 503, "/readyz answered {code} {body:?} before the links were up\n{}", hub.log_tail(10));
    assert!(body.contains("l0: ") && body.contains("l299: "), "{body}");
}

/// Waits for `/healthz` to answer 200.
fn healthy(hub: &Hub, timeout: Duration) {
    wait(hub, "/healthz answers 200", timeout, || (hub.get("/healthz")?.0 == 200).then_some(()));
}

/// The regular expression of an RFC 3339 timestamp.
fn rfc3339() -> regex::Regex {
    regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$").expect("bad regex")
}

fn keys_of(value: &serde_json::Value) -> BTreeSet<&str> {
    value.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// `/status` has exactly the fields of interface.md, with the right types.
fn assert_status_shape(doc: &serde_json::Value, config_path: &str, links: &[(&str, &str)]) {
    assert_eq!(keys_of(doc), BTreeSet::from(["config", "links"]), "{doc:#}");
    let config = &doc["config"];
    assert_eq!(keys_of(config), BTreeSet::from(["path", "loaded_at", "last_reload_ok", "last_error"]), "{doc:#}");
    assert_eq!(config["path"].as_str(), Some(config_path), "{doc:#}");
    assert!(config["loaded_at"].as_str().is_some_and(|t| rfc3339().is_match(t)), "{doc:#}");
    assert_eq!(config["last_reload_ok"], serde_json::json!(true), "{doc:#}");
    assert!(config["last_error"].is_null(), "{doc:#}");
    let reported = doc["links"].as_array().unwrap_or_else(|| panic!("links is not a list: {doc:#}"));
    assert_eq!(reported.len(), links.len(), "{doc:#}");
    let fields =
        BTreeSet::from(["name", "direction", "state", "since", "last_error", "keys_replicated", "lag_seconds"]);
    for (name, direction) in links {
        let link = reported.iter().find(|l| l["name"] == *name).unwrap_or_else(|| panic!("no link {name}: {doc:#}"));
        assert_eq!(keys_of(link), fields, "{link:#}");
        assert_eq!(link["direction"], *direction, "{link:#}");
        assert_eq!(link["state"], "up", "{link:#}");
        assert!(link["since"].as_str().is_some_and(|t| rfc3339().is_match(t)), "{link:#}");
        assert!(link["last_error"].is_null() || link["last_error"].is_string(), "{link:#}");
        assert!(link["keys_replicated"].is_u64(), "{link:#}");
        assert!(link["lag_seconds"].is_number(), "{link:#}");
    }
}

#[test]
fn healthz_readyz_and_status_follow_a_remote_outage() {
    let mut stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("a", "push", "a:").remote_prefix("site-a:a:"),
        LinkSpec::new("p", "pull", "p:").remote_prefix("central:p:"),
    ];
    let hub = start_hub(&stack, &config_yaml(&stack, port, &links), port, &["a", "p"]);
    healthy(&hub, SOON);
    assert_status_shape(&status(&hub), &hub.config_path.display().to_string(), &[("a", "push"), ("p", "pull")]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    local.set("a:before", "1");
    wait(&hub, "a:before replicated", SOON, || remote.get("site-a:a:before"));
    wait(&hub, "keys_replicated of a in /status", SOON, || {
        (status(&hub)["links"].as_array()?.iter().find(|l| l["name"] == "a")?["keys_replicated"].as_u64()? >= 1)
            .then_some(())
    });

    // The remote goes away: p's stream breaks, a's next copy fails.
    stack.nginx_mut().stop();
    local.set("a:during-outage", "2");
    let body = wait(&hub, "/readyz 503 naming a and p", SOON, || {
        let (code, body) = hub.get("/readyz")?;
        let names: BTreeSet<&str> = body.lines().filter_map(|l| l.split(':').next()).collect();
        (code == 503 && names.contains("a") && names.contains("p")).then_some(body)
    });
    healthy(&hub, SOON);
    assert_eq!(metric(&hub, "replhub_link_up{link=\"p\"}"), 0.0);
    assert_eq!(metric(&hub, "replhub_link_up{link=\"a\"}"), 0.0);
    let text = scrape(&hub);
    let (samples, types) = parse_metrics(&text);
    assert_eq!(types.get("replhub_errors").map(String::as_str), Some("counter"), "{text}");
    for link in ["a", "p"] {
        let errors = find(&samples, "replhub_errors_total", &[("link", link)]);
        assert!(
            errors.iter().any(|s| s.value >= 1.0 && s.labels.contains_key("kind")),
            "no errors_total for {link}:\n{text}"
        );
    }
    let doc = status(&hub);
    for link in doc["links"].as_array().into_iter().flatten() {
        assert_ne!(link["state"], "up", "{body}\n{doc:#}");
        assert!(link["last_error"].is_string(), "{doc:#}");
    }

    // It comes back: ready again, and the key written meanwhile arrives.
    stack.nginx_mut().start();
    wait(&hub, "/readyz 200 after the remote came back", Duration::from_secs(40), || {
        (hub.get("/readyz")?.0 == 200).then_some(())
    });
    wait(&hub, "the key written during the outage", SOON, || remote.get("site-a:a:during-outage"));
    assert_eq!((starts(&hub, "a"), starts(&hub, "p")), (1.0, 1.0));
}

/// GET `path` from an admin server at `addr`: (status, body); `None` if nothing answers.
fn get_at(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    Some((code, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The local addresses listening on TCP `port` (from /proc/net/tcp and tcp6).
fn listeners_on(port: u16) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            let Some((addr, p)) = local.split_once(':') else { continue };
            if *state == "0A" && u16::from_str_radix(p, 16).ok() == Some(port) {
                found.insert(addr.to_string());
            }
        }
    }
    found
}

#[test]
fn the_admin_server_binds_only_its_address_and_moves_when_admin_listen_changes() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [LinkSpec::new("a", "push", "a:").remote_prefix("site-a:a:")];
    let yaml = config_yaml(&stack, port, &links);
    let hub = start_hub(&stack, &yaml, port, &["a"]);
    let loopback = |last: u8, port: u16| SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), port));
    assert_eq!(listeners_on(port), BTreeSet::from(["0100007F".to_string()]), "127.0.0.1 only");
    assert_eq!(get_at(loopback(2, port), "/healthz"), None, "answers on 127.0.0.2 too");

    // Move it to another address and port.
    let new_port = Hub::admin_port();
    let moved = yaml.replace(&format!("listen: \"127.0.0.1:{port}\""), &format!("listen: \"127.0.0.2:{new_port}\""));
    assert_ne!(moved, yaml);
    hub.replace_config(&moved);
    wait(&hub, "the admin server on 127.0.0.2", SOON, || {
        (get_at(loopback(2, new_port), "/healthz")?.0 == 200).then_some(())
    });
    wait(&hub, "the old admin address closed", SOON, || get_at(loopback(1, port), "/healthz").is_none().then_some(()));
    assert_eq!(get_at(loopback(1, new_port), "/healthz"), None, "answers on 127.0.0.1 too");
    assert_eq!(listeners_on(new_port), BTreeSet::from(["0200007F".to_string()]));
    let text = wait(&hub, "/metrics on the new address", SOON, || {
        get_at(loopback(2, new_port), "/metrics").filter(|(code, _)| *code == 200).map(|(_, body)| body)
    });
    let (samples, _) = parse_metrics(&text);
    assert_eq!(one(&samples, "replhub_link_starts_total", &[("link", "a")], &text), 1.0, "a was restarted");
    assert_eq!(one(&samples, "replhub_config_reloads_total", &[("result", "success")], &text), 1.0);
    assert_eq!(one(&samples, "replhub_config_last_reload_successful", &[], &text), 1.0);
}

#[test]
fn an_admin_address_that_cannot_be_bound_is_refused_and_the_old_server_keeps_serving() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [LinkSpec::new("a", "push", "a:").remote_prefix("site-a:a:")];
    let yaml = config_yaml(&stack, port, &links);
    let hub = start_hub(&stack, &yaml, port, &["a"]);
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind a port");
    let taken_port = taken.local_addr().expect("local_addr").port();
    hub.replace_config(&yaml.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{taken_port}")));
    // Once the hub has tried, the old admin server still answers and tells why
    // the new file was not applied.
    wait(&hub, "the hub tries the new admin address", SOON, || {
        hub.log().contains(&format!("127.0.0.1:{taken_port}")).then_some(())
    });
    healthy(&hub, Duration::from_secs(5));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"failure\"}", 1.0);
    assert_eq!(metric(&hub, "replhub_config_last_reload_successful"), 0.0);
    let config = status(&hub)["config"].clone();
    assert_eq!(config["last_reload_ok"], serde_json::json!(false), "{config:#}");
    assert!(config["last_error"].as_str().is_some_and(|e| e.contains(&taken_port.to_string())), "{config:#}");
    assert_eq!(starts(&hub, "a"), 1.0);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    local.set("a:k", "1");
    wait(&hub, "a still replicates", SOON, || remote.get("site-a:a:k"));
    // A file that can be applied again.
    drop(taken);
    hub.replace_config(&config_yaml(&stack, port, &[links[0].clone(), LinkSpec::new("b", "push", "b:")]));
    wait_metric(&hub, "replhub_config_last_reload_successful", 1.0);
    wait_links_up(&hub, &["a", "b"]);
}

/// Writes `count` keys `prefix{i}` = `v{i}` in pipelined batches (every one acknowledged).
fn burst(stack: &Stack, prefix: &str, count: usize) {
    let mut conn = stack.local().conn();
    for start in (0..count).step_by(250) {
        let keys: Vec<(String, String)> =
            (start..count.min(start + 250)).map(|i| (format!("{prefix}{i}"), format!("v{i}"))).collect();
        let commands: Vec<Vec<&[u8]>> =
            keys.iter().map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_bytes()]).collect();
        let replies = conn.pipeline(&commands).expect("the burst failed");
        assert!(replies.iter().all(|r| *r == replhub::resp::Value::Simple("OK".into())), "{replies:?}");
    }
}

/// Writes a burst of `count` keys, signals the hub and waits for it to exit.
/// Returns what went wrong: not exit 0, not within 3 s, keys of the burst
/// missing remotely.
fn stop_after_a_burst(
    stack: &Stack,
    hub: &mut Hub,
    signal: libc::c_int,
    local_prefix: &str,
    count: usize,
) -> Vec<String> {
    burst(stack, local_prefix, count);
    let signalled = Instant::now();
    hub.signal(signal);
    let exit = hub.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    let mut problems = Vec::new();
    if !exit.is_some_and(|s| s.success()) {
        problems.push(format!("exit {exit:?} after signal {signal}"));
    }
    if took >= Duration::from_secs(3) {
        problems.push(format!("took {took:?} to stop after signal {signal}"));
    }
    let mut remote = stack.remote().conn();
    let missing: Vec<usize> = (0..count)
        .filter(|i| remote.get(format!("site-a:{local_prefix}{i}")) != Some(format!("v{i}").into_bytes()))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {count} keys written (and acknowledged) before the signal are missing remotely, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    problems
}

#[test]
fn sigterm_exits_0_promptly_after_finishing_the_copies_in_flight() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let links = [
        LinkSpec::new("s", "push", "s:").remote_prefix("site-a:s:"),
        LinkSpec::new("p", "pull", "p:").remote_prefix("central:p:"),
    ];
    let mut hub = start_hub(&stack, &config_yaml(&stack, port, &links), port, &["s", "p"]);
    let problems = stop_after_a_burst(&stack, &mut hub, libc::SIGTERM, "s:burst:", 2000);
    assert!(problems.is_empty(), "{problems:#?}\n{}", hub.log_tail(30));
    assert!(hub.log().contains("stopped cleanly"), "{}", hub.log_tail(20));
}

#[test]
fn sigint_exits_0_promptly_and_json_logs_are_one_object_per_line() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let j = LinkSpec::new("j", "push", "j:").remote_prefix("site-a:j:");
    let k = LinkSpec::new("k", "pull", "k:").remote_prefix("central:k:");
    let mut hub = Hub::start_with_args(
        stack.dir(),
        &config_yaml(&stack, port, std::slice::from_ref(&j)),
        port,
        &["--log-format", "json"],
    );
    wait_links_up(&hub, &["j"]);
    hub.replace_config(&config_yaml(&stack, port, &[j, k]));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 1.0);
    wait_links_up(&hub, &["j", "k"]);
    let problems = stop_after_a_burst(&stack, &mut hub, libc::SIGINT, "j:burst:", 2000);

    let log = hub.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    assert!(lines.iter().all(serde_json::Value::is_object), "{log}");
    let message =
        |l: &serde_json::Value| l["message"].as_str().or(l["fields"]["message"].as_str()).unwrap_or("").to_string();
    let link_of = |l: &serde_json::Value| {
        l["link"]
            .as_str()
            .or(l["span"]["link"].as_str())
            .or(l["spans"].as_array().and_then(|s| s.iter().find_map(|s| s["link"].as_str())))
            .map(str::to_string)
    };
    let resyncs: Vec<&serde_json::Value> = lines.iter().filter(|l| message(l).starts_with("resync started")).collect();
    assert!(resyncs.len() >= 2, "no resync lines in:\n{log}");
    for line in &resyncs {
        assert!(matches!(link_of(line).as_deref(), Some("j" | "k")), "a link-scoped line without its link: {line}");
    }
    let applied: Vec<String> = lines.iter().map(message).filter(|m| m.starts_with("config applied: ")).collect();
    assert_eq!(
        applied,
        [
            "config applied: added [j], removed [], changed [], kept []",
            "config applied: added [k], removed [], changed [], kept [j]"
        ],
        "one line per (re)load"
    );
    assert!(problems.is_empty(), "{problems:#?}\n{}", hub.log_tail(30));
}
