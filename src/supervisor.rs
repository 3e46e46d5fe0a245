//! The supervisor: owns the running links and applies config diffs.
//!
//! A diff is applied as stop → wait → start: removed and changed links are
//! stopped first and waited for (each bounded by `shutdown_timeout`), then
//! changed and added links start, so a link's replacement never writes while
//! its predecessor still can. Links the diff keeps are not touched at all:
//! no reconnect, no resync, no gap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::diff::{Diff, diff};
use crate::config::{Config, LinkConfig};
use crate::link::{LinkHandle, LinkStatus, Resources, StatusReport};
use crate::metrics::Metrics;

/// The config's load state, for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigStatus {
    pub path: String,
    pub loaded_at: String,
    pub last_reload_ok: bool,
    pub last_error: Option<String>,
}

/// What the admin endpoints read: shared by the supervisor and the admin server.
pub struct HubState {
    pub metrics: Arc<Metrics>,
    pub config: Mutex<ConfigStatus>,
    pub links: RwLock<Vec<Arc<LinkStatus>>>,
}

impl HubState {
    pub fn new(metrics: Arc<Metrics>, path: &std::path::Path) -> Self {
        HubState {
            metrics,
            config: Mutex::new(ConfigStatus {
                path: path.display().to_string(),
                loaded_at: crate::timefmt::rfc3339(SystemTime::now()),
                last_reload_ok: true,
                last_error: None,
            }),
            links: RwLock::new(Vec::new()),
        }
    }

    /// Records the outcome of a (re)load.
    pub fn record_load(&self, result: Result<(), String>) {
        let ok = result.is_ok();
        self.metrics.config_last_reload_successful.set(i64::from(ok));
        let label = crate::metrics::ResultLabel { result: if ok { "success" } else { "failure" } };
        self.metrics.config_reloads.get_or_create(&label).inc();
        let mut status = self.config.lock().unwrap_or_else(|e| e.into_inner());
        status.last_reload_ok = ok;
        match result {
            Ok(()) => {
                status.loaded_at = crate::timefmt::rfc3339(SystemTime::now());
                status.last_error = None;
            }
            Err(error) => status.last_error = Some(error),
        }
    }

    pub fn link_reports(&self) -> Vec<StatusReport> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).iter().map(|s| s.report()).collect()
    }
}

pub struct Supervisor {
    resources: Arc<Resources>,
    state: Arc<HubState>,
    config: Config,
    links: BTreeMap<String, LinkHandle>,
}

impl Supervisor {
    pub fn new(resources: Arc<Resources>, state: Arc<HubState>, path: std::path::PathBuf) -> Self {
        Supervisor { resources, state, config: Config::empty(path), links: BTreeMap::new() }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Brings the running links to `new`. Returns the diff applied and
    /// whether every stopped link finished within its deadline.
    pub async fn apply(&mut self, new: Config) -> (Diff, bool) {
        let d = diff(&self.config, &new);
        let deadline = new.shutdown_timeout.max(self.config.shutdown_timeout);
        let stopping: Vec<LinkHandle> = d
            .removed
            .iter()
            .chain(d.changed.iter().map(|l| &l.name))
            .filter_map(|name| self.links.remove(name))
            .collect();
        let clean = self.stop_all(stopping, deadline).await;
        for name in &d.removed {
            self.resources.metrics.unregister_link(name);
        }
        for link in d.changed.iter().chain(&d.added) {
            self.start(link.clone());
        }
        self.config = new;
        self.publish();
        (d, clean)
    }

    fn start(&mut self, config: Arc<LinkConfig>) {
        let handle = LinkHandle::spawn(config.clone(), self.resources.clone());
        self.links.insert(config.name.clone(), handle);
    }

    /// Stops links concurrently and waits for all of them.
    async fn stop_all(&self, handles: Vec<LinkHandle>, deadline: Duration) -> bool {
        let mut stopping = tokio::task::JoinSet::new();
        for handle in handles {
            stopping.spawn(handle.stop(deadline));
        }
        let mut clean = true;
        while let Some(result) = stopping.join_next().await {
            clean &= result.unwrap_or(false);
        }
        clean
    }

    /// Stops every link (graceful shutdown). False if any was cut short.
    pub async fn shutdown(&mut self) -> bool {
        let deadline = self.config.shutdown_timeout;
        let handles: Vec<LinkHandle> = std::mem::take(&mut self.links).into_values().collect();
        let clean = self.stop_all(handles, deadline).await;
        self.publish();
        clean
    }

    /// Publishes the current links to the admin state.
    fn publish(&self) {
        let statuses: Vec<Arc<LinkStatus>> = self.links.values().map(|h| h.status.clone()).collect();
        *self.state.links.write().unwrap_or_else(|e| e.into_inner()) = statuses;
    }

    /// Names of the running links.
    pub fn link_names(&self) -> Vec<String> {
        self.links.keys().cloned().collect()
    }
}
