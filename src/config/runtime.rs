//! The validated configuration the rest of replhub runs on.
//!
//! Built only by `validate`, so holding a [`Config`] means every check has
//! passed: later code never re-checks URLs, prefixes or names. Secrets are
//! wrapped in [`Secret`] and never appear in `Debug` output or messages.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use super::model::{Conflict, DataType, Direction};
pub use super::tls_files::TlsPaths;

/// A whole config file.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was loaded from, as the user named it.
    pub path: PathBuf,
    pub admin: Option<AdminConfig>,
    pub shutdown_timeout: Duration,
    pub state_dir: Option<PathBuf>,
    /// In file order; names are unique.
    pub links: Vec<Arc<LinkConfig>>,
}

impl Config {
    /// A config with no links, the starting point of the first diff.
    pub fn empty(path: PathBuf) -> Self {
        Config { path, admin: None, shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT, state_dir: None, links: Vec::new() }
    }
}

pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// One link's effective configuration (defaults merged in).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    pub name: String,
    pub direction: Direction,
    pub local: LocalEndpoint,
    pub remote: RemoteEndpoint,
    /// Sorted, without duplicates.
    pub types: Vec<DataType>,
    pub conflict: Conflict,
    pub heartbeat: Heartbeat,
    /// `None`: resync only at start and after reconnects.
    pub resync_interval: Option<Duration>,
    pub max_delete_fraction: f64,
}

impl LinkConfig {
    pub fn replicates(&self, ty: DataType) -> bool {
        self.types.contains(&ty)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The local Redis side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub url: RedisUrl,
    pub prefix: Vec<u8>,
    pub tls: Option<TlsPaths>,
}

/// A parsed `redis://` or `rediss://` URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RedisUrl {
    /// Identifies the Redis server regardless of credentials; `localhost`
    /// and `127.0.0.1` count as the same server.
    pub fn server_key(&self) -> (String, u16) {
        let host = match self.host.as_str() {
            "localhost" | "::1" | "[::1]" => "127.0.0.1".to_string(),
            h => h.to_ascii_lowercase(),
        };
        (host, self.port)
    }
}

impl fmt::Display for RedisUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://")?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (None, None) => {}
        }
        write!(f, "{}:{}/{}", self.host, self.port, self.db)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

/// The remote side: Webdis behind an HTTPS proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// Base URL, ending in `/`.
    pub url: url::Url,
    pub prefix: Vec<u8>,
    /// Present for https:// (all three files).
    pub tls: Option<TlsPaths>,
    pub basic_auth: Option<BasicAuth>,
    pub db: u32,
    pub insecure_plaintext: bool,
}

impl RemoteEndpoint {
    /// Identifies the Redis behind this Webdis for overlap checks and the echo filter.
    pub fn server_key(&self) -> (String, u32) {
        (self.url.as_str().to_ascii_lowercase(), self.db)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BasicAuth {
    pub user: String,
    pub password: Secret,
}

/// A string that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
