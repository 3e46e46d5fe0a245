//! Resync: compare both namespaces by digest and mark what differs.
//!
//! Runs at start, after every reconnect of either side, after a heartbeat
//! loss or a dirty-set overflow, and every `resync_interval`. It scans the
//! source side into memory (key → type, TTL, digest), then streams the
//! other side's scan against it, so only keys and 8-byte digests travel,
//! never values, and only one side is held in memory. Differing keys are
//! marked dirty and the copier does the rest (re-reading the source, so
//! changes during the scan are never undone).
//!
//! Before marking, deletions are counted: a resync that would delete more
//! than `max_delete_fraction` of the destination namespace (say, after the
//! local Redis restarted empty) is refused: its deletions are not made and
//! the link reports not-up with the numbers and how to allow it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Link;
use super::base::{Observed, now_ms};
use super::copy::{Decision, decide};
use crate::config::Direction;
use crate::metrics::ResyncReason;
use crate::scripts::{BucketMask, BucketSums, KeyType};
use crate::side::{Side, SideError};
use crate::webdis::codec::glob_escape;

/// Keys per SCAN step.
const SCAN_COUNT: usize = 1000;

/// One side's view of a key during a resync.
#[derive(Clone, Copy, Debug)]
struct Seen {
    observed: Observed,
    /// A type the link does not replicate: never touched on the destination.
    foreign: bool,
}

fn pattern(prefix: &[u8]) -> Vec<u8> {
    let mut pattern = glob_escape(prefix);
    pattern.push(b'*');
    pattern
}

/// Sums a whole namespace by bucket (see `buckets.lua`).
async fn summarize(link: &Link, side: &Side, prefix: &[u8]) -> Result<BucketSums, SideError> {
    let pattern = pattern(prefix);
    let mut sums = BucketSums::default();
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let (next, step) = side.bucket_step(&cursor, &pattern, SCAN_COUNT, &link.config.types).await?;
        sums.add(&step);
        if next.as_ref() == b"0" || link.cancel.is_cancelled() {
            return Ok(sums);
        }
        cursor = next;
    }
}

/// Scans the keys of a namespace in `mask`'s buckets, calling `visit(suffix, seen)` for each.
async fn scan(
    link: &Link,
    side: &Side,
    prefix: &[u8],
    mask: &BucketMask,
    mut visit: impl FnMut(Bytes, Seen),
) -> Result<(), SideError> {
    let pattern = pattern(prefix);
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let (next, entries) = side.scan_step(&cursor, &pattern, SCAN_COUNT, mask).await?;
        let now = now_ms();
        for entry in entries {
            let Some(suffix) = entry.key.strip_prefix(prefix) else { continue };
            let suffix = entry.key.slice_ref(suffix);
            let foreign = match &entry.ty {
                KeyType::Data(t) => !link.config.replicates(*t),
                KeyType::None => continue,
                KeyType::Other(name) => {
                    link.warn_type_once(name);
                    true
                }
            };
            let observed = if foreign { Observed::ABSENT } else { Observed::from_parts(entry.digest, entry.pttl, now) };
            visit(suffix, Seen { observed, foreign });
        }
        if next.as_ref() == b"0" {
            return Ok(());
        }
        if link.cancel.is_cancelled() {
            return Ok(());
        }
        cursor = next;
    }
}

/// What a resync found and decided.
#[derive(Debug, Default)]
struct Plan {
    marks: Vec<Bytes>,
    /// Keys whose marking would delete them on the local / remote side.
    deletes_local: Vec<Bytes>,
    deletes_remote: Vec<Bytes>,
    /// Keys of a replicated type on each side (the namespace sizes).
    local_keys: usize,
    remote_keys: usize,
    /// Keys equal on both sides (for `both`: they become the base).
    equal: Vec<(Bytes, Observed)>,
}

pub(super) async fn resync(link: &Link, reason: ResyncReason) -> Result<(), SideError> {
    let started = Instant::now();
    let _slot = link.remote_pool.resync_slots.acquire().await;
    link.status.set_synced(false);
    tracing::info!(reason = reason.label(), "resync started");

    let direction = link.config.direction;
    let both = direction == Direction::Both;
    // Push and pull links first compare bucket sums: an unchanged namespace
    // ends here, and otherwise only keys in differing buckets are listed.
    // Both links list every key, since their base needs every equal key too.
    let (mask, sizes): (BucketMask, Option<(usize, usize)>) = if both {
        (None, None)
    } else {
        let (local_sums, remote_sums) = tokio::try_join!(
            summarize(link, &link.local, &link.config.local.prefix),
            summarize(link, &link.remote, &link.config.remote.prefix)
        )?;
        let differing = local_sums.differing(&remote_sums);
        if !differing.contains(&true) {
            link.status.set_refusal(None);
            link.status.set_synced(true);
            tracing::info!(
                reason = reason.label(),
                local_keys = local_sums.keys,
                remote_keys = remote_sums.keys,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "resync done: both namespaces are equal"
            );
            return Ok(());
        }
        (Some(differing), Some((local_sums.keys, remote_sums.keys)))
    };

    let mut local: HashMap<Bytes, Seen> = HashMap::new();
    scan(link, &link.local, &link.config.local.prefix, &mask, |suffix, seen| {
        local.insert(suffix, seen);
    })
    .await?;
    let mut plan = Plan { local_keys: local.values().filter(|s| !s.foreign).count(), ..Plan::default() };
    let mut seen_keys: HashSet<Bytes> = HashSet::new();
    scan(link, &link.remote, &link.config.remote.prefix, &mask, |suffix, remote| {
        if !remote.foreign {
            plan.remote_keys += 1;
        }
        let local_seen = local.remove(&suffix).unwrap_or(Seen { observed: Observed::ABSENT, foreign: false });
        if both {
            seen_keys.insert(suffix.clone());
        }
        classify(link, &mut plan, suffix, local_seen, remote);
    })
    .await?;
    for (suffix, local_seen) in local.drain() {
        if both {
            seen_keys.insert(suffix.clone());
        }
        classify(link, &mut plan, suffix, local_seen, Seen { observed: Observed::ABSENT, foreign: false });
    }

    // Namespace sizes for the deletion guard: from the bucket sums when only
    // some buckets were listed.
    if let Some((local_keys, remote_keys)) = sizes {
        plan.local_keys = local_keys;
        plan.remote_keys = remote_keys;
    }
    if refusal(link, &plan).is_some() {
        // The two scans are not one snapshot: a key created at the source
        // after its scan, and copied before the destination's, looks like a
        // deletion. Before refusing, ask the source again.
        plan.deletes_remote = still_absent(link, &link.local, &link.config.local.prefix, plan.deletes_remote).await?;
        plan.deletes_local = still_absent(link, &link.remote, &link.config.remote.prefix, plan.deletes_local).await?;
    }
    let refusal = refusal(link, &plan);
    if let Some(message) = &refusal {
        tracing::error!("{message}");
        link.count_error("delete_fraction");
    }
    link.status.set_refusal(refusal.clone());
    let skip: HashSet<Bytes> = if refusal.is_some() {
        plan.deletes_local.iter().chain(plan.deletes_remote.iter()).cloned().collect()
    } else {
        HashSet::new()
    };

    if both {
        let mut base = link.lock_base();
        for (suffix, observed) in plan.equal.drain(..) {
            base.set(suffix, observed);
        }
        // Keys gone from both sides leave the base.
        let stale: Vec<Bytes> = base.keys().filter(|k| !seen_keys.contains(*k)).cloned().collect();
        for key in stale {
            base.set(key, Observed::ABSENT);
        }
    }
    // Hand the differences to the copier a slice at a time, waiting while
    // its queue is half full: a resync of a large namespace must not
    // overflow the dirty set (which would only start another resync).
    let now = Instant::now();
    let mut marked = 0;
    for suffix in plan.marks {
        if skip.contains(&suffix) {
            continue;
        }
        while link.lock_dirty().waiting() >= super::DIRTY_CAPACITY / 2 {
            if !link.sleep(Duration::from_millis(10)).await {
                return Ok(());
            }
        }
        link.mark(suffix, now);
        marked += 1;
    }
    link.status.set_synced(true);
    tracing::info!(
        reason = reason.label(),
        local_keys = plan.local_keys,
        remote_keys = plan.remote_keys,
        differing = marked,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "resync done"
    );
    Ok(())
}

/// The keys (suffixes) that `side` still lacks (no key of a replicated type).
async fn still_absent(link: &Link, side: &Side, prefix: &[u8], suffixes: Vec<Bytes>) -> Result<Vec<Bytes>, SideError> {
    let mut absent = Vec::with_capacity(suffixes.len());
    for chunk in suffixes.chunks(1000) {
        let keys: Vec<Bytes> = chunk.iter().map(|s| super::concat(prefix, s)).collect();
        let states = side.read(keys, false).await?;
        for (suffix, state) in chunk.iter().zip(states) {
            let replicated = matches!(state.ty, KeyType::Data(t) if link.config.replicates(t));
            if !replicated {
                absent.push(suffix.clone());
            }
        }
    }
    Ok(absent)
}

/// Decides what one key needs, from both sides' view of it.
fn classify(link: &Link, plan: &mut Plan, suffix: Bytes, local: Seen, remote: Seen) {
    let (l, r) = (local.observed, remote.observed);
    match link.config.direction {
        Direction::Push => {
            if remote.foreign || l.same(&r) {
                return;
            }
            if l.is_absent() {
                plan.deletes_remote.push(suffix.clone());
            }
            plan.marks.push(suffix);
        }
        Direction::Pull => {
            if local.foreign || l.same(&r) {
                return;
            }
            if r.is_absent() {
                plan.deletes_local.push(suffix.clone());
            }
            plan.marks.push(suffix);
        }
        Direction::Both => {
            let base = link.lock_base().get(&suffix);
            match decide(&l, &r, &base, link.config.conflict) {
                Decision::Equal => plan.equal.push((suffix, l)),
                Decision::ToRemote => {
                    if remote.foreign {
                        return;
                    }
                    if l.is_absent() {
                        plan.deletes_remote.push(suffix.clone());
                    }
                    plan.marks.push(suffix);
                }
                Decision::ToLocal => {
                    if local.foreign {
                        return;
                    }
                    if r.is_absent() {
                        plan.deletes_local.push(suffix.clone());
                    }
                    plan.marks.push(suffix);
                }
            }
        }
    }
}

/// The refusal message when the plan deletes too much of a side.
fn refusal(link: &Link, plan: &Plan) -> Option<String> {
    let fraction = link.config.max_delete_fraction;
    let check = |side: &str, deletes: &[Bytes], size: usize, other: &str| {
        if deletes.is_empty() || size == 0 || (deletes.len() as f64) <= fraction * size as f64 {
            return None;
        }
        let examples: Vec<String> = deletes.iter().take(3).map(|k| crate::resp::printable(k, 60)).collect();
        Some(format!(
            "resync refused: it would delete {} of the {} keys in the {side} namespace (more than max_delete_fraction {fraction}), because the {other} side lacks them (e.g. {}). If that is intended (the keys really were deleted, or the {other} Redis was emptied on purpose), raise max_delete_fraction for this link (up to 1.0) and reload; otherwise restore the {other} data. Other changes are still replicated.",
            deletes.len(),
            size,
            examples.join(", "),
        ))
    };
    check("remote", &plan.deletes_remote, plan.remote_keys, "local")
        .or_else(|| check("local", &plan.deletes_local, plan.local_keys, "remote"))
}
