//! Issue 4, hot reload: the process follows its config file (rename-over,
//! in-place edit, Kubernetes-style symlink swap, SIGHUP), applies only what
//! changed (kept links are never restarted and lose no key), refuses invalid
//! and hostile files while the old links keep running, and rotates client
//! certificates without restarting links.
//!
//! The helpers at the top are `pub(crate)`: `admin_tests` uses them too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::support::hub::{Hub, LinkSpec, config_yaml, metric_value, yaml_str};
use crate::support::pki::{ClientCert, ClientSpec, SITE_A, SITE_B, Validity};
use crate::support::poll_until;
use crate::support::procs::LogMark;
use crate::support::redis::RedisConn;
use crate::support::stack::{Stack, StackOptions};

const DAY: Duration = Duration::from_secs(86_400);

/// Generous bound for anything the hub should do "soon".
pub(crate) const SOON: Duration = Duration::from_secs(15);

/// Polls `f` until it answers; panics naming `what`, with the hub's log tail.
pub(crate) fn wait<T>(hub: &Hub, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f).unwrap_or_else(|| panic!("{what}: not within {timeout:?}\n{}", hub.log_tail(80)))
}

/// The `/metrics` text (waits for an answer: a failed scrape is not an empty one).
pub(crate) fn scrape(hub: &Hub) -> String {
    wait(hub, "/metrics answers", SOON, || hub.get("/metrics").filter(|(code, _)| *code == 200).map(|(_, body)| body))
}

/// The value of one metric sample, 0 when the series is absent.
pub(crate) fn metric(hub: &Hub, series: &str) -> f64 {
    metric_value(&scrape(hub), series).unwrap_or(0.0)
}

/// Waits until `series` has exactly `value`.
pub(crate) fn wait_metric(hub: &Hub, series: &str, value: f64) {
    let mut now = None;
    let reached = poll_until(SOON, || {
        now = hub.metric(series);
        (now == Some(value)).then_some(())
    });
    assert!(reached.is_some(), "{series} did not become {value} within {SOON:?} (now {now:?})\n{}", hub.log_tail(60));
}

pub(crate) fn reloads(hub: &Hub, result: &str) -> f64 {
    metric(hub, &format!("replhub_config_reloads_total{{result=\"{result}\"}}"))
}

pub(crate) fn starts(hub: &Hub, link: &str) -> f64 {
    metric(hub, &format!("replhub_link_starts_total{{link=\"{link}\"}}"))
}

/// The `/status` document (waits for an answer).
pub(crate) fn status(hub: &Hub) -> serde_json::Value {
    let body =
        wait(hub, "/status answers", SOON, || hub.get("/status").filter(|(code, _)| *code == 200).map(|(_, b)| b));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Sets `key` on `from` and waits until `to` has it with the same value.
pub(crate) fn replicates(hub: &Hub, from: &mut RedisConn, from_key: &str, to: &mut RedisConn, to_key: &str) {
    let value = format!("v-{from_key}-{:?}", Instant::now());
    from.set(from_key, &value);
    wait(hub, &format!("{from_key} replicated to {to_key}"), SOON, || {
        (to.get(to_key).as_deref() == Some(value.as_bytes())).then_some(())
    });
}

/// Lines of the hub log that report an applied config, ANSI colours removed.
pub(crate) fn applied_lines(hub: &Hub) -> Vec<String> {
    hub.log().lines().map(strip_ansi).filter(|l| l.contains("config applied: ")).collect()
}

pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The samples of /metrics labelled with `link`.
pub(crate) fn series_of(hub: &Hub, link: &str) -> Vec<String> {
    let label = format!("link=\"{link}\"");
    scrape(hub).lines().filter(|l| !l.starts_with('#') && l.contains(&label)).map(str::to_string).collect()
}

/// Asserts that no sample of /metrics is labelled with `link`. Call it once
/// the reload that removed the link is counted: the supervisor removes the
/// series before it reports the reload.
pub(crate) fn assert_no_series(hub: &Hub, link: &str) {
    let left = series_of(hub, link);
    assert!(
        left.is_empty(),
        "series of the removed link {link} are still in /metrics: {left:#?}\n{}",
        hub.log_tail(30)
    );
}

/// Waits until `/status` lists exactly `links`, every one `up`, and `/readyz` answers 200.
pub(crate) fn wait_links_up(hub: &Hub, links: &[&str]) {
    let want: BTreeSet<&str> = links.iter().copied().collect();
    wait(hub, &format!("links {links:?} up"), SOON, || {
        let (code, body) = hub.get("/status")?;
        let doc: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| code == 200)?;
        let reported = doc["links"].as_array()?;
        let names: BTreeSet<&str> = reported.iter().filter_map(|l| l["name"].as_str()).collect();
        let all_up = reported.iter().all(|l| l["state"] == "up");
        (names == want && all_up && hub.get("/readyz").is_some_and(|(c, _)| c == 200)).then_some(())
    });
}

/// Starts a hub on `yaml` and waits until exactly `links` are up.
pub(crate) fn start_hub(stack: &Stack, yaml: &str, port: u16, links: &[&str]) -> Hub {
    let hub = Hub::start(stack.dir(), yaml, port);
    wait_links_up(&hub, links);
    hub
}

fn push(name: &str, prefix: &str) -> LinkSpec {
    LinkSpec::new(name, "push", prefix).remote_prefix(&format!("site-a:{prefix}"))
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle:?} not in:\n{text}")) + 1
}

#[test]
fn an_unchanged_link_keeps_replicating_without_restart_while_others_change() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let (a, b, c) = (push("a", "a:"), push("b", "b:"), push("c", "c:"));
    let hub = start_hub(&stack, &config_yaml(&stack, port, &[a.clone(), b.clone()]), port, &["a", "b"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());

    // A writer puts distinct keys into a's namespace during every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, port) = (stop.clone(), written.clone(), stack.local().port());
        std::thread::spawn(move || {
            let mut conn = RedisConn::connect(port).expect("writer cannot connect");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                conn.set(format!("a:w:{n}"), n.to_string());
                n += 1;
                written.store(n, Ordering::Relaxed);
                if n.is_multiple_of(16) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            n
        })
    };
    let writes_go_on = |hub: &Hub| {
        let now = written.load(Ordering::Relaxed);
        wait(hub, "the writer makes progress", SOON, || (written.load(Ordering::Relaxed) >= now + 100).then_some(()));
    };

    writes_go_on(&hub);
    // 1: b changes (new remote prefix).
    let b2 = b.clone().remote_prefix("site-a:b2:");
    hub.replace_config(&config_yaml(&stack, port, &[a.clone(), b2.clone()]));
    wait_metric(&hub, "replhub_link_starts_total{link=\"b\"}", 2.0);
    wait_links_up(&hub, &["a", "b"]);
    replicates(&hub, &mut local, "b:one", &mut remote, "site-a:b2:one");
    writes_go_on(&hub);

    // 2: b is removed, c is added.
    hub.replace_config(&config_yaml(&stack, port, &[a.clone(), c.clone()]));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 2.0);
    assert_no_series(&hub, "b");
    wait_links_up(&hub, &["a", "c"]);
    replicates(&hub, &mut local, "c:one", &mut remote, "site-a:c:one");
    // b is stopped: its key is not copied, although a later key of c is.
    local.set("b:after-removal", "x");
    replicates(&hub, &mut local, "c:marker", &mut remote, "site-a:c:marker");
    assert_eq!(remote.get("site-a:b2:after-removal"), None, "the removed link b still replicates");
    assert_eq!(remote.get("site-a:b:after-removal"), None, "the removed link b still replicates");
    writes_go_on(&hub);

    // 3: c changes (types), a stays.
    let c3 = c.clone().with("types: [string, hash]");
    hub.replace_config(&config_yaml(&stack, port, &[a.clone(), c3]));
    wait_metric(&hub, "replhub_link_starts_total{link=\"c\"}", 2.0);
    wait_links_up(&hub, &["a", "c"]);
    replicates(&hub, &mut local, "c:two", &mut remote, "site-a:c:two");
    writes_go_on(&hub);

    stop.store(true, Ordering::Relaxed);
    let n = writer.join().expect("the writer panicked");
    let expected: BTreeSet<Vec<u8>> = (0..n).map(|i| format!("site-a:a:w:{i}").into_bytes()).collect();
    let mut last = 0;
    let all = poll_until(SOON, || {
        let keys: BTreeSet<Vec<u8>> = remote.keys("site-a:a:w:*").into_iter().collect();
        last = keys.len();
        (keys == expected).then_some(())
    });
    assert!(all.is_some(), "{n} keys written to a during the reloads, {last} arrived\n{}", hub.log_tail(60));
    for i in [0, n / 2, n - 1] {
        assert_eq!(remote.get(format!("site-a:a:w:{i}")), Some(i.to_string().into_bytes()));
    }

    assert_eq!(starts(&hub, "a"), 1.0, "the unchanged link a was restarted");
    assert_eq!(metric(&hub, "replhub_resyncs_total{link=\"a\",reason=\"startup\"}"), 1.0);
    assert_eq!(metric(&hub, "replhub_resyncs_total{link=\"a\",reason=\"reconnect\"}"), 0.0);
    assert_eq!(reloads(&hub, "success"), 3.0);
    assert_eq!(reloads(&hub, "failure"), 0.0);
    let applied = applied_lines(&hub);
    let summaries = [
        "added [a, b], removed [], changed [], kept []",
        "added [], removed [], changed [b], kept [a]",
        "added [c], removed [b], changed [], kept [a]",
        "added [], removed [], changed [c], kept [a]",
    ];
    assert_eq!(applied.len(), summaries.len(), "one log line per (re)load: {applied:#?}");
    for (line, summary) in applied.iter().zip(summaries) {
        assert!(line.contains(summary), "expected {summary:?} in {line:?}");
    }
}

#[test]
fn removing_a_link_stops_it_and_removes_every_series_of_it_errors_included() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    // b's remote namespace holds keys its local side lacks: its startup
    // resync refuses to delete them all, which counts an error for b.
    remote.set("site-a:b:orphan-1", "x");
    remote.set("site-a:b:orphan-2", "x");
    let hub = Hub::start(stack.dir(), &config_yaml(&stack, port, &[push("a", "a:"), push("b", "b:")]), port);
    wait(&hub, "an error counted for b", SOON, || {
        series_of(&hub, "b").iter().any(|l| l.starts_with("replhub_errors_total{")).then_some(())
    });

    hub.replace_config(&config_yaml(&stack, port, &[push("a", "a:")]));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 1.0);
    assert_no_series(&hub, "b");
    wait_links_up(&hub, &["a"]);
    local.set("b:after-removal", "x");
    replicates(&hub, &mut local, "a:marker", &mut remote, "site-a:a:marker");
    assert_eq!(remote.get("site-a:b:after-removal"), None, "the removed link b still replicates");
}

#[test]
fn in_place_edits_and_sighup_reload_and_a_touch_changes_nothing() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let yaml = config_yaml(&stack, port, &[push("a", "a:")]);
    let mut hub = start_hub(&stack, &yaml, port, &["a"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());

    // Touch, rewrite the same bytes in place, rename the same bytes over it.
    let file = std::fs::File::options().append(true).open(&hub.config_path).expect("cannot open the config");
    file.set_modified(SystemTime::now() + Duration::from_secs(5)).expect("cannot touch the config");
    drop(file);
    std::fs::write(&hub.config_path, &yaml).expect("cannot rewrite the config");
    hub.replace_config(&yaml);
    // The marker that the hub looked at the files after all that: a real
    // change of a TLS file it follows (the CA gains a trailing newline).
    let ca = stack.pki().ca_cert();
    let mut ca_text = std::fs::read(&ca).expect("cannot read the CA");
    ca_text.push(b'\n');
    std::fs::write(&ca, ca_text).expect("cannot rewrite the CA");
    wait(&hub, "the hub notices the changed CA file", SOON, || hub.log().contains("TLS files changed").then_some(()));
    assert_eq!(reloads(&hub, "success"), 0.0, "{:#?}", applied_lines(&hub));
    assert_eq!(reloads(&hub, "failure"), 0.0, "{}", hub.log_tail(40));
    assert_eq!(applied_lines(&hub).len(), 1, "{:#?}", applied_lines(&hub));
    assert_eq!(starts(&hub, "a"), 1.0);

    // An in-place edit (truncate + write the same path) that adds b.
    let yaml_ab = config_yaml(&stack, port, &[push("a", "a:"), push("b", "b:")]);
    std::fs::write(&hub.config_path, &yaml_ab).expect("cannot edit the config in place");
    wait_metric(&hub, "replhub_link_starts_total{link=\"b\"}", 1.0);
    wait_links_up(&hub, &["a", "b"]);
    replicates(&hub, &mut local, "b:k", &mut remote, "site-a:b:k");
    assert_eq!(reloads(&hub, "success"), 1.0, "{:#?}", applied_lines(&hub));
    assert_eq!(starts(&hub, "a"), 1.0);
    let applied = applied_lines(&hub);
    assert_eq!(applied.len(), 2, "{applied:#?}");
    assert!(applied[1].contains("added [b], removed [], changed [], kept [a]"), "{applied:#?}");

    // SIGHUP reloads an unchanged file: counted, nothing restarted.
    hub.signal(libc::SIGHUP);
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 2.0);
    assert!(hub.log().contains("SIGHUP"), "{}", hub.log_tail(20));
    let applied = applied_lines(&hub);
    assert_eq!(applied.len(), 3, "{applied:#?}");
    assert!(applied[2].contains("added [], removed [], changed [], kept [a, b]"), "{applied:#?}");
    assert_eq!((starts(&hub, "a"), starts(&hub, "b")), (1.0, 1.0));
    replicates(&hub, &mut local, "a:after-hup", &mut remote, "site-a:a:after-hup");
}

/// A Kubernetes ConfigMap volume: `dir/replhub.yaml -> ..data/replhub.yaml`,
/// `..data -> ..<version>`; an update writes a new version directory and
/// renames a new `..data_tmp` symlink over `..data`.
struct ConfigMapDir {
    dir: PathBuf,
}

impl ConfigMapDir {
    fn create(dir: PathBuf, version: &str, yaml: &str) -> ConfigMapDir {
        std::fs::create_dir_all(&dir).expect("cannot create the ConfigMap directory");
        let volume = ConfigMapDir { dir };
        volume.write_version(version, yaml);
        std::os::unix::fs::symlink(version, volume.dir.join("..data")).expect("cannot link ..data");
        std::os::unix::fs::symlink("..data/replhub.yaml", volume.config_path()).expect("cannot link replhub.yaml");
        volume
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("replhub.yaml")
    }

    fn write_version(&self, version: &str, yaml: &str) {
        let version_dir = self.dir.join(version);
        std::fs::create_dir(&version_dir).expect("cannot create a version directory");
        std::fs::write(version_dir.join("replhub.yaml"), yaml).expect("cannot write a version");
    }

    /// Swaps `..data` to a new version and removes the old one.
    fn swap(&self, old: &str, new: &str, yaml: &str) {
        self.write_version(new, yaml);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(new, &tmp).expect("cannot create ..data_tmp");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("cannot rename ..data_tmp over ..data");
        std::fs::remove_dir_all(self.dir.join(old)).expect("cannot remove the old version");
    }
}

#[test]
fn a_kubernetes_style_symlink_swap_reloads() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let volume =
        ConfigMapDir::create(stack.dir().join("configmap"), "..2026_1", &config_yaml(&stack, port, &[push("a", "a:")]));
    let hub = Hub::start_existing(&volume.dir, &volume.config_path(), port, &[]);
    wait_links_up(&hub, &["a"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());

    volume.swap("..2026_1", "..2026_2", &config_yaml(&stack, port, &[push("a", "a:"), push("b", "b:")]));
    wait_metric(&hub, "replhub_link_starts_total{link=\"b\"}", 1.0);
    wait_links_up(&hub, &["a", "b"]);
    replicates(&hub, &mut local, "b:k", &mut remote, "site-a:b:k");

    // A second swap is followed too (watches survive the first).
    volume.swap("..2026_2", "..2026_3", &config_yaml(&stack, port, &[push("a", "a:")]));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 2.0);
    assert_no_series(&hub, "b");
    assert_eq!(reloads(&hub, "failure"), 0.0, "{}", hub.log_tail(40));
    assert_eq!(starts(&hub, "a"), 1.0);
    replicates(&hub, &mut local, "a:k", &mut remote, "site-a:a:k");
}

#[test]
fn a_defaults_change_restarts_exactly_the_links_whose_effective_config_changed() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    // a and c inherit resync_interval from defaults; b sets its own (equal) value.
    let links = [push("a", "a:"), push("b", "b:").with("resync_interval: \"10m\""), push("c", "c:")];
    let with_defaults = |interval: &str| {
        config_yaml(&stack, port, &links)
            .replace("\nlinks:\n", &format!("\n  resync_interval: \"{interval}\"\nlinks:\n"))
    };
    let hub = start_hub(&stack, &with_defaults("10m"), port, &["a", "b", "c"]);
    hub.replace_config(&with_defaults("9m"));
    wait_metric(&hub, "replhub_config_reloads_total{result=\"success\"}", 1.0);
    let applied = applied_lines(&hub);
    assert!(
        applied.last().is_some_and(|l| l.contains("added [], removed [], changed [a, c], kept [b]")),
        "{applied:#?}"
    );
    wait_metric(&hub, "replhub_link_starts_total{link=\"a\"}", 2.0);
    wait_metric(&hub, "replhub_link_starts_total{link=\"c\"}", 2.0);
    assert_eq!(starts(&hub, "b"), 1.0);
    assert_eq!(metric(&hub, "replhub_resyncs_total{link=\"b\",reason=\"startup\"}"), 1.0);
    wait_links_up(&hub, &["a", "b", "c"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    for link in ["a", "b", "c"] {
        replicates(&hub, &mut local, &format!("{link}:k"), &mut remote, &format!("site-a:{link}:k"));
    }
}

/// Replaces the config with an invalid `yaml` and checks that it is refused
/// (gauge 0, failure counted, `/status` shows `FILE:LINE:COL: …` with
/// `expect` in it) while link `a` keeps replicating unrestarted. Returns the
/// position (line, column) of the error.
fn refused(hub: &Hub, stack: &Stack, yaml: &str, expect: &str) -> (usize, usize) {
    let failures = reloads(hub, "failure");
    hub.replace_config(yaml);
    wait_metric(hub, "replhub_config_reloads_total{result=\"failure\"}", failures + 1.0);
    assert_eq!(metric(hub, "replhub_config_last_reload_successful"), 0.0);
    let config = status(hub)["config"].clone();
    assert_eq!(config["last_reload_ok"], serde_json::json!(false), "{config:#}");
    let error = config["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {config:#}")).to_string();
    let pattern = format!("^{}:([0-9]+):([0-9]+): ", regex::escape(&hub.config_path.display().to_string()));
    let captures = regex::Regex::new(&pattern)
        .expect("bad regex")
        .captures(&error)
        .unwrap_or_else(|| panic!("last_error is not FILE:LINE:COL: message: {error:?}"));
    assert!(error.to_lowercase().contains(&expect.to_lowercase()), "expected {expect:?} in {error:?}");
    assert!(hub.log().contains(&error) || hub.log().contains(&error[..error.find(" (and ").unwrap_or(error.len())]));
    assert_eq!(starts(hub, "a"), 1.0, "a bad file restarted a link");
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let key = format!("a:while-{}", failures as u64);
    replicates(hub, &mut local, &key, &mut remote, &format!("site-a:{key}"));
    (captures[1].parse().unwrap_or(0), captures[2].parse().unwrap_or(0))
}

/// After refusals, a valid file (adding `b`) is applied and the state is good again.
fn recovers(hub: &Hub, stack: &Stack, port: u16) {
    let successes = reloads(hub, "success");
    hub.replace_config(&config_yaml(stack, port, &[push("a", "a:"), push("b", "b:")]));
    wait_metric(hub, "replhub_config_reloads_total{result=\"success\"}", successes + 1.0);
    assert_eq!(metric(hub, "replhub_config_last_reload_successful"), 1.0);
    let config = status(hub)["config"].clone();
    assert_eq!(config["last_reload_ok"], serde_json::json!(true), "{config:#}");
    assert_eq!(config["last_error"], serde_json::Value::Null, "{config:#}");
    wait_metric(hub, "replhub_link_starts_total{link=\"b\"}", 1.0);
    wait_links_up(hub, &["a", "b"]);
    assert_eq!(starts(hub, "a"), 1.0);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    replicates(hub, &mut local, "b:after-recovery", &mut remote, "site-a:b:after-recovery");
}

#[test]
fn an_invalid_file_keeps_the_old_links_and_shows_where_it_is_wrong() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let good = config_yaml(&stack, port, &[push("a", "a:")]);
    let hub = start_hub(&stack, &good, port, &["a"]);

    let syntax = format!("{good}  - name: [oops\n");
    let (line, _) = refused(&hub, &stack, &syntax, "syntax");
    assert!(line >= line_of(&syntax, "[oops"), "syntax error reported at line {line}");

    let unknown = config_yaml(&stack, port, &[push("a", "a:").with("colour: blue")]);
    let position = refused(&hub, &stack, &unknown, "colour");
    assert_eq!(position, (line_of(&unknown, "colour: blue"), 5), "position of the unknown key");

    let cert = stack.pki().client(SITE_A).cert.display().to_string();
    let missing = good.replace(&yaml_str(&cert), &yaml_str(&format!("{cert}.missing")));
    let (line, _) = refused(&hub, &stack, &missing, "site-a.pem.missing");
    assert_eq!(line, line_of(&missing, "site-a.pem.missing"), "line of the missing cert file");

    recovers(&hub, &stack, port);
}

#[test]
fn oversized_files_alias_bombs_and_deep_nesting_are_refused() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let good = config_yaml(&stack, port, &[push("a", "a:")]);
    let hub = start_hub(&stack, &good, port, &["a"]);

    let mut oversized = good.clone();
    while oversized.len() <= 4 << 20 {
        oversized.push_str("# padding padding padding padding padding padding padding padding padding padding\n");
    }
    refused(&hub, &stack, &oversized, "limited to");

    let mut bomb = format!("{good}x-lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("x-lol{i}: &l{i} [{refs}]\n"));
    }
    refused(&hub, &stack, &bomb, "budget");

    let deep = format!("{good}x-deep: {}{}\n", "[".repeat(200), "]".repeat(200));
    refused(&hub, &stack, &deep, "depth");

    recovers(&hub, &stack, port);
}

/// The access-log lines appended since `mark`.
fn access_lines(mark: &LogMark) -> Vec<String> {
    mark.new_text().lines().map(str::to_string).collect()
}

/// nginx logs a request the client closed before its end (a PSUBSCRIBE
/// stream the hub ends) with status 499; its body holds the subscription acks.
fn is_closed_stream(line: &str, serial: &str) -> bool {
    let fields: Vec<&str> = line.split(' ').collect();
    line.contains(&format!("serial={serial} "))
        && fields.get(5) == Some(&"499")
        && fields.get(6).and_then(|b| b.parse::<u64>().ok()).is_some_and(|bytes| bytes >= 64)
}

fn not_after(cert: &ClientCert) -> f64 {
    let pem = std::fs::read(&cert.cert).expect("cannot read the certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("not PEM");
    let parsed = pem.parse_x509().expect("not a certificate");
    parsed.validity().not_after.timestamp() as f64
}

/// Replaces `dst` by the content of `src` through a rename (atomic).
fn rename_into_place(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("rotating");
    std::fs::copy(src, &tmp).expect("cannot stage a TLS file");
    std::fs::rename(&tmp, dst).expect("cannot rename a TLS file into place");
}

fn rotation_links() -> [LinkSpec; 2] {
    [push("a", "a:"), LinkSpec::new("p", "pull", "p:").remote_prefix("central:p:")]
}

#[test]
fn a_rotated_certificate_is_used_for_every_new_request_without_restarting_links() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let mut hub = start_hub(&stack, &config_yaml(&stack, port, &rotation_links()), port, &["a", "p"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let site_a = stack.pki().client(SITE_A);
    let old_serial = site_a.serial_hex();
    let old_not_after = not_after(&site_a);
    assert_eq!(metric(&hub, "replhub_cert_expiry_timestamp_seconds{link=\"a\"}"), old_not_after);
    replicates(&hub, &mut local, "a:before", &mut remote, "site-a:a:before");
    let access_log = stack.nginx().access_log();
    assert!(std::fs::read_to_string(&access_log).unwrap_or_default().contains(&format!("serial={old_serial} ")));

    // Valid for two years: its notAfter differs from the old one's.
    let validity = Validity { not_before: SystemTime::now() - DAY, not_after: SystemTime::now() + DAY * 730 };
    let next = stack
        .pki()
        .issue_client(&ClientSpec { file_stem: "site-a-next", cn: SITE_A, serial: 0x2026, validity })
        .expect("cannot issue the rotated certificate");
    let new_serial = next.serial_hex();
    assert_ne!(new_serial, old_serial);
    let reconnects_before = metric(&hub, "replhub_resyncs_total{link=\"p\",reason=\"reconnect\"}");
    let rotation = LogMark::at_end(&access_log);
    // Write the key, then the certificate, over the files the links use.
    std::fs::write(&site_a.key, std::fs::read(&next.key).expect("read key")).expect("cannot write the key");
    std::fs::write(&site_a.cert, std::fs::read(&next.cert).expect("read cert")).expect("cannot write the cert");
    let rotated_at = Instant::now();

    // Within 10 s: the new serial is in use and the old stream was closed.
    let within = Duration::from_secs(10);
    wait(&hub, "requests with the new serial, and the old stream closed", within, || {
        let lines = access_lines(&rotation);
        (lines.iter().any(|l| l.contains(&format!("serial={new_serial} ")))
            && lines.iter().any(|l| is_closed_stream(l, &old_serial)))
        .then_some(())
    });
    assert!(rotated_at.elapsed() < within);
    // The pull link's stream works again (over the new certificate), and a push works.
    replicates(&hub, &mut remote, "central:p:after", &mut local, "p:after");
    let reconnects = "replhub_resyncs_total{link=\"p\",reason=\"reconnect\"}";
    wait(&hub, "a resync after the stream reconnected", SOON, || {
        (metric(&hub, reconnects) > reconnects_before).then_some(())
    });
    let after = LogMark::at_end(&access_log);
    replicates(&hub, &mut local, "a:after", &mut remote, "site-a:a:after");
    replicates(&hub, &mut remote, "central:p:after2", &mut local, "p:after2");
    let lines = access_lines(&after);
    assert!(!lines.is_empty(), "no request logged after the rotation");
    let old: Vec<&String> = lines.iter().filter(|l| !l.contains(&format!("serial={new_serial} "))).collect();
    assert!(old.is_empty(), "requests after the rotation without the new serial {new_serial}: {old:#?}");

    assert_eq!((starts(&hub, "a"), starts(&hub, "p")), (1.0, 1.0), "a certificate rotation restarted a link");
    assert_ne!(not_after(&next), old_not_after);
    for link in ["a", "p"] {
        let series = format!("replhub_cert_expiry_timestamp_seconds{{link=\"{link}\"}}");
        wait_metric(&hub, &series, not_after(&next));
    }
    wait_metric(&hub, "replhub_config_last_reload_successful", 1.0);
    wait_links_up(&hub, &["a", "p"]);

    // The stream opened with the new certificate is a PSUBSCRIBE in nginx's
    // log once it ends: shut down and look.
    hub.signal(libc::SIGTERM);
    let exit = hub.wait_exit(SOON);
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}\n{}", hub.log_tail(30));
    wait(&hub, "the PSUBSCRIBE stream with the new serial in the access log", SOON, || {
        access_lines(&after).iter().any(|l| is_closed_stream(l, &new_serial)).then_some(())
    });
}

#[test]
fn an_unusable_certificate_set_is_refused_and_the_old_one_keeps_working() {
    let stack = Stack::start(StackOptions::default());
    let port = Hub::admin_port();
    let hub = start_hub(&stack, &config_yaml(&stack, port, &rotation_links()), port, &["a", "p"]);
    let (mut local, mut remote) = (stack.local().conn(), stack.remote().conn());
    let site_a = stack.pki().client(SITE_A);
    let old_serial = site_a.serial_hex();
    let original_key = std::fs::read(&site_a.key).expect("cannot read the key");

    // A key that does not belong to the certificate.
    let failures = reloads(&hub, "failure");
    std::fs::write(&site_a.key, std::fs::read(stack.pki().client(SITE_B).key).expect("read")).expect("write key");
    wait(&hub, "the mismatched key is reported", SOON, || {
        (hub.metric("replhub_config_last_reload_successful") == Some(0.0)).then_some(())
    });
    assert_eq!(reloads(&hub, "failure"), failures + 1.0);
    let config = status(&hub)["config"].clone();
    assert_eq!(config["last_reload_ok"], serde_json::json!(false), "{config:#}");
    let error = config["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("TLS") || error.contains("key"), "{config:#}");
    assert!(hub.log().contains("not usable"), "{}", hub.log_tail(30));

    // The connections keep the old certificate and replication goes on.
    let access_log = stack.nginx().access_log();
    let mark = LogMark::at_end(&access_log);
    replicates(&hub, &mut local, "a:during", &mut remote, "site-a:a:during");
    replicates(&hub, &mut remote, "central:p:during", &mut local, "p:during");
    let lines = access_lines(&mark);
    assert!(!lines.is_empty() && lines.iter().all(|l| l.contains(&format!("serial={old_serial} "))), "{lines:#?}");
    assert_eq!((starts(&hub, "a"), starts(&hub, "p")), (1.0, 1.0));
    wait_links_up(&hub, &["a", "p"]);

    // A new valid set, renamed into place (key first, then certificate).
    let next = stack
        .pki()
        .issue_client(&ClientSpec {
            file_stem: "site-a-next",
            cn: SITE_A,
            serial: 0x2027,
            validity: Validity::long_lived(),
        })
        .expect("cannot issue the rotated certificate");
    let new_serial = next.serial_hex();
    let mark = LogMark::at_end(&access_log);
    rename_into_place(&next.key, &site_a.key);
    rename_into_place(&next.cert, &site_a.cert);
    wait(&hub, "requests with the new serial", Duration::from_secs(10), || {
        access_lines(&mark).iter().any(|l| l.contains(&format!("serial={new_serial} "))).then_some(())
    });
    replicates(&hub, &mut local, "a:fixed", &mut remote, "site-a:a:fixed");
    replicates(&hub, &mut remote, "central:p:fixed", &mut local, "p:fixed");
    assert_eq!((starts(&hub, "a"), starts(&hub, "p")), (1.0, 1.0));
    assert_ne!(std::fs::read(&site_a.key).expect("read"), original_key);

    // Usable files again (requests use them): the error is over.
    assert_eq!(
        metric(&hub, "replhub_config_last_reload_successful"),
        1.0,
        "still reporting the TLS error after the files were fixed\n{}",
        hub.log_tail(20)
    );
    let config = status(&hub)["config"].clone();
    assert_eq!(config["last_reload_ok"], serde_json::json!(true), "{config:#}");
    assert_eq!(config["last_error"], serde_json::Value::Null, "{config:#}");
}
