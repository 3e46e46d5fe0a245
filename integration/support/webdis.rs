//! A Webdis 0.1.9 child in front of the remote redis-server, configured from
//! `examples/central/webdis.json`.
//!
//! Webdis takes any argument it cannot load as a config path and then starts
//! with built-in defaults on `0.0.0.0:7379` (webdis.md §1), so the rendered
//! config is checked (exists, valid JSON) before each start, and after the
//! start the process must be the one listening on the chosen loopback port.
//! It also exits with status 0 when its port is taken, saying so in its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::install::ensure_installed;
use super::ports::{StartError, listens_on, start_on_port};
use super::procs::{Child, LogMark, Slot};

/// How long Webdis may take to listen after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which ACL Webdis runs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acl {
    /// Everything but DEBUG, FLUSHALL, FLUSHDB and SHUTDOWN, without
    /// authentication (CONFIG is allowed), like webdis.md §2.
    #[default]
    Open,
    /// Exactly the ACL of `examples/central/webdis.json`: nothing without
    /// basic auth; `site-a` and `site-b` may run EVAL, PSUBSCRIBE and PING.
    Central,
}

/// A Webdis child process on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct Webdis {
    dir: PathBuf,
    port: u16,
    redis_port: u16,
    acl: Acl,
    process: Slot,
}

impl Webdis {
    /// Starts Webdis in front of the redis-server on `127.0.0.1:redis_port`,
    /// on `port` or else on a free port, with its files (`webdis.json`,
    /// `webdis.log`, `webdis.out`) in `dir`. Returns once it listens.
    pub fn start_new(dir: &Path, redis_port: u16, port: Option<u16>, acl: Acl) -> anyhow::Result<Webdis> {
        let mut webdis = Webdis { dir: dir.to_path_buf(), port: 0, redis_port, acl, process: Slot::new("webdis") };
        let (child, port) = start_on_port("webdis", port, |port| webdis.launch(port))?;
        webdis.port = port;
        webdis.process.replace(child);
        Ok(webdis)
    }

    fn launch(&self, port: u16) -> Result<(Child, u16), StartError> {
        let programs = ensure_installed().map_err(StartError::Failed)?;
        let config = render_config(self.acl, self.redis_port, port, &self.log_path()).map_err(StartError::Failed)?;
        write_config(&self.config_path(), &config).map_err(StartError::Failed)?;
        let log = LogMark::at_end(&self.log_path());
        let mut cmd = Command::new(&programs.webdis);
        cmd.arg(self.config_path());
        let mut child = Child::spawn("webdis", cmd, &self.output_path()).map_err(StartError::Failed)?;
        child.wait_ready(READY_TIMEOUT, &[log], |child| listens_on(child.pid(), port))?;
        Ok((child, port))
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/` (plain HTTP, bypassing nginx).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The rendered config file it runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("webdis.json")
    }

    /// Its log file (the `logfile` of the config).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("webdis.log")
    }

    /// Where its stdout and stderr go.
    pub fn output_path(&self) -> PathBuf {
        self.dir.join("webdis.out")
    }

    /// The pid of the running process, if it is running.
    pub fn pid(&mut self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops it (SIGTERM; SIGKILL after 3 s). A no-op if stopped.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port; panics (with the log tail) if it does not come up.
    pub fn start(&mut self) {
        self.stop();
        let (child, _) = start_on_port("webdis", Some(self.port), |port| self.launch(port))
            .unwrap_or_else(|e| panic!("cannot start webdis again: {e:#}"));
        self.process.replace(child);
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Freezes the process (SIGSTOP).
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&mut self) {
        self.process.resume();
    }
}

/// `examples/central/webdis.json`, the central site's Webdis config.
pub fn central_config_path() -> PathBuf {
    super::central_dir().join("webdis.json")
}

/// The ACL of [`Acl::Open`].
pub fn open_acl() -> Value {
    json!([{ "disabled": ["DEBUG", "FLUSHALL", "FLUSHDB", "SHUTDOWN"] }])
}

/// The central config with the stack's addresses and log file filled in
/// (`redis_host`, `redis_port`, `http_host`, `http_port`, `logfile`), and for
/// [`Acl::Open`] its `acl` replaced by [`open_acl`]. Everything else comes
/// from the file.
pub fn render_config(acl: Acl, redis_port: u16, http_port: u16, logfile: &Path) -> anyhow::Result<Value> {
    let mut config = read_json(&central_config_path())?;
    let object = config.as_object_mut().ok_or_else(|| anyhow!("{} is not a JSON object", central_path()))?;
    if object.get("daemonize") != Some(&Value::Bool(false)) {
        bail!("{} must say \"daemonize\": false (the stack runs Webdis in the foreground)", central_path());
    }
    object.insert("redis_host".into(), json!("127.0.0.1"));
    object.insert("redis_port".into(), json!(redis_port));
    object.insert("http_host".into(), json!("127.0.0.1"));
    object.insert("http_port".into(), json!(http_port));
    object.insert("logfile".into(), json!(logfile.to_str().context("the stack directory is not UTF-8")?));
    if acl == Acl::Open {
        object.insert("acl".into(), open_acl());
    }
    Ok(config)
}

/// The `user:password` of `site`'s entry in the central ACL, for basic auth.
pub fn central_basic_auth(site: &str) -> String {
    let config = read_json(&central_config_path()).unwrap_or_else(|e| panic!("{e:#}"));
    let prefix = format!("{site}:");
    config["acl"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["http_basic_auth"].as_str())
        .find(|auth| auth.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{} has no http_basic_auth for {site}", central_path()))
        .to_string()
}

fn central_path() -> String {
    central_config_path().display().to_string()
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// Writes the config, then reads it back: Webdis must never get a path it
/// cannot load (it would start with its defaults on 0.0.0.0:7379).
fn write_config(path: &Path, config: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(config).context("cannot serialise the Webdis config")?;
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let back = read_json(path)?;
    if &back != config {
        bail!("{} does not read back as written", path.display());
    }
    Ok(())
}
