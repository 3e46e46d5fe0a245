//! The local side: Redis servers reached directly with fred.
//!
//! Connections are resources of the hub, not of a link: [`LocalServers`]
//! hands out one [`LocalRedis`] per URL (server, database, credentials), and
//! every link on that URL shares its two connections: a command client and a
//! subscriber on `__keyevent@DB__:*`. Keyevent channels carry the key as the
//! message payload, so binary key names arrive intact (fred drops keyspace
//! events whose channel is not UTF-8). The subscriber routes each event to
//! the one link whose prefix the key starts with (prefixes on one database
//! are disjoint, so a binary search finds it).
//!
//! After every reconnect (a Redis restart resets `notify-keyspace-events`)
//! the flags are applied again and every link on the server is told that
//! events may have been lost, so it resyncs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, HeartbeatInterface, PubsubInterface};
use fred::prelude::{Builder, ReconnectPolicy};
use fred::types::config::{Config as FredConfig, ServerConfig, UnresponsiveConfig};
use tokio::task::JoinHandle;

use crate::config::tls_files::load_client_tls;
use crate::config::validate::RESERVED_PREFIX;
use crate::config::{RedisUrl, TlsPaths};
use crate::notify_flags;
use crate::resp::Value;

/// How often each local connection is PINGed to prove it alive.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Keyspace events fred may queue for us before it reports lag.
const EVENT_QUEUE: usize = 16 << 10;

/// Keys that mark a point in the event stream: `<this prefix><pid>:<n>`.
const BARRIER_PREFIX: &str = "__replhub__:barrier:";

/// Receives what happens on a local server for one link.
pub trait EventSink: Send + Sync {
    /// Keys in the link's namespace changed (keys include the prefix).
    fn keys_changed(&self, keys: Vec<Bytes>);
    /// Events may have been lost (reconnect, or the event queue overflowed): resync.
    fn events_lost(&self, reason: LostReason);
}

/// Why events may have been lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    Reconnect,
    Overflow,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("local Redis {server}: {message}")]
    Redis { server: String, message: String },
    #[error("local Redis {server}: {message}")]
    Connection { server: String, message: String },
    #[error("local Redis {server}: cannot set up TLS: {message}")]
    Setup { server: String, message: String },
}

impl LocalError {
    pub fn kind(&self) -> &'static str {
        match self {
            LocalError::Redis { .. } => "local_redis_error",
            LocalError::Connection { .. } => "local_connection",
            LocalError::Setup { .. } => "local_tls",
        }
    }
}

/// One link's registration on a server; dropping it unregisters the link.
pub struct Registration {
    server: Arc<LocalRedis>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut routes = self.server.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.retain(|r| r.id != self.id);
    }
}

struct Route {
    id: u64,
    /// Prefix whose events this link captures; `None` for links that only write here.
    capture: Option<Vec<u8>>,
    /// Flags this link needs on the server.
    flags: Option<String>,
    sink: Arc<dyn EventSink>,
}

/// A shared connection to one local Redis database.
pub struct LocalRedis {
    /// Barriers seen in the event stream (see [`LocalRedis::barrier`]).
    barrier_seen: tokio::sync::watch::Sender<u64>,
    next_barrier: AtomicU64,
    /// `host:port/db`, naming the server in logs and in the echo filter.
    pub id: String,
    /// The URL without its password.
    pub label: String,
    db: u32,
    client: Client,
    subscriber: SubscriberClient,
    subscribed: tokio::sync::OnceCell<()>,
    routes: RwLock<Vec<Route>>,
    next_id: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.quit().await;
                let _ = subscriber.quit().await;
            });
        }
    }
}

impl LocalRedis {
    async fn connect(url: &RedisUrl, tls: Option<&TlsPaths>) -> Result<Arc<LocalRedis>, LocalError> {
        let label = url.to_string();
        let id = format!("{}:{}/{}", url.server_key().0, url.port, url.db);
        let config = fred_config(url, tls, false)?;
        let mut builder = Builder::from_config(config);
        builder
            // fred does not reconnect unless told to: retry forever, 100 ms → 5 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(10);
                c.max_command_attempts = 3;
                c.unresponsive =
                    UnresponsiveConfig { max_timeout: Some(Duration::from_secs(10)), interval: Duration::from_secs(2) };
            })
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(30);
            });
        let fred_error =
            |e: fred::error::Error| LocalError::Connection { server: label.clone(), message: e.to_string() };
        let client = builder.build().map_err(fred_error)?;
        // Events reach us through fred's broadcast channels; a slow reader
        // loses events when one is full (reported as lag, which triggers a
        // resync), so the subscriber gets room for bursts. fred allocates
        // every one of a client's channels at this size up front (about
        // 1 KiB per slot in all), so only the subscriber gets it.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = EVENT_QUEUE);
        let subscriber = builder.build_subscriber_client().map_err(fred_error)?;
        client.init().await.map_err(fred_error)?;
        subscriber.init().await.map_err(fred_error)?;
        let server = Arc::new(LocalRedis {
            barrier_seen: tokio::sync::watch::Sender::new(0),
            next_barrier: AtomicU64::new(1),
            id,
            label,
            db: url.db,
            client,
            subscriber,
            subscribed: tokio::sync::OnceCell::new(),
            routes: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
        });
        server.start_watchers();
        Ok(server)
    }

    /// One connection attempt and a PING, for `check --connect`: no
    /// reconnect policy, so a refused or failed connection is an error at once.
    pub async fn probe(url: &RedisUrl, tls: Option<&TlsPaths>) -> Result<(), LocalError> {
        let label = url.to_string();
        let config = fred_config(url, tls, true)?;
        let fred_error =
            |e: fred::error::Error| LocalError::Connection { server: label.clone(), message: e.to_string() };
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(5);
            })
            .build()
            .map_err(fred_error)?;
        client.init().await.map_err(fred_error)?;
        let ping: Result<fred::types::Value, _> =
            client.custom(fred::cmd!("PING"), Vec::<fred::types::Value>::new()).await;
        let _ = client.quit().await;
        ping.map(drop).map_err(fred_error)
    }

    /// Background tasks: event routing, and flags + resync after reconnects.
    /// They hold only a weak reference, so the server closes when its last link goes.
    fn start_watchers(self: &Arc<Self>) {
        // fred re-subscribes after a reconnect only with this task running.
        let mut tasks = vec![self.subscriber.manage_subscriptions()];
        // An idle connection that died silently is only noticed when a
        // command waits: PING both every few seconds, so fred's
        // unresponsive-connection check (10 s) closes and reconnects it, and
        // the reconnect below triggers the resync.
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        tasks.push(tokio::spawn(async move {
            let _ = client.enable_heartbeat(PING_INTERVAL, false).await;
        }));
        tasks.push(tokio::spawn(async move {
            let _ = subscriber.enable_heartbeat(PING_INTERVAL, false).await;
        }));
        let weak = Arc::downgrade(self);
        // fred delivers `__keyevent@` messages on its keyspace channel, with
        // the key (the payload) as binary-safe bytes.
        let mut messages = self.subscriber.keyspace_event_rx();
        tasks.push(tokio::spawn(async move {
            use tokio::sync::broadcast::error::{RecvError, TryRecvError};
            loop {
                let first = messages.recv().await;
                let Some(server) = weak.upgrade() else { return };
                // Whatever else is already queued goes along in the same
                // batch, so a burst costs each link one lock and one wake-up
                // per batch rather than per event.
                let mut batch = RoutedBatch::default();
                let mut lagged = match first {
                    Ok(event) => {
                        server.route(&event.operation, event.key.into_bytes(), &mut batch);
                        None
                    }
                    Err(RecvError::Lagged(missed)) => Some(missed),
                    Err(RecvError::Closed) => return,
                };
                for _ in 0..ROUTE_BATCH {
                    match messages.try_recv() {
                        Ok(event) => server.route(&event.operation, event.key.into_bytes(), &mut batch),
                        Err(TryRecvError::Lagged(missed)) => lagged = Some(lagged.unwrap_or(0) + missed),
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                batch.deliver();
                if let Some(missed) = lagged {
                    tracing::warn!(server = %server.label, missed, "local event queue overflowed; resyncing the links on this server");
                    server.notify_lost(LostReason::Overflow, true);
                }
            }
        }));
        for mut reconnects in [self.client.reconnect_rx(), self.subscriber.reconnect_rx()] {
            let weak: Weak<LocalRedis> = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                while reconnects.recv().await.is_ok() {
                    let Some(server) = weak.upgrade() else { return };
                    tracing::info!(server = %server.label, "reconnected to the local Redis; applying notification flags and resyncing");
                    server.apply_flags().await;
                    server.notify_lost(LostReason::Reconnect, false);
                }
            }));
        }
        *self.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
    }

    /// Adds an event's key to the batch of the link whose namespace it is in.
    fn route(&self, operation: &str, key: Bytes, batch: &mut RoutedBatch) {
        if let Some(rest) = key.strip_prefix(BARRIER_PREFIX.as_bytes()) {
            let text = String::from_utf8_lossy(rest);
            if let Some((pid, n)) = text.split_once(':')
                && pid == std::process::id().to_string()
                && let Ok(n) = n.parse::<u64>()
            {
                self.barrier_seen.send_modify(|seen| *seen = (*seen).max(n));
            }
            return;
        }
        if key.starts_with(RESERVED_PREFIX) {
            return;
        }
        // "new" always accompanies another event of the same command.
        if operation == "new" {
            return;
        }
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(route) = find_route(&routes, &key) {
            batch.add(route, key);
        }
    }

    fn notify_lost(&self, reason: LostReason, capturing_only: bool) {
        let sinks: Vec<Arc<dyn EventSink>> = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            routes.iter().filter(|r| !capturing_only || r.capture.is_some()).map(|r| r.sink.clone()).collect()
        };
        for sink in sinks {
            sink.events_lost(reason);
        }
    }

    /// Registers a link. With `capture`, its keyspace events are routed to
    /// `sink` (subscribing on first use); `flags` are added to the server's
    /// `notify-keyspace-events`. Returns a warning text when the flags could
    /// not be set (CONFIG refused), naming the flags the server must have.
    pub async fn register(
        self: &Arc<Self>,
        capture: Option<Vec<u8>>,
        flags: Option<String>,
        sink: Arc<dyn EventSink>,
    ) -> Result<(Registration, Option<String>), LocalError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let captures = capture.is_some();
        {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            routes.push(Route { id, capture, flags: flags.clone(), sink });
            // Sorted by prefix (non-capturing routes first) for `find_route`.
            routes.sort_by(|a, b| a.capture.cmp(&b.capture));
        }
        let registration = Registration { server: self.clone(), id };
        let warning = match &flags {
            Some(needed) => self.ensure_flags(needed).await?,
            None => None,
        };
        if captures {
            let pattern = format!("__keyevent@{}__:*", self.db);
            self.subscribed.get_or_try_init(|| async { self.subscriber.psubscribe(pattern).await }).await.map_err(
                |e| LocalError::Connection { server: self.label.clone(), message: format!("PSUBSCRIBE failed: {e}") },
            )?;
        }
        Ok((registration, warning))
    }

    async fn apply_flags(&self) {
        let needed: Vec<String> = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            routes.iter().filter_map(|r| r.flags.clone()).collect()
        };
        for flags in needed {
            if let Err(e) = self.ensure_flags(&flags).await {
                tracing::warn!(server = %self.label, error = %e, "could not re-apply notify-keyspace-events");
            }
        }
    }

    /// Adds `needed` to the server's flags. `Ok(Some(warning))` when CONFIG is refused.
    async fn ensure_flags(&self, needed: &str) -> Result<Option<String>, LocalError> {
        let refused = |e: &fred::error::Error| {
            format!(
                "cannot read or set notify-keyspace-events on {} ({e}); make sure the server has at least the flags \"{needed}\" (e.g. in redis.conf), or changes will only be seen by the periodic resync",
                self.label
            )
        };
        let current: Vec<fred::types::Value> =
            match self.client.custom(fred::cmd!("CONFIG"), vec!["GET", "notify-keyspace-events"]).await {
                Ok(v) => v,
                Err(e) => return Ok(Some(refused(&e))),
            };
        let current = current.get(1).and_then(|v| v.as_str().map(|s| s.to_string())).unwrap_or_default();
        if let Some(flags) = notify_flags::merged(&current, needed) {
            let set: Result<fred::types::Value, _> =
                self.client.custom(fred::cmd!("CONFIG"), vec!["SET", "notify-keyspace-events", flags.as_str()]).await;
            if let Err(e) = set {
                return Ok(Some(refused(&e)));
            }
            tracing::info!(server = %self.label, from = %current, to = %flags, "enabled keyspace notifications");
        }
        Ok(None)
    }

    /// Runs a Lua script (EVAL) and returns its reply.
    pub async fn eval(&self, source: &str, keys: Vec<Bytes>, args: Vec<Bytes>) -> Result<Value, LocalError> {
        let mut argv: Vec<fred::types::Value> = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(fred::types::Value::from(source));
        argv.push(fred::types::Value::Integer(keys.len() as i64));
        argv.extend(keys.into_iter().map(fred::types::Value::Bytes));
        argv.extend(args.into_iter().map(fred::types::Value::Bytes));
        let reply: fred::types::Value = self
            .client
            .custom(fred::cmd!("EVAL"), argv)
            .await
            .map_err(|e| LocalError::Redis { server: self.label.clone(), message: e.to_string() })?;
        Ok(to_resp(reply))
    }

    /// Returns once every keyspace event of a write the server executed
    /// before this call has been routed (or after `timeout`): writes a
    /// reserved key and waits for its own event, which the server delivers
    /// after all earlier ones. Used before a link stops capturing.
    pub async fn barrier(&self, timeout: Duration) -> bool {
        let n = self.next_barrier.fetch_add(1, Ordering::Relaxed);
        let key = format!("{BARRIER_PREFIX}{}:{n}", std::process::id());
        let mut seen = self.barrier_seen.subscribe();
        let wait = async {
            let set: Result<fred::types::Value, _> =
                self.client.custom(fred::cmd!("SET"), vec![key.as_str(), "1", "PX", "10000"]).await;
            if set.is_err() {
                return false;
            }
            seen.wait_for(|s| *s >= n).await.is_ok()
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// PING, for `check --connect` and health checks.
    pub async fn ping(&self) -> Result<(), LocalError> {
        let _: fred::types::Value = self
            .client
            .custom(fred::cmd!("PING"), Vec::<fred::types::Value>::new())
            .await
            .map_err(|e| LocalError::Connection { server: self.label.clone(), message: e.to_string() })?;
        Ok(())
    }

    /// True while the command connection is up.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }
}

/// fred's configuration for `url`: credentials, database, and TLS for
/// `rediss://` (with the link's CA and client certificate, if any).
/// `fail_fast`: give up at the first failed connection (one-shot probes).
fn fred_config(url: &RedisUrl, tls: Option<&TlsPaths>, fail_fast: bool) -> Result<FredConfig, LocalError> {
    let label = url.to_string();
    let database = u8::try_from(url.db).map_err(|_| LocalError::Setup {
        server: label.clone(),
        message: "databases above 255 are not supported".to_string(),
    })?;
    let mut config = FredConfig {
        server: ServerConfig::new_centralized(url.host.clone(), url.port),
        username: url.username.clone(),
        password: url.password.as_ref().map(|p| p.expose().to_string()),
        database: Some(database),
        fail_fast,
        ..FredConfig::default()
    };
    if url.tls {
        let paths = tls.cloned().unwrap_or(TlsPaths { ca: None, cert: None, key: None });
        let (material, _) =
            load_client_tls(&paths, std::time::SystemTime::now()).map_err(|problems| LocalError::Setup {
                server: label.clone(),
                message: problems.into_iter().map(|p| p.message).collect::<Vec<_>>().join("; "),
            })?;
        let rustls = crate::tls::client_config(material)
            .map_err(|e| LocalError::Setup { server: label, message: e.to_string() })?;
        config.tls = Some(fred::types::config::TlsConnector::from(rustls).into());
    }
    Ok(config)
}

/// Events routed at most per batch (beyond the one that woke the router).
const ROUTE_BATCH: usize = 1024;

/// Keys routed from one batch of events, per link.
#[derive(Default)]
struct RoutedBatch {
    by_link: Vec<(u64, Arc<dyn EventSink>, Vec<Bytes>)>,
}

impl RoutedBatch {
    fn add(&mut self, route: &Route, key: Bytes) {
        match self.by_link.iter_mut().find(|(id, _, _)| *id == route.id) {
            Some((_, _, keys)) => keys.push(key),
            None => self.by_link.push((route.id, route.sink.clone(), vec![key])),
        }
    }

    fn deliver(self) {
        for (_, sink, keys) in self.by_link {
            sink.keys_changed(keys);
        }
    }
}

/// The capturing route whose prefix `key` starts with. Routes are sorted by
/// prefix and prefixes on one database never overlap (config validation), so
/// the only candidate is the last route whose prefix sorts at or before the
/// key: a binary search, whatever the number of links.
fn find_route<'a>(routes: &'a [Route], key: &[u8]) -> Option<&'a Route> {
    let after = routes.partition_point(|r| r.capture.as_deref().is_none_or(|p| p <= key));
    let candidate = routes[..after].last()?;
    candidate.capture.as_deref().is_some_and(|p| key.starts_with(p)).then_some(candidate)
}

/// Converts a fred reply into our RESP value (binary strings stay binary).
fn to_resp(value: fred::types::Value) -> Value {
    use fred::types::Value as F;
    match value {
        F::Bytes(b) => Value::Bulk(b),
        F::String(s) => Value::Bulk(s.into_inner()),
        F::Integer(i) => Value::Integer(i),
        F::Double(d) => Value::Bulk(Bytes::from(d.to_string())),
        F::Boolean(b) => Value::Integer(i64::from(b)),
        F::Null => Value::Nil,
        F::Array(items) => Value::Array(items.into_iter().map(to_resp).collect()),
        F::Map(map) => Value::Array(
            map.inner()
                .into_iter()
                .flat_map(|(k, v)| [Value::Bulk(k.as_bytes().to_vec().into()), to_resp(v)])
                .collect(),
        ),
        F::Queued => Value::Simple(Bytes::from_static(b"QUEUED")),
    }
}

/// The local servers in use, one [`LocalRedis`] per URL. Entries are weak:
/// a server closes when the last link using it stops.
#[derive(Default)]
pub struct LocalServers {
    servers: tokio::sync::Mutex<HashMap<ServerKey, Weak<LocalRedis>>>,
}

/// A server is shared by links with the same URL (credentials included) and TLS files.
type ServerKey = (RedisUrl, Option<TlsPaths>);

impl LocalServers {
    /// The shared connection for `url`, connecting on first use.
    pub async fn get(&self, url: &RedisUrl, tls: Option<&TlsPaths>) -> Result<Arc<LocalRedis>, LocalError> {
        let mut servers = self.servers.lock().await;
        servers.retain(|_, weak| weak.strong_count() > 0);
        let key = (url.clone(), tls.cloned());
        if let Some(server) = servers.get(&key).and_then(Weak::upgrade) {
            return Ok(server);
        }
        let server = LocalRedis::connect(url, tls).await?;
        servers.insert(key, Arc::downgrade(&server));
        Ok(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(std::sync::Mutex<Vec<Bytes>>);

    impl EventSink for Collect {
        fn keys_changed(&self, keys: Vec<Bytes>) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(keys);
        }
        fn events_lost(&self, _reason: LostReason) {}
    }

    fn route(id: u64, prefix: Option<&[u8]>) -> Route {
        Route { id, capture: prefix.map(<[u8]>::to_vec), flags: None, sink: Arc::new(Collect(Default::default())) }
    }

    #[test]
    fn events_find_the_one_link_whose_prefix_they_start_with() {
        let prefixes: Vec<Option<&[u8]>> = vec![None, Some(b"b:"), Some(b"a:"), Some(b"ab"), Some(b"c:x:"), None];
        let mut routes: Vec<Route> = prefixes.iter().enumerate().map(|(i, p)| route(i as u64, *p)).collect();
        routes.sort_by(|a, b| a.capture.cmp(&b.capture));
        let found = |key: &[u8]| find_route(&routes, key).and_then(|r| r.capture.clone());
        assert_eq!(found(b"a:1"), Some(b"a:".to_vec()));
        assert_eq!(found(b"abc"), Some(b"ab".to_vec()));
        assert_eq!(found(b"b:"), Some(b"b:".to_vec()));
        assert_eq!(found(b"c:x:\xff"), Some(b"c:x:".to_vec()));
        assert_eq!(found(b"c:y"), None);
        assert_eq!(found(b"a"), None);
        assert_eq!(found(b""), None);
        assert_eq!(found(b"zzz"), None);
    }

    #[test]
    fn a_batch_delivers_each_link_its_keys_once() {
        let a = route(1, Some(b"a:"));
        let b = route(2, Some(b"b:"));
        let mut batch = RoutedBatch::default();
        for (r, key) in [(&a, "a:1"), (&b, "b:1"), (&a, "a:2")] {
            batch.add(r, Bytes::copy_from_slice(key.as_bytes()));
        }
        assert_eq!(batch.by_link.len(), 2);
        assert_eq!(batch.by_link[0].2, vec![Bytes::from_static(b"a:1"), Bytes::from_static(b"a:2")]);
        batch.deliver();
    }
}
