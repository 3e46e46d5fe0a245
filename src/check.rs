//! `replhub check`: validate a config file and print every finding.

use std::io::Write;
use std::path::Path;

use crate::config;

/// Validates the file and prints `FILE:LINE:COL: …` lines to `out`.
/// Returns true when the file is valid (warnings allowed).
pub fn check_file(path: &Path, out: &mut dyn Write) -> bool {
    match config::load(path) {
        Ok(loaded) => {
            for line in loaded.warnings.lines() {
                let _ = writeln!(out, "{line}");
            }
            let links = loaded.config.links.len();
            let _ = writeln!(out, "{}: ok ({links} link{})", path.display(), if links == 1 { "" } else { "s" });
            true
        }
        Err(diags) => {
            for line in diags.lines() {
                let _ = writeln!(out, "{line}");
            }
            let errors = diags.errors().count();
            let _ = writeln!(out, "{}: {errors} error{}", path.display(), if errors == 1 { "" } else { "s" });
            false
        }
    }
}

/// `check --connect`: dials every local Redis and every remote; prints one
/// line per link and side. Returns true when everything answered.
pub fn connect_all(path: &Path, out: &mut dyn Write) -> bool {
    let Ok(loaded) = config::load(path) else { return false };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "cannot start the async runtime: {e}");
            return false;
        }
    };
    runtime.block_on(async {
        let mut ok = true;
        let remotes = crate::remote::RemotePools::new(crate::webdis::ClientOptions {
            request_timeout: std::time::Duration::from_secs(10),
            ..Default::default()
        });
        for link in &loaded.config.links {
            let local = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                crate::local::LocalRedis::probe(&link.local.url, link.local.tls.as_ref()),
            )
            .await;
            let local_line = match local {
                Ok(Ok(())) => format!("ok ({})", link.local.url),
                Ok(Err(e)) => {
                    ok = false;
                    format!("FAILED: {e}")
                }
                Err(_) => {
                    ok = false;
                    format!("FAILED: {} did not answer within 10s (timeout)", link.local.url)
                }
            };
            let _ = writeln!(out, "link `{}`: local: {local_line}", link.name);
            let remote = async {
                let pool = remotes.get(&link.remote)?;
                pool.client().command::<&[u8]>("PING", &[]).await
            };
            let remote_line = match remote.await {
                Ok(_) => format!("ok ({}: TLS handshake and PING through Webdis)", link.remote.url),
                Err(e) => {
                    ok = false;
                    format!("FAILED: {e}")
                }
            };
            let _ = writeln!(out, "link `{}`: remote: {remote_line}", link.name);
        }
        ok
    })
}
