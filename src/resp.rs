//! RESP2 values and a bounded, incremental parser.
//!
//! Two consumers own a parser each: the Webdis client parses the `.raw` body of
//! every reply (read whole, then parsed once), and the PSUBSCRIBE stream reader
//! feeds de-chunked bytes into a [`StreamDecoder`] as they arrive, because
//! nginx merges several pub/sub messages into one HTTP chunk and may also
//! split one message across chunks (see `shared/reference/webdis.md` §0.6).
//!
//! Input comes from the network, so every count and length is checked against
//! [`Limits`] before anything is allocated; a peer cannot make us reserve
//! memory it has not sent.

use bytes::{Buf, Bytes, BytesMut};

/// One RESP2 value. Bulk strings are binary (`Bytes`), never assumed UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR …`
    Error(Bytes),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Bytes),
    /// `$-1` or `*-1`
    Nil,
    /// `*N`
    Array(Vec<Value>),
}

impl Value {
    /// The bytes of a simple or bulk string; `None` for anything else.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// An integer, also when Webdis turned it into a bulk string inside an
    /// array (it does: `.raw` writes integers in arrays as `$2\r\n42`).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            Value::Simple(b) | Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A short, printable description for error messages (never the whole value).
    pub fn describe(&self) -> String {
        match self {
            Value::Simple(b) => format!("status {}", printable(b, 80)),
            Value::Error(b) => format!("error {}", printable(b, 200)),
            Value::Integer(i) => format!("integer {i}"),
            Value::Bulk(b) => format!("bulk string of {} bytes", b.len()),
            Value::Nil => "nil".to_string(),
            Value::Array(a) => format!("array of {} elements", a.len()),
        }
    }
}

/// Renders at most `max` bytes as escaped ASCII, for logs and error messages.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out: String = bytes.iter().take(max).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if bytes.len() > max {
        out.push('…');
    }
    out
}

/// Upper bounds a parser enforces on untrusted input.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest bulk string accepted, in bytes.
    pub max_bulk: usize,
    /// Most elements accepted in one array.
    pub max_array: usize,
    /// Deepest nesting of arrays accepted.
    pub max_depth: usize,
    /// Longest header line (`$123\r\n`, `+OK\r\n`, `-ERR …\r\n`) accepted.
    pub max_line: usize,
}

impl Limits {
    /// For replies to our own commands: values up to Redis's 512 MiB string limit.
    pub const REPLY: Limits = Limits { max_bulk: 512 << 20, max_array: 64 << 20, max_depth: 8, max_line: 64 << 10 };
    /// For pub/sub messages: a key name and an event name, nothing large.
    pub const PUBSUB: Limits = Limits { max_bulk: 16 << 20, max_array: 16, max_depth: 2, max_line: 4 << 10 };
}

/// Why bytes are not valid RESP (or exceed the limits).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    #[error("malformed RESP at byte {offset}: {what}")]
    Malformed { offset: usize, what: String },
    #[error("RESP value exceeds a limit at byte {offset}: {what}")]
    TooLarge { offset: usize, what: String },
}

/// Parses one complete value from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only a prefix of a value (more bytes
/// needed), `Ok(Some((value, consumed)))` when a whole value was read.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(Value, usize)>, RespError> {
    // First find the end of the value without building anything, so an
    // incomplete value (a stream reader asks again with every new chunk)
    // costs neither copies nor reservations.
    let mut end = 0;
    if parse_at(buf, &mut end, limits, 0, false)?.is_none() {
        return Ok(None);
    }
    let mut pos = 0;
    match parse_at(buf, &mut pos, limits, 0, true)? {
        Some(v) => Ok(Some((v, pos))),
        None => Ok(None),
    }
}

/// Parses a buffer that must hold exactly one complete value.
pub fn parse_complete(buf: &[u8], limits: &Limits) -> Result<Value, RespError> {
    match parse(buf, limits)? {
        Some((v, used)) if used == buf.len() => Ok(v),
        Some((_, used)) => Err(RespError::Malformed {
            offset: used,
            what: format!("{} trailing bytes after the value", buf.len() - used),
        }),
        None => {
            Err(RespError::Malformed { offset: buf.len(), what: "the reply ends in the middle of a value".to_string() })
        }
    }
}

fn malformed(offset: usize, what: impl Into<String>) -> RespError {
    RespError::Malformed { offset, what: what.into() }
}

/// Reads a `\r\n`-terminated line starting at `*pos`; `None` if incomplete.
fn line<'a>(buf: &'a [u8], pos: &mut usize, limits: &Limits) -> Result<Option<&'a [u8]>, RespError> {
    let start = *pos;
    let window = &buf[start..buf.len().min(start + limits.max_line + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => {
            if i == 0 || window[i - 1] != b'\r' {
                return Err(malformed(start + i, "line ends in a bare \\n"));
            }
            *pos = start + i + 1;
            Ok(Some(&window[..i - 1]))
        }
        None if window.len() >= limits.max_line + 2 => {
            Err(RespError::TooLarge { offset: start, what: format!("line longer than {} bytes", limits.max_line) })
        }
        None => Ok(None),
    }
}

fn number(text: &[u8], offset: usize) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| malformed(offset, format!("expected a number, got \"{}\"", printable(text, 32))))
}

/// Reads the value at `*pos`. With `build` false it only checks that a whole
/// value is there and returns `Value::Nil` in its place, allocating nothing.
fn parse_at(
    buf: &[u8],
    pos: &mut usize,
    limits: &Limits,
    depth: usize,
    build: bool,
) -> Result<Option<Value>, RespError> {
    let start = *pos;
    let Some(&tag) = buf.get(start) else { return Ok(None) };
    *pos += 1;
    let Some(text) = line(buf, pos, limits)? else { return Ok(None) };
    let body_offset = start + 1;
    match tag {
        b'+' => Ok(Some(if build { Value::Simple(Bytes::copy_from_slice(text)) } else { Value::Nil })),
        b'-' => Ok(Some(if build { Value::Error(Bytes::copy_from_slice(text)) } else { Value::Nil })),
        b':' => Ok(Some(Value::Integer(number(text, body_offset)?))),
        b'$' => {
            let len = number(text, body_offset)?;
            if len == -1 {
                return Ok(Some(Value::Nil));
            }
            let len =
                usize::try_from(len).map_err(|_| malformed(body_offset, format!("negative bulk length {len}")))?;
            if len > limits.max_bulk {
                return Err(RespError::TooLarge {
                    offset: body_offset,
                    what: format!("bulk string of {len} bytes (limit {})", limits.max_bulk),
                });
            }
            let data_start = *pos;
            let Some(end) = data_start.checked_add(len) else {
                return Err(malformed(body_offset, "bulk length overflows"));
            };
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(malformed(end, "bulk string is not followed by \\r\\n"));
            }
            *pos = end + 2;
            Ok(Some(if build { Value::Bulk(Bytes::copy_from_slice(&buf[data_start..end])) } else { Value::Nil }))
        }
        b'*' => {
            let count = number(text, body_offset)?;
            if count == -1 {
                return Ok(Some(Value::Nil));
            }
            let count =
                usize::try_from(count).map_err(|_| malformed(body_offset, format!("negative array length {count}")))?;
            if count > limits.max_array {
                return Err(RespError::TooLarge {
                    offset: body_offset,
                    what: format!("array of {count} elements (limit {})", limits.max_array),
                });
            }
            if depth >= limits.max_depth {
                return Err(RespError::TooLarge {
                    offset: start,
                    what: format!("arrays nested deeper than {}", limits.max_depth),
                });
            }
            // Every element takes at least 3 bytes (":0\r\n" is 4), so a count
            // far beyond what is buffered cannot be complete yet: reserve only
            // what the buffered bytes could hold (nothing when only checking).
            let mut items = Vec::with_capacity(if build { count.min((buf.len() - *pos) / 3 + 1) } else { 0 });
            for _ in 0..count {
                match parse_at(buf, pos, limits, depth + 1, build)? {
                    Some(v) if build => items.push(v),
                    Some(_) => {}
                    None => return Ok(None),
                }
            }
            Ok(Some(if build { Value::Array(items) } else { Value::Nil }))
        }
        other => Err(malformed(start, format!("unknown type byte 0x{other:02x}"))),
    }
}

/// Decodes a continuous byte stream into RESP values, whatever the chunking.
///
/// The owner (one stream reader task) pushes bytes as they arrive and pops
/// complete values; a partial value stays buffered until the rest arrives.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    limits: Limits,
    /// Bytes already consumed from the stream, so errors name a stream offset.
    consumed: usize,
}

impl StreamDecoder {
    pub fn new(limits: Limits) -> Self {
        StreamDecoder { buf: BytesMut::new(), limits, consumed: 0 }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet part of a complete value.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete value, `Ok(None)` when more bytes are needed.
    pub fn next_value(&mut self) -> Result<Option<Value>, RespError> {
        match parse(&self.buf, &self.limits) {
            Ok(Some((value, used))) => {
                self.buf.advance(used);
                self.consumed += used;
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            Err(RespError::Malformed { offset, what }) => {
                Err(RespError::Malformed { offset: offset + self.consumed, what })
            }
            Err(RespError::TooLarge { offset, what }) => {
                Err(RespError::TooLarge { offset: offset + self.consumed, what })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s))
    }

    #[test]
    fn parses_every_type() {
        let cases: Vec<(&[u8], Value)> = vec![
            (b"+OK\r\n", Value::Simple(Bytes::from_static(b"OK"))),
            (b"-ERR x\r\n", Value::Error(Bytes::from_static(b"ERR x"))),
            (b":-42\r\n", Value::Integer(-42)),
            (b"$3\r\na\x00b\r\n", bulk(b"a\x00b")),
            (b"$0\r\n\r\n", bulk(b"")),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (b"*0\r\n", Value::Array(vec![])),
            (b"*2\r\n$1\r\na\r\n:1\r\n", Value::Array(vec![bulk(b"a"), Value::Integer(1)])),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_complete(input, &Limits::REPLY).unwrap(), expected, "{}", printable(input, 100));
        }
    }

    #[test]
    fn bulk_may_contain_crlf_and_every_byte() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut input = format!("${}\r\n", all.len()).into_bytes();
        input.extend_from_slice(&all);
        input.extend_from_slice(b"\r\n");
        assert_eq!(parse_complete(&input, &Limits::REPLY).unwrap(), bulk(&all));
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let input = b"*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$5\r\np:k\r\n\r\n$3\r\nset\r\n";
        for cut in 0..input.len() {
            assert_eq!(parse(&input[..cut], &Limits::PUBSUB).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(input, &Limits::PUBSUB).unwrap().is_some());
    }

    #[test]
    fn stream_decoder_handles_byte_by_byte_and_merged_input() {
        let one = b"*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$3\r\np:a\r\n$3\r\nset\r\n".to_vec();
        let two = b"*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$3\r\np:b\r\n$3\r\ndel\r\n".to_vec();
        let stream: Vec<u8> = [one.clone(), two.clone()].concat();

        let mut merged = StreamDecoder::new(Limits::PUBSUB);
        merged.push(&stream);
        let a = merged.next_value().unwrap().unwrap();
        let b = merged.next_value().unwrap().unwrap();
        assert_eq!(merged.next_value().unwrap(), None);

        let mut split = StreamDecoder::new(Limits::PUBSUB);
        let mut got = Vec::new();
        for byte in &stream {
            split.push(std::slice::from_ref(byte));
            while let Some(v) = split.next_value().unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(split.buffered(), 0);
    }

    #[test]
    fn rejects_malformed_and_oversized_input() {
        let bad: Vec<&[u8]> = vec![b"?x\r\n", b"$abc\r\n", b"$-5\r\n", b"*-2\r\n", b":1\n", b"$1\r\nab\r\n"];
        for input in bad {
            assert!(
                matches!(parse(input, &Limits::REPLY), Err(RespError::Malformed { .. })),
                "{}",
                printable(input, 50)
            );
        }
        assert!(matches!(parse(b"$999999999999\r\n", &Limits::PUBSUB), Err(RespError::TooLarge { .. })));
        assert!(matches!(parse(b"*100\r\n", &Limits::PUBSUB), Err(RespError::TooLarge { .. })));
        assert!(matches!(parse(b"*1\r\n*1\r\n*1\r\n:1\r\n", &Limits::PUBSUB), Err(RespError::TooLarge { .. })));
        let long_line = [b"+".as_slice(), &vec![b'a'; 5000]].concat();
        assert!(matches!(parse(&long_line, &Limits::PUBSUB), Err(RespError::TooLarge { .. })));
    }

    #[test]
    fn a_huge_declared_array_reserves_little() {
        // 64 M elements declared, 4 bytes present: incomplete, not an allocation of 64 M values.
        assert_eq!(parse(b"*67108864\r\n:1\r\n", &Limits::REPLY).unwrap(), None);
    }

    #[test]
    fn integers_inside_arrays_may_arrive_as_bulk_strings() {
        assert_eq!(bulk(b"42").as_integer(), Some(42));
        assert_eq!(Value::Integer(-2).as_integer(), Some(-2));
        assert_eq!(bulk(b"x").as_integer(), None);
    }
}
