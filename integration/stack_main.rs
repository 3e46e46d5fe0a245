//! `cargo run --example stack -- <command>`: the integration test stack as a
//! command.
//!
//! - `pki DIR`: write a long-lived (100-year) test PKI into DIR (this is how
//!   `examples/certs/` was made).
//! - `install`: install the Debian packages the stack needs, if missing
//!   (as root; see `support::install`).
//! - `up [--demo]`: start the stack and keep it up until Ctrl-C or SIGTERM,
//!   printing each server's address. `--demo` uses fixed ports (local redis
//!   16379, remote redis 16380, Webdis 17379, nginx 18443), the committed PKI
//!   of `examples/certs/` and the open ACL, so that a config file with static
//!   URLs can point at it.

#[allow(dead_code, reason = "the support tree is shared with the integration tests, which use the rest of it")]
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use support::pki::{Pki, SITE_A, SITE_B};
use support::stack::{FixedPorts, KEEP_ENV, Stack, StackOptions};

const USAGE: &str = "usage: cargo run --example stack -- pki DIR\n       cargo run --example stack -- up [--demo]\n       cargo run --example stack -- install";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["pki", dir] => write_pki(Path::new(dir)),
        ["up"] => up(false),
        ["up", "--demo"] => up(true),
        ["install"] => {
            support::install::ensure_installed().map(|programs| println!("test stack programs: {programs:?}"))
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let pki = Pki::generate(dir)?;
    println!("wrote a test-only PKI (valid for 100 years) into {}:", pki.dir().display());
    for file in support::pki::FILES {
        println!("  {}", pki.dir().join(file).display());
    }
    Ok(())
}

fn up(demo: bool) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread inherits the mask and
    // the signals wait for sigwait below (children start with an empty mask: procs).
    let signals = block_termination_signals()?;
    let options = if demo { StackOptions::demo() } else { StackOptions::default() };
    let certs: PathBuf = options.pki_from.clone().unwrap_or_default();
    let stack = Stack::try_start(options).map_err(|e| {
        if demo {
            let p = FixedPorts::DEMO;
            e.context(format!(
                "the demo stack needs the loopback ports {}, {}, {} and {} (is another `up --demo` running?)",
                p.local_redis, p.remote_redis, p.webdis, p.nginx
            ))
        } else {
            e
        }
    })?;
    let certs = if demo { certs } else { stack.pki().dir().to_path_buf() };
    let cert = |name: &str| certs.join(name).display().to_string();
    println!("replhub test stack is up; directory {}", stack.dir().display());
    println!("  local redis   {}", stack.local().url());
    println!("  remote redis  {}", stack.remote().url());
    println!("  webdis        {}  (plain HTTP, in front of the remote redis; ACL: open)", stack.webdis_direct_url());
    println!("  nginx         {}  (mutual TLS, in front of webdis)", stack.remote_url());
    println!("  CA            {}", cert("ca.pem"));
    for site in [SITE_A, SITE_B] {
        println!("  {site}        {} + {}", cert(&format!("{site}.pem")), cert(&format!("{site}.key")));
    }
    println!(
        "  try:          curl --cacert {} --cert {} --key {} {}PING",
        cert("ca.pem"),
        cert("site-a.pem"),
        cert("site-a.key"),
        stack.remote_url()
    );
    if std::env::var_os(KEEP_ENV).is_none() {
        println!("Ctrl-C stops everything and removes the directory (set {KEEP_ENV} to keep it).");
    } else {
        println!("Ctrl-C stops everything ({KEEP_ENV} is set: the directory is kept).");
    }
    let sig = wait_for_signal(&signals)?;
    println!("got signal {sig}, stopping");
    drop(stack);
    Ok(())
}

fn block_termination_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; plain libc calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            anyhow::bail!("cannot block SIGINT and SIGTERM: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> anyhow::Result<libc::c_int> {
    let mut sig: libc::c_int = 0;
    // SAFETY: valid pointers to a sigset and an int.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        anyhow::bail!("sigwait failed: {}", std::io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}
