//! Loopback ports: chosen at run time by the kernel (bind `127.0.0.1:0`),
//! retried when a server loses the race for one, and checked afterwards
//! (which pid really listens there).
//!
//! Tests run in parallel (threads of one `cargo test` process, and separate
//! nextest processes), so a port that was free when it was picked may be
//! taken by another test's server before ours binds it: every server start
//! goes through [`start_on_port`], which tries again on a fresh port.

use std::net::{Ipv4Addr, TcpListener};

use anyhow::{Context, bail};

/// How often a server start is tried on fresh ports before giving up.
const ATTEMPTS: usize = 8;

/// Why one attempt to start a server failed.
#[derive(Debug)]
pub enum StartError {
    /// The server could not bind its port; the text is its log tail.
    AddrInUse(String),
    /// Any other failure (not worth another port).
    Failed(anyhow::Error),
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr().context("cannot read the address of a bound socket")?.port())
}

/// Fails with a clear message if `127.0.0.1:port` cannot be bound now.
pub fn ensure_free(port: u16) -> anyhow::Result<()> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map(drop).with_context(|| format!("127.0.0.1:{port} is taken"))
}

/// Starts a server with `attempt(port)`. With `fixed`, only that port is
/// tried (checked free first, for a clear error); otherwise up to 8 fresh
/// ports are tried while the server reports [`StartError::AddrInUse`].
/// `what` names the server in errors.
pub fn start_on_port<T>(
    what: &str,
    fixed: Option<u16>,
    mut attempt: impl FnMut(u16) -> Result<T, StartError>,
) -> anyhow::Result<T> {
    if let Some(port) = fixed {
        ensure_free(port).with_context(|| format!("cannot start {what} on its fixed port {port}"))?;
        return match attempt(port) {
            Ok(server) => Ok(server),
            Err(StartError::AddrInUse(log)) => bail!("cannot start {what}: 127.0.0.1:{port} is taken\n{log}"),
            Err(StartError::Failed(e)) => Err(e.context(format!("cannot start {what} on port {port}"))),
        };
    }
    let mut last_log = String::new();
    for _ in 0..ATTEMPTS {
        let port = free_port()?;
        match attempt(port) {
            Ok(server) => return Ok(server),
            Err(StartError::AddrInUse(log)) => last_log = log,
            Err(StartError::Failed(e)) => return Err(e.context(format!("cannot start {what} on port {port}"))),
        }
    }
    bail!("cannot start {what}: {ATTEMPTS} free ports were all taken before it could bind them\n{last_log}")
}

/// Whether process `pid` holds a listening TCP socket on `127.0.0.1:port`
/// (and not, say, `0.0.0.0:port`, or another process that took the port).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A").then(|| fields[9])
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|inode| inodes.contains(&inode))
    })
}
