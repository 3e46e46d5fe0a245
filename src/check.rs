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
        let remotes = std::sync::Arc::new(crate::remote::RemotePools::new(crate::webdis::ClientOptions {
            request_timeout: CONNECT_TIMEOUT,
            ..Default::default()
        }));
        // Every link at once, so N unreachable endpoints cost one timeout, not N.
        let mut dials = tokio::task::JoinSet::new();
        for (index, link) in loaded.config.links.iter().enumerate() {
            let (link, remotes) = (link.clone(), remotes.clone());
            dials.spawn(async move { (index, dial(&link, &remotes).await) });
        }
        let mut results: Vec<(usize, [Result<String, String>; 2])> = Vec::new();
        while let Some(done) = dials.join_next().await {
            match done {
                Ok(result) => results.push(result),
                Err(e) => {
                    let _ = writeln!(out, "a connection check failed to run: {e}");
                    return false;
                }
            }
        }
        results.sort_by_key(|(index, _)| *index);
        let mut ok = true;
        for (index, [local, remote]) in results {
            let name = &loaded.config.links[index].name;
            for (side, result) in [("local", local), ("remote", remote)] {
                let line = result.unwrap_or_else(|e| {
                    ok = false;
                    format!("FAILED: {e}")
                });
                let _ = writeln!(out, "link `{name}`: {side}: {line}");
            }
        }
        ok
    })
}

/// How long each side may take to answer.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Dials one link's local Redis (PING) and remote (TLS handshake, PING through Webdis).
async fn dial(link: &config::LinkConfig, remotes: &crate::remote::RemotePools) -> [Result<String, String>; 2] {
    let local = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        crate::local::LocalRedis::probe(&link.local.url, link.local.tls.as_ref()),
    )
    .await
    {
        Ok(Ok(())) => Ok(format!("ok ({})", link.local.url)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{} did not answer within {}s (timeout)", link.local.url, CONNECT_TIMEOUT.as_secs())),
    };
    let remote = async {
        let pool = remotes.get(&link.remote)?;
        pool.client().command::<&[u8]>("PING", &[]).await
    };
    let remote = match remote.await {
        Ok(_) => Ok(format!("ok ({}: TLS handshake and PING through Webdis)", link.remote.url)),
        Err(e) => Err(e.to_string()),
    };
    [local, remote]
}
