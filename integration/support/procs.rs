//! Child processes: every server of the stack is a foreground child of the
//! test process, and this module owns all of them.
//!
//! - All children are forked by ONE long-lived spawner thread, and each child
//!   sets `PR_SET_PDEATHSIG(SIGKILL)` before `exec`. The kernel sends the
//!   parent-death signal when the *thread* that forked exits, so forking from
//!   short-lived test threads would kill servers whenever such a thread ends;
//!   the spawner thread lives as long as the process.
//! - Each child runs in its own process group (so a Ctrl-C on the terminal
//!   reaches the test process, not the servers, and so stopping a child also
//!   stops what it forked, e.g. nginx workers).
//! - [`Child`] stops its process (SIGTERM, up to 3 s, then SIGKILL) when
//!   dropped, so a failing or panicking test stops exactly what it started.
//!   Nothing is ever killed by name.
//! - What a child forks has no parent-death signal (nginx workers survive
//!   their master's SIGKILL). So each child also gets a watchdog: a tiny
//!   `sh` in its own process group, blocked reading a pipe whose only writer
//!   is the test process. If the test process dies in any way (even
//!   SIGKILL), the pipe closes and the watchdog SIGKILLs the child's process
//!   group. When the child ends while we live, its watchdog is killed before
//!   the pipe closes, so it never acts.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

use super::ports::StartError;
use super::{log_tail, poll_until};

/// How long [`Child::stop`] waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running (or stopped) child process, stopped when dropped.
#[derive(Debug)]
pub struct Child {
    name: String,
    process: std::process::Child,
    output: PathBuf,
    output_start: u64,
    status: Option<ExitStatus>,
    watchdog: Option<Watchdog>,
}

impl Child {
    /// Starts `cmd` from the spawner thread, with stdin from `/dev/null` and
    /// stdout and stderr appended to the file `output`. `name` is used in
    /// messages only.
    pub fn spawn(name: &str, mut cmd: Command, output: &Path) -> anyhow::Result<Child> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(output)
            .with_context(|| format!("cannot open {} for the output of {name}", output.display()))?;
        let output_start = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = out.try_clone().with_context(|| format!("cannot duplicate the output file of {name}"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let process =
            spawn_from_spawner_thread(cmd, true).with_context(|| format!("cannot start {name} ({program})"))?;
        let mut child = Child {
            name: name.to_string(),
            process,
            output: output.to_path_buf(),
            output_start,
            status: None,
            watchdog: None,
        };
        // On failure the child is dropped, so stopped.
        child.watchdog =
            Some(Watchdog::start(child.pid()).with_context(|| format!("cannot start a watchdog for {name}"))?);
        Ok(child)
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also the id of its process group).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The file that receives the child's stdout and stderr.
    pub fn output_path(&self) -> &Path {
        &self.output
    }

    /// Whether the process has not exited yet (a stopped process still runs).
    pub fn is_running(&mut self) -> bool {
        self.reap(false).is_none()
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`, `SIGCONT`, `SIGHUP`) to the process.
    /// Fails if it has already exited: its pid may belong to someone else now.
    pub fn signal(&mut self, sig: libc::c_int) -> io::Result<()> {
        if !self.is_running() {
            return Err(io::Error::other(format!("{} (pid {}) is not running", self.name, self.pid())));
        }
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot be reused.
        if unsafe { libc::kill(self.pid() as libc::pid_t, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops the process: SIGTERM (plus SIGCONT, in case it is paused), then
    /// SIGKILL if it has not exited within 3 s. Whatever else is left in its
    /// process group is killed too. Returns how it ended; a no-op if it has
    /// already ended.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.reap(false) {
            return status;
        }
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain syscalls on our unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
            libc::kill(pid, libc::SIGCONT);
        }
        if let Some(status) = poll_until(STOP_GRACE, || self.reap(false)) {
            return status;
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        self.reap(true).unwrap_or_else(|| panic!("waiting for {} (pid {pid}) after SIGKILL failed", self.name))
    }

    /// Reaps the process if it has exited (waiting for that if `block`),
    /// killing whatever is left in its process group first, while the
    /// unreaped leader still holds the group id.
    fn reap(&mut self, block: bool) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let pid = self.pid() as libc::pid_t;
        let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: siginfo_t is plain data; waitid fills it in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: plain syscall with a valid out pointer.
            let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("waitid for {} (pid {pid}) failed: {err}", self.name);
            }
            // SAFETY: waitid succeeded, so si_pid is initialised (0 if nothing exited).
            if unsafe { info.si_pid() } == 0 {
                return None;
            }
            break;
        }
        // SAFETY: the leader is an unreaped zombie, so the group id cannot be reused.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let status = self.process.wait().unwrap_or_else(|e| panic!("reaping {} (pid {pid}) failed: {e}", self.name));
        self.status = Some(status);
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.dismiss();
        }
        self.status
    }

    /// Waits until `ready` says the server is ready. Fails early when the
    /// process exits, or when one of `logs` says "Address already in use"
    /// (then [`StartError::AddrInUse`], so the caller can try another port).
    /// On failure the process is stopped and the error carries the log tails.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        logs: &[LogMark],
        mut ready: impl FnMut(&mut Child) -> bool,
    ) -> Result<(), StartError> {
        let mut marks: Vec<&LogMark> = logs.iter().collect();
        let own_output = LogMark { path: self.output.clone(), offset: self.output_start };
        if !logs.iter().any(|m| m.path == self.output) {
            marks.push(&own_output);
        }
        let tails = |marks: &[&LogMark]| marks.iter().map(|m| log_tail(&m.path, 20)).collect::<Vec<_>>().join("\n");
        let outcome = poll_until(timeout, || {
            if marks.iter().any(|m| m.new_text().contains("Address already in use")) {
                return Some(Err(StartError::AddrInUse(tails(&marks))));
            }
            if ready(self) {
                return Some(Ok(()));
            }
            if let Some(status) = self.reap(false) {
                let msg = format!("{} exited ({status}) before it was ready\n{}", self.name, tails(&marks));
                return Some(Err(StartError::Failed(anyhow::anyhow!(msg))));
            }
            None
        });
        let outcome = outcome.unwrap_or_else(|| {
            let msg = format!("{} was not ready after {timeout:?}\n{}", self.name, tails(&marks));
            Err(StartError::Failed(anyhow::anyhow!(msg)))
        });
        if outcome.is_err() {
            self.stop();
        }
        outcome
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A position in a log file: what a server wrote after it is "new".
#[derive(Clone, Debug)]
pub struct LogMark {
    path: PathBuf,
    offset: u64,
}

impl LogMark {
    /// Marks the current end of `path` (0 if it does not exist yet).
    pub fn at_end(path: &Path) -> LogMark {
        let offset = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        LogMark { path: path.to_path_buf(), offset }
    }

    /// What was appended to the file since the mark (lossy UTF-8; empty if unreadable).
    pub fn new_text(&self) -> String {
        match std::fs::read(&self.path) {
            Ok(bytes) => String::from_utf8_lossy(bytes.get(self.offset as usize..).unwrap_or_default()).into_owned(),
            Err(_) => String::new(),
        }
    }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_fields(&stat).first(), Some(&"Z") | Some(&"X") | None),
        Err(_) => false,
    }
}

/// The pids of the live (non-zombie) processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { return false };
            let fields = stat_fields(&stat);
            fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(pid)
                && !matches!(fields.first(), Some(&"Z") | Some(&"X"))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The fields of `/proc/PID/stat` after the command name (state, ppid, …);
/// the name may contain spaces and parentheses, so split after the last `)`.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')').map(|i| stat[i + 1..].split_whitespace().collect()).unwrap_or_default()
}

/// A watchdog: `sh` waiting for EOF on a pipe only we write to, then
/// SIGKILLing a process group. It outlives us on purpose (no parent-death signal).
#[derive(Debug)]
struct Watchdog {
    process: std::process::Child,
    /// Held, never written: closes when the test process dies.
    _pipe: io::PipeWriter,
}

impl Watchdog {
    fn start(pgid: u32) -> io::Result<Watchdog> {
        // Both ends are close-on-exec; the read end becomes the watchdog's stdin.
        let (reader, writer) = io::pipe()?;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", r#"read -r _; kill -s KILL -- "-$0""#, &pgid.to_string()])
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let process = spawn_from_spawner_thread(cmd, false)?;
        Ok(Watchdog { process, _pipe: writer })
    }

    /// Ends the watchdog without letting it act (it is killed before its pipe closes).
    fn dismiss(mut self) {
        // Errors only mean it is already gone; wait reaps it either way.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

struct SpawnRequest {
    cmd: Command,
    parent_death_signal: bool,
    reply: mpsc::Sender<io::Result<std::process::Child>>,
}

/// Hands `cmd` to the spawner thread and waits for the result.
fn spawn_from_spawner_thread(cmd: Command, parent_death_signal: bool) -> io::Result<std::process::Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".to_string())
            .spawn(move || {
                for SpawnRequest { mut cmd, parent_death_signal, reply } in rx {
                    let parent = std::process::id() as libc::pid_t;
                    // SAFETY: the closure only makes async-signal-safe syscalls and does not allocate.
                    unsafe { cmd.pre_exec(move || child_setup(parent, parent_death_signal)) };
                    // The requester blocks on the reply, so this send cannot fail.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the child-spawner thread");
        tx
    });
    let (reply, result) = mpsc::channel();
    spawner
        .send(SpawnRequest { cmd, parent_death_signal, reply })
        .map_err(|_| io::Error::other("the child-spawner thread is gone"))?;
    result.recv().map_err(|_| io::Error::other("the child-spawner thread did not answer"))?
}

/// Runs in the forked child before `exec`: no blocked signals (the signal
/// mask survives `exec`, and a program that waits for SIGINT/SIGTERM with
/// sigwait blocks them), own process group, SIGKILL when the spawner thread
/// dies (if `parent_death_signal`), and no start if the parent is already gone.
fn child_setup(parent: libc::pid_t, parent_death_signal: bool) -> io::Result<()> {
    // SAFETY: async-signal-safe syscalls only; the sigset lives on the stack.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if parent_death_signal && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// A server's process while it runs, nothing while it is stopped: what
/// every server of the stack (redis, Webdis, nginx) does with its child
/// between starts, in one place.
#[derive(Debug)]
pub struct Slot {
    name: String,
    child: Option<Child>,
}

impl Slot {
    /// An empty slot for a process called `name` in messages.
    pub fn new(name: &str) -> Slot {
        Slot { name: name.to_string(), child: None }
    }

    /// The pid while the process runs.
    pub fn pid(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        child.is_running().then(|| child.pid())
    }

    /// Stops it (SIGTERM; SIGKILL after 3 s). A no-op if stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop();
        }
    }

    /// Puts a newly started process in the slot (stopping any old one).
    pub fn replace(&mut self, child: Child) {
        self.stop();
        self.child = Some(child);
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// Sends `sig`; panics if the process is stopped or cannot be signalled.
    pub fn signal(&mut self, sig: libc::c_int) {
        let name = &self.name;
        let child = self.child.as_mut().unwrap_or_else(|| panic!("{name} is stopped"));
        child.signal(sig).unwrap_or_else(|e| panic!("cannot signal {name}: {e}"));
    }
}
