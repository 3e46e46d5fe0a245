//! The dirty set: keys of one link waiting to be copied.
//!
//! Capture (events) and resync add keys; the copier takes batches. A key
//! written a thousand times in a burst is queued once and copied once with
//! its latest state. A key is never in two copies at once: while a batch
//! holding it is in flight, new events for it are parked and the key is
//! queued again when that batch finishes, so an older read can never
//! overwrite a newer one. The set is bounded: past `capacity` it drops
//! everything and reports an overflow, and the link resyncs instead of
//! growing without limit.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

/// Hash maps of the hot path: foldhash is several times faster than the
/// standard SipHash on short keys, and seeded per process like it.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Keys waiting to be copied, identified by their suffix (the key without the prefix).
#[derive(Debug)]
pub struct DirtySet {
    queue: VecDeque<Bytes>,
    /// Queued keys and when each was first marked (for the lag metric).
    queued: HashMap<Bytes, Instant>,
    in_flight: HashSet<Bytes>,
    /// Keys marked while in flight, with their first mark time.
    parked: HashMap<Bytes, Instant>,
    capacity: usize,
}

/// What happened to a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// Queued (or parked, or already queued).
    Ok,
    /// The set was full: everything was dropped; the owner must resync.
    Overflow,
}

impl DirtySet {
    pub fn new(capacity: usize) -> Self {
        DirtySet {
            queue: VecDeque::new(),
            queued: HashMap::default(),
            in_flight: HashSet::default(),
            parked: HashMap::default(),
            capacity,
        }
    }

    /// Marks a key dirty.
    pub fn mark(&mut self, key: Bytes, at: Instant) -> Marked {
        if self.queued.contains_key(&key) {
            return Marked::Ok;
        }
        if self.in_flight.contains(&key) {
            self.parked.entry(key).or_insert(at);
            return Marked::Ok;
        }
        if self.queued.len() + self.parked.len() >= self.capacity {
            self.queue.clear();
            self.queued.clear();
            self.parked.clear();
            return Marked::Overflow;
        }
        self.queued.insert(key.clone(), at);
        self.queue.push_back(key);
        Marked::Ok
    }

    /// Takes up to `max` queued keys and marks them in flight.
    pub fn take(&mut self, max: usize) -> Vec<(Bytes, Instant)> {
        let mut batch = Vec::with_capacity(max.min(self.queue.len()));
        while batch.len() < max {
            let Some(key) = self.queue.pop_front() else { break };
            if let Some(at) = self.queued.remove(&key) {
                self.in_flight.insert(key.clone());
                batch.push((key, at));
            }
        }
        batch
    }

    /// A batch finished: its keys are no longer in flight, and keys marked
    /// meanwhile are queued again. `retry` puts the batch's own keys back too
    /// (the copy failed).
    pub fn finish(&mut self, keys: impl IntoIterator<Item = (Bytes, Instant)>, retry: bool) {
        for (key, at) in keys {
            self.in_flight.remove(&key);
            let parked = self.parked.remove(&key);
            let requeue = if retry { Some(at) } else { parked };
            if let Some(at) = requeue
                && !self.queued.contains_key(&key)
            {
                self.queued.insert(key.clone(), at);
                self.queue.push_back(key);
            }
        }
    }

    /// Keys waiting (queued or parked), for the `replhub_dirty_keys` gauge.
    pub fn waiting(&self) -> usize {
        self.queued.len() + self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn repeated_marks_coalesce_and_order_is_kept() {
        let now = Instant::now();
        let mut d = DirtySet::new(100);
        for key in ["a", "b", "a", "c", "b"] {
            assert_eq!(d.mark(k(key), now), Marked::Ok);
        }
        let batch: Vec<Bytes> = d.take(10).into_iter().map(|(key, _)| key).collect();
        assert_eq!(batch, vec![k("a"), k("b"), k("c")]);
        assert_eq!(d.waiting(), 0);
    }

    #[test]
    fn a_key_in_flight_is_parked_and_requeued_after_its_batch() {
        let now = Instant::now();
        let mut d = DirtySet::new(100);
        d.mark(k("a"), now);
        let batch = d.take(10);
        d.mark(k("a"), now);
        assert!(d.take(10).is_empty(), "a key must not be in two copies at once");
        d.finish(batch, false);
        assert_eq!(d.take(10).len(), 1, "the parked mark is queued again");
    }

    #[test]
    fn a_failed_batch_is_retried() {
        let now = Instant::now();
        let mut d = DirtySet::new(100);
        d.mark(k("a"), now);
        d.mark(k("b"), now);
        let batch = d.take(10);
        d.finish(batch, true);
        assert_eq!(d.take(10).len(), 2);
    }

    #[test]
    fn overflow_drops_everything_and_says_so() {
        let now = Instant::now();
        let mut d = DirtySet::new(3);
        for key in ["a", "b", "c"] {
            assert_eq!(d.mark(k(key), now), Marked::Ok);
        }
        assert_eq!(d.mark(k("d"), now), Marked::Overflow);
        assert_eq!(d.waiting(), 0);
        assert!(d.take(10).is_empty());
        assert_eq!(d.mark(k("e"), now), Marked::Ok, "usable again after the overflow");
    }
}
