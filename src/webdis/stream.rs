//! A PSUBSCRIBE stream through Webdis, read as one continuous RESP byte stream.
//!
//! Streams do not go through the hyper pool: they use a connection of their
//! own (TCP, then TLS with the pool's client configuration) and a tolerant
//! HTTP/1.1 reader, because Webdis 0.1.9 gets multi-pattern subscriptions
//! wrong. Subscribing to two patterns in one request (our namespace and our
//! heartbeat key) makes Redis answer with two acknowledgements at once, and
//! Webdis writes queued chunks last-in first-out, so the second ack's chunk
//! goes out *before* the response headers; nginx then passes the whole
//! upstream byte stream through as an HTTP/0.9 response. Observed on the
//! reference stack, every time:
//!
//! ```text
//! 24\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\nxx\r\n$1\r\n2\r\n\r\nHTTP/1.1 200 OK\r\n…\r\n\r\n3a\r\n*3…
//! ```
//!
//! [`Dechunker`] therefore accepts chunks and one header block in any
//! order. Chunk boundaries carry no meaning (nginx merges and splits
//! messages), so the de-chunked bytes go through a [`StreamDecoder`].
//! Reads have no timeout here; the owner (a link's capture task) races them
//! against its heartbeat deadline and reads in a task of its own, never
//! stalling, because Webdis drops or freezes a stream whose reader falls
//! behind (webdis.md §0.10).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::resp::{Limits, RespError, StreamDecoder, Value};

/// One message of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMessage {
    /// The acknowledgement of one pattern.
    Subscribed { pattern: Bytes },
    /// A keyspace event: `channel` is `__keyspace@N__:<key>`, `payload` the event name.
    Event { pattern: Bytes, channel: Bytes, payload: Bytes },
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the stream ended (the proxy or Webdis closed it)")]
    Closed,
    #[error("reading the stream failed: {0}")]
    Transport(String),
    #[error("the stream's HTTP framing is broken: {0}")]
    Framing(String),
    #[error("the stream carries malformed RESP: {0}")]
    Malformed(#[from] RespError),
    #[error("the stream carries an unexpected message: {0}")]
    Unexpected(String),
}

/// The head of the response, once seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// What the dechunker found next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Head(Head),
    Data(Bytes),
    /// The terminating zero-size chunk.
    End,
}

const MAX_HEAD: usize = 16 << 10;
const MAX_CHUNK: usize = 64 << 20;

/// Splits an HTTP/1.1 chunked response into its head and data, accepting
/// chunks before the head (see the module documentation).
#[derive(Debug, Default)]
pub struct Dechunker {
    buf: BytesMut,
    head_seen: bool,
}

impl Dechunker {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<Item>, StreamError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if !self.head_seen && self.buf.starts_with(b"HTTP/") {
            return self.head();
        }
        if !self.head_seen && b"HTTP/".starts_with(&self.buf[..self.buf.len().min(5)]) {
            return Ok(None); // maybe the start of the head
        }
        self.chunk()
    }

    /// Bytes received but not yet returned (for a non-chunked error body).
    pub fn take_rest(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    fn head(&mut self) -> Result<Option<Item>, StreamError> {
        let Some(end) = find(&self.buf[..self.buf.len().min(MAX_HEAD)], b"\r\n\r\n") else {
            if self.buf.len() >= MAX_HEAD {
                return Err(StreamError::Framing(format!("response head longer than {MAX_HEAD} bytes")));
            }
            return Ok(None);
        };
        let head = self.buf.split_to(end + 4);
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| {
            StreamError::Framing(format!("bad status line \"{}\"", crate::resp::printable(status_line.as_bytes(), 80)))
        })?;
        let mut chunked = false;
        let mut content_length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if name == "content-length" {
                content_length = value.parse().ok();
            }
        }
        self.head_seen = true;
        Ok(Some(Item::Head(Head { status, chunked, content_length })))
    }

    fn chunk(&mut self) -> Result<Option<Item>, StreamError> {
        let Some(line_end) = find(&self.buf[..self.buf.len().min(32)], b"\r\n") else {
            if self.buf.len() >= 32 {
                return Err(StreamError::Framing(format!(
                    "expected a chunk size, got \"{}\"",
                    crate::resp::printable(&self.buf, 32)
                )));
            }
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&self.buf[..line_end]).unwrap_or("");
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
            StreamError::Framing(format!("bad chunk size \"{}\"", crate::resp::printable(size_text.as_bytes(), 32)))
        })?;
        if size > MAX_CHUNK {
            return Err(StreamError::Framing(format!("chunk of {size} bytes (limit {MAX_CHUNK})")));
        }
        let total = line_end + 2 + size + 2;
        if self.buf.len() < total {
            return Ok(None);
        }
        if &self.buf[total - 2..total] != b"\r\n" {
            return Err(StreamError::Framing("chunk data is not followed by \\r\\n".to_string()));
        }
        self.buf.advance(line_end + 2);
        let data = self.buf.split_to(size).freeze();
        self.buf.advance(2);
        Ok(Some(if size == 0 { Item::End } else { Item::Data(data) }))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Anything a stream can be read from (TLS or, for insecure tests, plain TCP).
pub trait Transport: AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Transport for T {}

/// An open PSUBSCRIBE response.
pub struct EventStream {
    io: Box<dyn Transport>,
    dechunker: Dechunker,
    decoder: StreamDecoder,
    read_buf: Vec<u8>,
}

/// Where and how to open a stream (from the Webdis client).
pub struct StreamTarget {
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    pub path: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub authorization: Option<String>,
}

impl EventStream {
    /// Connects, sends the PSUBSCRIBE request and waits for the response head.
    /// On a non-200 answer returns the status and whatever body arrived.
    pub async fn open(
        target: &StreamTarget,
        body: &[u8],
        connect_timeout: Duration,
    ) -> Result<Result<EventStream, (u16, Bytes)>, StreamError> {
        let tcp =
            tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect((target.host.as_str(), target.port)))
                .await
                .map_err(|_| StreamError::Transport(format!("connecting took longer than {connect_timeout:?}")))?
                .map_err(|e| StreamError::Transport(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut io: Box<dyn Transport> = match &target.tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| StreamError::Transport(format!("bad server name {}: {e}", target.host)))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone());
                Box::new(
                    tokio::time::timeout(connect_timeout, tls.connect(name, tcp))
                        .await
                        .map_err(|_| {
                            StreamError::Transport(format!("the TLS handshake took longer than {connect_timeout:?}"))
                        })?
                        .map_err(|e| StreamError::Transport(format!("TLS handshake failed: {}", tls_error_text(&e))))?,
                )
            }
            None => Box::new(tcp),
        };
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            target.path,
            target.authority,
            body.len()
        );
        if let Some(auth) = &target.authorization {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        io.write_all(&bytes).await.map_err(|e| StreamError::Transport(format!("sending the request failed: {e}")))?;
        io.flush().await.map_err(|e| StreamError::Transport(e.to_string()))?;
        let mut stream = EventStream {
            io,
            dechunker: Dechunker::default(),
            decoder: StreamDecoder::new(Limits::PUBSUB),
            read_buf: vec![0; 64 << 10],
        };
        // Read until the head; chunks before it are data like any other.
        loop {
            match stream.dechunker.next_item()? {
                Some(Item::Head(head)) if head.status == 200 => return Ok(Ok(stream)),
                Some(Item::Head(head)) => {
                    let body = stream.read_error_body(head.content_length).await;
                    return Ok(Err((head.status, body)));
                }
                Some(Item::Data(data)) => stream.decoder.push(&data),
                Some(Item::End) => return Err(StreamError::Closed),
                None => stream.fill().await?,
            }
        }
    }

    async fn fill(&mut self) -> Result<(), StreamError> {
        let n = self.io.read(&mut self.read_buf).await.map_err(|e| StreamError::Transport(e.to_string()))?;
        if n == 0 {
            return Err(StreamError::Closed);
        }
        self.dechunker.push(&self.read_buf[..n]);
        Ok(())
    }

    /// Reads a short error body (for classifying nginx's and Webdis's refusals).
    async fn read_error_body(&mut self, length: Option<usize>) -> Bytes {
        let want = length.unwrap_or(8 << 10).min(64 << 10);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.dechunker.buf.len() < want {
                if self.fill().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.dechunker.take_rest()
    }

    /// The next message; waits for bytes as long as it takes.
    pub async fn next_message(&mut self) -> Result<StreamMessage, StreamError> {
        loop {
            if let Some(value) = self.decoder.next_value()? {
                return interpret(value);
            }
            match self.dechunker.next_item()? {
                Some(Item::Data(data)) => self.decoder.push(&data),
                Some(Item::End) => return Err(StreamError::Closed),
                Some(Item::Head(_)) => return Err(StreamError::Framing("a second response head".to_string())),
                None => self.fill().await?,
            }
        }
    }
}

fn tls_error_text(error: &std::io::Error) -> String {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => super::client::describe_tls_error(tls),
        None => error.to_string(),
    }
}

/// Turns one RESP value of a pub/sub stream into a message.
pub fn interpret(value: Value) -> Result<StreamMessage, StreamError> {
    let unexpected = |v: &Value| StreamError::Unexpected(v.describe());
    let Value::Array(items) = &value else { return Err(unexpected(&value)) };
    let field = |i: usize| items.get(i).and_then(Value::as_bytes).cloned();
    match (field(0).as_deref(), items.len()) {
        (Some(b"pmessage"), 4) => match (field(1), field(2), field(3)) {
            (Some(pattern), Some(channel), Some(payload)) => Ok(StreamMessage::Event { pattern, channel, payload }),
            _ => Err(unexpected(&value)),
        },
        (Some(b"psubscribe"), 3) => match field(1) {
            Some(pattern) => Ok(StreamMessage::Subscribed { pattern }),
            None => Err(unexpected(&value)),
        },
        _ => Err(unexpected(&value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::parse_complete;

    /// The bytes the reference stack sends for a two-pattern PSUBSCRIBE
    /// (the second ack's chunk before the head), then one event.
    const OBSERVED: &[u8] = b"24\r\n*3\r\n$10\r\npsubscribe\r\n$2\r\nxx\r\n$1\r\n2\r\n\r\nHTTP/1.1 200 OK\r\nServer: Webdis\r\nContent-Type: binary/octet-stream\r\nConnection: Keep-Alive\r\nTransfer-Encoding: chunked\r\n\r\n3a\r\n*3\r\n$10\r\npsubscribe\r\n$23\r\n__keyspace@0__:global:*\r\n$1\r\n1\r\n\r\n";

    fn items(input: &[u8], step: usize) -> Vec<Item> {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            d.push(piece);
            while let Some(item) = d.next_item().unwrap() {
                out.push(item);
            }
        }
        out
    }

    #[test]
    fn chunks_before_the_head_are_accepted_whatever_the_read_sizes() {
        for step in [1, 2, 3, 7, 64, OBSERVED.len()] {
            let got = items(OBSERVED, step);
            assert_eq!(got.len(), 3, "step {step}: {got:?}");
            assert!(matches!(&got[0], Item::Data(d) if d.starts_with(b"*3\r\n$10\r\npsubscribe\r\n$2\r\nxx")));
            assert_eq!(got[1], Item::Head(Head { status: 200, chunked: true, content_length: None }));
            assert!(matches!(&got[2], Item::Data(d) if d.ends_with(b"$1\r\n1\r\n")));
        }
    }

    #[test]
    fn an_ordinary_response_and_its_end() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let got = items(input, 5);
        assert_eq!(got[1], Item::Data(Bytes::from_static(b"abc")));
        assert_eq!(got[2], Item::End);
        let refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nhello";
        let mut d = Dechunker::default();
        d.push(refused);
        assert_eq!(
            d.next_item().unwrap(),
            Some(Item::Head(Head { status: 400, chunked: false, content_length: Some(5) }))
        );
        assert_eq!(d.take_rest().as_ref(), b"hello");
    }

    #[test]
    fn garbage_framing_is_an_error_not_a_panic() {
        for input in
            [&b"zz\r\nab\r\n"[..], b"5\r\nabcdeXY", b"HTTP/1.1 abc\r\n\r\n", &[b'7'; 40][..], b"FFFFFFFFFFFF\r\n"]
        {
            let mut d = Dechunker::default();
            d.push(input);
            assert!(d.next_item().is_err(), "{}", crate::resp::printable(input, 50));
        }
    }

    #[test]
    fn interprets_acks_and_events() {
        let ack = parse_complete(b"*3\r\n$10\r\npsubscribe\r\n$3\r\np:*\r\n$1\r\n1\r\n", &Limits::PUBSUB).unwrap();
        assert_eq!(interpret(ack).unwrap(), StreamMessage::Subscribed { pattern: Bytes::from_static(b"p:*") });
        let event = parse_complete(
            b"*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$22\r\n__keyspace@0__:p:\xff\x00bin\r\n$3\r\nset\r\n",
            &Limits::PUBSUB,
        )
        .unwrap();
        assert_eq!(
            interpret(event).unwrap(),
            StreamMessage::Event {
                pattern: Bytes::from_static(b"p:*"),
                channel: Bytes::from_static(b"__keyspace@0__:p:\xff\x00bin"),
                payload: Bytes::from_static(b"set"),
            }
        );
        assert!(interpret(Value::Error(Bytes::from_static(b"ERR x"))).is_err());
        assert!(interpret(Value::Array(vec![Value::Integer(1)])).is_err());
    }
}
