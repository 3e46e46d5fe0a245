//! Helpers shared by the fuzz tests (`tests/fuzz_tests.rs`) and the
//! bounded-resource checks (`limits_main.rs`): CPU-time limits, a fixed
//! environment, and the invariants every config load must keep.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use replhub::config::{self, Diagnostics, Loaded, Severity};

/// CPU time of the calling thread: unlike wall time, it does not grow when
/// the rest of the suite keeps both cores busy, so limits on it are not flaky.
#[cfg(target_os = "linux")]
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
pub fn thread_cpu_time() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Runs `f` and fails when it used more than `limit` of CPU time, or ten
/// times that in wall time (which catches blocking as well as spinning).
pub fn timed<T>(what: &str, limit: Duration, f: impl FnOnce() -> T) -> Result<T, String> {
    let (wall, cpu) = (Instant::now(), thread_cpu_time());
    let out = f();
    let (wall, cpu) = (wall.elapsed(), thread_cpu_time().saturating_sub(cpu));
    if cpu > limit || wall > limit * 10 {
        Err(format!("{what} took {cpu:?} of CPU time, {wall:?} in all (limit {limit:?})"))
    } else {
        Ok(out)
    }
}

pub fn env_lookup(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/replhub".to_string()),
        "WEBDIS_PASSWORD" | "PW" => Some("s3cret".to_string()),
        "EMPTY" => Some(String::new()),
        "NASTY" => Some("]\n&a *a ${PW} {[\"'".to_string()),
        _ => None,
    }
}

/// Lines as YAML counts them (`\r\n`, `\r` and `\n` each end one), plus the one after the last break.
pub fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' || bytes[i] == b'\r' {
            lines.push(&text[start..i]);
            if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    lines.push(&text[start..]);
    lines
}
/// Loads `text` and checks what every outcome must satisfy.
pub fn config_invariants(path: &Path, text: &str) -> Result<Result<Loaded, Diagnostics>, String> {
    let result = timed("loading the config", Duration::from_secs(1), || {
        config::load_text(path, text, &env_lookup, SystemTime::now())
    })?;
    let lines = yaml_lines(text);
    let items = match &result {
        Ok(loaded) => {
            if loaded.warnings.has_errors() {
                return Err("an Ok load carries errors".to_string());
            }
            &loaded.warnings.items
        }
        Err(diags) => {
            if !diags.has_errors() {
                return Err(format!("Err without an error: {:?}", diags.items));
            }
            &diags.items
        }
    };
    for d in items {
        let line = usize::try_from(d.pos.line).unwrap_or(usize::MAX);
        let within = (1..=lines.len()).contains(&line)
            && d.pos.col >= 1
            && d.pos.col <= lines[line - 1].chars().count() as u64 + 1;
        if !within {
            let severity = if d.severity == Severity::Error { "error" } else { "warning" };
            return Err(format!(
                "{severity} at {}:{} is outside the text ({} lines): {}",
                d.pos.line,
                d.pos.col,
                lines.len(),
                d.message
            ));
        }
    }
    Ok(result)
}
pub fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join("demo.yaml")
}
