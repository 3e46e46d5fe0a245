//! Loading the YAML config file.
//!
//! `load` runs the stages in order, each on the position-carrying tree of
//! `tree`: parse (bounded) → `${VAR}` interpolation → schema check (all
//! structural errors) → per-link `defaults` merge and semantic validation →
//! runtime [`Config`]. Every stage appends to one [`Diagnostics`], so a file
//! with ten problems gets ten `FILE:LINE:COL: message` lines at once.

pub mod diagnostic;
pub mod diff;
pub mod interpolate;
pub mod model;
pub mod runtime;
pub mod schema_check;
pub mod tls_files;
pub mod tree;
pub mod validate;
pub mod watch;

use std::path::Path;
use std::time::SystemTime;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use runtime::*;

/// A valid config and its warnings.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Warnings only (a `Loaded` has no errors).
    pub warnings: Diagnostics,
    /// Hash of the file's bytes, to tell a real change from a touch.
    pub content_hash: u64,
}

/// Reads and validates the file at `path` against the process environment and clock.
pub fn load(path: &Path) -> Result<Loaded, Diagnostics> {
    let text = read_config_file(path)?;
    load_text(path, &text, &|name| std::env::var(name).ok(), SystemTime::now())
}

/// Reads the file, refusing oversized or non-UTF-8 content with a diagnostic.
pub fn read_config_file(path: &Path) -> Result<String, Diagnostics> {
    let mut diags = Diagnostics::new(path);
    let origin = tree::Pos { line: 1, col: 1 };
    let bytes = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > tree::MAX_FILE_BYTES as u64 => {
            diags.error(
                origin,
                format!(
                    "the file has {} bytes; config files are limited to {} bytes",
                    meta.len(),
                    tree::MAX_FILE_BYTES
                ),
            );
            return Err(diags);
        }
        Ok(_) => std::fs::File::open(path).and_then(|f| {
            use std::io::Read;
            let mut bytes = Vec::new();
            f.take(tree::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        }),
        Err(e) => Err(e),
    };
    if let Ok(b) = &bytes
        && b.len() > tree::MAX_FILE_BYTES
    {
        diags.error(
            origin,
            format!("the file has more than {} bytes; config files are limited to that", tree::MAX_FILE_BYTES),
        );
        return Err(diags);
    }
    match bytes {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
            diags.error(origin, format!("the file is not valid UTF-8 (byte {})", e.utf8_error().valid_up_to()));
            diags
        }),
        Err(e) => {
            diags.error(origin, format!("cannot read the config file: {e}"));
            Err(diags)
        }
    }
}

/// Validates config text as if it had been read from `path`.
pub fn load_text(
    path: &Path,
    text: &str,
    env: interpolate::Lookup<'_>,
    now: SystemTime,
) -> Result<Loaded, Diagnostics> {
    let mut diags = Diagnostics::new(path);
    let mut root = match tree::parse(text) {
        Ok(root) => root,
        Err(e) => {
            diags.error(e.pos, format!("YAML syntax error: {}", e.message));
            return Err(diags);
        }
    };
    let snapshot = root.clone();
    interpolate::interpolate(&mut root, &snapshot, env, &mut diags);
    schema_check::check(&root, &model::schema(), &mut diags);
    let config = validate::validate(&root, path, now, &mut diags);
    match config {
        Some(config) if !diags.has_errors() => {
            Ok(Loaded { config, warnings: diags, content_hash: content_hash(text.as_bytes()) })
        }
        _ => Err(diags),
    }
}

/// A stable hash of file content (FNV-1a, 64 bit).
pub fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
