//! The server programs the stack runs: found on the PATH (plus the sbin
//! directories, where Debian puts nginx), and installed with apt-get when one
//! is missing and we are root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::{Context, bail};

/// The Debian packages that provide everything [`Programs`] needs.
const PACKAGES: &[&str] = &["redis-server", "redis-tools", "webdis", "nginx", "openssl", "curl"];

/// Where policy-rc.d lives; while it exits 101, packages do not start their services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Absolute paths of the programs the stack and its tests run.
#[derive(Debug)]
pub struct Programs {
    /// `redis-server`
    pub redis_server: PathBuf,
    /// `webdis`
    pub webdis: PathBuf,
    /// `nginx`
    pub nginx: PathBuf,
    /// `openssl`
    pub openssl: PathBuf,
    /// `curl`
    pub curl: PathBuf,
}

/// Finds every program, installing the packages first if one is missing
/// (as root: `apt-get install -y redis-server redis-tools webdis nginx openssl
/// curl`, with the packaged services kept from starting; otherwise an error
/// saying what to install). Done once per process.
pub fn ensure_installed() -> anyhow::Result<&'static Programs> {
    static PROGRAMS: OnceLock<Programs> = OnceLock::new();
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(programs) = PROGRAMS.get() {
        return Ok(programs);
    }
    let _guard = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(programs) = PROGRAMS.get() {
        return Ok(programs);
    }
    let programs = match find_all() {
        Ok(programs) => programs,
        Err(missing) => {
            install(&missing)?;
            find_all().map_err(|still| anyhow::anyhow!("still missing after apt-get install: {}", still.join(", ")))?
        }
    };
    Ok(PROGRAMS.get_or_init(|| programs))
}

/// All programs, or the names of those that are missing.
fn find_all() -> Result<Programs, Vec<&'static str>> {
    let mut missing = Vec::new();
    let mut find = |name: &'static str| {
        find_program(name).unwrap_or_else(|| {
            missing.push(name);
            PathBuf::new()
        })
    };
    let programs = Programs {
        redis_server: find("redis-server"),
        webdis: find("webdis"),
        nginx: find("nginx"),
        openssl: find("openssl"),
        curl: find("curl"),
    };
    // Not run by the tests, but expected by people debugging a kept stack.
    if find_program("redis-cli").is_none() {
        missing.push("redis-cli");
    }
    if missing.is_empty() { Ok(programs) } else { Err(missing) }
}

/// The first executable file called `name` on the PATH or in the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Installs [`PACKAGES`] with apt-get (root only), keeping their services from starting.
fn install(missing: &[&str]) -> anyhow::Result<()> {
    let command = format!("apt-get install -y {}", PACKAGES.join(" "));
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test stack needs {} (missing); install them as root with: {command}", missing.join(", "));
    }
    eprintln!("test stack: {} missing, running {command}", missing.join(", "));
    let created_policy = !Path::new(POLICY_RC_D).exists();
    if created_policy {
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# written by replhub's test support during apt-get install\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("cannot write {POLICY_RC_D}"))?;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run apt-get {}", args.join(" ")))
    };
    let mut install_args = vec!["install", "-y"];
    install_args.extend_from_slice(PACKAGES);
    // A fresh machine may have no package lists yet: update once and retry.
    let result = match apt(&install_args) {
        Ok(status) if status.success() => Ok(()),
        _ => match apt(&["update"]).and_then(|_| apt(&install_args)) {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(anyhow::anyhow!("`{command}` failed ({status})")),
            Err(e) => Err(e),
        },
    };
    if created_policy {
        std::fs::remove_file(POLICY_RC_D).with_context(|| format!("cannot remove {POLICY_RC_D}"))?;
    }
    result
}
