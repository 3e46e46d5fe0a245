//! The fault matrix: a hub with a push, a pull and a both link, writers on
//! both sides, and faults injected into the stack while they write. Used by
//! the fault tests (small) and by the chaos command (larger), which report
//! per fault: time to detect, time to converge, acknowledged writes lost.
//!
//! "Lost" counts writes a Redis acknowledged (OK reply) whose key is not
//! present on the other side after convergence. Writers use distinct keys,
//! so nothing is ever legitimately superseded. Both redis-servers run with
//! `appendonly yes, appendfsync always`, so a restart does not lose what
//! they acknowledged (otherwise the restart itself would lose data).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hub::{Hub, LinkSpec, config_yaml};
use super::poll_until;
use super::redis::RedisConn;
use super::stack::{Stack, StackOptions};

/// A fault of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    RemoteRedisRestart,
    WebdisRestart,
    NginxRestart,
    NginxReload,
    LocalRedisRestart,
    /// nginx stopped for this long.
    RemoteUnreachable(Duration),
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::RemoteRedisRestart => "remote Redis restart".into(),
            Fault::WebdisRestart => "Webdis restart".into(),
            Fault::NginxRestart => "nginx restart".into(),
            Fault::NginxReload => "nginx reload".into(),
            Fault::LocalRedisRestart => "local Redis restart".into(),
            Fault::RemoteUnreachable(d) => format!("remote unreachable for {} s", d.as_secs()),
        }
    }
}

/// What one fault did.
#[derive(Debug)]
pub struct Outcome {
    pub fault: String,
    /// Until a link reported not-up (`None`: no link noticed anything).
    pub detected: Option<Duration>,
    /// From the end of the fault until every acknowledged write was at its destination.
    pub converged: Option<Duration>,
    /// Acknowledged writes missing at their destination at the end.
    pub lost: usize,
    pub written: usize,
    /// Peak RSS of the hub during the fault, MiB.
    pub peak_rss_mib: f64,
}

/// A background writer of distinct keys `prefix{n}`, recording what its Redis acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where the keys must arrive: (port, prefix there).
    destination: (u16, String),
    prefix: String,
}

impl Writer {
    fn start(port: u16, prefix: &str, destination: (u16, String), pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (stopping, record, prefix_owned) = (stop.clone(), acked.clone(), prefix.to_string());
        let thread = std::thread::spawn(move || {
            let mut conn: Option<RedisConn> = None;
            let mut n = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = RedisConn::connect_with_timeout(port, Duration::from_secs(2)).ok();
                }
                let key = format!("{prefix_owned}{n}");
                let ok = conn.as_mut().is_some_and(|c| {
                    matches!(
                        c.try_cmd(&[b"SET", key.as_bytes(), n.to_string().as_bytes()]),
                        Ok(replhub::resp::Value::Simple(_))
                    )
                });
                if ok {
                    record.lock().unwrap_or_else(|e| e.into_inner()).push(key);
                    n += 1;
                    std::thread::sleep(pause);
                } else {
                    conn = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Writer { stop, acked, thread: Some(thread), destination, prefix: prefix.to_string() }
    }

    fn finish(&mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Keys acknowledged so far that are missing at the destination.
    fn missing(&self, keys: &[String]) -> usize {
        let Ok(mut conn) = RedisConn::connect(self.destination.0) else { return keys.len() };
        let prefix_there = &self.destination.1;
        keys.chunks(1000)
            .map(|chunk| {
                let names: Vec<String> =
                    chunk.iter().map(|k| format!("{prefix_there}{}", &k[self.prefix.len()..])).collect();
                let mut args: Vec<&[u8]> = vec![b"EXISTS"];
                args.extend(names.iter().map(|n| n.as_bytes()));
                let present = conn.try_cmd(&args).ok().and_then(|v| v.as_integer()).unwrap_or(0) as usize;
                chunk.len() - present
            })
            .sum()
    }
}

/// The stack, the hub and the writers of one run of the matrix.
pub struct Scenario {
    pub stack: Stack,
    pub hub: Hub,
    writers: Vec<Writer>,
    /// Each round of writers uses fresh keys (`p:ROUND:N`).
    round: u32,
}

impl Scenario {
    /// A stack whose Redis servers persist every write, and a hub with
    /// `push` (p: → site:p:), `pull` (g: ← g:) and `both` (b: ↔ site:b:) links.
    pub fn start(heartbeat_timeout: &str) -> Scenario {
        let durable: Vec<String> = ["--appendonly", "yes", "--appendfsync", "always"].map(String::from).to_vec();
        let stack = Stack::start(StackOptions {
            local_redis_args: durable.clone(),
            remote_redis_args: durable,
            ..StackOptions::default()
        });
        let port = Hub::admin_port();
        let heartbeat = format!("heartbeat: {{ interval: \"500ms\", timeout: \"{heartbeat_timeout}\" }}");
        let links = [
            LinkSpec::new("push", "push", "p:").remote_prefix("site:p:").with(&heartbeat),
            LinkSpec::new("pull", "pull", "g:").with(&heartbeat),
            LinkSpec::new("both", "both", "b:").remote_prefix("site:b:").with(&heartbeat),
        ];
        let hub = Hub::start_ready(stack.dir(), &config_yaml(&stack, port, &links), port);
        Scenario { stack, hub, writers: Vec::new(), round: 0 }
    }

    /// Starts the four writers (local: push and both keys; remote: pull and both keys).
    pub fn start_writers(&mut self, pause: Duration) {
        self.round += 1;
        let r = self.round;
        let (local, remote) = (self.stack.local().port(), self.stack.remote().port());
        self.writers = vec![
            Writer::start(local, &format!("p:{r}:"), (remote, format!("site:p:{r}:")), pause),
            Writer::start(local, &format!("b:l{r}:"), (remote, format!("site:b:l{r}:")), pause),
            Writer::start(remote, &format!("g:{r}:"), (local, format!("g:{r}:")), pause),
            Writer::start(remote, &format!("site:b:r{r}:"), (local, format!("b:r{r}:")), pause),
        ];
    }

    fn any_link_down(&self) -> bool {
        let metrics = self.hub.metrics();
        ["push", "pull", "both"]
            .iter()
            .any(|l| super::hub::metric_value(&metrics, &format!("replhub_link_up{{link=\"{l}\"}}")) == Some(0.0))
    }

    /// Injects `fault` while the writers run, heals it, stops the writers and
    /// waits (at most `settle`) for every acknowledged write to arrive.
    pub fn run(&mut self, fault: Fault, settle: Duration) -> Outcome {
        let started = Instant::now();
        let pid = self.hub.pid();
        let mut peak = rss_mib(pid);
        let detected = Arc::new(Mutex::new(None));
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (detected, watching, port) = (detected.clone(), watching.clone(), self.hub.admin_port);
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    let metrics = super::hub::http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
                    let down = ["push", "pull", "both"].iter().any(|l| {
                        super::hub::metric_value(&metrics, &format!("replhub_link_up{{link=\"{l}\"}}")) == Some(0.0)
                    });
                    if down {
                        detected.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(started.elapsed());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        match fault {
            Fault::RemoteRedisRestart => self.stack.remote_mut().restart(),
            Fault::WebdisRestart => self.stack.webdis_mut().restart(),
            Fault::NginxRestart => self.stack.nginx_mut().restart(),
            Fault::NginxReload => self.stack.nginx_mut().reload(),
            Fault::LocalRedisRestart => self.stack.local_mut().restart(),
            Fault::RemoteUnreachable(outage) => {
                self.stack.nginx_mut().stop();
                let until = Instant::now() + outage;
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(200));
                    peak = peak.max(rss_mib(pid));
                }
                self.stack.nginx_mut().start();
            }
        }
        let healed = Instant::now();
        // Let the writers go on a little after the fault, then stop them.
        std::thread::sleep(Duration::from_millis(500));
        let acked: Vec<Vec<String>> = self.writers.iter_mut().map(Writer::finish).collect();
        let written = acked.iter().map(Vec::len).sum();
        let converged = poll_until(settle, || {
            peak = peak.max(rss_mib(pid));
            let missing: usize = self.writers.iter().zip(&acked).map(|(w, keys)| w.missing(keys)).sum();
            (missing == 0 && !self.any_link_down()).then(|| healed.elapsed())
        });
        watching.store(false, Ordering::Relaxed);
        let _ = watcher.join();
        let lost = self.writers.iter().zip(&acked).map(|(w, keys)| w.missing(keys)).sum();
        let detected = *detected.lock().unwrap_or_else(|e| e.into_inner());
        Outcome { fault: fault.name(), detected, converged, lost, written, peak_rss_mib: peak }
    }
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}
