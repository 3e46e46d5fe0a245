//! Tests of the test stack itself: mutual TLS, the central ACL, process
//! control (stop, start, restart, pause, reload) and clean-up.

use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::https::{Request, Response};
use crate::support::install::ensure_installed;
use crate::support::pki::{ClientSpec, Pki, ROGUE, SITE_A, SITE_B, Validity};
use crate::support::ports::{StartError, free_port};
use crate::support::procs::{Child, pid_alive};
use crate::support::redis::{RedisConn, RedisServer};
use crate::support::stack::{Acl, KEEP_ENV, Stack, StackOptions};
use crate::support::webdis::{central_basic_auth, central_config_path, render_config};
use crate::support::{log_tail, manifest_dir, poll_until};

const DAY: Duration = Duration::from_secs(86_400);

fn assert_pong(response: &Response) {
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert!(response.text().contains("PONG"), "body: {}", response.text());
}

/// Waits (bounded) until the file contains `needle`: nginx writes its logs
/// right after it answers.
fn wait_for_log(path: &std::path::Path, needle: &str) {
    let found = poll_until(Duration::from_secs(5), || {
        std::fs::read_to_string(path).ok().filter(|text| text.contains(needle)).map(drop)
    });
    assert!(found.is_some(), "{needle:?} not found\n{}", log_tail(path, 20));
}

#[test]
fn certificate_from_the_ca_reaches_webdis_by_name_and_by_ip() {
    let stack = Stack::start(StackOptions::default());
    let site_a = stack.pki().client(SITE_A);
    assert_pong(&stack.https("PING").client_cert(&site_a).send());

    let by_ip = format!("https://127.0.0.1:{}/PING", stack.nginx().port());
    let site_b = stack.pki().client(SITE_B);
    assert_pong(&Request::get(by_ip).ca(&stack.pki().ca_cert()).client_cert(&site_b).send());

    let access_log = stack.nginx().access_log();
    wait_for_log(&access_log, &format!("serial={} verify=SUCCESS dn=\"CN=site-a\"", site_a.serial_hex()));
    wait_for_log(&access_log, &format!("serial={} verify=SUCCESS dn=\"CN=site-b\"", site_b.serial_hex()));
}

#[test]
fn no_client_certificate_is_refused() {
    let stack = Stack::start(StackOptions::default());
    let response = stack.https("PING").send();
    assert_eq!(response.status, 400, "body: {}", response.text());
    assert!(response.text().contains("No required SSL certificate was sent"), "body: {}", response.text());
}

#[test]
fn certificate_from_a_foreign_ca_is_refused() {
    let stack = Stack::start(StackOptions::default());
    let response = stack.https("PING").client_cert(&stack.pki().client(ROGUE)).send();
    assert_eq!(response.status, 400, "body: {}", response.text());
    assert!(response.text().contains("The SSL certificate error"), "body: {}", response.text());
    wait_for_log(&stack.nginx().error_log(), "client SSL certificate verify error");
}

#[test]
fn central_acl_allows_only_its_commands_and_only_with_basic_auth() {
    let stack = Stack::start(StackOptions { acl: Acl::Central, ..StackOptions::default() });
    let cert = stack.pki().client(SITE_A);
    let site_a = central_basic_auth(SITE_A);
    let as_site_a = |path: &str| stack.https(path).client_cert(&cert).basic_auth(&site_a).send();

    assert_pong(&as_site_a("PING"));
    let eval = as_site_a("EVAL/return%20redis.call%28%27PING%27%29/0");
    assert_eq!((eval.status, eval.text().as_str()), (200, r#"{"EVAL":[true,"PONG"]}"#));
    for forbidden in ["CONFIG/GET/maxmemory", "KEYS/%2A", "SET/k/v", "EVALSHA/0/0", "FLUSHALL"] {
        let response = as_site_a(forbidden);
        assert_eq!(response.status, 403, "{forbidden}: {}", response.text());
    }
    assert_pong(&stack.https("PING").client_cert(&cert).basic_auth(&central_basic_auth(SITE_B)).send());
    assert_eq!(stack.https("PING").client_cert(&cert).send().status, 403, "no basic auth");
    assert_eq!(stack.https("PING").client_cert(&cert).basic_auth("site-a:wrong").send().status, 403);

    // The ACL Webdis runs with is the file's, unchanged.
    let running: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stack.webdis().config_path()).expect("read the rendered webdis.json"))
            .expect("the rendered webdis.json is JSON");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(central_config_path()).expect("read examples/central/webdis.json"))
            .expect("examples/central/webdis.json is JSON");
    assert_eq!(running["acl"], file["acl"]);
    assert_eq!(running["http_port"], stack.webdis().port());
}

#[test]
fn open_acl_allows_config_but_not_flushall() {
    let stack = Stack::start(StackOptions::default());
    let direct = |path: &str| Request::get(format!("{}{path}", stack.webdis_direct_url())).send();
    let config = direct("CONFIG/GET/notify-keyspace-events");
    assert_eq!((config.status, config.text().as_str()), (200, r#"{"CONFIG":["notify-keyspace-events",""]}"#));
    assert_eq!(direct("FLUSHALL").status, 403);
    // The same through nginx, as a POST.
    let set = stack.https("").client_cert(&stack.pki().client(SITE_A)).post("SET/k/v%2Fw").send();
    assert_eq!((set.status, set.text().as_str()), (200, r#"{"SET":[true,"OK"]}"#));
    assert_eq!(stack.remote().conn().get("k"), Some(b"v/w".to_vec()));
}

#[test]
fn rendered_webdis_config_only_overrides_addresses_and_log() {
    let config = render_config(Acl::Open, 1234, 5678, std::path::Path::new("/x/webdis.log")).expect("render");
    assert_eq!(config["redis_port"], 1234);
    assert_eq!(config["http_host"], "127.0.0.1");
    assert_eq!(config["http_port"], 5678);
    assert_eq!(config["logfile"], "/x/webdis.log");
    assert_eq!(config["acl"], serde_json::json!([{ "disabled": ["DEBUG", "FLUSHALL", "FLUSHDB", "SHUTDOWN"] }]));
    assert_eq!(config["http_max_request_size"], 128 << 20);
}

#[test]
fn dropping_the_stack_stops_every_process_and_removes_its_directory() {
    let mut stack = Stack::start(StackOptions::default());
    let pids = stack.pids();
    assert!(pids.len() >= 5, "2 redis-servers, webdis, the nginx master and a worker: {pids:?}");
    assert!(pids.iter().all(|&pid| pid_alive(pid)));
    let dir = stack.dir().to_path_buf();
    drop(stack);
    let alive: Vec<u32> = pids.into_iter().filter(|&pid| pid_alive(pid)).collect();
    assert!(alive.is_empty(), "still running after the drop: {alive:?}");
    if std::env::var_os(KEEP_ENV).is_none() {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[test]
fn redis_servers_stop_start_and_restart_on_their_port_and_come_back_empty() {
    let mut stack = Stack::start(StackOptions::default());
    for remote in [false, true] {
        let server = if remote { stack.remote_mut() } else { stack.local_mut() };
        let port = server.port();
        let mut conn = server.conn();
        assert_eq!(conn.config_get("notify-keyspace-events"), "", "the code under test must enable them");
        conn.set(b"key\x00\xff", b"value\r\n");
        assert_eq!(conn.get(b"key\x00\xff"), Some(b"value\r\n".to_vec()));
        assert_eq!(conn.keys("*"), vec![b"key\x00\xff".to_vec()]);

        let old_pid = server.pid().expect("running");
        server.restart();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid(), Some(old_pid));
        assert!(server.conn().keys("*").is_empty(), "a restarted redis-server is empty");

        server.stop();
        assert_eq!(server.pid(), None);
        assert!(RedisConn::connect(port).is_err(), "nothing listens on {port} after stop");
        server.start();
        assert_eq!(server.conn().cmd(&[b"PING"]).as_bytes().map(|b| b.to_vec()), Some(b"PONG".to_vec()));
    }
    // Webdis reconnects to the restarted remote (its pool retries every 100 ms; 503 meanwhile).
    let url = format!("{}PING", stack.webdis_direct_url());
    let ping = poll_until(Duration::from_secs(5), || Some(Request::get(&url).send()).filter(|r| r.status == 200));
    assert!(ping.is_some(), "webdis did not reconnect to the restarted remote redis-server");
}

#[test]
fn paused_redis_server_answers_after_resume() {
    let mut stack = Stack::start(StackOptions::default());
    let port = stack.remote().port();
    stack.remote_mut().pause();
    let mut conn = RedisConn::connect_with_timeout(port, Duration::from_millis(300)).expect("connect (backlog)");
    assert!(conn.try_cmd(&[b"PING"]).is_err(), "a paused redis-server does not answer");
    stack.remote_mut().resume();
    conn.set_timeout(Duration::from_secs(10)).expect("set the timeout");
    assert_eq!(conn.try_cmd(&[b"PING"]).expect("PING after resume"), replhub::resp::Value::Simple("PONG".into()));
}

#[test]
fn extra_redis_arguments_are_passed() {
    let stack = Stack::start(StackOptions {
        remote_redis_args: vec!["--notify-keyspace-events".into(), "KEA".into()],
        local_redis_args: vec!["--maxmemory".into(), "64mb".into()],
        ..StackOptions::default()
    });
    let events = stack.remote().conn().config_get("notify-keyspace-events");
    assert!(events.contains('K') && events.contains('A') && events.contains('E'), "{events}");
    assert_eq!(stack.local().conn().config_get("maxmemory"), (64u64 << 20).to_string());
    assert_eq!(stack.local().conn().config_get("notify-keyspace-events"), "");
}

#[test]
fn webdis_stop_start_restart_pause_and_resume() {
    let mut stack = Stack::start(StackOptions::default());
    let cert = stack.pki().client(SITE_A);
    let ping = |stack: &Stack| stack.https("PING").client_cert(&cert).timeout(Duration::from_secs(1)).try_send();

    stack.webdis_mut().stop();
    assert_eq!(stack.webdis_mut().pid(), None);
    assert_eq!(ping(&stack).expect("nginx answers").status, 502);
    stack.webdis_mut().start();
    assert_pong(&ping(&stack).expect("PING after start"));

    let old_pid = stack.webdis_mut().pid();
    stack.webdis_mut().restart();
    assert_ne!(stack.webdis_mut().pid(), old_pid);
    assert_pong(&ping(&stack).expect("PING after restart"));

    stack.webdis_mut().pause();
    assert!(ping(&stack).is_err(), "a paused webdis does not answer");
    stack.webdis_mut().resume();
    assert_pong(&ping(&stack).expect("PING after resume"));
    assert!(stack.webdis().log_path().exists() && stack.webdis().output_path().exists());
}

#[test]
fn nginx_stop_start_restart_and_reload() {
    let mut stack = Stack::start(StackOptions::default());
    let cert = stack.pki().client(SITE_A);
    let ping = |stack: &Stack| stack.https("PING").client_cert(&cert).try_send();

    stack.nginx_mut().stop();
    assert_eq!(stack.nginx_mut().pid(), None);
    assert!(ping(&stack).is_err(), "nothing listens after stop");
    stack.nginx_mut().start();
    assert_pong(&ping(&stack).expect("PING after start"));

    let old_pid = stack.nginx_mut().pid();
    stack.nginx_mut().restart();
    assert_ne!(stack.nginx_mut().pid(), old_pid);
    assert_pong(&ping(&stack).expect("PING after restart"));

    let old_workers = stack.nginx_mut().worker_pids();
    stack.nginx_mut().reload();
    assert!(stack.nginx_mut().worker_pids().iter().any(|w| !old_workers.contains(w)), "new workers after reload");
    assert_pong(&ping(&stack).expect("PING after reload"));
    wait_for_log(&stack.nginx().error_log(), "reconfiguring");
    assert!(std::fs::read_to_string(stack.nginx().conf_path()).expect("read nginx.conf").contains("ssl_verify_client"));
    assert!(stack.nginx().output_path().exists());
}

#[test]
fn issued_client_certificates_follow_their_validity() {
    let stack = Stack::start(StackOptions::default());
    let now = SystemTime::now();
    let issue = |file_stem: &str, serial: u64, not_before: SystemTime, not_after: SystemTime| {
        let spec = ClientSpec { file_stem, cn: SITE_A, serial, validity: Validity { not_before, not_after } };
        stack.pki().issue_client(&spec).expect("issue a client certificate")
    };
    let expired = issue("expired", 0x1000, now - 2 * DAY, now - DAY);
    let not_yet_valid = issue("not-yet-valid", 0x1001, now + DAY, now + 2 * DAY);
    let soon_expiring = issue("soon-expiring", 0x1002, now - DAY, now + Duration::from_secs(3600));
    let rotated = issue("site-a-rotated", 0xABCDEF, now - DAY, now + 365 * DAY);

    for refused in [&expired, &not_yet_valid] {
        let response = stack.https("PING").client_cert(refused).send();
        assert_eq!(response.status, 400, "{}: {}", refused.cert.display(), response.text());
    }
    assert_pong(&stack.https("PING").client_cert(&soon_expiring).send());
    assert_pong(&stack.https("PING").client_cert(&rotated).send());
    assert_eq!(rotated.serial_hex(), "ABCDEF");
    wait_for_log(&stack.nginx().access_log(), "serial=ABCDEF verify=SUCCESS dn=\"CN=site-a\"");
    wait_for_log(&stack.nginx().access_log(), "serial=1000 verify=FAILED:certificate has expired");
}

#[test]
fn committed_demo_pki_is_valid_and_can_issue_more() {
    let certs = manifest_dir().join("examples").join("certs");
    let openssl = &ensure_installed().expect("programs").openssl;
    let verify = |ca: &str, certs_to_check: &[&str]| {
        let output = Command::new(openssl)
            .arg("verify")
            .arg("-CAfile")
            .arg(certs.join(ca))
            .args(certs_to_check.iter().map(|c| certs.join(c)))
            .output()
            .expect("run openssl verify");
        assert!(output.status.success(), "openssl verify: {}", String::from_utf8_lossy(&output.stdout));
    };
    verify("ca.pem", &["server.pem", "site-a.pem", "site-b.pem"]);
    verify("foreign-ca.pem", &["rogue.pem"]);

    // A stack on the committed PKI (copied, so issuing does not write into examples/).
    let stack = Stack::start(StackOptions { pki_from: Some(certs.clone()), ..StackOptions::default() });
    assert_ne!(stack.pki().dir(), certs.as_path());
    assert_pong(&stack.https("PING").client_cert(&stack.pki().client(SITE_B)).send());
    let validity = Validity::long_lived();
    let spec = ClientSpec { file_stem: "site-c", cn: "site-c", serial: 0x77, validity };
    let site_c = stack.pki().issue_client(&spec).expect("issue from the loaded CA");
    assert_pong(&stack.https("PING").client_cert(&site_c).send());
    let loaded_again = Pki::load(stack.pki().dir()).expect("load the copy");
    assert_eq!(loaded_again.foreign_ca_cert(), stack.pki().dir().join("foreign-ca.pem"));
    assert!(loaded_again.server_cert().exists() && loaded_again.server_key().exists());
}

#[test]
fn taken_ports_are_reported() {
    let dir = std::env::temp_dir().join(format!("replhub-ports-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let port = free_port().expect("a free port");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port");

    // A fixed port that is taken: a clear error before anything starts.
    let err = RedisServer::start_new(&dir, "redis-fixed", Some(port), &[]).expect_err("the port is taken");
    assert!(format!("{err:#}").contains(&format!("127.0.0.1:{port} is taken")), "{err:#}");

    // A server that loses the race for its port says so (and is retried elsewhere by start_on_port).
    let mut cmd = Command::new(&ensure_installed().expect("programs").redis_server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"]);
    let mut child = Child::spawn("redis-raced", cmd, &dir.join("raced.log")).expect("spawn redis-server");
    let outcome = child.wait_ready(Duration::from_secs(10), &[], |_| false);
    assert!(matches!(outcome, Err(StartError::AddrInUse(_))), "{outcome:?}");
    assert!(!child.is_running());
    assert_eq!(child.name(), "redis-raced");
    assert!(child.output_path().exists());
    std::fs::remove_dir_all(&dir).expect("remove the temp dir");
}

#[test]
fn demo_options_avoid_packaged_ports_and_use_the_committed_pki() {
    let demo = StackOptions::demo();
    let ports = demo.ports.expect("fixed ports");
    let all = [ports.local_redis, ports.remote_redis, ports.webdis, ports.nginx];
    assert_eq!(all, [16379, 16380, 17379, 18443]);
    assert!(all.iter().all(|p| ![6379, 7379, 80, 443, 8443].contains(p)));
    assert_eq!(demo.acl, Acl::Open);
    let pki = Pki::load(&demo.pki_from.expect("a PKI directory")).expect("the committed PKI loads");
    assert!(pki.ca_cert().ends_with("examples/certs/ca.pem"));
}
