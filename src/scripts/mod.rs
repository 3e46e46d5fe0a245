//! The Lua scripts replhub runs on both sides, and the Rust half of their
//! protocol: encoding requests, decoding replies.
//!
//! The same scripts run on the local Redis (through fred) and on the remote
//! one (through Webdis's EVAL), so a digest computed on one side is
//! comparable with one computed on the other, and every write is atomic (a
//! script runs to completion before Redis serves anything else). Replies are
//! flat arrays of strings because Webdis mangles nested or nil elements.

use bytes::Bytes;

use crate::config::DataType;
use crate::resp::Value;

/// One Lua script: the shared helpers followed by its body.
pub struct Script {
    pub name: &'static str,
    pub source: String,
}

const COMMON: &str = include_str!("common.lua");

/// A script with the shared helpers in front.
fn with_common(name: &'static str, body: &str) -> Script {
    standalone(name, &format!("{COMMON}\n{body}"))
}

/// A script as sent: comment lines and indentation dropped, because
/// `stage` travels in a URL (nginx allows about 8 KB) and every request
/// carries its script.
fn standalone(name: &'static str, text: &str) -> Script {
    let source = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    Script { name, source }
}

/// The four scripts, built once.
pub struct Scripts {
    pub read: Script,
    pub write: Script,
    pub stage: Script,
    pub scan: Script,
    pub buckets: Script,
}

impl Scripts {
    pub fn get() -> &'static Scripts {
        static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
        SCRIPTS.get_or_init(|| Scripts {
            read: with_common("read", include_str!("read.lua")),
            write: with_common("write", include_str!("write.lua")),
            stage: standalone("stage", include_str!("stage.lua")),
            scan: with_common("scan", include_str!("scan.lua")),
            buckets: with_common("buckets", include_str!("buckets.lua")),
        })
    }
}

/// A key's type as Redis names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    None,
    Data(DataType),
    /// A type replhub does not copy (stream, module types).
    Other(String),
}

impl KeyType {
    pub fn parse(name: &[u8]) -> KeyType {
        match name {
            b"none" => KeyType::None,
            b"string" => KeyType::Data(DataType::String),
            b"hash" => KeyType::Data(DataType::Hash),
            b"list" => KeyType::Data(DataType::List),
            b"set" => KeyType::Data(DataType::Set),
            b"zset" => KeyType::Data(DataType::Zset),
            other => KeyType::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// The Redis name of a data type.
pub fn type_name(ty: DataType) -> &'static str {
    match ty {
        DataType::String => "string",
        DataType::Hash => "hash",
        DataType::List => "list",
        DataType::Set => "set",
        DataType::Zset => "zset",
    }
}

/// The identity of a key's value (see `common.lua`); [`Digest::ABSENT`] for no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub u64);

impl Digest {
    pub const ABSENT: Digest = Digest(0);

    /// Parses the scripts' form: 16 hex digits, or "-" for absent.
    pub fn parse(text: &[u8]) -> Option<Digest> {
        if text == b"-" {
            return Some(Digest::ABSENT);
        }
        if text.len() != 16 {
            return None;
        }
        let value = u64::from_str_radix(std::str::from_utf8(text).ok()?, 16).ok()?;
        // A real value that happens to be 0 must not read as "absent".
        Some(Digest(value.max(1)))
    }

    /// The scripts' form. A parsed 0 became 1 above, so 1 renders as the
    /// digest the script would compare against; that collision (2^-64) is accepted.
    pub fn render(self) -> String {
        if self == Digest::ABSENT { "-".to_string() } else { format!("{:016x}", self.0) }
    }
}

/// A key's full state as read from one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyState {
    pub ty: KeyType,
    /// Milliseconds to live; -1 no expiry; -2 missing.
    pub pttl: i64,
    /// `Digest::ABSENT` unless asked for (or for a missing key).
    pub digest: Digest,
    /// The value, laid out as `read.lua` describes.
    pub items: Vec<Bytes>,
}

impl KeyState {
    pub fn absent() -> KeyState {
        KeyState { ty: KeyType::None, pttl: -2, digest: Digest::ABSENT, items: Vec::new() }
    }
}

/// A reply that does not have the shape a script returns.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the {script} script returned an unexpected reply: {detail}")]
pub struct ReplyError {
    pub script: &'static str,
    pub detail: String,
}

fn flat(script: &'static str, value: Value) -> Result<Vec<Bytes>, ReplyError> {
    let Value::Array(items) = value else { return Err(ReplyError { script, detail: value.describe() }) };
    items
        .into_iter()
        .map(|v| match v {
            Value::Bulk(b) | Value::Simple(b) => Ok(b),
            Value::Integer(i) => Ok(Bytes::from(i.to_string())),
            other => Err(ReplyError { script, detail: format!("array element is {}", other.describe()) }),
        })
        .collect()
}

/// Reads fields off a flat reply, failing (never panicking) when it runs short.
struct Fields {
    script: &'static str,
    items: std::vec::IntoIter<Bytes>,
}

impl Fields {
    fn next(&mut self) -> Result<Bytes, ReplyError> {
        self.items.next().ok_or_else(|| ReplyError { script: self.script, detail: "the reply ends early".to_string() })
    }
    fn int(&mut self) -> Result<i64, ReplyError> {
        let field = self.next()?;
        std::str::from_utf8(&field).ok().and_then(|s| s.parse().ok()).ok_or_else(|| ReplyError {
            script: self.script,
            detail: format!("\"{}\" is not a number", crate::resp::printable(&field, 20)),
        })
    }
    fn digest(&mut self) -> Result<Digest, ReplyError> {
        let field = self.next()?;
        Digest::parse(&field).ok_or_else(|| ReplyError {
            script: self.script,
            detail: format!("\"{}\" is not a digest", crate::resp::printable(&field, 20)),
        })
    }
    fn done(mut self) -> Result<(), ReplyError> {
        match self.items.next() {
            None => Ok(()),
            Some(_) => Err(ReplyError { script: self.script, detail: "the reply has extra fields".to_string() }),
        }
    }
}

/// Arguments for `read.lua`.
pub fn read_args(with_digest: bool) -> Vec<Bytes> {
    vec![Bytes::from_static(if with_digest { b"1" } else { b"0" })]
}

/// Decodes the reply of `read.lua` for `count` keys.
pub fn parse_read(value: Value, count: usize) -> Result<Vec<KeyState>, ReplyError> {
    let script = "read";
    let mut fields = Fields { script, items: flat(script, value)?.into_iter() };
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        let ty = KeyType::parse(&fields.next()?);
        let pttl = fields.int()?;
        let digest = fields.digest()?;
        let n =
            usize::try_from(fields.int()?).map_err(|_| ReplyError { script, detail: "negative count".to_string() })?;
        let mut items = Vec::with_capacity(n.min(fields.items.len()));
        for _ in 0..n {
            items.push(fields.next()?);
        }
        states.push(KeyState { ty, pttl, digest, items });
    }
    fields.done()?;
    Ok(states)
}

/// What a write does to one key.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Replace the key with this state (its `ty` is a data type).
    Put(KeyState),
    /// Delete the key.
    Delete,
    /// Rename this staging key (already filled, of this type) over the key, with this TTL.
    Stage { staging_key: Bytes, ty: DataType, pttl: i64 },
}

/// One key of a write request.
#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub key: Bytes,
    pub op: WriteOp,
    /// Compare-and-set: the digest the key must still have (or already `new_digest`).
    pub expect: Option<Digest>,
    pub new_digest: Digest,
    /// When the source state was read (its PTTL counts from then).
    pub read_at: Option<std::time::Instant>,
}

impl WriteRecord {
    /// Approximate request bytes once encoded (for batching).
    pub fn encoded_len(&self) -> usize {
        let data: usize = match &self.op {
            WriteOp::Put(state) => state.items.iter().map(|i| crate::webdis::codec::pct_encoded_len(i) + 1).sum(),
            WriteOp::Delete => 0,
            WriteOp::Stage { staging_key, .. } => staging_key.len() * 3,
        };
        crate::webdis::codec::pct_encoded_len(&self.key) + data + 64
    }
}

/// Encodes a write batch: (KEYS, ARGV) for `write.lua`.
pub fn write_args(records: &[WriteRecord], types: &[DataType]) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut keys = Vec::with_capacity(records.len());
    let mut args = vec![Bytes::from(allowed_types(types))];
    for record in records {
        keys.push(record.key.clone());
        let expect = record.expect.map(|d| Bytes::from(d.render())).unwrap_or_default();
        let new_digest = Bytes::from(record.new_digest.render());
        let (op, ty, pttl, items): (&'static str, &'static str, i64, Vec<Bytes>) = match &record.op {
            WriteOp::Put(state) => {
                let ty = match &state.ty {
                    KeyType::Data(t) => type_name(*t),
                    _ => "none",
                };
                ("put", ty, state.pttl, state.items.clone())
            }
            WriteOp::Delete => ("del", "none", -2, Vec::new()),
            WriteOp::Stage { staging_key, ty, pttl } => ("stage", type_name(*ty), *pttl, vec![staging_key.clone()]),
        };
        args.push(Bytes::from_static(op.as_bytes()));
        args.push(expect);
        args.push(new_digest);
        args.push(Bytes::from_static(ty.as_bytes()));
        args.push(Bytes::from(pttl.to_string()));
        args.push(Bytes::from(items.len().to_string()));
        args.extend(items);
    }
    (keys, args)
}

/// What a write did to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written (or deleted); `events` keyspace events were caused on the key.
    Written { events: u32 },
    /// Already as wanted (only the TTL may have been aligned, causing `events`).
    Unchanged { events: u32 },
    /// Compare-and-set failed: the key changed; this is its current digest.
    Conflict { current: Digest },
    /// The destination key has a type the link does not replicate; left alone.
    Skipped { found: String },
    /// The staging key of a chunked copy was gone (expired); copy again.
    StagingLost,
}

/// Decodes the reply of `write.lua` for `count` records.
pub fn parse_write(value: Value, count: usize) -> Result<Vec<WriteOutcome>, ReplyError> {
    let script = "write";
    let mut fields = Fields { script, items: flat(script, value)?.into_iter() };
    let mut outcomes = Vec::with_capacity(count);
    for _ in 0..count {
        let status = fields.next()?;
        let detail = fields.next()?;
        let events =
            u32::try_from(fields.int()?).map_err(|_| ReplyError { script, detail: "bad event count".to_string() })?;
        let outcome = match status.as_ref() {
            b"ok" => WriteOutcome::Written { events },
            b"same" => WriteOutcome::Unchanged { events },
            b"conflict" => WriteOutcome::Conflict {
                current: Digest::parse(&detail)
                    .ok_or_else(|| ReplyError { script, detail: "bad digest".to_string() })?,
            },
            b"skip" => WriteOutcome::Skipped { found: String::from_utf8_lossy(&detail).into_owned() },
            b"missing" => WriteOutcome::StagingLost,
            other => {
                return Err(ReplyError {
                    script,
                    detail: format!("unknown status {}", crate::resp::printable(other, 20)),
                });
            }
        };
        outcomes.push(outcome);
    }
    fields.done()?;
    Ok(outcomes)
}

/// One key found by `scan.lua`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    pub key: Bytes,
    pub ty: KeyType,
    pub pttl: i64,
    pub digest: Digest,
}

/// Resync buckets (see `buckets.lua`).
pub const BUCKETS: usize = 64;

/// Which buckets a detailed scan returns; `None` for all keys.
pub type BucketMask = Option<[bool; BUCKETS]>;

/// Arguments for one `scan.lua` step.
pub fn scan_args(cursor: &[u8], pattern: &[u8], count: usize, with_digest: bool, mask: &BucketMask) -> Vec<Bytes> {
    let mask = match mask {
        Some(buckets) => Bytes::from(buckets.iter().map(|&on| if on { '1' } else { '0' }).collect::<String>()),
        None => Bytes::new(),
    };
    vec![
        Bytes::copy_from_slice(cursor),
        Bytes::copy_from_slice(pattern),
        Bytes::from(count.to_string()),
        Bytes::from_static(if with_digest { b"1" } else { b"0" }),
        mask,
    ]
}

/// One namespace's summary by bucket (see `buckets.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSums {
    /// Keys of replicated types.
    pub keys: usize,
    pub words: [u64; BUCKETS],
}

impl Default for BucketSums {
    fn default() -> Self {
        BucketSums { keys: 0, words: [0; BUCKETS] }
    }
}

impl BucketSums {
    /// Adds one step's sums.
    pub fn add(&mut self, step: &BucketSums) {
        self.keys += step.keys;
        for (w, s) in self.words.iter_mut().zip(step.words) {
            *w ^= s;
        }
    }

    /// The buckets where `self` and `other` differ.
    pub fn differing(&self, other: &BucketSums) -> [bool; BUCKETS] {
        std::array::from_fn(|b| self.words[b] != other.words[b])
    }
}

/// Arguments for one `buckets.lua` step.
pub fn bucket_args(cursor: &[u8], pattern: &[u8], count: usize, types: &[DataType]) -> Vec<Bytes> {
    vec![
        Bytes::copy_from_slice(cursor),
        Bytes::copy_from_slice(pattern),
        Bytes::from(count.to_string()),
        Bytes::from(allowed_types(types)),
    ]
}

/// Decodes one `buckets.lua` step: the next cursor and the step's sums.
pub fn parse_buckets(value: Value) -> Result<(Bytes, BucketSums), ReplyError> {
    let script = "buckets";
    let mut fields = Fields { script, items: flat(script, value)?.into_iter() };
    let cursor = fields.next()?;
    let keys =
        usize::try_from(fields.int()?).map_err(|_| ReplyError { script, detail: "negative count".to_string() })?;
    let mut words = [0u64; BUCKETS];
    for word in words.iter_mut() {
        let mut pair = 0u64;
        for _ in 0..2 {
            let field = fields.next()?;
            let half =
                std::str::from_utf8(&field).ok().and_then(|s| u32::from_str_radix(s, 16).ok()).ok_or_else(|| {
                    ReplyError {
                        script,
                        detail: format!("\"{}\" is not a hex word", crate::resp::printable(&field, 20)),
                    }
                })?;
            pair = pair << 32 | u64::from(half);
        }
        *word = pair;
    }
    fields.done()?;
    Ok((cursor, BucketSums { keys, words }))
}

/// The `,string,hash,` form of a type list the scripts take.
fn allowed_types(types: &[DataType]) -> String {
    let mut allowed = String::from(",");
    for ty in types {
        allowed.push_str(type_name(*ty));
        allowed.push(',');
    }
    allowed
}

/// Decodes one `scan.lua` step: the next cursor ("0" when done) and the keys.
pub fn parse_scan(value: Value) -> Result<(Bytes, Vec<ScanEntry>), ReplyError> {
    let script = "scan";
    let mut fields = Fields { script, items: flat(script, value)?.into_iter() };
    let cursor = fields.next()?;
    let mut entries = Vec::new();
    while fields.items.len() > 0 {
        let key = fields.next()?;
        let ty = KeyType::parse(&fields.next()?);
        let pttl = fields.int()?;
        let digest = fields.digest()?;
        entries.push(ScanEntry { key, ty, pttl, digest });
    }
    fields.done()?;
    Ok((cursor, entries))
}

/// Arguments for one `stage.lua` chunk (the chunk itself follows for strings).
pub fn stage_args(first: bool, ty: DataType) -> Vec<Bytes> {
    vec![Bytes::from_static(if first { b"first" } else { b"more" }), Bytes::from_static(type_name(ty).as_bytes())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn the_staging_script_fits_in_a_url() {
        let encoded = crate::webdis::codec::pct_encoded_len(Scripts::get().stage.source.as_bytes());
        assert!(encoded < 4096, "stage.lua encodes to {encoded} bytes; nginx refuses URLs over ~8 KB");
    }

    #[test]
    fn bucket_sums_decode_and_combine() {
        let mut reply = vec![bulk("0"), bulk("3")];
        for i in 0..128 {
            reply.push(bulk(if i == 5 { "0000000a" } else { "00000000" }));
        }
        let (cursor, sums) = parse_buckets(Value::Array(reply.clone())).unwrap();
        assert_eq!((cursor.as_ref(), sums.keys), (&b"0"[..], 3));
        assert_eq!(sums.words[2], 0xa, "bucket 2 holds words 4 and 5 (its low half is word 5)");
        let mut total = BucketSums::default();
        total.add(&sums);
        total.add(&sums);
        assert_eq!(total.words[2], 0, "XOR: the same contribution twice cancels");
        assert_eq!(total.keys, 6);
        let differing = sums.differing(&BucketSums::default());
        assert_eq!(differing.iter().filter(|d| **d).count(), 1);
        reply.pop();
        assert!(parse_buckets(Value::Array(reply)).is_err());
    }

    #[test]
    fn digests_parse_and_render() {
        assert_eq!(Digest::parse(b"-"), Some(Digest::ABSENT));
        let d = Digest::parse(b"00000000000000ff").unwrap();
        assert_eq!(d, Digest(255));
        assert_eq!(d.render(), "00000000000000ff");
        assert_eq!(Digest::parse(b"0000000000000000"), Some(Digest(1)));
        assert_eq!(Digest::parse(b"xyz"), None);
        assert_eq!(Digest::parse(b"zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn read_replies_decode_and_short_replies_fail_cleanly() {
        let reply = Value::Array(vec![
            bulk("hash"),
            bulk("-1"),
            bulk("-"),
            bulk("2"),
            bulk("f"),
            bulk("v"),
            bulk("none"),
            bulk("-2"),
            bulk("-"),
            bulk("0"),
        ]);
        let states = parse_read(reply.clone(), 2).unwrap();
        assert_eq!(states[0].ty, KeyType::Data(DataType::Hash));
        assert_eq!(states[0].items, vec![Bytes::from_static(b"f"), Bytes::from_static(b"v")]);
        assert_eq!(states[1], KeyState::absent());
        assert!(parse_read(reply.clone(), 3).is_err());
        assert!(parse_read(reply, 1).is_err(), "extra fields are an error");
        assert!(parse_read(Value::Integer(1), 1).is_err());
        let huge_count = Value::Array(vec![bulk("list"), bulk("-1"), bulk("-"), bulk("999999999999")]);
        assert!(parse_read(huge_count, 1).is_err(), "a count beyond the reply fails without allocating it");
    }

    #[test]
    fn write_args_follow_the_record_layout() {
        let state = KeyState {
            ty: KeyType::Data(DataType::List),
            pttl: 5000,
            digest: Digest(7),
            items: vec![Bytes::from_static(b"a")],
        };
        let records = vec![
            WriteRecord {
                key: Bytes::from_static(b"k1"),
                op: WriteOp::Put(state),
                expect: Some(Digest::ABSENT),
                new_digest: Digest(7),
                read_at: None,
            },
            WriteRecord {
                key: Bytes::from_static(b"k2"),
                op: WriteOp::Delete,
                expect: None,
                new_digest: Digest::ABSENT,
                read_at: None,
            },
        ];
        let (keys, args) = write_args(&records, &[DataType::String, DataType::List]);
        assert_eq!(keys, vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")]);
        let args: Vec<&[u8]> = args.iter().map(|b| b.as_ref()).collect();
        assert_eq!(
            args,
            vec![
                b",string,list,".as_slice(),
                b"put",
                b"-",
                b"0000000000000007",
                b"list",
                b"5000",
                b"1",
                b"a",
                b"del",
                b"",
                b"-",
                b"none",
                b"-2",
                b"0",
            ]
        );
    }

    #[test]
    fn write_and_scan_replies_decode() {
        let reply = Value::Array(vec![
            bulk("ok"),
            bulk("0000000000000007"),
            bulk("1"),
            bulk("conflict"),
            bulk("00000000000000aa"),
            bulk("0"),
            bulk("skip"),
            bulk("stream"),
            bulk("0"),
            bulk("same"),
            bulk("-"),
            bulk("0"),
        ]);
        assert_eq!(
            parse_write(reply, 4).unwrap(),
            vec![
                WriteOutcome::Written { events: 1 },
                WriteOutcome::Conflict { current: Digest(0xaa) },
                WriteOutcome::Skipped { found: "stream".to_string() },
                WriteOutcome::Unchanged { events: 0 },
            ]
        );
        let scan = Value::Array(vec![bulk("17"), bulk("p:a"), bulk("string"), bulk("-1"), bulk("-")]);
        let (cursor, entries) = parse_scan(scan).unwrap();
        assert_eq!(cursor.as_ref(), b"17");
        assert_eq!(entries[0].key.as_ref(), b"p:a");
        assert!(parse_scan(Value::Array(vec![bulk("0"), bulk("p:a")])).is_err());
    }
}
