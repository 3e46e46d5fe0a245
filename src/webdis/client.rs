//! The HTTP client for one remote endpoint: Webdis behind an mTLS proxy.
//!
//! One [`WebdisClient`] exists per (endpoint URL, TLS files, credentials) and
//! is shared by every link using that combination (`webdis::Pools` hands them
//! out), so 500 links to the same central site share one keep-alive pool.
//! Requests are `POST /` with a percent-encoded body and `.raw` replies (see
//! `codec`); HTTP/1.1 without pipelining, because Webdis answers pipelined
//! requests in reverse order. hyper-util has no read timeout, so every
//! request runs under a deadline here, and stream reads under one set by the
//! stream's owner.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use super::codec;
use crate::config::tls_files::load_client_tls;
use crate::config::{BasicAuth, RemoteEndpoint};
use crate::resp::{self, Limits, Value};

/// Timeouts and limits of one client.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// TCP connect.
    pub connect_timeout: Duration,
    /// A whole request: connect, TLS, send, response headers and body.
    pub request_timeout: Duration,
    /// Requests in flight at once over the pool (each on its own connection).
    pub max_in_flight: usize,
    /// Largest reply body accepted.
    pub max_reply_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            max_in_flight: 8,
            max_reply_bytes: 1 << 30,
        }
    }
}

/// What went wrong talking to the remote, classified so the operator can act.
#[derive(Debug, thiserror::Error)]
pub enum WebdisError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error(
        "{endpoint} refused the client certificate (HTTP 400 from the proxy: {detail}); check that remote.tls.cert is issued by a CA the proxy trusts"
    )]
    ClientCertRefused { endpoint: String, detail: String },
    #[error(
        "{endpoint} answered 403 Forbidden to {command}: the Webdis ACL does not allow it with these credentials (check remote.basic_auth and the ACL)"
    )]
    Forbidden { endpoint: String, command: String },
    #[error("{endpoint} answered HTTP {status} to {command}: {detail}")]
    Http { endpoint: String, command: String, status: u16, detail: String },
    #[error("{endpoint} did not answer {command} within {timeout:?}")]
    Timeout { endpoint: String, command: String, timeout: Duration },
    #[error("{endpoint}: Redis refused {command}: {message}")]
    Redis { endpoint: String, command: String, message: String },
    #[error("{endpoint}: unusable reply to {command}: {detail}")]
    Malformed { endpoint: String, command: String, detail: String },
    #[error("the TLS files of {endpoint} cannot be used: {detail}")]
    Setup { endpoint: String, detail: String },
}

impl WebdisError {
    /// Short label for `replhub_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            WebdisError::Connect { .. } => "connect",
            WebdisError::Tls { .. } => "tls",
            WebdisError::ClientCertRefused { .. } => "client_cert_refused",
            WebdisError::Forbidden { .. } => "forbidden",
            WebdisError::Http { .. } => "http",
            WebdisError::Timeout { .. } => "timeout",
            WebdisError::Redis { .. } => "redis_error",
            WebdisError::Malformed { .. } => "malformed_reply",
            WebdisError::Setup { .. } => "tls_files",
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client for one endpoint and set of credentials.
pub struct WebdisClient {
    http: HttpClient,
    /// Base URL, ending in `/`; requests go to its path.
    base: url::Url,
    authorization: Option<HeaderValue>,
    /// The TLS configuration, also used by event streams (which have their own connections).
    tls: Option<Arc<rustls::ClientConfig>>,
    limiter: Arc<Semaphore>,
    options: ClientOptions,
    /// The client certificate in use (for metrics and logs).
    pub cert_not_after: Option<SystemTime>,
    pub cert_serial: Option<String>,
}

impl std::fmt::Debug for WebdisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebdisClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl WebdisClient {
    /// Builds a client for `endpoint`, loading its TLS files now.
    pub fn new(endpoint: &RemoteEndpoint, options: ClientOptions) -> Result<Self, WebdisError> {
        let label = endpoint.url.to_string();
        let setup = |detail: String| WebdisError::Setup { endpoint: label.clone(), detail };
        let (tls, cert_not_after, cert_serial) = match &endpoint.tls {
            Some(paths) => {
                let (material, _warnings) = load_client_tls(paths, SystemTime::now()).map_err(|problems| {
                    setup(problems.into_iter().map(|p| p.message).collect::<Vec<_>>().join("; "))
                })?;
                let (not_after, serial) = (material.not_after, material.serial.clone());
                let config = crate::tls::client_config(material).map_err(|e| setup(e.to_string()))?;
                (Some(Arc::new(config)), not_after, serial)
            }
            None => (None, None, None),
        };
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = match &tls {
            Some(config) => {
                builder.with_tls_config((**config).clone()).https_or_http().enable_http1().wrap_connector(connector)
            }
            None => {
                // http:// only (insecure_plaintext); a config is still required by the builder.
                let config =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| setup(e.to_string()))?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                builder.with_tls_config(config).https_or_http().enable_http1().wrap_connector(connector)
            }
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(options.max_in_flight.max(1) * 2)
            .build(https);
        Ok(WebdisClient {
            http,
            base: endpoint.url.clone(),
            authorization: endpoint.basic_auth.as_ref().map(basic_auth_header),
            tls,
            limiter: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            options,
            cert_not_after,
            cert_serial,
        })
    }

    /// The endpoint as shown in messages (no credentials).
    pub fn endpoint(&self) -> &str {
        self.base.as_str()
    }

    /// Runs one command and returns its RESP reply; a Redis error reply is an `Err`.
    pub async fn command<A: AsRef<[u8]>>(&self, command: &str, args: &[A]) -> Result<Value, WebdisError> {
        self.command_within(command, args, self.options.request_timeout).await
    }

    /// Like [`command`](Self::command) with its own deadline, for small
    /// commands that must not wait as long as a transfer of a large value may.
    pub async fn command_within<A: AsRef<[u8]>>(
        &self,
        command: &str,
        args: &[A],
        timeout: Duration,
    ) -> Result<Value, WebdisError> {
        let body = codec::command_body(command, args);
        let path = self.base.path().to_string();
        self.request(Method::POST, &path, Bytes::from(body), command, timeout).await
    }

    /// Runs `command` with `url_args` in the URL and `last_arg` as the raw
    /// PUT body: binary-safe for the last argument without encoding it. The
    /// URL arguments must be of our own making (no NUL bytes; nginx refuses `%00`).
    pub async fn put_command<A: AsRef<[u8]>>(
        &self,
        command: &str,
        url_args: &[A],
        last_arg: Bytes,
    ) -> Result<Value, WebdisError> {
        let path = codec::put_path(self.base.path(), command, url_args);
        self.request(Method::PUT, &path, last_arg, command, self.options.request_timeout).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        command: &str,
        timeout: Duration,
    ) -> Result<Value, WebdisError> {
        let _permit = self.limiter.acquire().await.map_err(|_| self.malformed(command, "client shut down"))?;
        let exchange = async {
            let response = self.send(method, path, body, command).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), self.options.max_reply_bytes)
                .collect()
                .await
                .map_err(|e| self.malformed(command, &format!("reading the reply body failed: {e}")))?
                .to_bytes();
            Ok::<_, WebdisError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange).await.map_err(|_| WebdisError::Timeout {
            endpoint: self.endpoint().to_string(),
            command: command.to_string(),
            timeout,
        })??;
        if status != StatusCode::OK {
            return Err(self.status_error(status, &bytes, command));
        }
        let value = resp::parse_complete(&bytes, &Limits::REPLY).map_err(|e| {
            self.malformed(command, &format!("{e} (reply starts with \"{}\")", resp::printable(&bytes, 60)))
        })?;
        match value {
            Value::Error(message) => Err(WebdisError::Redis {
                endpoint: self.endpoint().to_string(),
                command: command.to_string(),
                message: String::from_utf8_lossy(&message).into_owned(),
            }),
            other => Ok(other),
        }
    }

    /// Sends a request and returns the response head (body unread).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        command: &str,
    ) -> Result<http::Response<Incoming>, WebdisError> {
        let mut uri = self.base.clone();
        uri.set_path(path);
        let mut request = Request::builder()
            .method(method)
            .uri(uri.as_str())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(auth) = &self.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request.body(Full::new(body)).map_err(|e| self.malformed(command, &e.to_string()))?;
        self.http.request(request).await.map_err(|e| self.transport_error(&e))
    }

    /// Opens a PSUBSCRIBE stream for `patterns` (`.raw`) on a connection of
    /// its own (see `stream`). Waits at most `header_timeout` for the response
    /// head: a PSUBSCRIBE sent while the remote Redis is down gets no answer
    /// at all (webdis.md §4c).
    pub async fn subscribe(
        &self,
        patterns: &[Vec<u8>],
        header_timeout: Duration,
    ) -> Result<super::stream::EventStream, WebdisError> {
        let command = "PSUBSCRIBE";
        let body = codec::command_body(command, patterns);
        let host =
            self.base.host_str().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
        let port = self.base.port_or_known_default().unwrap_or(443);
        let target = super::stream::StreamTarget {
            authority: match self.base.port() {
                Some(p) => format!("{}:{p}", self.base.host_str().unwrap_or("localhost")),
                None => self.base.host_str().unwrap_or("localhost").to_string(),
            },
            host,
            port,
            path: self.base.path().to_string(),
            tls: self.tls.clone().filter(|_| self.base.scheme() == "https"),
            authorization: self.authorization.as_ref().and_then(|h| h.to_str().ok()).map(str::to_string),
        };
        let opened = tokio::time::timeout(
            header_timeout,
            super::stream::EventStream::open(&target, &body, self.options.connect_timeout),
        )
        .await
        .map_err(|_| WebdisError::Timeout {
            endpoint: self.endpoint().to_string(),
            command: command.to_string(),
            timeout: header_timeout,
        })?;
        match opened {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err((status, body))) => {
                Err(self.status_error(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), &body, command))
            }
            Err(super::stream::StreamError::Transport(detail)) if detail.starts_with("TLS") => {
                Err(WebdisError::Tls { endpoint: self.endpoint().to_string(), detail })
            }
            Err(error) => {
                Err(WebdisError::Connect { endpoint: self.endpoint().to_string(), detail: error.to_string() })
            }
        }
    }

    fn malformed(&self, command: &str, detail: &str) -> WebdisError {
        WebdisError::Malformed {
            endpoint: self.endpoint().to_string(),
            command: command.to_string(),
            detail: detail.to_string(),
        }
    }

    /// Classifies a non-200 answer: nginx's 400 with an HTML body means the
    /// client certificate was refused (webdis.md §3), 403 is the Webdis ACL.
    fn status_error(&self, status: StatusCode, body: &[u8], command: &str) -> WebdisError {
        let endpoint = self.endpoint().to_string();
        let text = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
        if status == StatusCode::BAD_REQUEST && (text.contains("SSL certificate") || text.contains("SSL_CERTIFICATE")) {
            let detail = if text.contains("No required SSL certificate") {
                "no client certificate was sent"
            } else {
                "the client certificate was not accepted"
            };
            return WebdisError::ClientCertRefused { endpoint, detail: detail.to_string() };
        }
        if status == StatusCode::FORBIDDEN {
            return WebdisError::Forbidden { endpoint, command: command.to_string() };
        }
        let detail = html_title(&text).unwrap_or_else(|| resp::printable(body, 120));
        WebdisError::Http { endpoint, command: command.to_string(), status: status.as_u16(), detail }
    }

    /// Classifies a transport failure, naming TLS problems in the words an operator needs.
    fn transport_error(&self, error: &hyper_util::client::legacy::Error) -> WebdisError {
        let endpoint = self.endpoint().to_string();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            // hyper-rustls wraps tokio-rustls's io::Error (which holds the
            // rustls::Error) in another io::Error: look through every layer.
            let mut io = e.downcast_ref::<std::io::Error>();
            while let Some(layer) = io {
                let inner = layer.get_ref();
                if let Some(tls) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return WebdisError::Tls { endpoint, detail: describe_tls_error(tls) };
                }
                io = inner.and_then(|i| i.downcast_ref::<std::io::Error>());
            }
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return WebdisError::Tls { endpoint, detail: describe_tls_error(tls) };
            }
            source = e.source();
        }
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(e) = source {
            detail = format!("{detail}: {e}");
            source = e.source();
        }
        WebdisError::Connect { endpoint, detail }
    }
}

/// Words for the TLS failures operators meet.
pub(crate) fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::{CertificateError, Error as E};
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by remote.tls.ca (unknown CA)".to_string()
        }
        E::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host in remote.url".to_string()
        }
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_string()
        }
        E::AlertReceived(alert) => {
            format!("the server refused the handshake (alert {alert:?}); is the client certificate accepted there?")
        }
        other => other.to_string(),
    }
}

fn html_title(text: &str) -> Option<String> {
    let start = text.find("<title>")? + 7;
    let end = text[start..].find("</title>")? + start;
    Some(text[start..end].trim().to_string())
}

fn basic_auth_header(auth: &BasicAuth) -> HeaderValue {
    let token = base64(format!("{}:{}", auth.user, auth.password.expose()).as_bytes());
    let mut value = HeaderValue::from_str(&format!("Basic {token}")).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Standard base64 with padding (RFC 4648), for the basic-auth header.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn html_titles_are_extracted() {
        let body = "<html><head><title>400 No required SSL certificate was sent</title></head></html>";
        assert_eq!(html_title(body).as_deref(), Some("400 No required SSL certificate was sent"));
        assert_eq!(html_title("plain"), None);
    }
}
