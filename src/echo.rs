//! The echo filter: recognises keyspace events caused by the hub's own writes.
//!
//! In a `both` link every write the hub makes on one side produces a
//! keyspace event there, which must not be copied back. Every write of ours
//! causes a known number of events on the key (the write script reports it:
//! one for a replace, one for a delete of an existing key, zero for nothing),
//! so per (server, key) the filter counts writes still in flight and echoes
//! still expected:
//!
//! * an event while echoes are expected is one of them: drop it;
//! * an event while a write is in flight but unconfirmed is held back, since
//!   it may be that write's echo or a genuine write that landed in between;
//! * when the write is confirmed with its real event count, held-back events
//!   beyond that count are genuine and are handed back to be copied.
//!
//! The filter never drops more events than the hub's writes caused, so it
//! cannot swallow a genuine update (no false positives); when it misses an
//! echo (entry expired, stream reconnected) the link reads the key, finds
//! both sides equal and copies nothing: a miss costs a read, never a loop.
//! One filter serves every link, keyed by server, so two links writing to
//! the same Redis share it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How long an expected echo is waited for before it is forgotten.
const ECHO_TTL: Duration = Duration::from_secs(30);

#[derive(Default, Debug)]
struct Entry {
    writes_in_flight: u32,
    echoes_expected: u32,
    held_back: u32,
    /// When the last expected echo was confirmed (for expiry).
    confirmed_at: Option<Instant>,
}

/// What the events held back for a write turned out to be, once it is confirmed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Genuine writes: the caller must copy the key again if > 0.
    pub genuine: u32,
    /// This write's own echoes (to count as suppressed).
    pub echoes: u32,
}

/// What to do with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Our own write's echo: drop it.
    Echo,
    /// Maybe ours: held back until the write in flight is confirmed.
    HeldBack,
    /// A genuine change: copy it.
    Genuine,
}

/// The process-wide echo filter.
#[derive(Default)]
pub struct EchoFilter {
    entries: Mutex<HashMap<(String, Bytes), Entry>>,
}

impl EchoFilter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Bytes), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before sending a write of `key` to `server`.
    pub fn begin_write(&self, server: &str, key: &Bytes) {
        self.lock().entry((server.to_string(), key.clone())).or_default().writes_in_flight += 1;
    }

    /// Call when the write is answered, with the events it caused (0 when it
    /// failed or its outcome is unknown: undercounting costs a read,
    /// overcounting could lose an update). Says what the held-back events
    /// turned out to be.
    pub fn finish_write(&self, server: &str, key: &Bytes, events: u32) -> Settled {
        let mut entries = self.lock();
        let map_key = (server.to_string(), key.clone());
        let Some(entry) = entries.get_mut(&map_key) else { return Settled::default() };
        entry.writes_in_flight = entry.writes_in_flight.saturating_sub(1);
        entry.echoes_expected += events;
        let matched = entry.held_back.min(entry.echoes_expected);
        entry.held_back -= matched;
        entry.echoes_expected -= matched;
        entry.confirmed_at = Some(Instant::now());
        let genuine = if entry.writes_in_flight == 0 { std::mem::take(&mut entry.held_back) } else { 0 };
        if entry.writes_in_flight == 0 && entry.echoes_expected == 0 {
            entries.remove(&map_key);
        }
        Settled { genuine, echoes: matched }
    }

    /// Classifies an event on `key` at `server`.
    pub fn on_event(&self, server: &str, key: &Bytes) -> Verdict {
        let mut entries = self.lock();
        let map_key = (server.to_string(), key.clone());
        let Some(entry) = entries.get_mut(&map_key) else { return Verdict::Genuine };
        if entry.echoes_expected > 0 && entry.confirmed_at.is_some_and(|t| t.elapsed() > ECHO_TTL) {
            entry.echoes_expected = 0;
        }
        if entry.echoes_expected > 0 {
            entry.echoes_expected -= 1;
            if entry.echoes_expected == 0 && entry.writes_in_flight == 0 && entry.held_back == 0 {
                entries.remove(&map_key);
            }
            Verdict::Echo
        } else if entry.writes_in_flight > 0 {
            entry.held_back += 1;
            Verdict::HeldBack
        } else {
            entries.remove(&map_key);
            Verdict::Genuine
        }
    }

    /// Forgets expected echoes on `server` (its event stream reconnected, so
    /// they will never arrive; a resync follows).
    pub fn forget_server(&self, server: &str) {
        self.lock().retain(|(s, _), entry| s != server || entry.writes_in_flight > 0);
    }

    /// Drops entries whose echoes never came (called periodically).
    pub fn sweep(&self) {
        self.lock().retain(|_, e| e.writes_in_flight > 0 || e.confirmed_at.is_none_or(|t| t.elapsed() <= ECHO_TTL));
    }

    /// Number of keys tracked (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "127.0.0.1:6379/0";

    fn key() -> Bytes {
        Bytes::from_static(b"app:k")
    }

    #[test]
    fn an_echo_after_confirmation_is_dropped_once() {
        let f = EchoFilter::default();
        f.begin_write(S, &key());
        assert_eq!(f.finish_write(S, &key(), 1).genuine, 0);
        assert_eq!(f.on_event(S, &key()), Verdict::Echo);
        assert_eq!(f.on_event(S, &key()), Verdict::Genuine, "a second event is a real write");
        assert!(f.is_empty());
    }

    #[test]
    fn an_echo_before_confirmation_is_held_back_then_dropped() {
        let f = EchoFilter::default();
        f.begin_write(S, &key());
        assert_eq!(f.on_event(S, &key()), Verdict::HeldBack);
        assert_eq!(f.finish_write(S, &key(), 1), Settled { genuine: 0, echoes: 1 }, "the held-back event was the echo");
        assert!(f.is_empty());
    }

    #[test]
    fn a_genuine_write_between_our_write_and_its_echo_is_not_lost() {
        // Our write (1 event) and a client's write (1 event) land close together;
        // the events may arrive in either order (Webdis reverses bursts).
        for confirm_first in [true, false] {
            let f = EchoFilter::default();
            f.begin_write(S, &key());
            let mut genuine = 0;
            if confirm_first {
                genuine += f.finish_write(S, &key(), 1).genuine;
            }
            let verdicts = [f.on_event(S, &key()), f.on_event(S, &key())];
            if !confirm_first {
                genuine += f.finish_write(S, &key(), 1).genuine;
            }
            genuine += verdicts.iter().filter(|v| **v == Verdict::Genuine).count() as u32;
            assert_eq!(
                genuine, 1,
                "exactly one event must be treated as genuine ({verdicts:?}, confirm_first={confirm_first})"
            );
        }
    }

    #[test]
    fn a_write_that_caused_no_event_releases_held_events_as_genuine() {
        let f = EchoFilter::default();
        f.begin_write(S, &key());
        assert_eq!(f.on_event(S, &key()), Verdict::HeldBack);
        assert_eq!(f.finish_write(S, &key(), 0).genuine, 1, "the held-back event was a client's write");
        assert!(f.is_empty());
    }

    #[test]
    fn overlapping_writes_settle_only_when_all_are_confirmed() {
        let f = EchoFilter::default();
        f.begin_write(S, &key());
        f.begin_write(S, &key());
        assert_eq!(f.on_event(S, &key()), Verdict::HeldBack);
        assert_eq!(f.on_event(S, &key()), Verdict::HeldBack);
        assert_eq!(f.on_event(S, &key()), Verdict::HeldBack);
        assert_eq!(f.finish_write(S, &key(), 1).genuine, 0);
        assert_eq!(f.finish_write(S, &key(), 1).genuine, 1, "three events, two echoes: one genuine");
    }

    #[test]
    fn servers_and_keys_are_separate_and_forgetting_a_server_clears_it() {
        let f = EchoFilter::default();
        f.begin_write(S, &key());
        f.finish_write(S, &key(), 1);
        assert_eq!(f.on_event("other:1/0", &key()), Verdict::Genuine);
        assert_eq!(f.on_event(S, &Bytes::from_static(b"app:other")), Verdict::Genuine);
        f.forget_server(S);
        assert_eq!(f.on_event(S, &key()), Verdict::Genuine);
    }
}
