//! The copier: takes dirty keys in batches, reads them from the source and
//! writes them to the destination.
//!
//! Batching is what makes a link fast: one EVAL reads a whole batch locally,
//! one HTTP request writes it remotely, and several batches are in flight at
//! once over the shared pool. There is no timer: the copier takes whatever is
//! dirty the moment a batch slot is free, so a lone write goes out at once
//! and a burst fills batches by itself.
//!
//! `push` and `pull` batches are plain atomic replaces. `both` batches read
//! both sides and decide per key against the base (see `base`): the side
//! that changed since the base is copied over the other; if both changed,
//! the `conflict` rule picks the winner. Every `both` write is a
//! compare-and-set against the state just read, so a concurrent change on
//! the destination is detected when writing, and the key is simply looked
//! at again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Link;
use super::base::{Observed, now_ms};
use crate::backoff::Backoff;
use crate::config::{Conflict, Direction};
use crate::metrics::LinkDirection;
use crate::scripts::{KeyState, KeyType, WriteOp, WriteOutcome, WriteRecord};
use crate::side::{STAGE_THRESHOLD, Side, SideError};

/// Keys per batch.
pub const BATCH_KEYS: usize = 1024;
/// Batches in flight per link.
const BATCHES_IN_FLIGHT: usize = 4;

type Batch = Vec<(Bytes, Instant)>;

/// Runs until the link is cancelled and everything queued is copied (or the
/// supervisor's deadline aborts it).
pub(super) async fn run_copier(link: Arc<Link>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let mut running = tokio::task::JoinSet::new();
    let mut health = CopyHealth::new();
    loop {
        while let Some(done) = running.try_join_next() {
            health.record(&link, done.ok());
        }
        let stopping = link.drain.is_cancelled();
        // After a failure, no new batch starts before the backoff ends (results keep being collected).
        let paused_until = health.retry_at.filter(|at| *at > tokio::time::Instant::now() && !stopping);
        let batch = if paused_until.is_some() { Vec::new() } else { link.lock_dirty().take(BATCH_KEYS) };
        if !batch.is_empty() {
            link.update_dirty_gauge();
        }
        if batch.is_empty() {
            if stopping && running.is_empty() {
                return;
            }
            let pause = async {
                match paused_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = link.wake.notified(), if paused_until.is_none() => {}
                _ = pause => {}
                done = running.join_next(), if !running.is_empty() => health.record(&link, done.and_then(Result::ok)),
                _ = link.drain.cancelled(), if !stopping => {}
            }
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let worker = link.clone();
        running.spawn(tracing::Instrument::in_current_span(async move {
            let result = copy_batch(&worker, &batch).await;
            let failed = result.is_err();
            worker.lock_dirty().finish(batch, failed);
            worker.update_dirty_gauge();
            worker.wake.notify_one();
            drop(permit);
            result
        }));
    }
}

/// Whether copies succeed, and when to try again after a failure.
struct CopyHealth {
    backoff: Backoff,
    failing: bool,
    /// No new batch before this instant.
    retry_at: Option<tokio::time::Instant>,
}

impl CopyHealth {
    fn new() -> Self {
        CopyHealth {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            failing: false,
            retry_at: None,
        }
    }

    /// Accounts for a finished batch. A failure starts a backoff window
    /// unless one is already running: batches that were in flight together
    /// fail together, and must not add up to one long wait.
    fn record(&mut self, link: &Link, result: Option<Result<(), SideError>>) {
        match result {
            Some(Ok(())) | None => {
                if self.failing {
                    self.failing = false;
                    self.backoff.reset();
                    self.retry_at = None;
                    link.status.set_copy_ok(true, None);
                }
            }
            Some(Err(error)) => {
                link.count_error(error.kind());
                let now = tokio::time::Instant::now();
                if self.retry_at.is_none_or(|at| at <= now) {
                    tracing::warn!(%error, "copy failed; the keys will be retried");
                    self.retry_at = Some(now + self.backoff.next_delay());
                }
                self.failing = true;
                link.status.set_copy_ok(false, Some(error.to_string()));
            }
        }
    }
}

async fn copy_batch(link: &Link, batch: &Batch) -> Result<(), SideError> {
    match link.config.direction {
        Direction::Push => copy_one_way(link, batch, true).await,
        Direction::Pull => copy_one_way(link, batch, false).await,
        Direction::Both => copy_both(link, batch).await,
    }
}

impl Link {
    /// True if the link copies keys of this type.
    fn replicates(&self, ty: &KeyType) -> bool {
        match ty {
            KeyType::Data(t) => self.config.replicates(*t),
            KeyType::None => false,
            KeyType::Other(name) => {
                self.warn_type_once(name);
                false
            }
        }
    }

    /// The write that makes a destination key equal to a source state: a
    /// replace for a replicated type, a delete otherwise (the source has no
    /// key of a replicated type there).
    fn op_for(&self, state: KeyState) -> WriteOp {
        if self.replicates(&state.ty) { WriteOp::Put(state) } else { WriteOp::Delete }
    }

    fn direction_label(push: bool) -> &'static str {
        if push { "push" } else { "pull" }
    }

    /// Accounts keys written in one direction.
    fn account(&self, push: bool, written: &[Instant]) {
        if written.is_empty() {
            return;
        }
        let label = LinkDirection { link: self.config.name.clone(), direction: Self::direction_label(push) };
        self.res.metrics.keys_replicated.get_or_create(&label).inc_by(written.len() as u64);
        let histogram = self.res.metrics.replication_lag.get_or_create(&label);
        let mut last = 0.0;
        for at in written {
            last = at.elapsed().as_secs_f64();
            histogram.observe(last);
        }
        self.status.add_replicated(written.len() as u64, last);
    }

    /// Handles outcomes that are not plain successes; returns the keys to look at again.
    fn settle(&self, suffix: &Bytes, outcome: &WriteOutcome) -> bool {
        match outcome {
            WriteOutcome::Written { .. } | WriteOutcome::Unchanged { .. } => false,
            WriteOutcome::Conflict { .. } | WriteOutcome::StagingLost => true,
            WriteOutcome::Skipped { found } => {
                self.count_error("destination_type");
                tracing::warn!(
                    key = %crate::resp::printable(suffix, 200),
                    found = %found,
                    "the destination key has a type this link does not replicate; left alone"
                );
                false
            }
        }
    }
}

/// Groups records into requests that fit the destination's limits (one
/// oversized record alone, to be staged).
fn requests(records: Vec<WriteRecord>, limit: usize) -> Vec<Vec<WriteRecord>> {
    let mut out: Vec<Vec<WriteRecord>> = Vec::new();
    let mut size = 0;
    for record in records {
        let len = record.encoded_len();
        if out.is_empty() || size + len > limit {
            out.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = out.last_mut() {
            last.push(record);
        }
    }
    out
}

/// Writes records in as many requests as their size needs; outcomes in order.
async fn write_all(link: &Link, side: &Side, records: Vec<WriteRecord>) -> Result<Vec<WriteOutcome>, SideError> {
    let mut outcomes = Vec::with_capacity(records.len());
    let limit = if side.is_remote() { STAGE_THRESHOLD } else { 64 << 20 };
    for request in requests(records, limit) {
        outcomes.extend(side.write(request, &link.config.types).await?);
    }
    Ok(outcomes)
}

/// A push (local → remote) or pull (remote → local) batch.
async fn copy_one_way(link: &Link, batch: &Batch, push: bool) -> Result<(), SideError> {
    let (source, destination) = if push { (&link.local, &link.remote) } else { (&link.remote, &link.local) };
    let source_keys: Vec<Bytes> =
        batch.iter().map(|(s, _)| if push { link.local_key(s) } else { link.remote_key(s) }).collect();
    let read_at = Instant::now();
    let states = source.read(source_keys, false).await?;
    let records: Vec<WriteRecord> = batch
        .iter()
        .zip(states)
        .map(|((suffix, _), state)| WriteRecord {
            key: if push { link.remote_key(suffix) } else { link.local_key(suffix) },
            op: link.op_for(state),
            expect: None,
            new_digest: crate::scripts::Digest::ABSENT,
            read_at: Some(read_at),
        })
        .collect();
    let outcomes = write_all(link, destination, records).await?;
    let mut written = Vec::with_capacity(batch.len());
    for ((suffix, at), outcome) in batch.iter().zip(&outcomes) {
        if link.settle(suffix, outcome) {
            link.mark(suffix.clone(), *at);
        } else if matches!(outcome, WriteOutcome::Written { .. } | WriteOutcome::Unchanged { .. }) {
            written.push(*at);
        }
    }
    link.account(push, &written);
    Ok(())
}

/// Which way a `both` key must be copied, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Both sides hold the same state: it becomes the base.
    Equal,
    /// Copy the local state over the remote one.
    ToRemote,
    /// Copy the remote state over the local one.
    ToLocal,
}

/// The three-way decision for one key of a `both` link.
pub(crate) fn decide(local: &Observed, remote: &Observed, base: &Observed, conflict: Conflict) -> Decision {
    if local.same(remote) {
        return Decision::Equal;
    }
    let local_changed = !local.same(base);
    let remote_changed = !remote.same(base);
    match (local_changed, remote_changed) {
        (true, false) => Decision::ToRemote,
        (false, true) => Decision::ToLocal,
        // Both changed (a conflict), or neither differs from the base by more
        // than the TTL tolerance while they differ from each other: the rule decides.
        _ => match conflict {
            Conflict::RemoteWins => Decision::ToLocal,
            Conflict::LocalWins => Decision::ToRemote,
        },
    }
}

/// A `both` batch: read both sides, decide per key, write compare-and-set.
async fn copy_both(link: &Link, batch: &Batch) -> Result<(), SideError> {
    let local_keys: Vec<Bytes> = batch.iter().map(|(s, _)| link.local_key(s)).collect();
    let remote_keys: Vec<Bytes> = batch.iter().map(|(s, _)| link.remote_key(s)).collect();
    let read_at = Instant::now();
    let (local_states, remote_states) =
        tokio::try_join!(link.local.read(local_keys, true), link.remote.read(remote_keys, true))?;
    let now = now_ms();

    let mut to_local: Vec<(usize, WriteRecord, Observed)> = Vec::new();
    let mut to_remote: Vec<(usize, WriteRecord, Observed)> = Vec::new();
    {
        let mut base = link.lock_base();
        for (i, ((suffix, _), (l, r))) in batch.iter().zip(local_states.into_iter().zip(remote_states)).enumerate() {
            let lo = Observed::of(&l, link.replicates(&l.ty), now);
            let ro = Observed::of(&r, link.replicates(&r.ty), now);
            match decide(&lo, &ro, &base.get(suffix), link.config.conflict) {
                Decision::Equal => base.set(suffix.clone(), lo),
                Decision::ToRemote => {
                    let record = WriteRecord {
                        key: link.remote_key(suffix),
                        op: link.op_for(l),
                        expect: Some(ro.digest),
                        new_digest: lo.digest,
                        read_at: Some(read_at),
                    };
                    to_remote.push((i, record, lo));
                }
                Decision::ToLocal => {
                    let record = WriteRecord {
                        key: link.local_key(suffix),
                        op: link.op_for(r),
                        expect: Some(lo.digest),
                        new_digest: ro.digest,
                        read_at: Some(read_at),
                    };
                    to_local.push((i, record, ro));
                }
            }
        }
    }
    let (local_result, remote_result) = tokio::join!(
        write_tracked(link, &link.local, to_local, batch, false),
        write_tracked(link, &link.remote, to_remote, batch, true)
    );
    local_result.and(remote_result)
}

/// Writes `both` records to one side, telling the echo filter before and after.
async fn write_tracked(
    link: &Link,
    side: &Side,
    writes: Vec<(usize, WriteRecord, Observed)>,
    batch: &Batch,
    push: bool,
) -> Result<(), SideError> {
    if writes.is_empty() {
        return Ok(());
    }
    let server = side.server_id();
    for (_, record, _) in &writes {
        link.res.echo.begin_write(&server, &record.key);
    }
    let records: Vec<WriteRecord> = writes.iter().map(|(_, r, _)| r.clone()).collect();
    let result = write_all(link, side, records).await;
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(error) => {
            // Unknown outcome: expect no echo (a miss costs a read, never an update).
            for (i, record, _) in &writes {
                if link.res.echo.finish_write(&server, &record.key, 0).genuine > 0 {
                    let (suffix, at) = &batch[*i];
                    link.mark(suffix.clone(), *at);
                }
            }
            return Err(error);
        }
    };
    let mut written = Vec::new();
    for ((i, record, state), outcome) in writes.iter().zip(&outcomes) {
        let (suffix, at) = &batch[*i];
        let events = match outcome {
            WriteOutcome::Written { events } | WriteOutcome::Unchanged { events } => *events,
            _ => 0,
        };
        let crate::echo::Settled { genuine, echoes } = link.res.echo.finish_write(&server, &record.key, events);
        link.count_echoes(u64::from(echoes));
        if link.settle(suffix, outcome) || genuine > 0 {
            link.mark(suffix.clone(), *at);
        }
        if matches!(outcome, WriteOutcome::Written { .. } | WriteOutcome::Unchanged { .. }) {
            link.lock_base().set(suffix.clone(), *state);
            written.push(*at);
        }
    }
    link.account(push, &written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::Digest;

    fn obs(d: u64) -> Observed {
        Observed { digest: Digest(d), expires_at: None }
    }

    #[test]
    fn three_way_decisions() {
        let absent = Observed::ABSENT;
        let table: &[(Observed, Observed, Observed, Conflict, Decision)] = &[
            (obs(1), obs(1), obs(9), Conflict::RemoteWins, Decision::Equal),
            (obs(2), obs(1), obs(1), Conflict::RemoteWins, Decision::ToRemote),
            (obs(1), obs(2), obs(1), Conflict::LocalWins, Decision::ToLocal),
            (obs(2), obs(3), obs(1), Conflict::RemoteWins, Decision::ToLocal),
            (obs(2), obs(3), obs(1), Conflict::LocalWins, Decision::ToRemote),
            // A new key on one side (the base is absent) is copied over.
            (obs(2), absent, absent, Conflict::RemoteWins, Decision::ToRemote),
            // A delete on one side wins over an unchanged other side…
            (absent, obs(1), obs(1), Conflict::RemoteWins, Decision::ToRemote),
            // …and a delete on the winning side wins a conflict too.
            (obs(5), absent, obs(1), Conflict::RemoteWins, Decision::ToLocal),
            (absent, obs(5), obs(1), Conflict::LocalWins, Decision::ToRemote),
            // Without a base (first start), both present and different: the rule.
            (obs(2), obs(3), absent, Conflict::RemoteWins, Decision::ToLocal),
        ];
        for (l, r, b, rule, expected) in table {
            assert_eq!(decide(l, r, b, *rule), *expected, "local {l:?} remote {r:?} base {b:?} {rule:?}");
        }
    }

    #[test]
    fn requests_split_by_size_and_an_oversized_record_goes_alone() {
        let record = |n: usize| WriteRecord {
            key: Bytes::from_static(b"k"),
            op: WriteOp::Put(KeyState {
                ty: KeyType::Data(crate::config::DataType::String),
                pttl: -1,
                digest: Digest::ABSENT,
                items: vec![Bytes::from(vec![b'a'; n])],
            }),
            expect: None,
            new_digest: Digest::ABSENT,
            read_at: None,
        };
        let third = STAGE_THRESHOLD / 3;
        let records =
            vec![record(third), record(third), record(STAGE_THRESHOLD / 2), record(STAGE_THRESHOLD * 2), record(10)];
        let sizes: Vec<usize> = requests(records, STAGE_THRESHOLD).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
    }
}
