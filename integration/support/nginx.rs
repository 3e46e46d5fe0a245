//! An nginx child with mutual TLS in front of Webdis, rendered from
//! `examples/central/nginx.conf` (the central site's config) with the stack's
//! ports and paths.
//!
//! nginx runs in the foreground (`-g 'daemon off;'`) with its master process
//! as our child; the master opens the listening socket and forks the workers,
//! which the child's process group takes along when it is stopped. Everything
//! lives under `<stack dir>/nginx` (`-p`): `nginx.conf`, `logs/`, `run/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::install::ensure_installed;
use super::ports::{StartError, listens_on, start_on_port};
use super::procs::{Child, LogMark, Slot, children_of};
use super::{log_tail, poll_until};

/// How long nginx may take to listen (or to start new workers on reload).
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// An nginx child process (master and workers) on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    prefix: PathBuf,
    cert_dir: PathBuf,
    port: u16,
    webdis_port: u16,
    process: Slot,
}

impl Nginx {
    /// Starts nginx in front of Webdis on `127.0.0.1:webdis_port`, on `port`
    /// or else on a free port, with the certificates of `cert_dir` (see
    /// [`super::pki`]) and its files under `stack_dir/nginx`. Returns once
    /// it listens and its workers run.
    pub fn start_new(stack_dir: &Path, cert_dir: &Path, webdis_port: u16, port: Option<u16>) -> anyhow::Result<Nginx> {
        let prefix = stack_dir.join("nginx");
        for dir in [prefix.join("logs"), prefix.join("run")] {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut nginx =
            Nginx { prefix, cert_dir: cert_dir.to_path_buf(), port: 0, webdis_port, process: Slot::new("nginx") };
        let (child, port) = start_on_port("nginx", port, |port| nginx.launch(port))?;
        nginx.port = port;
        nginx.process.replace(child);
        Ok(nginx)
    }

    fn launch(&self, port: u16) -> Result<(Child, u16), StartError> {
        let programs = ensure_installed().map_err(StartError::Failed)?;
        let path = |p: &Path| p.to_str().map(str::to_string).context("the stack directory is not UTF-8");
        let config = (|| {
            render_template(&[
                ("WORKER_PROCESSES", "1".to_string()),
                ("LISTEN", format!("127.0.0.1:{port}")),
                ("WEBDIS_ADDR", format!("127.0.0.1:{}", self.webdis_port)),
                ("CERT_DIR", path(&self.cert_dir)?),
                ("RUN_DIR", path(&self.prefix.join("run"))?),
                ("LOG_DIR", path(&self.prefix.join("logs"))?),
            ])
        })()
        .map_err(StartError::Failed)?;
        std::fs::write(self.conf_path(), config)
            .with_context(|| format!("cannot write {}", self.conf_path().display()))
            .map_err(StartError::Failed)?;
        let error_log = LogMark::at_end(&self.error_log());
        let mut cmd = Command::new(&programs.nginx);
        cmd.arg("-p").arg(&self.prefix).arg("-c").arg(self.conf_path()).args(["-e", "stderr", "-g", "daemon off;"]);
        let mut child = Child::spawn("nginx", cmd, &self.output_path()).map_err(StartError::Failed)?;
        child.wait_ready(READY_TIMEOUT, &[error_log], |child| {
            listens_on(child.pid(), port) && !children_of(child.pid()).is_empty()
        })?;
        Ok((child, port))
    }

    /// The HTTPS port (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://localhost:PORT/`
    pub fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// The rendered config file.
    pub fn conf_path(&self) -> PathBuf {
        self.prefix.join("nginx.conf")
    }

    /// The access log: one line per request, with `serial=$ssl_client_serial`
    /// and `dn="$ssl_client_s_dn"` of the client certificate used.
    pub fn access_log(&self) -> PathBuf {
        self.prefix.join("logs").join("access.log")
    }

    /// The error log (level info: TLS verification failures, upstream errors, reloads).
    pub fn error_log(&self) -> PathBuf {
        self.prefix.join("logs").join("error.log")
    }

    /// Where the master's stdout and stderr go (errors before the config is read).
    pub fn output_path(&self) -> PathBuf {
        self.prefix.join("nginx.out")
    }

    /// The master's pid, if it is running.
    pub fn pid(&mut self) -> Option<u32> {
        self.process.pid()
    }

    /// The pids of the current worker processes (including old ones still
    /// shutting down after a reload); empty while stopped.
    pub fn worker_pids(&mut self) -> Vec<u32> {
        self.pid().map(children_of).unwrap_or_default()
    }

    /// Stops it (SIGTERM: fast shutdown, open streams get EOF; SIGKILL after
    /// 3 s). A no-op if stopped.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port (re-rendering the config); panics
    /// (with the log tails) if it does not come up.
    pub fn start(&mut self) {
        self.stop();
        let (child, _) = start_on_port("nginx", Some(self.port), |port| self.launch(port))
            .unwrap_or_else(|e| panic!("cannot start nginx again: {e:#}"));
        self.process.replace(child);
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Reloads (SIGHUP to the master): re-reads the config and certificate
    /// files and starts new workers; old workers finish their open requests
    /// (at most `worker_shutdown_timeout`). Returns once a new worker runs;
    /// panics with the error log tail if the reload fails.
    pub fn reload(&mut self) {
        let old = self.worker_pids();
        let error_log = LogMark::at_end(&self.error_log());
        let pid = self.process.pid().unwrap_or_else(|| panic!("nginx is stopped"));
        self.process.signal(libc::SIGHUP);
        let reloaded = poll_until(READY_TIMEOUT, || {
            if error_log.new_text().contains("[emerg]") {
                return Some(false);
            }
            children_of(pid).iter().any(|p| !old.contains(p)).then_some(true)
        });
        if reloaded != Some(true) {
            panic!("nginx did not reload\n{}", log_tail(&self.error_log(), 20));
        }
    }
}

/// `examples/central/nginx.conf`, the template.
pub fn template_path() -> PathBuf {
    super::central_dir().join("nginx.conf")
}

/// The template with every `@NAME@` replaced by its value from `vars`
/// (names without the `@`). Fails if a name is not in the template, or if a
/// placeholder is left over.
pub fn render_template(vars: &[(&str, String)]) -> anyhow::Result<String> {
    let path = template_path();
    let mut text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    for (name, value) in vars {
        let placeholder = format!("@{name}@");
        if !text.contains(&placeholder) {
            bail!("{} has no placeholder {placeholder}", path.display());
        }
        text = text.replace(&placeholder, value);
    }
    let leftover = regex::Regex::new("@[A-Z_]+@").context("bad placeholder regex")?;
    if let Some(m) = leftover.find(&text) {
        bail!("{} has a placeholder the stack does not fill: {}", path.display(), m.as_str());
    }
    Ok(text)
}
