//! One link: a local namespace replicated to, from, or both ways with a
//! remote namespace.
//!
//! A running link is a group of tasks under one cancellation token:
//! capture (local events routed by `local::LocalRedis`; remote events from
//! a PSUBSCRIBE stream, `capture`), the copier (`copy`), resyncs
//! (`resync`) and, for `both` links, the saver of the base (`base`). The
//! supervisor owns the [`LinkHandle`]; stopping it stops capture, lets the
//! copies in flight (and the queue) finish, saves the base and returns.

mod base;
mod capture;
mod copy;
mod dirty;
mod resync;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Direction, LinkConfig};
use crate::echo::EchoFilter;
use crate::local::LocalServers;
use crate::metrics::{LinkDirection, LinkLabel, LinkReason, Metrics, ResyncReason};
use crate::remote::{RemotePool, RemotePools};
use crate::side::Side;
pub use dirty::{DirtySet, Marked};
pub use status::{LinkStatus, StatusReport};

/// Keys waiting per link before an overflow turns into a resync: room for a
/// burst of half a million distinct keys (about 100 MiB at most), bounded.
pub const DIRTY_CAPACITY: usize = 500_000;

/// What every link shares: connections, the echo filter, metrics.
pub struct Resources {
    pub locals: LocalServers,
    pub remotes: RemotePools,
    pub echo: EchoFilter,
    pub metrics: Arc<Metrics>,
    pub state_dir: Option<std::path::PathBuf>,
}

/// The supervisor's handle on a running link.
pub struct LinkHandle {
    pub config: Arc<LinkConfig>,
    pub status: Arc<LinkStatus>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LinkHandle {
    /// Starts a link.
    pub fn spawn(config: Arc<LinkConfig>, resources: Arc<Resources>) -> LinkHandle {
        let metrics = resources.metrics.clone();
        metrics.register_link(&config.name, config.direction);
        let label = LinkLabel { link: config.name.clone() };
        metrics.link_starts.get_or_create(&label).inc();
        let up_gauge = metrics.link_up.get_or_create(&label).clone();
        let needs_stream = config.direction != Direction::Push;
        let status = Arc::new(LinkStatus::new(&config.name, config.direction, needs_stream, up_gauge));
        let cancel = CancellationToken::new();
        let span = tracing::info_span!("link", link = %config.name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            run(config.clone(), resources, status.clone(), cancel.clone()),
            span,
        ));
        LinkHandle { config, status, cancel, task }
    }

    /// Stops the link and waits for it, at most `deadline`. Returns false
    /// when the deadline cut it short (copies in flight were abandoned).
    pub async fn stop(self, deadline: Duration) -> bool {
        self.status.set_stopping();
        self.cancel.cancel();
        let mut task = self.task;
        let finished = tokio::time::timeout(deadline, &mut task).await.is_ok();
        if !finished {
            task.abort();
            tracing::warn!(link = %self.config.name, "the link did not finish its copies within {deadline:?}; abandoned");
        }
        self.status.set_stopped();
        finished
    }
}

/// The state shared by a link's tasks.
pub(crate) struct Link {
    pub config: Arc<LinkConfig>,
    pub res: Arc<Resources>,
    pub status: Arc<LinkStatus>,
    pub local: Side,
    pub remote: Side,
    pub remote_pool: Arc<RemotePool>,
    pub local_id: String,
    pub remote_id: String,
    pub dirty: Mutex<DirtySet>,
    /// Wakes the copier when keys are marked.
    pub wake: Notify,
    /// A pending resync request (the strongest reason wins) and its wake-up.
    resync_request: Mutex<Option<ResyncReason>>,
    resync_wake: Notify,
    /// For `both` links: the base states.
    pub base: Mutex<base::Base>,
    pub cancel: CancellationToken,
    /// Cancelled once capture has stopped: the copier then drains and returns.
    pub drain: CancellationToken,
    /// Types already warned about (once per type).
    warned_types: Mutex<std::collections::HashSet<String>>,
    /// When the remote stream last proved itself (first heartbeat of a stream).
    stream_confirmed: Mutex<Option<tokio::time::Instant>>,
    /// The remote's notification flags could not be checked, and a warning said so.
    flags_warned: std::sync::atomic::AtomicBool,
    /// This link's series of `replhub_echoes_suppressed_total` and
    /// `replhub_dirty_keys`, looked up once: they are touched per event or batch.
    echoes: prometheus_client::metrics::counter::Counter,
    dirty_gauges: Vec<prometheus_client::metrics::gauge::Gauge>,
}

impl Link {
    pub fn lock_dirty(&self) -> std::sync::MutexGuard<'_, DirtySet> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lock_base(&self) -> std::sync::MutexGuard<'_, base::Base> {
        self.base.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a key (its suffix) dirty and wakes the copier.
    pub fn mark(&self, suffix: Bytes, at: Instant) {
        self.mark_all([suffix], at);
    }

    /// Marks keys dirty under one lock and wakes the copier once.
    pub fn mark_all(&self, suffixes: impl IntoIterator<Item = Bytes>, at: Instant) {
        let mut overflow = false;
        let mut any = false;
        {
            let mut dirty = self.lock_dirty();
            for suffix in suffixes {
                any = true;
                if dirty.mark(suffix, at) == Marked::Overflow {
                    overflow = true;
                }
            }
        }
        if overflow {
            tracing::warn!("more than {DIRTY_CAPACITY} keys waiting; dropping the queue and resyncing instead");
            self.request_resync(ResyncReason::Overflow);
        } else if any {
            self.wake.notify_one();
        }
    }

    pub fn update_dirty_gauge(&self) {
        let waiting = self.lock_dirty().waiting() as i64;
        for gauge in &self.dirty_gauges {
            gauge.set(waiting);
        }
    }

    /// Asks the main loop for a resync.
    pub fn request_resync(&self, reason: ResyncReason) {
        let mut pending = self.resync_request.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_none() || reason == ResyncReason::Startup {
            *pending = Some(reason);
        }
        self.resync_wake.notify_one();
    }

    pub fn note_stream_confirmed(&self) {
        *self.stream_confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// True if a stream was confirmed at or after `since`.
    pub fn stream_confirmed_since(&self, since: tokio::time::Instant) -> bool {
        self.stream_confirmed.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|t| t >= since)
    }

    fn take_resync_request(&self) -> Option<ResyncReason> {
        self.resync_request.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn count_error(&self, kind: &'static str) {
        self.res.metrics.count_error(&self.config.name, kind);
    }

    /// Counts `n` events recognised as this link's own echoes.
    pub fn count_echoes(&self, n: u64) {
        self.echoes.inc_by(n);
    }

    /// Logs once per link and type that keys of `ty` are not replicated.
    pub fn warn_type_once(&self, ty: &str) {
        if self.warned_types.lock().unwrap_or_else(|e| e.into_inner()).insert(ty.to_string()) {
            tracing::warn!(r#type = ty, "keys of this type are not replicated by this link; they are skipped");
        }
    }

    /// Sleeps, returning early (false) if the link is cancelled.
    pub async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    /// The local and remote key of a suffix.
    pub fn local_key(&self, suffix: &[u8]) -> Bytes {
        concat(&self.config.local.prefix, suffix)
    }
    pub fn remote_key(&self, suffix: &[u8]) -> Bytes {
        concat(&self.config.remote.prefix, suffix)
    }

    /// Identifies the link's namespaces for its saved base.
    fn identity(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.local_id,
            String::from_utf8_lossy(&self.config.local.prefix),
            self.remote_id,
            String::from_utf8_lossy(&self.config.remote.prefix)
        )
    }
}

pub(crate) fn concat(prefix: &[u8], suffix: &[u8]) -> Bytes {
    let mut key = Vec::with_capacity(prefix.len() + suffix.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(suffix);
    Bytes::from(key)
}

/// Connects both sides, retrying until it works or the link is stopped.
async fn connect(
    config: &LinkConfig,
    res: &Resources,
    status: &LinkStatus,
    cancel: &CancellationToken,
) -> Option<(Side, Arc<RemotePool>)> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let attempt = async {
            let remote = res.remotes.get(&config.remote).map_err(|e| e.to_string())?;
            let local =
                res.locals.get(&config.local.url, config.local.tls.as_ref()).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((Side::Local(local), remote))
        };
        match attempt.await {
            Ok(sides) => return Some(sides),
            Err(error) => {
                tracing::warn!(%error, "cannot start the link yet; retrying");
                status.record_error(error);
                status.set_started();
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    }
}

/// The link's main task.
async fn run(config: Arc<LinkConfig>, res: Arc<Resources>, status: Arc<LinkStatus>, cancel: CancellationToken) {
    if config.remote.insecure_plaintext {
        tracing::warn!(remote = %config.remote.url, "this link talks plain HTTP to the remote (insecure_plaintext): no encryption, no authentication");
    }
    let Some((local, remote_pool)) = connect(&config, &res, &status, &cancel).await else { return };
    let remote = Side::Remote(remote_pool.clone());
    if let Some(not_after) = remote_pool.client().cert_not_after {
        let seconds = not_after.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        res.metrics.cert_expiry.get_or_create(&LinkLabel { link: config.name.clone() }).set(seconds);
    }
    let link = Arc::new(Link {
        local_id: local.server_id(),
        remote_id: remote.server_id(),
        config: config.clone(),
        res: res.clone(),
        status: status.clone(),
        local,
        remote,
        remote_pool,
        dirty: Mutex::new(DirtySet::new(DIRTY_CAPACITY)),
        wake: Notify::new(),
        // Push links resync at once; pull and both links once their stream
        // works, so nothing changes unseen between the scan and the subscribe.
        resync_request: Mutex::new((config.direction == Direction::Push).then_some(ResyncReason::Startup)),
        resync_wake: Notify::new(),
        base: Mutex::new(base::Base::default()),
        cancel: cancel.child_token(),
        drain: CancellationToken::new(),
        warned_types: Mutex::new(Default::default()),
        stream_confirmed: Mutex::new(None),
        flags_warned: Default::default(),
        echoes: res.metrics.echoes_suppressed.get_or_create(&LinkLabel { link: config.name.clone() }).clone(),
        dirty_gauges: crate::metrics::direction_labels(config.direction)
            .iter()
            .map(|&direction| {
                res.metrics.dirty_keys.get_or_create(&LinkDirection { link: config.name.clone(), direction }).clone()
            })
            .collect(),
    });
    if config.direction == Direction::Both {
        link.load_base();
    }

    // Capture first, then resync: whatever changes during the scan is
    // captured too, and copies always re-read the source.
    let registration = match capture::register_local(&link).await {
        Ok(registration) => registration,
        Err(error) => {
            tracing::error!(%error, "cannot register with the local Redis");
            status.record_error(error.to_string());
            return;
        }
    };
    status.set_started();
    let mut tasks = tokio::task::JoinSet::new();
    let copier = tokio::spawn(tracing::Instrument::in_current_span(copy::run_copier(link.clone())));
    if config.direction != Direction::Push {
        tasks.spawn(tracing::Instrument::in_current_span(capture::run_remote_stream(link.clone())));
    } else {
        tasks.spawn(tracing::Instrument::in_current_span(follow_remote_health(link.clone())));
    }
    if config.direction == Direction::Both {
        tasks.spawn(tracing::Instrument::in_current_span(base_saver(link.clone())));
    }
    main_loop(&link).await;

    // Events of writes the local Redis acknowledged before now may still be
    // on their way: wait for them before capture stops.
    if config.direction != Direction::Pull
        && let crate::side::Side::Local(server) = &link.local
        && !server.barrier(Duration::from_secs(2)).await
    {
        tracing::warn!("could not confirm that every local event was received before stopping");
    }
    // Stop capturing, then let the copier drain what was captured.
    drop(registration);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    link.cancel.cancel();
    link.drain.cancel();
    let _ = copier.await;
    if config.direction == Direction::Both {
        link.save_base().await;
    }
}

/// Runs resyncs when asked (startup, reconnects, heartbeat loss, overflow, periodically) until stopped.
async fn main_loop(link: &Arc<Link>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let periodic = link.config.resync_interval;
    let mut next_periodic = periodic.map(|p| tokio::time::Instant::now() + p);
    loop {
        if let Some(reason) = link.take_resync_request() {
            match resync::resync(link, reason).await {
                Ok(()) => {
                    backoff.reset();
                    link.res
                        .metrics
                        .resyncs
                        .get_or_create(&LinkReason { link: link.config.name.clone(), reason: reason.label() })
                        .inc();
                    next_periodic = periodic.map(|p| tokio::time::Instant::now() + p);
                }
                Err(error) => {
                    tracing::warn!(%error, reason = reason.label(), "resync failed; retrying");
                    link.count_error(error.kind());
                    link.status.record_error(error.to_string());
                    link.request_resync(reason);
                    if !link.sleep(backoff.next_delay()).await {
                        return;
                    }
                }
            }
            continue;
        }
        let periodic_tick = async {
            match next_periodic {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = link.resync_wake.notified() => {}
            _ = periodic_tick => {
                next_periodic = periodic.map(|p| tokio::time::Instant::now() + p);
                link.request_resync(ResyncReason::Periodic);
            }
            _ = link.cancel.cancelled() => return,
        }
    }
}

/// A push link has no stream to tell it the remote is gone; it follows the
/// shared pool's PING probe instead, so `/readyz` shows an unreachable remote
/// even when nothing is being copied.
async fn follow_remote_health(link: Arc<Link>) {
    let mut health = link.remote_pool.health();
    loop {
        let problem = health.borrow_and_update().clone();
        link.status.set_stream_ok(problem.is_none(), problem.map(|e| format!("the remote does not answer: {e}")));
        tokio::select! {
            changed = health.changed() => if changed.is_err() { return },
            _ = link.cancel.cancelled() => return,
        }
    }
}

/// Saves the base of a `both` link every few seconds while it changes.
async fn base_saver(link: Arc<Link>) {
    while link.sleep(Duration::from_secs(5)).await {
        link.save_base().await;
    }
}

impl Link {
    fn load_base(&self) {
        let Some(dir) = &self.res.state_dir else { return };
        let path = base::Base::path(dir, &self.config.name);
        match base::Base::load(&path, &self.identity()) {
            Ok(Some(base)) => {
                tracing::info!(keys = base.len(), path = %path.display(), "loaded the base of the last run");
                *self.lock_base() = base;
            }
            Ok(None) => {
                tracing::info!(path = %path.display(), "no usable saved base; the first resync merges both sides (union)")
            }
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "cannot read the saved base; the first resync merges both sides (union)")
            }
        }
    }

    /// Saves the base if it changed: encoded under the lock, written to
    /// disk on a blocking thread (a large base must not stall the runtime).
    async fn save_base(&self) {
        let Some(dir) = &self.res.state_dir else { return };
        let path = base::Base::path(dir, &self.config.name);
        let Some(data) = self.lock_base().encode_if_changed(&self.identity()) else { return };
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || base::write_atomically(&target, &data)).await;
        let error = match written {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => error.to_string(),
        };
        self.lock_base().mark_unsaved();
        tracing::warn!(%error, path = %path.display(), "cannot save the base");
        self.count_error("state_file");
    }
}
