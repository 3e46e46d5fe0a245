//! The base of a `both` link: per key, the state last known equal on both
//! sides (as in a three-way merge). Comparing each side with the base tells
//! which side changed; a key with no entry was absent on both.
//!
//! The base is kept in memory by the link and saved to
//! `state_dir/<link>.state` (atomically: temp file, fsync, rename) so that a
//! delete made while the hub was down is not undone at the next start.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::scripts::{Digest, KeyState};

/// Tolerance when comparing expiry times: TTLs within a second are equal.
pub const TTL_TOLERANCE_MS: u64 = 1000;

/// A key's state reduced to what comparisons need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub digest: Digest,
    /// Absolute expiry (ms since the epoch, by this process's clock), if any.
    pub expires_at: Option<u64>,
}

impl Observed {
    pub const ABSENT: Observed = Observed { digest: Digest::ABSENT, expires_at: None };

    /// From a state read at `now_ms`; a key of a type the link does not
    /// replicate counts as absent.
    pub fn of(state: &KeyState, replicated: bool, now_ms: u64) -> Observed {
        if !replicated || state.digest == Digest::ABSENT {
            return Observed::ABSENT;
        }
        Observed::from_parts(state.digest, state.pttl, now_ms)
    }

    pub fn from_parts(digest: Digest, pttl: i64, now_ms: u64) -> Observed {
        let expires_at = u64::try_from(pttl).ok().filter(|p| *p > 0).map(|p| now_ms + p);
        Observed { digest, expires_at }
    }

    pub fn is_absent(&self) -> bool {
        self.digest == Digest::ABSENT
    }

    /// Same value and (within a second) the same expiry.
    pub fn same(&self, other: &Observed) -> bool {
        self.digest == other.digest
            && match (self.expires_at, other.expires_at) {
                (None, None) => true,
                (Some(a), Some(b)) => a.abs_diff(b) <= TTL_TOLERANCE_MS,
                _ => false,
            }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The base states of one link, by key suffix.
#[derive(Debug, Default)]
pub struct Base {
    states: HashMap<Bytes, Observed>,
    /// Changed since the last save.
    dirty: bool,
}

const MAGIC: &[u8; 8] = b"RHBASE01";

impl Base {
    pub fn get(&self, key: &[u8]) -> Observed {
        self.states.get(key).copied().unwrap_or(Observed::ABSENT)
    }

    pub fn set(&mut self, key: Bytes, state: Observed) {
        let changed = if state.is_absent() {
            self.states.remove(&key).is_some()
        } else {
            self.states.insert(key, state) != Some(state)
        };
        self.dirty |= changed;
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Keys with a base state.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.states.keys()
    }

    /// The file for `link` under `dir`.
    pub fn path(dir: &Path, link: &str) -> PathBuf {
        dir.join(format!("{link}.state"))
    }

    /// Loads a saved base. `identity` must match what was saved (the link's
    /// namespaces and servers), so a changed link never uses a stale base.
    pub fn load(path: &Path, identity: &str) -> std::io::Result<Option<Base>> {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(decode(&data, identity))
    }

    /// The saved form, if anything changed since the last call (which then
    /// counts as saved; call [`Base::mark_unsaved`] if writing it fails).
    /// Cheap enough to run under the link's lock; the file I/O is not.
    pub fn encode_if_changed(&mut self, identity: &str) -> Option<Vec<u8>> {
        if !self.dirty {
            return None;
        }
        let mut data = Vec::with_capacity(16 + self.states.len() * 40);
        data.extend_from_slice(MAGIC);
        put_bytes(&mut data, identity.as_bytes());
        data.extend_from_slice(&(self.states.len() as u64).to_le_bytes());
        for (key, state) in &self.states {
            put_bytes(&mut data, key);
            data.extend_from_slice(&state.digest.0.to_le_bytes());
            data.extend_from_slice(&state.expires_at.unwrap_or(0).to_le_bytes());
        }
        self.dirty = false;
        Some(data)
    }

    /// The last encoded form was not written: save again next time.
    pub fn mark_unsaved(&mut self) {
        self.dirty = true;
    }
}

/// Replaces `path` with `data` crash-safely: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("state.tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes a saved base; `None` for another identity or a damaged file.
fn decode(data: &[u8], identity: &str) -> Option<Base> {
    let mut rest = data.strip_prefix(MAGIC.as_slice())?;
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let id_len = usize::try_from(u64_at(take(8)?)).ok()?;
    if take(id_len)? != identity.as_bytes() {
        return None;
    }
    let count = u64_at(take(8)?);
    let mut states = HashMap::new();
    for _ in 0..count {
        let key_len = usize::try_from(u64_at(take(8)?)).ok()?;
        let key = Bytes::copy_from_slice(take(key_len)?);
        let digest = Digest(u64_at(take(8)?));
        let expires = u64_at(take(8)?);
        states.insert(key, Observed { digest, expires_at: (expires != 0).then_some(expires) });
    }
    Some(Base { states, dirty: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_within_a_second_are_the_same() {
        let a = Observed { digest: Digest(5), expires_at: Some(10_000) };
        assert!(a.same(&Observed { digest: Digest(5), expires_at: Some(10_900) }));
        assert!(!a.same(&Observed { digest: Digest(5), expires_at: Some(11_100) }));
        assert!(!a.same(&Observed { digest: Digest(5), expires_at: None }));
        assert!(!a.same(&Observed { digest: Digest(6), expires_at: Some(10_000) }));
    }

    #[test]
    fn saves_and_loads_atomically_and_checks_identity() {
        let dir = std::env::temp_dir().join(format!("replhub-base-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Base::path(&dir, "l");
        let mut base = Base::default();
        base.set(Bytes::from_static(b"k\x00\xff"), Observed { digest: Digest(42), expires_at: Some(99) });
        base.set(Bytes::from_static(b"gone"), Observed { digest: Digest(1), expires_at: None });
        base.set(Bytes::from_static(b"gone"), Observed::ABSENT);
        write_atomically(&path, &base.encode_if_changed("id-1").unwrap()).unwrap();
        assert!(base.encode_if_changed("id-1").is_none(), "nothing changed since");
        let loaded = Base::load(&path, "id-1").unwrap().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.get(b"k\x00\xff"), Observed { digest: Digest(42), expires_at: Some(99) });
        assert!(Base::load(&path, "id-2").unwrap().is_none(), "another link's identity is not used");
        std::fs::write(&path, b"RHBASE01\x05").unwrap();
        assert!(Base::load(&path, "id-1").unwrap().is_none(), "a damaged file is ignored, not a panic");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
