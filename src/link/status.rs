//! What a link reports about itself: `/status`, `/readyz` and `replhub_link_up`.
//!
//! The link's tasks set the conditions (synced, stream healthy, copies
//! succeeding, no refused resync); "up" is all of them at once. Whoever
//! changes a condition updates the gauge, so the metric and `/status` agree.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;

/// A snapshot for `/status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StatusReport {
    pub name: String,
    pub direction: crate::config::Direction,
    pub state: &'static str,
    pub since: String,
    pub last_error: Option<String>,
    pub keys_replicated: u64,
    pub lag_seconds: f64,
}

#[derive(Debug)]
struct Conditions {
    started: bool,
    synced: bool,
    /// True for links without a remote stream.
    stream_ok: bool,
    copy_ok: bool,
    /// A resync refused by `max_delete_fraction`, with its explanation.
    refusal: Option<String>,
    stopping: bool,
    stopped: bool,
    state: &'static str,
    since: SystemTime,
    last_error: Option<String>,
    lag_seconds: f64,
}

/// The shared status of one link.
#[derive(Debug)]
pub struct LinkStatus {
    pub name: String,
    pub direction: crate::config::Direction,
    conditions: Mutex<Conditions>,
    keys_replicated: AtomicU64,
    up_gauge: Gauge,
}

impl LinkStatus {
    pub fn new(name: &str, direction: crate::config::Direction, needs_stream: bool, up_gauge: Gauge) -> Self {
        up_gauge.set(0);
        LinkStatus {
            name: name.to_string(),
            direction,
            conditions: Mutex::new(Conditions {
                started: false,
                synced: false,
                stream_ok: !needs_stream,
                copy_ok: true,
                refusal: None,
                stopping: false,
                stopped: false,
                state: "starting",
                since: SystemTime::now(),
                last_error: None,
                lag_seconds: 0.0,
            }),
            keys_replicated: AtomicU64::new(0),
            up_gauge,
        }
    }

    fn update(&self, change: impl FnOnce(&mut Conditions)) {
        let mut c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut c);
        let up = c.started && c.synced && c.stream_ok && c.copy_ok && c.refusal.is_none() && !c.stopping;
        let state = if c.stopped {
            "stopped"
        } else if c.stopping {
            "stopping"
        } else if up {
            "up"
        } else if !c.started {
            "starting"
        } else if !c.synced && c.copy_ok && c.stream_ok && c.refusal.is_none() {
            "syncing"
        } else {
            "degraded"
        };
        if state != c.state {
            c.state = state;
            c.since = SystemTime::now();
        }
        self.up_gauge.set(i64::from(up));
    }

    pub fn set_started(&self) {
        self.update(|c| c.started = true);
    }
    pub fn set_synced(&self, synced: bool) {
        self.update(|c| c.synced = synced);
    }
    pub fn set_stream_ok(&self, ok: bool, error: Option<String>) {
        self.update(|c| {
            c.stream_ok = ok;
            if error.is_some() {
                c.last_error = error;
            }
        });
    }
    pub fn set_copy_ok(&self, ok: bool, error: Option<String>) {
        self.update(|c| {
            c.copy_ok = ok;
            if error.is_some() {
                c.last_error = error;
            }
        });
    }
    pub fn set_refusal(&self, refusal: Option<String>) {
        self.update(|c| {
            if refusal.is_some() {
                c.last_error.clone_from(&refusal);
            }
            c.refusal = refusal;
        });
    }
    /// Records an error without changing the conditions (a failed attempt that will be retried).
    pub fn record_error(&self, error: String) {
        self.update(|c| c.last_error = Some(error));
    }
    pub fn set_stopping(&self) {
        self.update(|c| c.stopping = true);
    }
    pub fn set_stopped(&self) {
        self.update(|c| c.stopped = true);
    }
    pub fn add_replicated(&self, n: u64, lag_seconds: f64) {
        self.keys_replicated.fetch_add(n, Ordering::Relaxed);
        self.update(|c| c.lag_seconds = lag_seconds);
    }

    pub fn report(&self) -> StatusReport {
        let c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        StatusReport {
            name: self.name.clone(),
            direction: self.direction,
            state: c.state,
            since: crate::timefmt::rfc3339(c.since),
            last_error: c.last_error.clone(),
            keys_replicated: self.keys_replicated.load(Ordering::Relaxed),
            lag_seconds: c.lag_seconds,
        }
    }
}
