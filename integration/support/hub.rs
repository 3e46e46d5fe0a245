//! A `replhub run` process under test, and the config files tests give it.
//!
//! [`Hub::start`] writes the config into a directory of the test's choosing,
//! starts the binary Cargo built for this test run as a child (stopped on
//! drop like every other server of the stack), and offers what tests need:
//! the admin endpoints, metrics by name, signals, exit status and the log.
//! [`LinkSpec`] and [`config_yaml`] write configs that point at a [`Stack`].

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use super::poll_until;
use super::ports::free_port;
use super::procs::Child;
use super::stack::Stack;

/// The replhub binary: `$REPLHUB_BIN` if set (the benchmark points it at the
/// release build), else the one Cargo built for this test run.
pub fn replhub_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("REPLHUB_BIN") {
        return PathBuf::from(bin);
    }
    match option_env!("CARGO_BIN_EXE_replhub") {
        Some(path) => PathBuf::from(path),
        None => super::manifest_dir().join("target").join("debug").join("replhub"),
    }
}

/// One link of a test config.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    pub name: String,
    /// push | pull | both
    pub direction: String,
    pub local_prefix: String,
    /// Defaults to the local prefix.
    pub remote_prefix: Option<String>,
    /// Extra YAML lines for the link, already indented by 4 spaces.
    pub extra: String,
}

impl LinkSpec {
    pub fn new(name: &str, direction: &str, local_prefix: &str) -> LinkSpec {
        LinkSpec {
            name: name.to_string(),
            direction: direction.to_string(),
            local_prefix: local_prefix.to_string(),
            remote_prefix: None,
            extra: String::new(),
        }
    }

    pub fn remote_prefix(mut self, prefix: &str) -> LinkSpec {
        self.remote_prefix = Some(prefix.to_string());
        self
    }

    /// Adds a line of YAML to the link (`key: value`, no indentation needed).
    pub fn with(mut self, line: &str) -> LinkSpec {
        self.extra.push_str("    ");
        self.extra.push_str(line);
        self.extra.push('\n');
        self
    }
}

/// Quotes a string for YAML (double quotes, escapes for everything unusual).
pub fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A config for `links` against `stack` with the site-a certificate, an
/// admin server on `admin_port`, and quick heartbeats (tests should notice
/// failures in seconds).
pub fn config_yaml(stack: &Stack, admin_port: u16, links: &[LinkSpec]) -> String {
    let pki = stack.pki();
    let site = pki.client(super::pki::SITE_A);
    let mut yaml = format!(
        "version: 1\nadmin:\n  listen: \"127.0.0.1:{admin_port}\"\nshutdown_timeout: \"10s\"\ndefaults:\n  local:\n    url: {}\n  remote:\n    url: {}\n    tls:\n      ca: {}\n      cert: {}\n      key: {}\n  heartbeat: {{ interval: \"500ms\", timeout: \"3s\" }}\nlinks:\n",
        yaml_str(&stack.local().url()),
        yaml_str(&stack.remote_url()),
        yaml_str(&pki.ca_cert().display().to_string()),
        yaml_str(&site.cert.display().to_string()),
        yaml_str(&site.key.display().to_string()),
    );
    for link in links {
        yaml.push_str(&format!(
            "  - name: {}\n    direction: {}\n    local:\n      prefix: {}\n",
            link.name,
            link.direction,
            yaml_str(&link.local_prefix)
        ));
        if let Some(remote) = &link.remote_prefix {
            yaml.push_str(&format!("    remote:\n      prefix: {}\n", yaml_str(remote)));
        }
        yaml.push_str(&link.extra);
    }
    yaml
}

/// A running `replhub run`.
#[derive(Debug)]
pub struct Hub {
    child: Child,
    pub config_path: PathBuf,
    pub admin_port: u16,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Hub {
    /// A free port for the admin server.
    pub fn admin_port() -> u16 {
        free_port().expect("no free port for the admin server")
    }

    /// Writes `yaml` to `dir/replhub.yaml` and starts `replhub run` on it
    /// (the admin server must listen on `admin_port`). Does not wait.
    pub fn start(dir: &Path, yaml: &str, admin_port: u16) -> Hub {
        Hub::start_with_args(dir, yaml, admin_port, &[])
    }

    /// Like [`Hub::start`] with extra arguments for `replhub` (before `run`).
    pub fn start_with_args(dir: &Path, yaml: &str, admin_port: u16, args: &[&str]) -> Hub {
        let config_path = dir.join("replhub.yaml");
        std::fs::write(&config_path, yaml).expect("cannot write the test config");
        Hub::start_existing(dir, &config_path, admin_port, args)
    }

    /// Starts `replhub run -c config_path` for a config the test wrote itself.
    pub fn start_existing(dir: &Path, config_path: &Path, admin_port: u16, args: &[&str]) -> Hub {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("replhub-{n}.log"));
        let mut cmd = Command::new(replhub_bin());
        cmd.args(args).arg("run").arg("-c").arg(config_path).env("RUST_LOG", "info,replhub=debug");
        let child = Child::spawn("replhub", cmd, &log).expect("cannot start replhub");
        Hub { child, config_path: config_path.to_path_buf(), admin_port, log, status: None }
    }

    /// Starts and waits until `/readyz` answers 200.
    pub fn start_ready(dir: &Path, yaml: &str, admin_port: u16) -> Hub {
        let hub = Hub::start(dir, yaml, admin_port);
        hub.wait_ready(Duration::from_secs(20));
        hub
    }

    /// Waits for `/readyz` 200; panics with the log tail otherwise.
    pub fn wait_ready(&self, timeout: Duration) {
        let ready = poll_until(timeout, || (self.get("/readyz").map(|(s, _)| s) == Some(200)).then_some(()));
        if ready.is_none() {
            panic!("replhub did not become ready within {timeout:?}: {:?}\n{}", self.get("/readyz"), self.log_tail(60));
        }
    }

    /// GET an admin path: (status, body), `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// The `/metrics` text ("" when the server does not answer).
    pub fn metrics(&self) -> String {
        self.get("/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// The value of the sample `series` (e.g. `replhub_link_starts_total{link="a"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// Waits until `series` reaches at least `min`; returns its value.
    pub fn wait_metric_at_least(&self, series: &str, min: f64, timeout: Duration) -> f64 {
        poll_until(timeout, || self.metric(series).filter(|v| *v >= min)).unwrap_or_else(|| {
            panic!(
                "{series} did not reach {min} within {timeout:?} (now {:?})\n{}",
                self.metric(series),
                self.log_tail(40)
            )
        })
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        self.child.signal(sig).expect("cannot signal replhub");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.status {
            return Some(status);
        }
        let child = &mut self.child;
        let exited = poll_until(timeout, || (!child.is_running()).then_some(()));
        if exited.is_some() {
            let status = self.child.stop();
            self.status = Some(status);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        super::log_tail(&self.log, lines)
    }

    /// Replaces the config file atomically (write a temp file, rename over).
    pub fn replace_config(&self, yaml: &str) {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml).expect("cannot write the new config");
        std::fs::rename(&tmp, &self.config_path).expect("cannot rename the new config into place");
    }
}

/// The value of one sample in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    })
}

/// A minimal HTTP GET over loopback (the admin server): (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}
