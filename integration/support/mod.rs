//! Test support: the real integration stack (two redis-servers, Webdis and
//! nginx with mutual TLS), started as child processes of the test binary.
//!
//! This tree is included with `#[path = "../support/mod.rs"] mod support;` by
//! the integration test binary (`integration/tests/main.rs`) and by the
//! `stack` example (`integration/stack_main.rs`). Who owns what:
//!
//! - [`procs`]: every child process (spawning from one long-lived thread,
//!   parent-death signal, stop on drop, signals, readiness polling).
//! - [`ports`]: loopback port choice, bind retry, "does this pid listen there".
//! - [`install`]: finding (and if needed installing) the server programs.
//! - [`pki`]: the throwaway CA and certificates (rcgen).
//! - [`redis`]: a redis-server child and a small synchronous RESP client.
//! - [`webdis`]: a Webdis child and its rendered config (`examples/central/webdis.json`).
//! - [`nginx`]: an nginx child rendered from `examples/central/nginx.conf`.
//! - [`https`]: requests through nginx with a chosen client certificate (curl).
//! - [`stack`]: the whole stack in a fresh temporary directory.
//! - [`hub`]: a `replhub run` process under test and the configs it gets.
//! - [`faults`]: the fault matrix (writers on both sides, faults, convergence).
//! - [`proxy`]: misbehaving remotes (a delaying proxy, a garbage server).

pub mod faults;
pub mod https;
pub mod hub;
pub mod install;
pub mod nginx;
pub mod pki;
pub mod ports;
pub mod procs;
pub mod proxy;
pub mod redis;
pub mod stack;
pub mod webdis;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The crate root (where `Cargo.toml` and `examples/` are), fixed at compile time.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/central/` of this crate: the configuration the stack renders.
pub fn central_dir() -> PathBuf {
    manifest_dir().join("examples").join("central")
}

/// Calls `f` until it returns `Some`, or `timeout` has passed (then `None`).
///
/// Polls often at first (servers start in milliseconds) and backs off to 20 ms.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The last `lines` lines of a text file, for error messages (never fails:
/// a missing file is described instead).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 << 10;
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(e) = read {
        return format!("(cannot read {}: {e})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("--- last lines of {} ---\n{tail}\n---", path.display())
}
