//! `cargo run --release --example chaos`: the fault matrix against the real
//! stack. For each fault, writers run on both sides (push, pull and both
//! links) while the fault happens; the table shows how long replhub took to
//! notice (a link reporting not-up), how long until every acknowledged write
//! was at its destination after the fault ended, and how many acknowledged
//! writes were lost (must be 0).

#[allow(dead_code, reason = "the support tree is shared with the integration tests, which use the rest of it")]
#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use support::faults::{Fault, Outcome, Scenario};

fn main() -> std::process::ExitCode {
    if let Some(bin) = std::env::current_exe().ok().and_then(|exe| exe.parent()?.parent().map(|d| d.join("replhub")))
        && bin.exists()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("REPLHUB_BIN", &bin) };
    }
    let outage = if std::env::args().any(|a| a == "--quick") { 5 } else { 30 };
    let faults = [
        Fault::RemoteRedisRestart,
        Fault::WebdisRestart,
        Fault::NginxRestart,
        Fault::NginxReload,
        Fault::LocalRedisRestart,
        Fault::RemoteUnreachable(Duration::from_secs(outage)),
    ];
    // Default heartbeat timeout (15 s), as a deployment would run it.
    let mut scenario = Scenario::start("15s");
    let mut outcomes: Vec<Outcome> = Vec::new();
    for fault in faults {
        scenario.start_writers(Duration::from_millis(2));
        std::thread::sleep(Duration::from_secs(1));
        eprintln!("running: {}", fault.name());
        outcomes.push(scenario.run(fault, Duration::from_secs(90)));
    }
    let show = |d: Option<Duration>| d.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "—".to_string());
    println!("\n| fault | acknowledged writes | time to detect | time to converge | writes lost | peak RSS |");
    println!("|---|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {} | {} | {:.0} MiB |",
            o.fault,
            o.written,
            show(o.detected),
            show(o.converged),
            o.lost,
            o.peak_rss_mib
        );
    }
    println!("\n\"—\" under detect: no link reported not-up (the fault did not interrupt anything replhub could see).");
    let failed = outcomes.iter().any(|o| o.lost > 0 || o.converged.is_none());
    if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS }
}
