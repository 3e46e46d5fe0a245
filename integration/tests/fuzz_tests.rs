//! Time-boxed property tests ("fuzzing") of every parser that reads hostile
//! input, plus a seed corpus run on every test run.
//!
//! Targets, and what each property asserts:
//!
//! - RESP (`replhub::resp`): `parse`, `parse_complete` and `StreamDecoder`
//!   never panic on any bytes; a parse result is consistent with every prefix
//!   and extension of its input and independent of how the bytes are split
//!   into pushes; declared sizes are never trusted (a `$1073741824` or
//!   `*100000000` with a few bytes present answers at once); every generated
//!   `Value` tree round-trips (whole, merged with others, split at random);
//!   a value parses iff it fits the `Limits`, else the error is `TooLarge`.
//! - Webdis responses (`webdis::stream`): the tolerant chunked reader gives
//!   the same items for every read size, rebuilds generated responses with
//!   chunks before the head, and together with `StreamDecoder` and
//!   `interpret` turns a re-chunked event stream back into its messages.
//!   `scripts::parse_*` decode generated replies exactly and reject (never
//!   panic on) arbitrary or mutated values. `codec::command_body` survives a
//!   reimplementation of Webdis's request decoding (webdis.md §4b).
//! - Config (`config::load_text`): arbitrary text and mutated valid configs
//!   always give `Ok` or `Err` with an error whose line and column lie in the
//!   text, within a second (alias bombs and deep nesting included).
//!
//! The seed corpus is `integration/fuzz-corpus/` (see its README.md). Every
//! property has a fixed number of cases (multiplied by the environment
//! variable `REPLHUB_FUZZ_SCALE` for longer runs), so the module stays fast.
//! Time limits are on the thread's CPU time, so the rest of the suite
//! running in parallel does not make them flaky. Memory limits are checked
//! in child processes of this test binary (`child` below), with a capped
//! address space and a deadline, never with a global allocator, because the
//! rest of the suite runs in this process.
//!
//! Tests named in "Regression test" comments reproduce bugs found by this
//! module; they fail until the fix their comment describes is made.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use replhub::config::DataType;
use replhub::resp::{self, Limits, RespError, StreamDecoder, Value};
use replhub::scripts::{self, Digest, KeyState, KeyType, ScanEntry, WriteOutcome};
use replhub::webdis::codec;
use replhub::webdis::stream::{Dechunker, Head, Item, StreamError, StreamMessage, interpret};

#[path = "../fuzz_common.rs"]
mod fuzz_common;
use fuzz_common::{config_invariants, demo_path, thread_cpu_time, timed};

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Cases per property, scaled by `REPLHUB_FUZZ_SCALE` (default 1).
fn config_with_cases(cases: u32) -> ProptestConfig {
    let scale = std::env::var("REPLHUB_FUZZ_SCALE").ok().and_then(|s| s.parse::<u32>().ok()).unwrap_or(1).max(1);
    ProptestConfig {
        cases: cases.saturating_mul(scale),
        // Failures are kept by adding the input to the corpus, not in
        // proptest-regressions files next to the sources.
        failure_persistence: None,
        max_shrink_time: 20_000,
        ..ProptestConfig::default()
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration").join("fuzz-corpus").join(target)
}

/// Every file of one corpus directory, sorted by name.
fn corpus(target: &str) -> Vec<(String, PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .map(|entry| {
            let path = entry.path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (entry.file_name().to_string_lossy().into_owned(), path, bytes)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!files.is_empty(), "the corpus directory {} is empty", dir.display());
    files
}

/// What a corpus file's name says about it: `ok-…`, `err-…`, `incomplete-…` or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Err,
    Incomplete,
    Anything,
}

fn expectation(name: &str) -> Expect {
    if name.starts_with("ok-") {
        Expect::Ok
    } else if name.starts_with("err-") {
        Expect::Err
    } else if name.starts_with("incomplete-") {
        Expect::Incomplete
    } else {
        Expect::Anything
    }
}

/// Splits `bytes` into pieces whose sizes cycle through `sizes` (each at least 1).
fn pieces<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(1).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(size);
        out.push(piece);
        rest = tail;
        i += 1;
    }
    out
}

fn show(bytes: &[u8]) -> String {
    resp::printable(bytes, 200)
}

// ---------------------------------------------------------------------------
// RESP: generators, an encoder of our own, and the invariants
// ---------------------------------------------------------------------------

/// Writes `value` as RESP2; `nil_as_array` picks `*-1` over `$-1` for nil.
fn encode_into(value: &Value, nil_as_array: bool, out: &mut Vec<u8>) {
    match value {
        Value::Simple(b) | Value::Error(b) => {
            out.push(if matches!(value, Value::Simple(_)) { b'+' } else { b'-' });
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Integer(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Bulk(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Nil => out.extend_from_slice(if nil_as_array { b"*-1\r\n" } else { b"$-1\r\n" }),
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode_into(item, nil_as_array, out);
            }
        }
    }
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, false, &mut out);
    out
}

/// Whether the parser must accept `value` (encoded by us) under `limits`.
fn fits(value: &Value, limits: &Limits, depth: usize) -> bool {
    let line_ok = |len: usize| len <= limits.max_line;
    match value {
        Value::Simple(b) | Value::Error(b) => line_ok(b.len()),
        Value::Integer(i) => line_ok(i.to_string().len()),
        Value::Bulk(b) => line_ok(b.len().to_string().len()) && b.len() <= limits.max_bulk,
        Value::Nil => line_ok(2),
        Value::Array(items) => {
            line_ok(items.len().to_string().len())
                && items.len() <= limits.max_array
                && depth < limits.max_depth
                && items.iter().all(|item| fits(item, limits, depth + 1))
        }
    }
}

/// Bytes of a simple string or error line: anything but CR and LF.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>().prop_map(|b| if b == b'\r' || b == b'\n' { b'.' } else { b }), 0..24)
}

/// Bulk payloads, including ones that look like RESP themselves.
fn bulk_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..48),
        1 => prop::sample::select(vec![
            b"\r\n".to_vec(),
            b"$3\r\nabc\r\n".to_vec(),
            b"*1\r\n".to_vec(),
            b"\r".to_vec(),
            b"\n".to_vec(),
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            b"pmessage".to_vec(),
        ]),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        line_bytes().prop_map(|b| Value::Simple(b.into())),
        line_bytes().prop_map(|b| Value::Error(b.into())),
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0i64, -1, 1, i64::MIN, i64::MAX]).prop_map(Value::Integer),
        bulk_bytes().prop_map(|b| Value::Bulk(b.into())),
        Just(Value::Nil),
    ]
}

/// Value trees with up to `levels` nested arrays.
fn value_tree(levels: u32) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(levels, 48, 6, |inner| prop::collection::vec(inner, 0..6).prop_map(Value::Array))
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..64, 0usize..8, 0usize..5, 0usize..30).prop_map(|(max_bulk, max_array, max_depth, max_line)| Limits {
        max_bulk,
        max_array,
        max_depth,
        max_line,
    })
}

/// Bytes that look like RESP often enough to get past the first line.
fn resp_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            &b"*"[..],
            b"$",
            b":",
            b"+",
            b"-",
            b"\r\n",
            b"\r",
            b"\n",
            b"-1",
            b"0",
            b"1",
            b"2",
            b"3",
            b"16",
            b"99999999999",
            b"9223372036854775807",
            b"9223372036854775808",
            b"-9223372036854775808",
            b"536870912",
            b"67108864",
            b"OK",
            b"abc",
            b"pmessage",
            b"*4\r\n",
            b"$3\r\n",
            b" ",
            b"\0",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

/// Parses values off the front of `bytes` until it runs dry or fails.
fn decode_whole(bytes: &[u8], limits: &Limits) -> (Vec<Value>, Option<RespError>, usize) {
    let mut values = Vec::new();
    let mut pos = 0;
    loop {
        match resp::parse(&bytes[pos..], limits) {
            Ok(Some((value, used))) => {
                values.push(value);
                pos += used;
            }
            Ok(None) => return (values, None, bytes.len() - pos),
            Err(RespError::Malformed { offset, what }) => {
                return (values, Some(RespError::Malformed { offset: offset + pos, what }), bytes.len() - pos);
            }
            Err(RespError::TooLarge { offset, what }) => {
                return (values, Some(RespError::TooLarge { offset: offset + pos, what }), bytes.len() - pos);
            }
        }
    }
}

/// The same through a `StreamDecoder`, pushed in pieces of the given sizes.
fn decode_stream(bytes: &[u8], limits: &Limits, sizes: &[usize]) -> (Vec<Value>, Option<RespError>, usize) {
    let mut decoder = StreamDecoder::new(*limits);
    let mut values = Vec::new();
    let mut pushed = 0;
    for piece in pieces(bytes, sizes) {
        decoder.push(piece);
        pushed += piece.len();
        loop {
            match decoder.next_value() {
                Ok(Some(value)) => values.push(value),
                Ok(None) => break,
                // The remaining input no longer matters once the stream is broken.
                Err(e) => return (values, Some(e), bytes.len() - pushed + decoder.buffered()),
            }
        }
    }
    let left = decoder.buffered();
    (values, None, left)
}

fn error_offset(e: &RespError) -> usize {
    match e {
        RespError::Malformed { offset, .. } | RespError::TooLarge { offset, .. } => *offset,
    }
}

/// Everything that must hold for `parse` on any input.
fn resp_invariants(bytes: &[u8], limits: &Limits, cuts: &[usize], sizes: &[usize]) -> Result<(), String> {
    let full = timed("parse", Duration::from_millis(500), || resp::parse(bytes, limits))?;
    match &full {
        Ok(Some((value, used))) => {
            if *used == 0 || *used > bytes.len() {
                return Err(format!("consumed {used} of {} bytes", bytes.len()));
            }
            let again = resp::parse(&bytes[..*used], limits);
            if again != full {
                return Err(format!("the value's own bytes parse differently: {again:?} vs {full:?}"));
            }
            if resp::parse_complete(&bytes[..*used], limits).as_ref() != Ok(value) {
                return Err("parse_complete disagrees with parse".to_string());
            }
            let canonical = encode(value);
            if resp::parse_complete(&canonical, limits).as_ref() != Ok(value) {
                return Err(format!("the value does not round-trip through its encoding {}", show(&canonical)));
            }
        }
        Ok(None) => {
            if resp::parse_complete(bytes, limits).is_ok() {
                return Err("parse_complete accepted an incomplete value".to_string());
            }
        }
        Err(e) => {
            if error_offset(e) > bytes.len() {
                return Err(format!("error offset beyond the input: {e:?}"));
            }
            // An error cannot go away when more bytes arrive.
            let longer = [bytes, b"\r\n+OK\r\n$1\r\nx\r\n"].concat();
            let extended = resp::parse(&longer, limits);
            if extended.as_ref().err() != Some(e) {
                return Err(format!("more bytes changed the error {e:?} into {extended:?}"));
            }
        }
    }
    // A prefix is either still incomplete or already has the full input's answer.
    for &cut in cuts {
        let cut = cut % (bytes.len() + 1);
        let prefix = resp::parse(&bytes[..cut], limits);
        if prefix != Ok(None) && prefix != full {
            return Err(format!("the prefix of {cut} bytes parses as {prefix:?}, the whole input as {full:?}"));
        }
    }
    // The stream decoder sees the same values and the same first error, whatever the splits.
    let whole = decode_whole(bytes, limits);
    let split = decode_stream(bytes, limits, sizes);
    if whole != split {
        return Err(format!("split input ({sizes:?}) decodes as {split:?}, whole input as {whole:?}"));
    }
    Ok(())
}

fn to_case_error(r: Result<(), String>) -> Result<(), TestCaseError> {
    r.map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config_with_cases(600))]

    /// Any bytes: no panic, and parse is consistent with prefixes, extensions and splits.
    #[test]
    fn fuzz_resp_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), resp_soup()],
        cuts in prop::collection::vec(any::<usize>(), 1..6),
        sizes in prop::collection::vec(1usize..17, 1..5),
        custom in small_limits(),
    ) {
        for limits in [Limits::REPLY, Limits::PUBSUB, custom] {
            to_case_error(resp_invariants(&bytes, &limits, &cuts, &sizes))?;
        }
    }

    /// Generated values parse back exactly when they fit the limits, else `TooLarge`.
    #[test]
    fn fuzz_resp_round_trip(value in value_tree(4), nil_as_array in any::<bool>(), custom in small_limits(),
                            junk in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut encoded = Vec::new();
        encode_into(&value, nil_as_array, &mut encoded);
        for limits in [Limits::REPLY, Limits::PUBSUB, custom] {
            let parsed = resp::parse_complete(&encoded, &limits);
            if fits(&value, &limits, 0) {
                prop_assert_eq!(parsed.as_ref(), Ok(&value), "{}", show(&encoded));
                // Whatever follows a complete value does not change it.
                let followed = [encoded.as_slice(), &junk].concat();
                prop_assert_eq!(resp::parse(&followed, &limits), Ok(Some((value.clone(), encoded.len()))));
                // Every proper prefix is incomplete.
                for cut in [0, 1, encoded.len() / 2, encoded.len() - 1] {
                    prop_assert_eq!(resp::parse(&encoded[..cut], &limits), Ok(None), "cut {}", cut);
                }
            } else {
                prop_assert!(matches!(parsed, Err(RespError::TooLarge { .. })), "{:?} for {}", parsed, show(&encoded));
            }
        }
    }

    /// Several values merged into one buffer and split at random come out as the same sequence.
    #[test]
    fn fuzz_resp_stream_merged_and_split(
        values in prop::collection::vec(value_tree(2), 1..8),
        sizes in prop::collection::vec(1usize..64, 1..8),
    ) {
        let stream: Vec<u8> = values.iter().flat_map(encode).collect();
        let whole = decode_whole(&stream, &Limits::PUBSUB);
        let expected: Vec<Value> = values.iter().take_while(|v| fits(v, &Limits::PUBSUB, 0)).cloned().collect();
        prop_assert_eq!(&whole.0, &expected);
        for sizes in [sizes.as_slice(), &[1], &[stream.len()]] {
            let split = decode_stream(&stream, &Limits::PUBSUB, sizes);
            prop_assert_eq!(&split, &whole, "sizes {:?}", sizes);
        }
        let all = decode_stream(&stream, &Limits::REPLY, &sizes);
        prop_assert_eq!(all, (values, None, 0));
    }

    /// A declared length or count is never trusted: a few bytes of a huge value answer at once.
    #[test]
    fn fuzz_resp_declared_sizes_are_not_trusted(
        tag in prop::sample::select(vec![b'$', b'*']),
        declared in prop_oneof![any::<u64>(), 1u64 << 20..1u64 << 40, Just(1u64 << 30), Just(100_000_000u64)],
        nesting in 0usize..9,
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut input = b"*1\r\n".repeat(nesting);
        input.extend_from_slice(format!("{}{declared}\r\n", tag as char).as_bytes());
        input.extend_from_slice(&tail);
        for limits in [Limits::REPLY, Limits::PUBSUB] {
            let result = timed("parse", Duration::from_millis(200), || resp::parse(&input, &limits))
                .map_err(TestCaseError::fail)?;
            let limit = if tag == b'$' { limits.max_bulk } else { limits.max_array };
            let declared_too_large = usize::try_from(declared).map_or(true, |d| d > limit);
            if nesting < limits.max_depth && declared_too_large && i64::try_from(declared).is_ok() {
                prop_assert!(matches!(result, Err(RespError::TooLarge { .. })), "{:?}", result);
            }
            if let Ok(Some((_, used))) = result {
                prop_assert!(used <= input.len());
            }
        }
    }
}

#[test]
fn fuzz_resp_a_1gb_bulk_or_huge_array_answers_within_milliseconds() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("1 GiB bulk", b"$1073741824\r\nabc".to_vec()),
        ("512 MiB bulk (at the limit)", b"$536870912\r\nabc".to_vec()),
        ("100 M element array", b"*100000000\r\n:1\r\n".to_vec()),
        ("64 Mi element array (at the limit)", b"*67108864\r\n:1\r\n$5\r\nab".to_vec()),
        ("nested 64 Mi element arrays", [b"*67108864\r\n".repeat(8), b"$3\r\nab".to_vec()].concat()),
    ];
    for (what, input) in cases {
        let mut fastest = Duration::MAX;
        for _ in 0..10 {
            let start = Instant::now();
            let result = resp::parse(&input, &Limits::REPLY);
            fastest = fastest.min(start.elapsed());
            assert!(matches!(result, Ok(None) | Err(RespError::TooLarge { .. })), "{what}: {result:?}");
            let mut decoder = StreamDecoder::new(Limits::REPLY);
            decoder.push(&input);
            assert!(matches!(decoder.next_value(), Ok(None) | Err(RespError::TooLarge { .. })), "{what}");
        }
        assert!(fastest < Duration::from_millis(5), "{what}: parse took {fastest:?}");
    }
    // Beyond the limit is refused outright, not buffered.
    assert!(matches!(resp::parse(b"$1073741824\r\n", &Limits::REPLY), Err(RespError::TooLarge { .. })));
}

/// Regression test (fails while the bug exists): `StreamDecoder::next_value`
/// re-parses its whole buffer on every call, copying every complete element
/// of an incomplete array again each time, so a pub/sub array whose early
/// elements are large and whose last element trickles in costs time
/// quadratic in its size (30 MiB buffered × 512 reads ≈ 15 GB of copying).
#[test]
fn fuzz_resp_stream_decoder_does_not_reparse_complete_elements() {
    const ELEMENT: usize = 2 << 20;
    let mut decoder = StreamDecoder::new(Limits::PUBSUB);
    decoder.push(b"*16\r\n");
    let data = vec![b'k'; ELEMENT];
    for _ in 0..15 {
        decoder.push(format!("${ELEMENT}\r\n").as_bytes());
        decoder.push(&data);
        decoder.push(b"\r\n");
    }
    decoder.push(format!("${ELEMENT}\r\n").as_bytes());
    let budget = Duration::from_secs(1);
    let start = thread_cpu_time();
    let reads: Vec<&[u8]> = data.chunks(4096).collect();
    for (i, read) in reads.iter().enumerate() {
        decoder.push(read);
        assert_eq!(decoder.next_value(), Ok(None));
        let spent = thread_cpu_time() - start;
        assert!(
            spent < budget,
            "after {} of {} reads of 4 KiB the decoder has spent {spent:?} of CPU time: it copies the 30 MiB \
             of complete elements again on every call",
            i + 1,
            reads.len(),
        );
    }
    decoder.push(b"\r\n");
    let Ok(Some(Value::Array(items))) = decoder.next_value() else { panic!("the array did not complete") };
    assert_eq!(items.len(), 16);
    let spent = thread_cpu_time() - start;
    assert!(spent < budget, "decoding took {spent:?} of CPU time");
}

#[test]
fn fuzz_corpus_resp() {
    for (name, _, bytes) in corpus("resp") {
        let cuts: Vec<usize> = (0..=bytes.len().min(64)).chain([bytes.len() / 2, bytes.len()]).collect();
        for limits in [Limits::REPLY, Limits::PUBSUB] {
            for sizes in [&[1usize][..], &[3, 1, 7], &[4096]] {
                if let Err(e) = resp_invariants(&bytes, &limits, &cuts, sizes) {
                    panic!("resp/{name}: {e}");
                }
            }
        }
        let result = resp::parse(&bytes, &Limits::REPLY);
        match expectation(&name) {
            Expect::Ok => {
                let (values, error, left) = decode_whole(&bytes, &Limits::REPLY);
                assert!(error.is_none() && left == 0 && !values.is_empty(), "resp/{name}: {error:?}, {left} left");
            }
            Expect::Err => assert!(result.is_err(), "resp/{name}: {result:?}"),
            Expect::Incomplete => assert_eq!(result, Ok(None), "resp/{name}"),
            Expect::Anything => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Webdis: the chunked reader, pub/sub messages, script replies, the codec
// ---------------------------------------------------------------------------

/// An error's text without the "…" its quote of the buffer ends in when
/// more than the quoted 32 bytes were buffered (which depends on read sizes).
fn framing_message(e: &StreamError) -> String {
    e.to_string().replace('…', "")
}

/// Items until the first error or until more bytes are needed, pushed in pieces.
fn dechunk(bytes: &[u8], sizes: &[usize]) -> (Vec<Item>, Option<String>) {
    let mut d = Dechunker::default();
    let mut items = Vec::new();
    for piece in pieces(bytes, sizes) {
        d.push(piece);
        loop {
            match d.next_item() {
                Ok(Some(item)) => {
                    // After the head of a refusal the caller reads the body raw, as `EventStream::open` does.
                    let refusal = matches!(&item, Item::Head(h) if h.status != 200);
                    items.push(item);
                    if refusal {
                        return (items, None);
                    }
                }
                Ok(None) => break,
                Err(e) => return (items, Some(framing_message(&e))),
            }
        }
    }
    (items, None)
}

/// The dechunker answers the same whatever the read sizes, and never invents data.
fn dechunk_invariants(bytes: &[u8], sizes: &[usize]) -> Result<(Vec<Item>, Option<String>), String> {
    let whole = timed("dechunking", Duration::from_millis(500), || dechunk(bytes, &[bytes.len().max(1)]))?;
    for sizes in [sizes, &[1], &[2, 5, 1, 33]] {
        let split = timed("dechunking", Duration::from_millis(500), || dechunk(bytes, sizes))?;
        if split != whole {
            return Err(format!("read sizes {sizes:?} give {split:?}, one read gives {whole:?}"));
        }
    }
    let data: usize = whole.0.iter().map(|i| if let Item::Data(d) = i { d.len() } else { 0 }).sum();
    if data > bytes.len() {
        return Err(format!("{data} bytes of data from {} bytes of input", bytes.len()));
    }
    Ok(whole)
}

/// One element of a generated response.
#[derive(Clone, Debug)]
enum Part {
    Chunk { data: Vec<u8>, lowercase: bool, extension: bool },
    Head { status: u16, chunked: bool, content_length: Option<usize>, header_case: u8, extra: Vec<u8> },
}

fn chunk_part() -> impl Strategy<Value = Part> {
    (prop::collection::vec(any::<u8>(), 1..80), any::<bool>(), prop::bool::weighted(0.2))
        .prop_map(|(data, lowercase, extension)| Part::Chunk { data, lowercase, extension })
}

fn head_part() -> impl Strategy<Value = Part> {
    (100u16..600, any::<bool>(), proptest::option::of(0usize..100_000), any::<u8>(), line_bytes()).prop_map(
        |(status, chunked, content_length, header_case, extra)| Part::Head {
            status,
            chunked,
            content_length,
            header_case,
            extra: extra.into_iter().filter(|b| *b != b':').collect(),
        },
    )
}

fn encode_part(part: &Part, out: &mut Vec<u8>) {
    match part {
        Part::Chunk { data, lowercase, extension } => {
            let size = if *lowercase { format!("{:x}", data.len()) } else { format!("{:X}", data.len()) };
            out.extend_from_slice(size.as_bytes());
            if *extension {
                out.extend_from_slice(b";name=value");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        Part::Head { status, chunked, content_length, header_case, extra } => {
            let case = |name: &str, bit: u8| {
                if header_case & bit != 0 { name.to_ascii_lowercase() } else { name.to_string() }
            };
            out.extend_from_slice(format!("HTTP/1.1 {status} Whatever It Says\r\nServer: Webdis\r\n").as_bytes());
            out.extend_from_slice(b"X-Extra: ");
            out.extend_from_slice(extra);
            out.extend_from_slice(b"\r\n");
            if *chunked {
                out.extend_from_slice(format!("{}: chunked\r\n", case("Transfer-Encoding", 1)).as_bytes());
            }
            if let Some(n) = content_length {
                out.extend_from_slice(format!("{}:{n}\r\n", case("Content-Length", 2)).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn expected_item(part: &Part) -> Item {
    match part {
        Part::Chunk { data, .. } => Item::Data(Bytes::copy_from_slice(data)),
        Part::Head { status, chunked, content_length, .. } => {
            Item::Head(Head { status: *status, chunked: *chunked, content_length: *content_length })
        }
    }
}

/// Bytes that look like a chunked HTTP response often enough to be interesting.
fn http_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"HTTP/1.0 400 Bad Request\r\n",
            b"HTTP/",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\n",
            b"\r\n",
            b"\r\n\r\n",
            b"0\r\n\r\n",
            b"5\r\n",
            b"3a\r\n",
            b"ffffffffffffffff\r\n",
            b"4000001\r\n",
            b";ext\r\n",
            b"abcde",
            b"*3\r\n$10\r\npsubscribe\r\n",
            b" ",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 1..6),
    ];
    prop::collection::vec(token, 0..30).prop_map(|tokens| tokens.concat())
}

/// A keyspace event or a subscription acknowledgement, as the RESP Redis sends.
fn message() -> impl Strategy<Value = StreamMessage> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from);
    prop_oneof![
        3 => (bytes(), bytes(), bytes()).prop_map(|(pattern, channel, payload)| StreamMessage::Event {
            pattern,
            channel,
            payload
        }),
        1 => bytes().prop_map(|pattern| StreamMessage::Subscribed { pattern }),
    ]
}

fn message_value(message: &StreamMessage, count: i64) -> Value {
    match message {
        StreamMessage::Event { pattern, channel, payload } => Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"pmessage")),
            Value::Bulk(pattern.clone()),
            Value::Bulk(channel.clone()),
            Value::Bulk(payload.clone()),
        ]),
        StreamMessage::Subscribed { pattern } => Value::Array(vec![
            Value::Bulk(Bytes::from_static(b"psubscribe")),
            Value::Bulk(pattern.clone()),
            Value::Integer(count),
        ]),
    }
}

/// What `interpret` must say, written independently of it.
fn interpret_oracle(value: &Value) -> Option<StreamMessage> {
    let Value::Array(items) = value else { return None };
    let text = |i: usize| items.get(i).and_then(Value::as_bytes).cloned();
    match (text(0)?.as_ref(), items.len()) {
        (b"pmessage", 4) => Some(StreamMessage::Event { pattern: text(1)?, channel: text(2)?, payload: text(3)? }),
        (b"psubscribe", 3) => Some(StreamMessage::Subscribed { pattern: text(1)? }),
        _ => None,
    }
}

/// The whole reading path of a PSUBSCRIBE stream: dechunk, decode, interpret.
fn read_stream(bytes: &[u8], sizes: &[usize]) -> Result<(Option<Head>, Vec<StreamMessage>), String> {
    let mut d = Dechunker::default();
    let mut decoder = StreamDecoder::new(Limits::PUBSUB);
    let mut head = None;
    let mut messages = Vec::new();
    for piece in pieces(bytes, sizes) {
        d.push(piece);
        loop {
            match d.next_item().map_err(|e| framing_message(&e))? {
                Some(Item::Head(h)) if h.status != 200 => return Ok((Some(h), messages)),
                Some(Item::Head(h)) if head.is_none() => head = Some(h),
                Some(Item::Head(_)) => return Err("a second head".to_string()),
                Some(Item::Data(data)) => decoder.push(&data),
                Some(Item::End) => return Ok((head, messages)),
                None => break,
            }
            while let Some(value) = decoder.next_value().map_err(|e| e.to_string())? {
                messages.push(interpret(value).map_err(|e| e.to_string())?);
            }
        }
    }
    Ok((head, messages))
}

proptest! {
    #![proptest_config(config_with_cases(500))]

    /// Any bytes: no panic, the same items for every read size, no invented data.
    #[test]
    fn fuzz_dechunker_arbitrary_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), http_soup()],
        sizes in prop::collection::vec(1usize..20, 1..5),
    ) {
        to_case_error(dechunk_invariants(&bytes, &sizes).map(|_| ()))?;
    }

    /// Generated responses (chunks before, after or without the head) come back item by item.
    #[test]
    fn fuzz_dechunker_rebuilds_generated_responses(
        chunks in prop::collection::vec(chunk_part(), 0..8),
        head in proptest::option::of(head_part()),
        head_at in any::<prop::sample::Index>(),
        end in any::<bool>(),
        sizes in prop::collection::vec(1usize..40, 1..5),
    ) {
        let mut parts = chunks;
        if let Some(head) = head {
            parts.insert(head_at.index(parts.len() + 1), head);
        }
        let mut bytes = Vec::new();
        for part in &parts {
            encode_part(part, &mut bytes);
        }
        let mut expected: Vec<Item> = parts.iter().map(expected_item).collect();
        if end {
            bytes.extend_from_slice(b"0\r\n\r\n");
            expected.push(Item::End);
        }
        // Only a 200 head is followed by more chunks in `dechunk`.
        if let Some(refusal) = expected.iter().position(|i| matches!(i, Item::Head(h) if h.status != 200)) {
            expected.truncate(refusal + 1);
        }
        let (items, error) = dechunk_invariants(&bytes, &sizes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(error, None);
        prop_assert_eq!(items, expected);
    }

    /// Events merged and split across chunks, the head anywhere: the same messages come out.
    #[test]
    fn fuzz_event_stream_end_to_end(
        messages in prop::collection::vec(message(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        head_at in any::<prop::sample::Index>(),
        sizes in prop::collection::vec(1usize..50, 1..5),
    ) {
        let resp: Vec<u8> = messages.iter().enumerate().flat_map(|(i, m)| encode(&message_value(m, i as i64))).collect();
        // nginx re-chunks the byte stream wherever it likes.
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(resp.len() + 1)).collect();
        bounds.extend([0, resp.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let mut parts: Vec<Part> = bounds
            .windows(2)
            .map(|w| Part::Chunk { data: resp[w[0]..w[1]].to_vec(), lowercase: true, extension: false })
            .collect();
        let head = Part::Head { status: 200, chunked: true, content_length: None, header_case: 0, extra: Vec::new() };
        parts.insert(head_at.index(parts.len() + 1), head);
        let mut bytes = Vec::new();
        for part in &parts {
            encode_part(part, &mut bytes);
        }
        let (head, got) = read_stream(&bytes, &sizes).map_err(TestCaseError::fail)?;
        prop_assert_eq!(head.map(|h| h.status), Some(200));
        prop_assert_eq!(got, messages);
    }

    /// `interpret` accepts exactly the two message shapes and never panics.
    #[test]
    fn fuzz_interpret_arbitrary_values(value in prop_oneof![
        value_tree(3),
        message().prop_map(|m| message_value(&m, 1)),
        (message(), any::<prop::sample::Index>(), leaf()).prop_map(|(m, at, replacement)| {
            let Value::Array(mut items) = message_value(&m, 1) else { unreachable!() };
            let i = at.index(items.len());
            items[i] = replacement;
            Value::Array(items)
        }),
    ]) {
        let expected = interpret_oracle(&value);
        let got = interpret(value);
        match expected {
            Some(message) => prop_assert_eq!(got.ok(), Some(message)),
            None => prop_assert!(matches!(got, Err(StreamError::Unexpected(_))), "{:?}", got),
        }
    }
}

/// Regression test (fails while the bug exists): the 16 KiB limit on a
/// response head is only enforced while the head is incomplete, so a 20 KiB
/// head is accepted when it arrives in one read and refused when it arrives
/// in pieces: the outcome depends on TCP segmentation.
#[test]
fn fuzz_dechunker_head_limit_does_not_depend_on_read_sizes() {
    let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n".to_vec();
    for i in 0..400 {
        head.extend_from_slice(format!("X-Padding-{i:03}: {}\r\n", "p".repeat(32)).as_bytes());
    }
    head.extend_from_slice(b"\r\n5\r\nhello\r\n");
    assert!(head.len() > 17 << 10);
    let one_read = dechunk(&head, &[head.len()]);
    for size in [1, 1024, 16 << 10] {
        let split = dechunk(&head, &[size]);
        assert_eq!(split, one_read, "a {} byte head read {size} bytes at a time vs in one read", head.len());
    }
}

#[test]
fn fuzz_corpus_webdis_http() {
    for (name, _, bytes) in corpus("webdis-http") {
        let whole = match dechunk_invariants(&bytes, &[7, 1, 64]) {
            Ok(whole) => whole,
            Err(e) => panic!("webdis-http/{name}: {e}"),
        };
        let stream = read_stream(&bytes, &[bytes.len().max(1)]);
        for sizes in [&[1usize][..], &[5, 3], &[1024]] {
            assert_eq!(read_stream(&bytes, sizes), stream, "webdis-http/{name}: read sizes {sizes:?}");
        }
        match expectation(&name) {
            Expect::Ok => {
                assert_eq!(whole.1, None, "webdis-http/{name}");
                let (head, _) = stream.unwrap_or_else(|e| panic!("webdis-http/{name}: {e}"));
                assert!(head.is_some(), "webdis-http/{name}: no head");
            }
            Expect::Err => assert!(whole.1.is_some() || stream.is_err(), "webdis-http/{name}: no error"),
            Expect::Incomplete => {
                assert_eq!(whole.1, None, "webdis-http/{name}");
                assert!(!whole.0.contains(&Item::End), "webdis-http/{name}");
            }
            Expect::Anything => {}
        }
    }
}

#[test]
fn fuzz_corpus_the_observed_two_pattern_psubscribe_stream() {
    let bytes = std::fs::read(corpus_dir("webdis-http").join("ok-two-pattern-psubscribe.bin")).unwrap();
    for size in [1, 2, 3, 7, 64, bytes.len()] {
        let (head, messages) = read_stream(&bytes, &[size]).unwrap();
        assert_eq!(head, Some(Head { status: 200, chunked: true, content_length: None }));
        assert_eq!(
            messages,
            vec![
                StreamMessage::Subscribed { pattern: Bytes::from_static(b"xx") },
                StreamMessage::Subscribed { pattern: Bytes::from_static(b"__keyspace@0__:global:*") },
            ],
            "read size {size}"
        );
    }
    let nginx = std::fs::read(corpus_dir("webdis-http").join("ok-nginx-400.bin")).unwrap();
    let mut d = Dechunker::default();
    d.push(&nginx);
    let Ok(Some(Item::Head(head))) = d.next_item() else { panic!("no head in the nginx page") };
    assert_eq!((head.status, head.chunked), (400, false));
    let body = d.take_rest();
    assert_eq!(Some(body.len()), head.content_length, "{}", show(&body));
}

// --- script replies -------------------------------------------------------

/// A field as Webdis may deliver it inside an array: a bulk or status string, or an integer.
fn field(text: &[u8], style: u8, numeric: bool) -> Value {
    match style % 3 {
        0 if numeric => match std::str::from_utf8(text).ok().and_then(|s| s.parse::<i64>().ok()) {
            Some(i) if i.to_string().as_bytes() == text => Value::Integer(i),
            _ => Value::Bulk(Bytes::copy_from_slice(text)),
        },
        1 => Value::Simple(Bytes::copy_from_slice(text)),
        _ => Value::Bulk(Bytes::copy_from_slice(text)),
    }
}

fn key_type() -> impl Strategy<Value = KeyType> {
    prop_oneof![
        Just(KeyType::None),
        prop::sample::select(vec![DataType::String, DataType::Hash, DataType::List, DataType::Set, DataType::Zset])
            .prop_map(KeyType::Data),
        prop::sample::select(vec!["stream", "ReJSON-RL", "MBbloom--", "", "vectorset"])
            .prop_map(|s| KeyType::Other(s.to_string())),
    ]
}

fn type_text(ty: &KeyType) -> Vec<u8> {
    match ty {
        KeyType::None => b"none".to_vec(),
        KeyType::Data(t) => scripts::type_name(*t).as_bytes().to_vec(),
        KeyType::Other(s) => s.as_bytes().to_vec(),
    }
}

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof![Just(Digest::ABSENT), (1u64..).prop_map(Digest), Just(Digest(u64::MAX)), Just(Digest(1))]
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn key_state() -> impl Strategy<Value = KeyState> {
    (key_type(), any::<i64>(), digest(), prop::collection::vec(blob(), 0..6))
        .prop_map(|(ty, pttl, digest, items)| KeyState { ty, pttl, digest, items })
}

fn read_reply(states: &[KeyState], styles: &[u8]) -> Vec<Value> {
    let mut style = styles.iter().copied().cycle();
    let mut out = Vec::new();
    for s in states {
        out.push(field(&type_text(&s.ty), style.next().unwrap_or(0), false));
        out.push(field(s.pttl.to_string().as_bytes(), style.next().unwrap_or(0), true));
        out.push(field(s.digest.render().as_bytes(), style.next().unwrap_or(0), false));
        out.push(field(s.items.len().to_string().as_bytes(), style.next().unwrap_or(0), true));
        out.extend(s.items.iter().map(|i| field(i, style.next().unwrap_or(0), false)));
    }
    out
}

fn write_outcome() -> impl Strategy<Value = WriteOutcome> {
    prop_oneof![
        any::<u32>().prop_map(|events| WriteOutcome::Written { events }),
        any::<u32>().prop_map(|events| WriteOutcome::Unchanged { events }),
        digest().prop_map(|current| WriteOutcome::Conflict { current }),
        "[a-zA-Z0-9 -]{0,12}".prop_map(|found| WriteOutcome::Skipped { found }),
        Just(WriteOutcome::StagingLost),
    ]
}

fn write_reply(outcomes: &[(WriteOutcome, u32)], styles: &[u8]) -> Vec<Value> {
    let mut style = styles.iter().copied().cycle();
    let mut out = Vec::new();
    for (outcome, spare_events) in outcomes {
        let (status, detail, events): (&[u8], Vec<u8>, u32) = match outcome {
            WriteOutcome::Written { events } => (b"ok", Digest(7).render().into_bytes(), *events),
            WriteOutcome::Unchanged { events } => (b"same", b"-".to_vec(), *events),
            WriteOutcome::Conflict { current } => (b"conflict", current.render().into_bytes(), *spare_events),
            WriteOutcome::Skipped { found } => (b"skip", found.as_bytes().to_vec(), *spare_events),
            WriteOutcome::StagingLost => (b"missing", Vec::new(), *spare_events),
        };
        out.push(field(status, style.next().unwrap_or(0), false));
        out.push(field(&detail, style.next().unwrap_or(0), false));
        out.push(field(events.to_string().as_bytes(), style.next().unwrap_or(0), true));
    }
    out
}

fn scan_entry() -> impl Strategy<Value = ScanEntry> {
    (blob(), key_type(), any::<i64>(), digest()).prop_map(|(key, ty, pttl, digest)| ScanEntry { key, ty, pttl, digest })
}

fn scan_reply(cursor: &Bytes, entries: &[ScanEntry], styles: &[u8]) -> Vec<Value> {
    let mut style = styles.iter().copied().cycle();
    let mut out = vec![field(cursor, style.next().unwrap_or(0), true)];
    for e in entries {
        out.push(field(&e.key, style.next().unwrap_or(0), false));
        out.push(field(&type_text(&e.ty), style.next().unwrap_or(0), false));
        out.push(field(e.pttl.to_string().as_bytes(), style.next().unwrap_or(0), true));
        out.push(field(e.digest.render().as_bytes(), style.next().unwrap_or(0), false));
    }
    out
}

fn buckets_reply(
    cursor: &Bytes,
    keys: usize,
    words: &[u64; scripts::BUCKETS],
    upper: bool,
    styles: &[u8],
) -> Vec<Value> {
    let mut style = styles.iter().copied().cycle();
    let mut out = vec![field(cursor, style.next().unwrap_or(0), true)];
    out.push(field(keys.to_string().as_bytes(), style.next().unwrap_or(0), true));
    for word in words {
        for half in [word >> 32, word & 0xffff_ffff] {
            let text = if upper { format!("{half:08X}") } else { format!("{half:08x}") };
            out.push(field(text.as_bytes(), style.next().unwrap_or(0), false));
        }
    }
    out
}

/// A reply with one element removed, duplicated or replaced by an arbitrary value.
fn mutate(mut items: Vec<Value>, how: u8, at: prop::sample::Index, replacement: Value) -> Vec<Value> {
    if items.is_empty() {
        return vec![replacement];
    }
    let i = at.index(items.len());
    match how % 3 {
        0 => {
            items.remove(i);
        }
        1 => {
            let copy = items[i].clone();
            items.insert(i, copy);
        }
        _ => items[i] = replacement,
    }
    items
}

/// Every script-reply parser on one value: no panic, and any `Ok` has the asked-for size.
fn all_script_parsers(value: &Value, count: usize) -> Result<(), TestCaseError> {
    if let Ok(states) = scripts::parse_read(value.clone(), count) {
        prop_assert_eq!(states.len(), count);
    }
    if let Ok(outcomes) = scripts::parse_write(value.clone(), count) {
        prop_assert_eq!(outcomes.len(), count);
    }
    if let Ok((_, entries)) = scripts::parse_scan(value.clone()) {
        let Value::Array(items) = value else { return Err(TestCaseError::fail("a scan of a non-array")) };
        prop_assert_eq!(items.len(), 1 + 4 * entries.len());
    }
    if scripts::parse_buckets(value.clone()).is_ok() {
        prop_assert!(matches!(value, Value::Array(items) if items.len() == 2 + 2 * scripts::BUCKETS));
    }
    let flat = matches!(value, Value::Array(items)
        if items.iter().all(|i| matches!(i, Value::Bulk(_) | Value::Simple(_) | Value::Integer(_))));
    if !flat {
        prop_assert!(scripts::parse_read(value.clone(), count).is_err());
        prop_assert!(scripts::parse_write(value.clone(), count).is_err());
        prop_assert!(scripts::parse_scan(value.clone()).is_err());
        prop_assert!(scripts::parse_buckets(value.clone()).is_err());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config_with_cases(300))]

    /// Script replies decode to exactly what was encoded; short and long replies fail.
    #[test]
    fn fuzz_script_replies_round_trip(
        states in prop::collection::vec(key_state(), 0..4),
        outcomes in prop::collection::vec((write_outcome(), any::<u32>()), 0..4),
        cursor in prop_oneof![Just(Bytes::from_static(b"0")), blob()],
        entries in prop::collection::vec(scan_entry(), 0..4),
        keys in 0usize..1_000_000,
        words in prop::array::uniform32(any::<u64>()),
        words2 in prop::array::uniform32(any::<u64>()),
        upper in any::<bool>(),
        styles in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let read = read_reply(&states, &styles);
        prop_assert_eq!(scripts::parse_read(Value::Array(read.clone()), states.len()), Ok(states.clone()));
        let extra = [read.clone(), vec![Value::Bulk(Bytes::from_static(b"x"))]].concat();
        prop_assert!(scripts::parse_read(Value::Array(extra), states.len()).is_err());
        if !read.is_empty() {
            prop_assert!(scripts::parse_read(Value::Array(read[..read.len() - 1].to_vec()), states.len()).is_err());
        }

        let write = write_reply(&outcomes, &styles);
        let expected: Vec<WriteOutcome> = outcomes.iter().map(|(o, _)| o.clone()).collect();
        prop_assert_eq!(scripts::parse_write(Value::Array(write.clone()), outcomes.len()), Ok(expected));
        prop_assert!(scripts::parse_write(Value::Array(write), outcomes.len() + 1).is_err());

        let scan = scan_reply(&cursor, &entries, &styles);
        prop_assert_eq!(scripts::parse_scan(Value::Array(scan.clone())), Ok((cursor.clone(), entries.clone())));
        if !entries.is_empty() {
            prop_assert!(scripts::parse_scan(Value::Array(scan[..scan.len() - 1].to_vec())).is_err());
        }

        let mut all_words = [0u64; scripts::BUCKETS];
        all_words[..32].copy_from_slice(&words);
        all_words[32..].copy_from_slice(&words2);
        let buckets = buckets_reply(&cursor, keys, &all_words, upper, &styles);
        let (got_cursor, sums) = scripts::parse_buckets(Value::Array(buckets.clone())).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got_cursor, cursor);
        prop_assert_eq!((sums.keys, sums.words), (keys, all_words));
        prop_assert!(scripts::parse_buckets(Value::Array(buckets[..buckets.len() - 1].to_vec())).is_err());
    }

    /// Arbitrary and mutated replies: every parser answers without panicking.
    #[test]
    fn fuzz_script_replies_arbitrary_and_mutated(
        value in value_tree(2),
        states in prop::collection::vec(key_state(), 0..3),
        outcomes in prop::collection::vec((write_outcome(), any::<u32>()), 0..3),
        entries in prop::collection::vec(scan_entry(), 0..3),
        how in any::<u8>(),
        at in any::<prop::sample::Index>(),
        replacement in prop_oneof![
            leaf(),
            prop::sample::select(vec!["-1", "-5", "99999999999999999999", "4294967296", "+1", "", "zzzzzzzzzzzzzzzz"])
                .prop_map(|s| Value::Bulk(Bytes::from_static(s.as_bytes()))),
            Just(Value::Array(vec![])),
        ],
        count in 0usize..5,
        styles in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        all_script_parsers(&value, count)?;
        let replies = [
            read_reply(&states, &styles),
            write_reply(&outcomes, &styles),
            scan_reply(&Bytes::from_static(b"7"), &entries, &styles),
            buckets_reply(&Bytes::from_static(b"0"), 3, &[5; scripts::BUCKETS], false, &styles),
        ];
        for reply in replies {
            let mutated = Value::Array(mutate(reply, how, at, replacement.clone()));
            for count in [count, states.len(), outcomes.len()] {
                all_script_parsers(&mutated, count)?;
            }
        }
    }
}

// --- the command codec ------------------------------------------------------

/// Webdis 0.1.9's reading of a request path (webdis.md §4b): cut at the
/// first raw `?`, split at raw `/`, take a known `.ext` off the last
/// segment, percent-decode every argument but the command name.
fn webdis_read_body(body: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Option<Vec<u8>>) {
    const FORMATS: &[&[u8]] =
        &[b"json", b"raw", b"bin", b"txt", b"html", b"xhtml", b"xml", b"png", b"jpg", b"jpeg", b"js", b"css"];
    let body = &body[..body.iter().position(|&b| b == b'?').unwrap_or(body.len())];
    let mut segments: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
    let mut format = None;
    if let Some(last) = segments.last_mut()
        && let Some(dot) = last.iter().rposition(|&b| b == b'.')
        && FORMATS.contains(&&last[dot + 1..])
    {
        format = Some(last[dot + 1..].to_vec());
        *last = &last[..dot];
    }
    let command = segments[0].to_vec();
    let args = segments[1..].iter().map(|s| webdis_decode(s)).collect();
    (command, args, format)
}

/// `decode_uri`: `%XX` (either case) → byte, `+` → space, a stray `%` stays.
fn webdis_decode(encoded: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < encoded.len() {
        match encoded[i] {
            b'%' if i + 2 < encoded.len() => match (hex(encoded[i + 1]), hex(encoded[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Raw `/ ? . + %` and anything outside printable ASCII appear only as `%XX`.
fn only_safe_bytes(encoded: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < encoded.len() {
        match encoded[i] {
            b'%' => {
                let ok = encoded.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return Err(format!("a raw % at {i} in {}", show(encoded)));
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'-') => i += 1,
            b => return Err(format!("raw byte 0x{b:02x} at {i} in {}", show(encoded))),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config_with_cases(400))]

    /// Every byte string survives Webdis's decoding, and nothing special survives raw.
    #[test]
    fn fuzz_codec_round_trips_through_webdis(
        command in "[A-Za-z]{1,12}",
        args in prop::collection::vec(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(prop::sample::select(b"/?.+%#& \r\n\0A.raw".to_vec()), 0..12),
            prop::sample::select(vec![b".raw".to_vec(), b"%41".to_vec(), b"a+b".to_vec(), b"..".to_vec(), b"".to_vec()]),
        ], 0..6),
    ) {
        for arg in &args {
            let encoded = codec::pct_encode(arg);
            to_case_error(only_safe_bytes(&encoded))?;
            prop_assert_eq!(encoded.len(), codec::pct_encoded_len(arg));
            prop_assert_eq!(&webdis_decode(&encoded), arg);
        }
        let body = codec::command_body(&command, &args);
        let (got_command, got_args, format) = webdis_read_body(&body);
        prop_assert_eq!(got_command, command.as_bytes().to_vec());
        prop_assert_eq!(got_args, args.clone());
        prop_assert_eq!(format, Some(b"raw".to_vec()));
        // Between the raw separators and the final ".raw", only safe bytes.
        let inner = &body[command.len()..body.len() - 4];
        for segment in inner.split(|&b| b == b'/').skip(1) {
            to_case_error(only_safe_bytes(segment))?;
        }
        prop_assert_eq!(inner.iter().filter(|&&b| b == b'/').count(), args.len());
    }
}

// ---------------------------------------------------------------------------
// Config loading
// ---------------------------------------------------------------------------

/// The valid and interesting configs mutations start from: the demo and the
/// corpus, without its alias bombs (each costs a node budget's worth of
/// parsing; `fuzz_config_alias_bombs_and_deep_nesting` covers them).
fn config_seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds = vec![std::fs::read_to_string(demo_path()).expect("examples/demo.yaml")];
        for (name, _, bytes) in corpus("config") {
            if let Ok(text) = String::from_utf8(bytes)
                && text.len() < 64 << 10
                && !name.contains("bomb")
            {
                seeds.push(text);
            }
        }
        seeds
    })
}

/// One edit of a config text.
#[derive(Clone, Debug)]
enum Mutation {
    Insert(prop::sample::Index, &'static str),
    InsertChar(prop::sample::Index, char),
    Delete(prop::sample::Index, usize),
    Replace(prop::sample::Index, char),
    DuplicateLine(prop::sample::Index),
    DeleteLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    Reindent(prop::sample::Index, i8),
    Anchor(prop::sample::Index),
    Alias(prop::sample::Index),
    Nest(prop::sample::Index, usize, bool),
    Value(prop::sample::Index, &'static str),
}

const TOKENS: &[&str] = &[
    ": ",
    "- ",
    ":",
    "-",
    "&a ",
    "*a",
    "&b [*a, *a, *a, *a]",
    "<<: *a\n",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "#",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "  ",
    "    ",
    "${HOME}",
    "${",
    "${NOPE}",
    "${NASTY}",
    "$$",
    "!!str ",
    "!!binary ",
    "!!int ",
    "!custom ",
    "? ",
    "|\n",
    ">-\n",
    "---\n",
    "...\n",
    "%YAML 1.2\n---\n",
    "null",
    "~",
    "0x1F",
    "0o17",
    "1e400",
    "-.inf",
    ".nan",
    "99999999999999999999",
    "-9223372036854775809",
    "é",
    "日本",
    "\u{feff}",
    "\u{85}",
    "\u{2028}",
    "\u{0}",
    "\u{7f}",
    "links:",
    "version: 1\n",
    "name: a\n",
    "direction: both\n",
    "prefix: \"p:\"\n",
    "url: \"redis://127.0.0.1:6379/0\"\n",
    "url: \"https://h/\"\n",
    "tls: {ca: /dev/null}\n",
    "types: []\n",
    "heartbeat: {interval: 0s}\n",
    "defaults: null\n",
    "__replhub__:",
];

const VALUES: &[&str] = &[
    "*a",
    "&a x",
    "99999999999999999999999999",
    "-9223372036854775808",
    "18446744073709551616",
    "1e999",
    ".inf",
    ".nan",
    "0x7fffffffffffffff",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "!!binary aGVsbG8=",
    "!!float 1",
    "\"99999999999h\"",
    "\"1m99999999999999999999s\"",
    "[]",
    "{}",
    "null",
    "\"\"",
    "\"${NOPE}\"",
    "\"${PW\"",
    "\"$${PW}\"",
    "\"${NASTY}\"",
    "|\n  multi\n  line",
    "\"redis://u:p@[::1]:0/4294967296\"",
    "\"https://u@h/?q#f\"",
    "\"/dev/null\"",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::{Index, select};
    prop_oneof![
        (any::<Index>(), select(TOKENS)).prop_map(|(at, t)| Mutation::Insert(at, t)),
        (any::<Index>(), any::<char>()).prop_map(|(at, c)| Mutation::InsertChar(at, c)),
        (any::<Index>(), 1usize..24).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<Index>(), any::<char>()).prop_map(|(at, c)| Mutation::Replace(at, c)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DeleteLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), -6i8..7).prop_map(|(at, d)| Mutation::Reindent(at, d)),
        any::<Index>().prop_map(Mutation::Anchor),
        any::<Index>().prop_map(Mutation::Alias),
        (any::<Index>(), 1usize..80, any::<bool>()).prop_map(|(at, n, flow)| Mutation::Nest(at, n, flow)),
        (any::<Index>(), select(VALUES)).prop_map(|(at, v)| Mutation::Value(at, v)),
    ]
}

/// The nearest char boundary at or before the chosen byte.
fn boundary(text: &str, at: &prop::sample::Index) -> usize {
    let mut i = at.index(text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces the value after the first `:` of a line (or appends one).
fn with_value(line: &str, value: &str) -> String {
    match line.find(": ").or_else(|| line.strip_suffix(':').map(|l| l.len())) {
        Some(i) => format!("{}: {value}", &line[..i]),
        None => format!("{line} {value}"),
    }
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let pick = |at: &prop::sample::Index, n: usize| at.index(n.max(1));
    match m {
        Mutation::Insert(at, token) => {
            let i = boundary(text, at);
            return format!("{}{token}{}", &text[..i], &text[i..]);
        }
        Mutation::InsertChar(at, c) => {
            let i = boundary(text, at);
            return format!("{}{c}{}", &text[..i], &text[i..]);
        }
        Mutation::Delete(at, n) => {
            let i = boundary(text, at);
            let mut end = (i + n).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            return format!("{}{}", &text[..i], &text[end..]);
        }
        Mutation::Replace(at, c) => {
            let i = boundary(text, at);
            let next = text[i..].chars().next().map_or(0, char::len_utf8);
            return format!("{}{c}{}", &text[..i], &text[i + next..]);
        }
        Mutation::DuplicateLine(at) => {
            let i = pick(at, lines.len());
            let copy = lines[i].clone();
            lines.insert(i, copy);
        }
        Mutation::DeleteLine(at) => {
            let i = pick(at, lines.len());
            lines.remove(i);
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (pick(a, lines.len()), pick(b, lines.len()));
            lines.swap(a, b);
        }
        Mutation::Reindent(at, delta) => {
            let i = pick(at, lines.len());
            let line = &lines[i];
            lines[i] = if *delta >= 0 {
                format!("{}{line}", " ".repeat(*delta as usize))
            } else {
                let strip = line.len() - line.trim_start_matches(' ').len();
                line[strip.min(delta.unsigned_abs() as usize)..].to_string()
            };
        }
        Mutation::Anchor(at) => {
            let i = pick(at, lines.len());
            let line = lines[i].clone();
            lines[i] = match line.find(": ") {
                Some(c) => format!("{}: &a {}", &line[..c], &line[c + 2..]),
                None => format!("{line} &a"),
            };
        }
        Mutation::Alias(at) => {
            let i = pick(at, lines.len());
            lines[i] = with_value(&lines[i], "*a");
        }
        Mutation::Nest(at, depth, flow) => {
            let i = pick(at, lines.len());
            if *flow {
                let nested = format!("{}x{}", "[".repeat(*depth), "]".repeat(*depth));
                lines[i] = with_value(&lines[i], &nested);
            } else {
                let indent = lines[i].len() - lines[i].trim_start().len();
                let block: Vec<String> = (1..=*depth).map(|d| format!("{}k{d}:", " ".repeat(indent + 2 * d))).collect();
                lines.splice(i + 1..i + 1, block);
            }
        }
        Mutation::Value(at, value) => {
            let i = pick(at, lines.len());
            lines[i] = with_value(&lines[i], value);
        }
    }
    lines.join("\n")
}

/// YAML-looking text built from the config's own vocabulary.
fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => prop::sample::select(TOKENS).prop_map(str::to_string),
        2 => prop::sample::select(VALUES).prop_map(str::to_string),
        1 => "[a-z_]{1,10}",
        1 => any::<String>(),
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(config_with_cases(400))]

    /// Any text: Ok, or Err with errors positioned inside the text, in under a second.
    #[test]
    fn fuzz_config_arbitrary_text(text in prop_oneof![any::<String>(), yaml_soup(), "(?s).{0,300}"]) {
        to_case_error(config_invariants(&demo_path(), &text).map(|_| ()))?;
    }

    /// Valid configs after a few random edits.
    #[test]
    fn fuzz_config_mutated_seeds(seed in any::<prop::sample::Index>(), mutations in prop::collection::vec(mutation(), 1..6)) {
        let seeds = config_seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        to_case_error(config_invariants(&demo_path(), &text).map(|_| ()))?;
    }
}

/// An alias bomb: `levels` anchors, each `width` aliases of the one before,
/// as flow lists, block lists, mappings or merge keys.
fn alias_bomb(width: usize, levels: usize, style: u8) -> String {
    let mut text = String::from("version: 1\nlinks: []\nx0: &x0 [a, b]\n");
    for level in 1..=levels {
        let prev = level - 1;
        let body = match style % 4 {
            0 => format!("[{}]", vec![format!("*x{prev}"); width].join(", ")),
            1 => (0..width).map(|_| format!("\n  - *x{prev}")).collect(),
            2 => format!("{{{}}}", (0..width).map(|k| format!("k{k}: *x{prev}")).collect::<Vec<_>>().join(", ")),
            _ => format!(
                "{{<<: *x{prev}, {}}}",
                (0..width).map(|k| format!("m{k}: *x{prev}")).collect::<Vec<_>>().join(", ")
            ),
        };
        text.push_str(&format!("x{level}: &x{level} {body}\n"));
    }
    text
}

proptest! {
    #![proptest_config(config_with_cases(24))]

    /// Alias bombs of every shape and deep nesting of either style: refused or
    /// accepted, always within a second. Expansions stay under 20,000 nodes
    /// here to keep the module fast; bombs that hit the parser's node budget
    /// are in the corpus (`config/err-alias-bomb.yaml`).
    #[test]
    fn fuzz_config_alias_bombs_and_deep_nesting(width in 1usize..16, levels in 1usize..14, style in any::<u8>(),
                                                 depth in 1usize..300, flow in any::<bool>(), place in 0u8..3) {
        let levels = (1..=levels).take_while(|&l| width.pow(l as u32) <= 20_000).last().unwrap_or(1);
        let result = config_invariants(&demo_path(), &alias_bomb(width, levels, style)).map_err(TestCaseError::fail)?;
        prop_assert!(result.is_err(), "unknown keys x0…");
        let nested = if flow {
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            (0..depth).map(|d| format!("\n{}- ", "  ".repeat(d))).collect::<String>() + "1"
        };
        let text = match place {
            0 => format!("version: 1\nlinks: {nested}\n"),
            1 => format!("version: 1\nlinks:\n  - name: a\n    types: {nested}\n"),
            _ => nested,
        };
        to_case_error(config_invariants(&demo_path(), &text).map(|_| ()))?;
    }
}

#[test]
fn fuzz_corpus_config() {
    for (name, path, bytes) in corpus("config") {
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("config/{name} is not UTF-8"));
        let result = config_invariants(&path, &text).unwrap_or_else(|e| panic!("config/{name}: {e}"));
        match (expectation(&name), &result) {
            (Expect::Ok, Err(diags)) => panic!("config/{name} should load:\n{diags}"),
            (Expect::Err, Ok(_)) => panic!("config/{name} should be refused"),
            _ => {}
        }
    }
    // The seeds the mutations start from load as they are (the demo's TLS files are real).
    let demo = config_invariants(&demo_path(), &config_seeds()[0]).unwrap();
    assert!(demo.is_ok(), "examples/demo.yaml: {:?}", demo.err().map(|d| d.to_string()));
}
