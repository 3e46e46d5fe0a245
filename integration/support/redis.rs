//! A redis-server child on a loopback port ([`RedisServer`]) and a small
//! synchronous, binary-safe RESP client for tests ([`RedisConn`]), which
//! parses replies with the crate's own `replhub::resp`.
//!
//! The server keeps nothing on disk (`--save '' --appendonly no`), so a
//! restart comes back empty, and has NO keyspace notifications unless a test
//! passes them in its extra arguments: the code under test must enable them.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use replhub::resp::{self, Limits, Value};

use super::install::ensure_installed;
use super::ports::{StartError, listens_on, start_on_port};
use super::procs::{Child, Slot};

/// How long a redis-server may take to answer PING after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read and write timeout of a [`RedisConn`].
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server child process on `127.0.0.1`, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    name: String,
    dir: PathBuf,
    port: u16,
    extra_args: Vec<String>,
    process: Slot,
}

impl RedisServer {
    /// Starts a redis-server called `name` (used in file names and messages)
    /// with its working directory and log (`<name>.log`) in `dir`, on `port`
    /// or else on a free port, with `extra_args` appended to its command line
    /// (e.g. `["--notify-keyspace-events", "KEA"]`). Returns once it answers PING.
    pub fn start_new(dir: &Path, name: &str, port: Option<u16>, extra_args: &[String]) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            port: 0,
            extra_args: extra_args.to_vec(),
            process: Slot::new(name),
        };
        let (child, port) = start_on_port(name, port, |port| server.launch(port))?;
        server.port = port;
        server.process.replace(child);
        Ok(server)
    }

    fn launch(&self, port: u16) -> Result<(Child, u16), StartError> {
        let programs = ensure_installed().map_err(StartError::Failed)?;
        let mut cmd = Command::new(&programs.redis_server);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args);
        let mut child = Child::spawn(&self.name, cmd, &self.log_path()).map_err(StartError::Failed)?;
        child.wait_ready(READY_TIMEOUT, &[], |child| {
            listens_on(child.pid(), port)
                && RedisConn::connect_with_timeout(port, Duration::from_secs(1))
                    .and_then(|mut c| c.try_cmd(&[b"PING"]))
                    .is_ok_and(|reply| reply == Value::Simple("PONG".into()))
        })?;
        Ok((child, port))
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The file with its log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    /// The pid of the running process, if it is running.
    pub fn pid(&mut self) -> Option<u32> {
        self.process.pid()
    }

    /// Stops it (SIGTERM; SIGKILL after 3 s). Data is lost. A no-op if stopped.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Starts it again on the same port, empty; returns once it answers PING.
    /// Panics (with the log tail) if it does not come up.
    pub fn start(&mut self) {
        self.stop();
        let (child, _) = start_on_port(&self.name, Some(self.port), |port| self.launch(port))
            .unwrap_or_else(|e| panic!("cannot start {} again: {e:#}", self.name));
        self.process.replace(child);
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.process.pause();
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&mut self) {
        self.process.resume();
    }

    /// A new connection to it. Panics if it cannot connect.
    pub fn conn(&self) -> RedisConn {
        RedisConn::connect(self.port)
            .unwrap_or_else(|e| panic!("cannot connect to {} ({}): {e}", self.name, self.url()))
    }
}

/// A blocking RESP2 connection to a redis-server on `127.0.0.1`, binary-safe.
///
/// [`cmd`](Self::cmd) returns redis errors as [`Value::Error`] and panics on
/// I/O errors; [`try_cmd`](Self::try_cmd) returns those too.
#[derive(Debug)]
pub struct RedisConn {
    stream: TcpStream,
    port: u16,
    buf: Vec<u8>,
}

impl RedisConn {
    /// Connects to `127.0.0.1:port` (10 s read and write timeouts).
    pub fn connect(port: u16) -> io::Result<RedisConn> {
        RedisConn::connect_with_timeout(port, IO_TIMEOUT)
    }

    /// Connects with `timeout` for the connection and for every read and write.
    pub fn connect_with_timeout(port: u16, timeout: Duration) -> io::Result<RedisConn> {
        let stream = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)?;
        stream.set_nodelay(true)?;
        let mut conn = RedisConn { stream, port, buf: Vec::new() };
        conn.set_timeout(timeout)?;
        Ok(conn)
    }

    /// Sets the read and write timeouts.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))
    }

    /// Sends one command and reads its reply.
    pub fn try_cmd(&mut self, args: &[&[u8]]) -> io::Result<Value> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    /// Reads the next value the server sends (a reply, or a pub/sub message).
    pub fn read_reply(&mut self) -> io::Result<Value> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            let parsed =
                resp::parse(&self.buf, &Limits::REPLY).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((value, used)) = parsed {
                self.buf.drain(..used);
                return Ok(value);
            }
            match self.stream.read(&mut chunk)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends many commands at once (one write) and reads all their replies.
    pub fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> io::Result<Vec<Value>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for arg in args {
                out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                out.extend_from_slice(arg);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.write_all(&out)?;
        let mut replies = Vec::with_capacity(commands.len());
        let mut chunk = [0u8; 64 << 10];
        let mut offset = 0;
        while replies.len() < commands.len() {
            let parsed = resp::parse(&self.buf[offset..], &Limits::REPLY)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some((value, used)) = parsed {
                offset += used;
                replies.push(value);
                continue;
            }
            self.buf.drain(..offset);
            offset = 0;
            match self.stream.read(&mut chunk)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.buf.drain(..offset);
        Ok(replies)
    }

    /// Sends one command and reads its reply; panics on I/O errors.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Value {
        self.try_cmd(args).unwrap_or_else(|e| {
            let name = args.first().map(|a| resp::printable(a, 40)).unwrap_or_default();
            panic!("redis 127.0.0.1:{}: {name} failed: {e}", self.port)
        })
    }

    /// `SET key value`; panics unless the reply is OK.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let reply = self.cmd(&[b"SET", key.as_ref(), value.as_ref()]);
        assert_eq!(reply, Value::Simple("OK".into()), "SET {}", resp::printable(key.as_ref(), 80));
    }

    /// `GET key`: `None` if the key does not exist.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        match self.cmd(&[b"GET", key.as_ref()]) {
            Value::Bulk(bytes) => Some(bytes.to_vec()),
            Value::Nil => None,
            other => panic!("GET {}: unexpected {}", resp::printable(key.as_ref(), 80), other.describe()),
        }
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&mut self, pattern: impl AsRef<[u8]>) -> Vec<Vec<u8>> {
        match self.cmd(&[b"KEYS", pattern.as_ref()]) {
            Value::Array(items) => {
                let mut keys: Vec<Vec<u8>> = items
                    .iter()
                    .map(|v| v.as_bytes().unwrap_or_else(|| panic!("KEYS: element {}", v.describe())).to_vec())
                    .collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS: unexpected {}", other.describe()),
        }
    }

    /// `CONFIG GET name`: the value of one parameter.
    pub fn config_get(&mut self, name: &str) -> String {
        match self.cmd(&[b"CONFIG", b"GET", name.as_bytes()]) {
            Value::Array(items) if items.len() == 2 => {
                let value = items[1].as_bytes().unwrap_or_else(|| panic!("CONFIG GET {name}: {}", items[1].describe()));
                String::from_utf8_lossy(value).into_owned()
            }
            other => panic!("CONFIG GET {name}: unexpected {}", other.describe()),
        }
    }
}
