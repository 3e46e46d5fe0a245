//! Shared remote endpoints: one Webdis client (and so one keep-alive pool)
//! per endpoint URL, TLS files and credentials, shared by every link using
//! that combination.
//!
//! A [`RemotePool`] can swap its client for a new one (certificate rotation):
//! requests already under way finish on the old client, every new request
//! uses the new one, and the old pool's connections close once idle.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::Semaphore;

use crate::config::{RemoteEndpoint, TlsPaths};
use crate::webdis::{ClientOptions, WebdisClient, WebdisError};

/// Identifies a pool: endpoint, TLS files and credentials.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    url: String,
    tls: Option<TlsPaths>,
    auth: Option<crate::config::BasicAuth>,
}

/// Resyncs that may scan one endpoint at the same time, so a fleet returning
/// from an outage does not stampede the central site.
const RESYNCS_PER_ENDPOINT: usize = 2;

/// A shared, swappable client for one endpoint.
pub struct RemotePool {
    endpoint: RemoteEndpoint,
    options: ClientOptions,
    client: RwLock<Arc<WebdisClient>>,
    /// Bounds concurrent resync scans against this endpoint.
    pub resync_slots: Semaphore,
    /// Bumped on every client swap, so streams know to reconnect.
    generation: std::sync::atomic::AtomicU64,
    /// `None` while the endpoint answers PING, else why not (see [`probe`]).
    health: tokio::sync::watch::Sender<Option<String>>,
}

impl RemotePool {
    /// The client to use for the next request.
    pub fn client(&self) -> Arc<WebdisClient> {
        self.client.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The remote Redis this pool talks to, for the echo filter and logs.
    pub fn server_id(&self) -> String {
        let (url, db) = self.endpoint.server_key();
        format!("{url}#db{db}")
    }

    /// Rebuilds the client from the files on disk (certificate rotation).
    /// On error the old client stays.
    pub fn reload_tls(&self) -> Result<(), WebdisError> {
        let fresh = Arc::new(WebdisClient::new(&self.endpoint, self.options)?);
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Follows the endpoint's health (`None` = answering).
    pub fn health(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.health.subscribe()
    }

    /// Changes when the client is swapped.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The registry of remote pools. Entries are weak: a pool closes when the
/// last link using it stops.
#[derive(Default)]
pub struct RemotePools {
    pools: std::sync::Mutex<HashMap<PoolKey, Weak<RemotePool>>>,
    options: ClientOptions,
}

impl RemotePools {
    pub fn new(options: ClientOptions) -> Self {
        RemotePools { pools: Default::default(), options }
    }

    /// The shared pool for `endpoint`, building it on first use.
    pub fn get(&self, endpoint: &RemoteEndpoint) -> Result<Arc<RemotePool>, WebdisError> {
        let key =
            PoolKey { url: endpoint.url.to_string(), tls: endpoint.tls.clone(), auth: endpoint.basic_auth.clone() };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|_, weak| weak.strong_count() > 0);
        if let Some(pool) = pools.get(&key).and_then(Weak::upgrade) {
            return Ok(pool);
        }
        let client = WebdisClient::new(endpoint, self.options)?;
        let pool = Arc::new(RemotePool {
            endpoint: endpoint.clone(),
            options: self.options,
            client: RwLock::new(Arc::new(client)),
            resync_slots: Semaphore::new(RESYNCS_PER_ENDPOINT),
            generation: Default::default(),
            health: tokio::sync::watch::Sender::new(None),
        });
        pools.insert(key, Arc::downgrade(&pool));
        tokio::spawn(probe(Arc::downgrade(&pool)));
        Ok(pool)
    }

    /// Every live pool that uses `file` (certificate rotation).
    pub fn using_file(&self, file: &std::path::Path) -> Vec<Arc<RemotePool>> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .filter(|(key, _)| key.tls.as_ref().is_some_and(|t| t.files().any(|f| f == file)))
            .filter_map(|(_, weak)| weak.upgrade())
            .collect()
    }
}

/// How often an endpoint is PINGed, and how long a PING may take.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// PINGs the endpoint of `pool` every few seconds while the pool lives, so
/// links that send nothing for a while (an idle push link) still know
/// whether their remote answers; one probe per endpoint, whatever the
/// number of links sharing it.
async fn probe(pool: Weak<RemotePool>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(client) = pool.upgrade().map(|p| p.client()) else { return };
        let result = client.command_within::<&[u8]>("PING", &[], PROBE_TIMEOUT).await;
        let Some(pool) = pool.upgrade() else { return };
        let health = result.err().map(|e| e.to_string());
        pool.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}
