//! `replhub run`: the process around the supervisor.
//!
//! Loads the config (an invalid file exits 1 with the same messages as
//! `check`), starts the links, the admin server and the file watcher, then
//! reacts to: file changes and SIGHUP (reload: a bad file changes nothing),
//! TLS file changes (certificate rotation), and SIGTERM/SIGINT (graceful
//! shutdown: stop capturing, finish copies within `shutdown_timeout`, exit
//! 0; 1 if the deadline cut copies short; a second signal exits 130).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::admin::{AdminServer, BoundAdmin};
use crate::config::watch::{DirWatcher, file_hash};
use crate::config::{self, Config};
use crate::echo::EchoFilter;
use crate::link::Resources;
use crate::local::LocalServers;
use crate::metrics::{LinkLabel, Metrics};
use crate::remote::RemotePools;
use crate::supervisor::{HubState, Supervisor};

/// How often files are re-hashed even without a watch event.
const FALLBACK_CHECK: Duration = Duration::from_secs(5);

pub fn main(path: &Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(diagnostics) => {
            for line in diagnostics.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(1);
        }
    };
    for line in loaded.warnings.lines() {
        tracing::warn!("{line}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("replhub: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(path.to_path_buf(), loaded))
}

/// Files whose content the process follows: the config and every TLS file of the links.
fn watched_files(path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for link in &config.links {
        for tls in [&link.remote.tls, &link.local.tls].into_iter().flatten() {
            files.extend(tls.files().map(Path::to_path_buf));
        }
    }
    files.sort();
    files.dedup();
    files
}

struct Hub {
    path: PathBuf,
    state: Arc<HubState>,
    resources: Arc<Resources>,
    supervisor: Supervisor,
    admin: Option<AdminServer>,
    config_hash: u64,
    tls_hashes: HashMap<PathBuf, Option<u64>>,
    /// The last TLS reload failed (its error is the one `/status` shows).
    tls_failed: bool,
    watcher: Option<DirWatcher>,
}

async fn run(path: PathBuf, loaded: config::Loaded) -> ExitCode {
    let metrics = Arc::new(Metrics::new());
    metrics.config_last_reload_successful.set(1);
    let state = Arc::new(HubState::new(metrics.clone(), &path));
    let resources = Arc::new(Resources {
        locals: LocalServers::default(),
        remotes: RemotePools::default(),
        echo: EchoFilter::default(),
        metrics,
        state_dir: loaded.config.state_dir.clone(),
    });
    let (watch_tx, mut watch_rx) = tokio::sync::mpsc::channel(1);
    let watcher = match DirWatcher::new(watch_tx) {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, "cannot watch files; relying on SIGHUP and the periodic check");
            None
        }
    };
    let mut hub = Hub {
        supervisor: Supervisor::new(resources.clone(), state.clone(), path.clone()),
        path,
        state,
        resources,
        admin: None,
        config_hash: loaded.content_hash,
        tls_hashes: HashMap::new(),
        tls_failed: false,
        watcher,
    };
    if let Err(error) = hub.apply(loaded.config).await {
        eprintln!("replhub: {error}");
        return ExitCode::from(1);
    }

    let (Ok(mut sigterm), Ok(mut sigint), Ok(mut sighup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        eprintln!("replhub: cannot install signal handlers");
        return ExitCode::from(1);
    };
    let mut fallback = tokio::time::interval(FALLBACK_CHECK);
    fallback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                hub.reload(true).await;
            }
            Some(()) = watch_rx.recv() => hub.look_again().await,
            _ = fallback.tick() => hub.look_again().await,
            _ = sweep.tick() => hub.resources.echo.sweep(),
        }
    }

    tracing::info!("shutting down: stopping capture, finishing copies in flight");
    let clean = tokio::select! {
        clean = hub.supervisor.shutdown() => clean,
        _ = sigterm.recv() => return second_signal(),
        _ = sigint.recv() => return second_signal(),
    };
    if let Some(admin) = hub.admin.take() {
        admin.stop().await;
    }
    if clean {
        tracing::info!("stopped cleanly");
        ExitCode::SUCCESS
    } else {
        tracing::error!("stopped, but copies in flight were cut short by shutdown_timeout");
        ExitCode::from(1)
    }
}

fn second_signal() -> ExitCode {
    tracing::warn!("second signal: exiting at once");
    ExitCode::from(130)
}

impl Hub {
    /// Applies a validated config: links, admin server, watches. A new
    /// admin address is bound before anything changes (an address that
    /// cannot be bound refuses the whole file, the old server keeps serving)
    /// and served only once the links are published (so `/readyz` never
    /// answers for links it does not know yet).
    async fn apply(&mut self, config: Config) -> Result<(), String> {
        let admin_wanted = config.admin.as_ref().map(|a| a.listen);
        let admin_changes = self.admin.as_ref().map(|a| a.configured) != admin_wanted;
        let bound = match admin_wanted.filter(|_| admin_changes) {
            Some(addr) => {
                Some(BoundAdmin::bind(addr).await.map_err(|e| format!("cannot listen on admin.listen {addr}: {e}"))?)
            }
            None => None,
        };
        let files = watched_files(&self.path, &config);
        self.tls_hashes = files.iter().filter(|f| **f != self.path).map(|f| (f.clone(), file_hash(f))).collect();
        if let Some(watcher) = &mut self.watcher {
            watcher.watch_parents_of(files.iter().map(PathBuf::as_path));
        }
        let (diff, clean) = self.supervisor.apply(config).await;
        tracing::info!(clean, "config applied: {}", diff.summary());
        if admin_changes {
            if let Some(old) = self.admin.take() {
                old.stop().await;
            }
            if let Some(bound) = bound {
                let server = AdminServer::serve(bound, self.state.clone()).map_err(|e| format!("admin server: {e}"))?;
                self.admin = Some(server);
            }
        }
        Ok(())
    }

    /// Something may have changed on disk: compare hashes and act.
    async fn look_again(&mut self) {
        if file_hash(&self.path).is_some_and(|h| h != self.config_hash) {
            self.reload(false).await;
        }
        self.check_tls_files();
    }

    /// Loads the file again; a bad file changes nothing but is reported.
    async fn reload(&mut self, forced: bool) {
        match config::load(&self.path) {
            Err(diagnostics) => {
                for line in diagnostics.lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("the new config is invalid; the running config stays");
                // Do not report the same broken content again on every look.
                if let Some(hash) = file_hash(&self.path) {
                    self.config_hash = hash;
                }
                self.state.record_load(Err(diagnostics.summary()));
            }
            Ok(loaded) => {
                if !forced && loaded.content_hash == self.config_hash {
                    return;
                }
                self.config_hash = loaded.content_hash;
                for line in loaded.warnings.lines() {
                    tracing::warn!("{line}");
                }
                let result = self.apply(loaded.config).await;
                if let Err(error) = &result {
                    tracing::error!("{error}");
                }
                self.state.record_load(result);
            }
        }
    }

    /// Certificate rotation: a TLS file changed, so rebuild the pools using it.
    fn check_tls_files(&mut self) {
        let mut changed = Vec::new();
        for (file, hash) in self.tls_hashes.iter_mut() {
            let now = file_hash(file);
            if now != *hash {
                *hash = now;
                changed.push(file.clone());
            }
        }
        for file in changed {
            for pool in self.resources.remotes.using_file(&file) {
                match pool.reload_tls() {
                    Ok(()) => {
                        if std::mem::take(&mut self.tls_failed) {
                            self.state.record_load(Ok(()));
                        }
                        let client = pool.client();
                        tracing::info!(file = %file.display(), serial = client.cert_serial.as_deref().unwrap_or("-"), "TLS files changed: new connections use them");
                        self.update_cert_metrics(&file, &client);
                    }
                    Err(error) => {
                        tracing::error!(file = %file.display(), %error, "the changed TLS files are not usable; keeping the previous ones");
                        self.tls_failed = true;
                        self.state.record_load(Err(error.to_string()));
                    }
                }
            }
        }
    }

    fn update_cert_metrics(&self, file: &Path, client: &crate::webdis::WebdisClient) {
        let Some(not_after) = client.cert_not_after else { return };
        let seconds = not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        for link in &self.supervisor.config().links {
            if link.remote.tls.as_ref().is_some_and(|t| t.files().any(|f| f == file)) {
                self.resources.metrics.cert_expiry.get_or_create(&LinkLabel { link: link.name.clone() }).set(seconds);
            }
        }
    }
}
