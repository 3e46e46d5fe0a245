//! The whole integration stack in a fresh temporary directory:
//!
//! ```text
//! local redis-server                     (the site's own Redis)
//! remote redis-server <- Webdis <- nginx (the central site: mTLS, https://localhost:PORT/)
//! ```
//!
//! plus a test PKI. Dropping the [`Stack`] stops nginx, Webdis and both
//! redis-servers (in that order) and removes the directory, unless the
//! environment variable `REPLHUB_KEEP_STACK` is set (then its path is printed).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

pub use super::webdis::Acl;

use super::https::Request;
use super::install::ensure_installed;
use super::nginx::Nginx;
use super::pki::Pki;
use super::redis::RedisServer;
use super::webdis::Webdis;

/// Set (to anything) to keep stack directories after the stack is dropped.
pub const KEEP_ENV: &str = "REPLHUB_KEEP_STACK";

/// Fixed loopback ports, for a stack that other programs are configured to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPorts {
    /// The local redis-server.
    pub local_redis: u16,
    /// The remote redis-server.
    pub remote_redis: u16,
    /// Webdis (plain HTTP).
    pub webdis: u16,
    /// nginx (HTTPS with client certificates).
    pub nginx: u16,
}

impl FixedPorts {
    /// The ports of `cargo run --example stack -- up --demo` (away from every
    /// packaged service's port, 6379 and 7379 included).
    pub const DEMO: FixedPorts = FixedPorts { local_redis: 16379, remote_redis: 16380, webdis: 17379, nginx: 18443 };
}

/// How to start a [`Stack`]. `Default`: open ACL, no extra redis arguments,
/// a freshly generated PKI, free ports chosen at run time.
#[derive(Clone, Debug, Default)]
pub struct StackOptions {
    /// Webdis's ACL.
    pub acl: Acl,
    /// Extra command-line arguments of the local redis-server.
    pub local_redis_args: Vec<String>,
    /// Extra command-line arguments of the remote redis-server (e.g.
    /// `["--notify-keyspace-events", "KEA"]`; by default it has none).
    pub remote_redis_args: Vec<String>,
    /// Copy this PKI directory (see [`Pki::load`]) instead of generating one.
    pub pki_from: Option<PathBuf>,
    /// Use these ports instead of free ones (no retry: a taken port is an error).
    pub ports: Option<FixedPorts>,
}

impl StackOptions {
    /// The demo stack: [`FixedPorts::DEMO`], the committed test PKI in
    /// `examples/certs/`, the open ACL.
    pub fn demo() -> StackOptions {
        StackOptions {
            pki_from: Some(super::manifest_dir().join("examples").join("certs")),
            ports: Some(FixedPorts::DEMO),
            ..StackOptions::default()
        }
    }
}

/// A running stack. Fields are dropped in declaration order: servers from
/// the front (nginx) to the back, then the directory.
#[derive(Debug)]
pub struct Stack {
    nginx: Nginx,
    webdis: Webdis,
    remote: RedisServer,
    local: RedisServer,
    pki: Pki,
    dir: StackDir,
}

impl Stack {
    /// Starts a stack; panics with the reason (and log tails) if it cannot.
    pub fn start(options: StackOptions) -> Stack {
        Stack::try_start(options).unwrap_or_else(|e| panic!("cannot start the test stack: {e:#}"))
    }

    /// Starts a stack: a new directory, the PKI, the local and remote
    /// redis-servers, Webdis in front of the remote one, nginx in front of
    /// Webdis. Whatever was started is stopped again if a later step fails.
    pub fn try_start(options: StackOptions) -> anyhow::Result<Stack> {
        ensure_installed()?;
        let dir = StackDir::create()?;
        let cert_dir = dir.path.join("certs");
        let pki = match &options.pki_from {
            Some(src) => Pki::copy_from(src, &cert_dir)?,
            None => Pki::generate(&cert_dir)?,
        };
        let ports = options.ports;
        let local =
            RedisServer::start_new(&dir.path, "redis-local", ports.map(|p| p.local_redis), &options.local_redis_args)?;
        let remote = RedisServer::start_new(
            &dir.path,
            "redis-remote",
            ports.map(|p| p.remote_redis),
            &options.remote_redis_args,
        )?;
        let webdis = Webdis::start_new(&dir.path, remote.port(), ports.map(|p| p.webdis), options.acl)?;
        let nginx = Nginx::start_new(&dir.path, pki.dir(), webdis.port(), ports.map(|p| p.nginx))?;
        Ok(Stack { nginx, webdis, remote, local, pki, dir })
    }

    /// The stack's directory (configs, logs, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The central site's URL for the hub: `https://localhost:PORT/` (nginx).
    pub fn remote_url(&self) -> String {
        self.nginx.url()
    }

    /// Webdis without nginx: `http://127.0.0.1:PORT/`.
    pub fn webdis_direct_url(&self) -> String {
        self.webdis.url()
    }

    /// A GET of `path` (e.g. `"PING"`) through nginx, trusting the stack's CA
    /// (no client certificate yet).
    pub fn https(&self, path: &str) -> Request {
        Request::get(format!("{}{path}", self.remote_url())).ca(&self.pki.ca_cert())
    }

    /// The PKI (its files are in `<dir>/certs`).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The local redis-server.
    pub fn local(&self) -> &RedisServer {
        &self.local
    }

    /// The local redis-server, to stop, restart or pause it.
    pub fn local_mut(&mut self) -> &mut RedisServer {
        &mut self.local
    }

    /// The remote redis-server (behind Webdis).
    pub fn remote(&self) -> &RedisServer {
        &self.remote
    }

    /// The remote redis-server, to stop, restart or pause it.
    pub fn remote_mut(&mut self) -> &mut RedisServer {
        &mut self.remote
    }

    /// Webdis.
    pub fn webdis(&self) -> &Webdis {
        &self.webdis
    }

    /// Webdis, to stop, restart or pause it.
    pub fn webdis_mut(&mut self) -> &mut Webdis {
        &mut self.webdis
    }

    /// nginx.
    pub fn nginx(&self) -> &Nginx {
        &self.nginx
    }

    /// nginx, to stop, restart or reload it.
    pub fn nginx_mut(&mut self) -> &mut Nginx {
        &mut self.nginx
    }

    /// The pids of every running process of the stack (nginx workers included).
    pub fn pids(&mut self) -> Vec<u32> {
        let mut pids: Vec<u32> =
            [self.nginx.pid(), self.webdis.pid(), self.remote.pid(), self.local.pid()].into_iter().flatten().collect();
        pids.extend(self.nginx.worker_pids());
        pids
    }
}

/// A fresh directory under the system temp dir, removed on drop unless
/// [`KEEP_ENV`] is set.
#[derive(Debug)]
struct StackDir {
    path: PathBuf,
}

impl StackDir {
    fn create() -> anyhow::Result<StackDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("replhub-stack-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    // nginx workers run as `nobody` when we are root: let them into their temp dirs.
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .with_context(|| format!("cannot chmod {}", path.display()))?;
                    return Ok(StackDir { path });
                }
                // Left over from an earlier process with the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
    }
}

impl Drop for StackDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("{KEEP_ENV} is set: keeping the stack directory {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove the stack directory {}: {e}", self.path.display());
        }
    }
}
