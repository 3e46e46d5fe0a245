//! Bounded-resource checks of hostile input, each in a process of its own
//! with a capped address space and a deadline, so a regression fails in
//! seconds instead of taking the machine's memory.
//!
//! A test binary without the libtest harness (`harness = false`): run with
//! no arguments, it starts itself once per case (`--case NAME`), each child
//! builds its input, caps its address space (RLIMIT_AS) and runs the case, and the parent
//! reports every case and exits non-zero if any failed. `--list` prints the
//! cases in libtest's format, and `NAME --exact` runs one.

#[path = "fuzz_common.rs"]
mod fuzz_common;

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use fuzz_common::{config_invariants, demo_path, env_lookup};
use replhub::config;
use replhub::resp::{self, Limits, StreamDecoder};

/// A case: its name, its deadline, and its body (which caps the address
/// space itself, once its input is built).
struct Case {
    name: &'static str,
    deadline: Duration,
    run: fn(),
}

const CASES: &[Case] = &[
    Case {
        name: "resp_incomplete_nested_arrays_reserve_only_what_arrived",
        deadline: Duration::from_secs(10),
        run: resp_nested_reservations,
    },
    Case { name: "config_tls_file_reads_are_bounded", deadline: Duration::from_secs(10), run: config_tls_dev_zero },
    Case { name: "config_file_reads_are_bounded", deadline: Duration::from_secs(10), run: config_file_dev_zero },
    Case {
        name: "config_defaults_are_not_copied_into_every_link",
        deadline: Duration::from_secs(4),
        run: config_defaults_per_link,
    },
    Case { name: "config_overlaps_are_reported_once_per_link", deadline: Duration::from_secs(4), run: config_overlaps },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let Some(case) = args.get(i + 1).and_then(|n| CASES.iter().find(|c| c.name == n)) else {
            eprintln!("unknown case");
            return ExitCode::from(2);
        };
        (case.run)();
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--list") {
        for case in CASES {
            println!("{}: test", case.name);
        }
        return ExitCode::SUCCESS;
    }
    // A name (with or without --exact) selects cases, like libtest's filter.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let selected: Vec<&Case> =
        CASES.iter().filter(|c| filters.is_empty() || filters.iter().any(|f| c.name.contains(f.as_str()))).collect();
    let mut failed = 0;
    for case in &selected {
        match run_child(case) {
            Ok(()) => println!("test {} ... ok", case.name),
            Err(why) => {
                failed += 1;
                println!("test {} ... FAILED\n{why}", case.name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        selected.len() - failed
    );
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs `case` in a child process of this binary, within its deadline.
fn run_child(case: &Case) -> Result<(), String> {
    let mut child = Command::new("/proc/self/exe")
        .args(["--case", case.name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    let deadline = Instant::now() + case.deadline;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                let output = child.wait_with_output().map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&output.stderr).into_owned();
                return if status.success() { Ok(()) } else { Err(format!("the child failed ({status}):\n{text}")) };
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {:?}", case.deadline));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Caps this process's address space at its current size plus `headroom` bytes.
fn limit_address_space(headroom: u64) {
    let limit = status_kib("VmSize:") * 1024 + headroom;
    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: setrlimit only reads the struct we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) };
    assert_eq!(rc, 0, "setrlimit failed");
}

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    status_kib("VmHWM:") * 1024
}

/// Regression test (fails while the bug exists): an incomplete array
/// reserves `min(count, buffered/3)` elements before any arrive, at every
/// nesting level, so 8 nested `*67108864` headers in front of a 16 MiB
/// incomplete bulk string reserve about 8 × 5.6 M × 40 B = 1.8 GB for 16 MB
/// received (and again on every `next_value` call of a stream). The child
/// runs with its address space capped at 256 MiB above its size.
fn resp_nested_reservations() {
    const BULK: usize = 16 << 20;
    let mut input = b"*67108864\r\n".repeat(8);
    input.extend_from_slice(format!("${BULK}\r\n").as_bytes());
    input.resize(input.len() + BULK - 1, b'v');
    limit_address_space(256 << 20);
    assert_eq!(resp::parse(&input, &Limits::REPLY), Ok(None));
    let mut decoder = StreamDecoder::new(Limits::REPLY);
    decoder.push(&input[..input.len() / 2]);
    assert_eq!(decoder.next_value(), Ok(None));
}

/// Regression test (fails while the bug exists): a TLS file path in the
/// config is read with `std::fs::read`, without a size bound, so
/// `ca: /dev/zero` makes `check` (and a hot reload of the daemon) read until
/// memory runs out. The child caps its address space at 1 GiB above its
/// size and requires loading to stay under 64 MiB of extra resident memory.
fn config_tls_dev_zero() {
    let text = "version: 1\nlinks:\n  - name: zero\n    direction: push\n    local: {url: \"redis://127.0.0.1:6379/0\", prefix: \"z:\"}\n    remote:\n      url: \"https://localhost:18443/\"\n      tls: {ca: /dev/zero, cert: certs/site-a.pem, key: certs/site-a.key}\n";
    limit_address_space(1 << 30);
    let before = peak_rss();
    let start = Instant::now();
    let result = config::load_text(&demo_path(), text, &env_lookup, SystemTime::now());
    let grew = peak_rss().saturating_sub(before);
    let diags = result.expect_err("a CA file of endless zeros is refused");
    assert!(diags.items.iter().any(|d| d.message.contains("/dev/zero")), "{diags}");
    assert!(grew < 64 << 20, "loading grew the resident memory by {} MiB:\n{diags}", grew >> 20);
    assert!(start.elapsed() < Duration::from_secs(1), "loading took {:?}", start.elapsed());
}

/// Regression test (fails while the bug exists): `read_config_file` bounds
/// the config file by its metadata length only, which is 0 for character
/// devices and pipes, so `replhub check /dev/zero` reads until memory runs out.
fn config_file_dev_zero() {
    limit_address_space(1 << 30);
    let before = peak_rss();
    let result = config::read_config_file(Path::new("/dev/zero"));
    let grew = peak_rss().saturating_sub(before);
    let diags = result.expect_err("endless zeros are not a config file");
    assert!(grew < 64 << 20, "reading grew the resident memory by {} MiB:\n{diags}", grew >> 20);
}

/// `links` links that get everything but their name and prefix from `defaults`.
fn many_links(defaults_extra: &str, links: usize, prefix: impl Fn(usize) -> String) -> String {
    let mut text = format!(
        "version: 1\ndefaults:\n  direction: push\n  local: {{url: \"redis://127.0.0.1:6379/0\"}}\n  \
         remote: {{url: \"http://127.0.0.1:7379/\", insecure_plaintext: true}}\n{defaults_extra}links:\n"
    );
    for l in 0..links {
        text.push_str(&format!("  - {{name: l{l}, local: {{prefix: \"{}\"}}}}\n", prefix(l)));
    }
    text
}

/// Regression test (fails while the bug exists): `validate` deep-copies the
/// whole `defaults` tree into every link (`Node::merged_with`) and converts
/// the copy to JSON (`merged.to_json()`), so checking costs
/// O(links × size of defaults). A 4.6 KB file whose aliases make `defaults`
/// 11,000 nodes, with 1,000 links, does 11 million node copies; so does a
/// valid file with a 20,000-entry `types` list and 300 links. The child has
/// a 1 s CPU limit per load and 4 s in all.
fn config_defaults_per_link() {
    limit_address_space(2 << 30);
    let aliased = many_links(
        "  heartbeat:\n    t0: &t0 [string, hash, list, set, zset, string, hash, list, set, zset]\n    \
         t1: &t1 [*t0, *t0, *t0, *t0, *t0, *t0, *t0, *t0, *t0, *t0]\n    \
         t2: &t2 [*t1, *t1, *t1, *t1, *t1, *t1, *t1, *t1, *t1, *t1]\n  \
         types: [*t2, *t2, *t2, *t2, *t2, *t2, *t2, *t2, *t2, *t2]\n",
        1000,
        |l| format!("p{l}:"),
    );
    let flat = many_links(&format!("  types: [{}]\n", vec!["string"; 20_000].join(", ")), 300, |l| format!("p{l}:"));
    for (what, text) in [("aliased defaults, 1000 links", aliased), ("20,000 types, 300 links", flat)] {
        eprintln!("loading {what} ({} bytes)", text.len());
        if let Err(e) = config_invariants(&demo_path(), &text) {
            panic!("{what} ({} bytes): {e}", text.len());
        }
    }
}

/// Regression test (fails while the bug exists): `disjoint_namespaces`
/// reports every overlapping pair, so N links sharing one prefix give N²
/// errors (N(N-1)/2 per side): 2,000 links (81 KB) make 4 million
/// diagnostics, about a gigabyte, and `check` would print them all. A few
/// errors per link and side (at most 8 per link here) say the same. The
/// child caps its address space at 2 GiB above its size.
fn config_overlaps() {
    limit_address_space(2 << 30);
    const LINKS: usize = 2000;
    for (what, prefix) in [
        ("one shared prefix", &(|_| "p:".to_string()) as &dyn Fn(usize) -> String),
        ("nested prefixes", &|l| "p".repeat(l % 40 + 1)),
    ] {
        let text = many_links("", LINKS, prefix);
        eprintln!("loading {LINKS} links with {what} ({} bytes)", text.len());
        let diags = match config_invariants(&demo_path(), &text) {
            Ok(Err(diags)) => diags,
            Ok(Ok(_)) => panic!("{what}: overlapping namespaces were accepted"),
            Err(e) => panic!("{what}: {e}"),
        };
        let errors = diags.errors().count();
        assert!(errors <= 8 * LINKS, "{what}: {errors} errors for {LINKS} links; the first: {}", diags.summary());
    }
}
