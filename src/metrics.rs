//! The Prometheus metrics of interface.md (their names are part of the contract).
//!
//! One [`Metrics`] lives for the whole process; links record into it through
//! the label helpers below. Every labelled family is filled in for a link when
//! it is registered, so a scrape shows the link's series before its first
//! event, and removed when the link is removed from the config.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    pub link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkDirection {
    pub link: String,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkReason {
    pub link: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkKind {
    pub link: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// Lag buckets: 0.5 ms … ~33 s.
#[derive(Clone)]
pub struct LagBuckets;

impl MetricConstructor<Histogram> for LagBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 17))
    }
}

/// Why a resync ran (`replhub_resyncs_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResyncReason {
    Startup,
    Reconnect,
    Heartbeat,
    Overflow,
    Periodic,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 5] = [
        ResyncReason::Startup,
        ResyncReason::Reconnect,
        ResyncReason::Heartbeat,
        ResyncReason::Overflow,
        ResyncReason::Periodic,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ResyncReason::Startup => "startup",
            ResyncReason::Reconnect => "reconnect",
            ResyncReason::Heartbeat => "heartbeat",
            ResyncReason::Overflow => "overflow",
            ResyncReason::Periodic => "periodic",
        }
    }
}

/// The two directions of copying, as metrics label them.
pub fn direction_labels(direction: Direction) -> &'static [&'static str] {
    match direction {
        Direction::Push => &["push"],
        Direction::Pull => &["pull"],
        Direction::Both => &["push", "pull"],
    }
}

/// Every metric of the process.
pub struct Metrics {
    pub registry: Registry,
    pub config_last_reload_successful: Gauge,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub link_up: Family<LinkLabel, Gauge>,
    pub link_starts: Family<LinkLabel, Counter>,
    pub keys_replicated: Family<LinkDirection, Counter>,
    pub replication_lag: Family<LinkDirection, Histogram, LagBuckets>,
    pub resyncs: Family<LinkReason, Counter>,
    pub echoes_suppressed: Family<LinkLabel, Counter>,
    pub errors: Family<LinkKind, Counter>,
    pub dirty_keys: Family<LinkDirection, Gauge>,
    pub cert_expiry: Family<LinkLabel, Gauge>,
    pub build_info: Family<VersionLabel, Gauge>,
    /// The `kind`s counted in `errors` per link, so a removed link's series can be removed.
    error_kinds: std::sync::Mutex<std::collections::HashMap<String, std::collections::BTreeSet<&'static str>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            config_last_reload_successful: Gauge::default(),
            config_reloads: Family::default(),
            link_up: Family::default(),
            link_starts: Family::default(),
            keys_replicated: Family::default(),
            replication_lag: Family::new_with_constructor(LagBuckets),
            resyncs: Family::default(),
            echoes_suppressed: Family::default(),
            errors: Family::default(),
            dirty_keys: Family::default(),
            cert_expiry: Family::default(),
            build_info: Family::default(),
            error_kinds: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "replhub_config_last_reload_successful",
            "1 if the last config (re)load succeeded",
            m.config_last_reload_successful.clone(),
        );
        registry.register("replhub_config_reloads", "Config reloads by result", m.config_reloads.clone());
        registry.register(
            "replhub_link_up",
            "1 while the link is up (initial sync done, streams healthy)",
            m.link_up.clone(),
        );
        registry.register(
            "replhub_link_starts",
            "Times the supervisor started or restarted the link",
            m.link_starts.clone(),
        );
        registry.register(
            "replhub_keys_replicated",
            "Keys copied or deleted at the destination",
            m.keys_replicated.clone(),
        );
        registry.register_with_unit(
            "replhub_replication_lag",
            "Keyspace event received from the source until the destination write was acknowledged",
            prometheus_client::registry::Unit::Seconds,
            m.replication_lag.clone(),
        );
        registry.register("replhub_resyncs", "Resyncs by reason", m.resyncs.clone());
        registry.register(
            "replhub_echoes_suppressed",
            "Keyspace events recognised as the hub's own writes",
            m.echoes_suppressed.clone(),
        );
        registry.register("replhub_errors", "Errors by kind", m.errors.clone());
        registry.register("replhub_dirty_keys", "Keys waiting to be copied", m.dirty_keys.clone());
        registry.register(
            "replhub_cert_expiry_timestamp_seconds",
            "notAfter of the client certificate in use",
            m.cert_expiry.clone(),
        );
        registry.register("replhub_build_info", "Build information", m.build_info.clone());
        let _ = m.build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION") }).set(1);
        for result in ["success", "failure"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        Metrics { registry, ..m }
    }

    /// Creates every series of a link (so scrapes show it before its first event).
    pub fn register_link(&self, link: &str, direction: Direction) {
        let l = LinkLabel { link: link.to_string() };
        let _ = self.link_up.get_or_create(&l);
        let _ = self.link_starts.get_or_create(&l);
        let _ = self.echoes_suppressed.get_or_create(&l);
        let _ = self.cert_expiry.get_or_create(&l);
        for &d in direction_labels(direction) {
            let ld = LinkDirection { link: link.to_string(), direction: d };
            let _ = self.keys_replicated.get_or_create(&ld);
            let _ = self.replication_lag.get_or_create(&ld);
            let _ = self.dirty_keys.get_or_create(&ld);
        }
        for reason in ResyncReason::ALL {
            let _ = self.resyncs.get_or_create(&LinkReason { link: link.to_string(), reason: reason.label() });
        }
    }

    /// Counts an error of `kind` for `link`.
    pub fn count_error(&self, link: &str, kind: &'static str) {
        self.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).entry(link.to_string()).or_default().insert(kind);
        self.errors.get_or_create(&LinkKind { link: link.to_string(), kind }).inc();
    }

    /// Removes a link's series (it is no longer configured).
    pub fn unregister_link(&self, link: &str) {
        let kinds = self.error_kinds.lock().unwrap_or_else(|e| e.into_inner()).remove(link).unwrap_or_default();
        for kind in kinds {
            self.errors.remove(&LinkKind { link: link.to_string(), kind });
        }
        let l = LinkLabel { link: link.to_string() };
        self.link_up.remove(&l);
        self.link_starts.remove(&l);
        self.echoes_suppressed.remove(&l);
        self.cert_expiry.remove(&l);
        for d in ["push", "pull"] {
            let ld = LinkDirection { link: link.to_string(), direction: d };
            self.keys_replicated.remove(&ld);
            self.replication_lag.remove(&ld);
            self.dirty_keys.remove(&ld);
        }
        for reason in ResyncReason::ALL {
            self.resyncs.remove(&LinkReason { link: link.to_string(), reason: reason.label() });
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exposed_with_its_labels() {
        let m = Metrics::new();
        m.register_link("sensors", Direction::Both);
        let text = m.render();
        for expected in [
            "replhub_config_last_reload_successful 0",
            "replhub_config_reloads_total{result=\"success\"} 0",
            "replhub_config_reloads_total{result=\"failure\"} 0",
            "replhub_link_up{link=\"sensors\"} 0",
            "replhub_link_starts_total{link=\"sensors\"} 0",
            "replhub_keys_replicated_total{link=\"sensors\",direction=\"push\"} 0",
            "replhub_keys_replicated_total{link=\"sensors\",direction=\"pull\"} 0",
            "replhub_replication_lag_seconds_bucket{le=\"0.0005\",link=\"sensors\",direction=\"push\"} 0",
            "replhub_resyncs_total{link=\"sensors\",reason=\"overflow\"} 0",
            "replhub_echoes_suppressed_total{link=\"sensors\"} 0",
            "replhub_dirty_keys{link=\"sensors\",direction=\"pull\"} 0",
            "replhub_cert_expiry_timestamp_seconds{link=\"sensors\"} 0",
            "replhub_build_info{version=\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let _ = m.errors.get_or_create(&LinkKind { link: "sensors".into(), kind: "timeout" }).inc();
        assert!(m.render().contains("replhub_errors_total{link=\"sensors\",kind=\"timeout\"} 1"));
        m.unregister_link("sensors");
        assert!(!m.render().contains("link=\"sensors\",direction"));
    }
}
