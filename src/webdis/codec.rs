//! How commands are written for Webdis 0.1.9 (see `shared/reference/webdis.md` §0, §4a, §4b).
//!
//! Webdis splits the request path at every raw `/`, cuts it at a raw `?`,
//! turns `+` into a space, takes a raw `.ext` suffix as the output format and
//! answers 400 (poisoning the keep-alive connection) to raw bytes ≥ 0x80. So
//! every argument is percent-encoded except `A-Z a-z 0-9 _ ~ -`, which makes
//! the encoded form immune to all of those rules, and requests go as `POST /`
//! with the encoded command as the body (nginx refuses `%00` in URLs). The
//! command name itself is never decoded by Webdis and is sent as plain ASCII.

/// True for the bytes that are sent as themselves.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'-')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `bytes` percent-encoded to `out`.
pub fn pct_encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        if is_unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The percent-encoded form of `bytes`.
pub fn pct_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    pct_encode_into(bytes, &mut out);
    out
}

/// Size of `bytes` once percent-encoded, without encoding it.
pub fn pct_encoded_len(bytes: &[u8]) -> usize {
    bytes.iter().map(|&b| if is_unreserved(b) { 1 } else { 3 }).sum()
}

/// Builds a `POST /` body: `CMD/arg1/…/argN.raw`, every argument encoded.
///
/// `.raw` asks for RESP output, the only binary-safe reply format. An empty
/// last argument is fine: `SET/k/.raw` sets the empty string.
pub fn command_body<A: AsRef<[u8]>>(command: &str, args: &[A]) -> Vec<u8> {
    debug_assert!(command.bytes().all(|b| b.is_ascii_alphabetic()), "command names are plain ASCII words");
    let len: usize = command.len() + 4 + args.iter().map(|a| 1 + pct_encoded_len(a.as_ref())).sum::<usize>();
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(command.as_bytes());
    for arg in args {
        body.push(b'/');
        pct_encode_into(arg.as_ref(), &mut body);
    }
    body.extend_from_slice(b".raw");
    body
}

/// Builds a `PUT` path `/CMD/arg1/…/argN-1.raw` whose body becomes the last
/// argument verbatim (binary-safe without the 3× cost of encoding). The path
/// goes through nginx's URL rules, so it must not contain `%00`: callers only
/// put arguments of their own making there (scripts, staging key names).
pub fn put_path<A: AsRef<[u8]>>(base_path: &str, command: &str, url_args: &[A]) -> String {
    let mut path = Vec::from(base_path.as_bytes());
    path.extend_from_slice(command.as_bytes());
    for arg in url_args {
        path.push(b'/');
        pct_encode_into(arg.as_ref(), &mut path);
    }
    path.extend_from_slice(b".raw");
    // Every byte is ASCII by construction.
    String::from_utf8(path).unwrap_or_default()
}

/// Escapes Redis glob characters (`* ? [ ] \`) so `text` matches only itself
/// in a MATCH or PSUBSCRIBE pattern.
pub fn glob_escape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    for &b in text {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of the 256 bytes against the rule of webdis.md §4b: only
    /// `A-Z a-z 0-9 _ ~ -` stay as they are, every other byte becomes `%XX`
    /// (upper-case hex, which Webdis decodes back to exactly that byte). The
    /// round trip through a reimplementation of Webdis's decoder, for every
    /// byte string, is in `integration/tests/fuzz_tests.rs`.
    #[test]
    fn every_byte_is_kept_or_encoded_as_the_reference_says() {
        for b in 0..=255u8 {
            let expected = if b.is_ascii_alphanumeric() || b"_~-".contains(&b) {
                vec![b]
            } else {
                format!("%{b:02X}").into_bytes()
            };
            assert_eq!(pct_encode(&[b]), expected, "byte 0x{b:02x}");
            assert_eq!(pct_encoded_len(&[b]), expected.len());
        }
        let all: Vec<u8> = (0..=255).collect();
        let encoded = pct_encode(&all);
        assert!(encoded.iter().all(u8::is_ascii_graphic), "printable ASCII only");
        for special in [b'/', b'?', b'.', b'+', b' ', b'#'] {
            assert!(!encoded.contains(&special), "0x{special:02x} must never go out raw");
        }
    }

    #[test]
    fn bodies_have_one_raw_slash_per_argument_and_a_raw_suffix() {
        assert_eq!(command_body("SET", &[b"k/1".as_slice(), b"v.raw"]), b"SET/k%2F1/v%2Eraw.raw");
        assert_eq!(command_body("SET", &[b"k".as_slice(), b""]), b"SET/k/.raw");
        assert_eq!(command_body::<&[u8]>("PING", &[]), b"PING.raw");
    }

    #[test]
    fn put_paths_encode_url_arguments() {
        assert_eq!(put_path("/", "EVAL", &["return 1", "0"]), "/EVAL/return%201/0.raw");
        assert_eq!(put_path("/webdis/", "PING", &[] as &[&str]), "/webdis/PING.raw");
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape(b"a*b?[c]\\d:"), b"a\\*b\\?\\[c\\]\\\\d:");
        assert_eq!(glob_escape(b"plain:"), b"plain:");
    }
}
