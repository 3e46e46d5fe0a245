//! One HTTP(S) request at a time with curl, choosing the client certificate
//! and basic auth, for tests of the stack itself (the hub has its own client).
//! A failing curl run is reported with the exact command line, to re-run by hand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::install::ensure_installed;
use super::pki::ClientCert;

/// A request to build and [`send`](Request::send).
#[derive(Clone, Debug)]
pub struct Request {
    url: String,
    ca: Option<PathBuf>,
    client: Option<ClientCert>,
    basic_auth: Option<String>,
    body: Option<Vec<u8>>,
    timeout: Duration,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy UTF-8), for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Request {
    /// A GET of `url`, with a 10 s time limit.
    pub fn get(url: impl Into<String>) -> Request {
        Request {
            url: url.into(),
            ca: None,
            client: None,
            basic_auth: None,
            body: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Trusts this CA certificate for the server (instead of the system's).
    pub fn ca(mut self, ca_cert: &Path) -> Request {
        self.ca = Some(ca_cert.to_path_buf());
        self
    }

    /// Presents this client certificate.
    pub fn client_cert(mut self, cert: &ClientCert) -> Request {
        self.client = Some(cert.clone());
        self
    }

    /// Sends HTTP basic auth, `user:password`.
    pub fn basic_auth(mut self, user_password: &str) -> Request {
        self.basic_auth = Some(user_password.to_string());
        self
    }

    /// Makes it a POST with this body.
    pub fn post(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = Some(body.into());
        self
    }

    /// Gives up after this long (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    /// Sends it; `Err` (with the curl command and its error) when no HTTP
    /// response came back (connection refused, time limit, TLS failure).
    pub fn try_send(&self) -> Result<Response, String> {
        let programs = ensure_installed().map_err(|e| format!("{e:#}"))?;
        let args = self.curl_args();
        let command = format!("curl {}", args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" "));
        let mut child = Command::new(&programs.curl)
            .args(&args)
            .stdin(if self.body.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {command}: {e}"))?;
        let writer = child.stdin.take().zip(self.body.clone()).map(|(mut stdin, body)| {
            // curl reads the body while it sends; a thread keeps a large body from blocking us.
            std::thread::spawn(move || stdin.write_all(&body))
        });
        let output = child.wait_with_output().map_err(|e| format!("{command}: {e}"))?;
        if let Some(writer) = writer {
            let written = writer.join().map_err(|_| format!("{command}: the body writer panicked"))?;
            written.map_err(|e| format!("{command}: writing the body failed: {e}"))?;
        }
        if !output.status.success() {
            return Err(format!("{command} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr)));
        }
        // The body, then "\n" and the status code (see curl_args).
        let split = output.stdout.iter().rposition(|&b| b == b'\n');
        let (body, status) = match split {
            Some(i) => (&output.stdout[..i], &output.stdout[i + 1..]),
            None => return Err(format!("{command}: no status line in the output")),
        };
        let status = std::str::from_utf8(status)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("{command}: bad status {:?}", String::from_utf8_lossy(status)))?;
        Ok(Response { status, body: body.to_vec() })
    }

    /// Sends it; panics (with the curl command) when no HTTP response came back.
    pub fn send(&self) -> Response {
        self.try_send().unwrap_or_else(|e| panic!("{e}"))
    }

    fn curl_args(&self) -> Vec<String> {
        let mut args: Vec<String> =
            ["--silent", "--show-error", "--http1.1", "--noproxy", "*", "--max-time"].map(str::to_string).to_vec();
        args.push(format!("{:.3}", self.timeout.as_secs_f64()));
        if let Some(ca) = &self.ca {
            args.extend(["--cacert".to_string(), ca.display().to_string()]);
        }
        if let Some(client) = &self.client {
            args.extend(["--cert".to_string(), client.cert.display().to_string()]);
            args.extend(["--key".to_string(), client.key.display().to_string()]);
        }
        if let Some(user) = &self.basic_auth {
            args.extend(["--user".to_string(), user.clone()]);
        }
        if self.body.is_some() {
            args.extend(["--data-binary", "@-"].map(str::to_string));
        }
        args.extend(["--output", "-", "--write-out", "\n%{http_code}"].map(str::to_string));
        args.push(self.url.clone());
        args
    }
}

/// Quotes an argument for a POSIX shell, so the printed command can be re-run.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%".contains(&b)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
