//! One side of a link, local or remote, behind the same operations: read
//! keys, write keys, scan a namespace. Both run the same Lua scripts
//! (`scripts`), so the engine does not care which side is which.
//!
//! Remote writes are split to fit Webdis and nginx: a value whose encoded
//! form would exceed [`STAGE_THRESHOLD`] is staged in chunks under
//! `__replhub__:` (strings as raw PUT bodies, collections as encoded POSTs)
//! and then RENAMEd into place atomically by the ordinary write script.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::config::DataType;
use crate::local::{LocalError, LocalRedis};
use crate::remote::RemotePool;
use crate::resp::Value;
use crate::scripts::{
    self, BucketMask, BucketSums, KeyState, KeyType, ReplyError, ScanEntry, Script, Scripts, WriteOp, WriteOutcome,
    WriteRecord,
};
use crate::webdis::{WebdisError, codec};

/// Encoded request size above which a remote value is staged in chunks.
pub const STAGE_THRESHOLD: usize = 4 << 20;
/// Raw bytes per chunk of a staged string (sent as a PUT body).
const STRING_CHUNK: usize = 8 << 20;
/// Encoded bytes per chunk of a staged collection.
const COLLECTION_CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    Remote(#[from] WebdisError),
    #[error("{side}: {error}")]
    Reply { side: String, error: ReplyError },
}

impl SideError {
    /// Label for `replhub_errors_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            SideError::Local(e) => e.kind(),
            SideError::Remote(e) => e.kind(),
            SideError::Reply { .. } => "malformed_reply",
        }
    }
}

/// A side of a link.
#[derive(Clone)]
pub enum Side {
    Local(Arc<LocalRedis>),
    Remote(Arc<RemotePool>),
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Side {
    /// Names the side's server in messages and in the echo filter.
    pub fn server_id(&self) -> String {
        match self {
            Side::Local(l) => l.id.clone(),
            Side::Remote(r) => r.server_id(),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Side::Remote(_))
    }

    async fn eval(&self, script: &Script, keys: Vec<Bytes>, args: Vec<Bytes>) -> Result<Value, SideError> {
        match self {
            Side::Local(local) => Ok(local.eval(&script.source, keys, args).await?),
            Side::Remote(pool) => {
                let mut argv: Vec<Bytes> = Vec::with_capacity(2 + keys.len() + args.len());
                argv.push(Bytes::from(script.source.clone()));
                argv.push(Bytes::from(keys.len().to_string()));
                argv.extend(keys);
                argv.extend(args);
                Ok(pool.client().command("EVAL", &argv).await?)
            }
        }
    }

    fn reply_error(&self, error: ReplyError) -> SideError {
        SideError::Reply { side: self.server_id(), error }
    }

    /// Reads the full state of `keys` (with digests when asked).
    pub async fn read(&self, keys: Vec<Bytes>, with_digest: bool) -> Result<Vec<KeyState>, SideError> {
        let count = keys.len();
        let scripts = Scripts::get();
        let reply = self.eval(&scripts.read, keys, scripts::read_args(with_digest)).await?;
        scripts::parse_read(reply, count).map_err(|e| self.reply_error(e))
    }

    /// Applies `records`; the outcomes are in the same order. Records must fit
    /// one request together (see [`STAGE_THRESHOLD`]); a single oversized
    /// put is staged first.
    pub async fn write(
        &self,
        mut records: Vec<WriteRecord>,
        types: &[DataType],
    ) -> Result<Vec<WriteOutcome>, SideError> {
        if self.is_remote() {
            for record in &mut records {
                if record.encoded_len() > STAGE_THRESHOLD
                    && let WriteOp::Put(state) = &record.op
                    && let KeyType::Data(ty) = state.ty
                {
                    let staging_key = self.stage(ty, &state.items).await?;
                    record.op = WriteOp::Stage { staging_key, ty, pttl: state.pttl };
                }
            }
        }
        // A PTTL counts from when the source was read: take off the time since
        // (staging a large value first can take seconds).
        for record in &mut records {
            let Some(read_at) = record.read_at else { continue };
            let elapsed = i64::try_from(read_at.elapsed().as_millis()).unwrap_or(i64::MAX);
            match &mut record.op {
                WriteOp::Put(KeyState { pttl, .. }) | WriteOp::Stage { pttl, .. } if *pttl > 0 => {
                    *pttl = (*pttl - elapsed).max(1);
                }
                _ => {}
            }
        }
        let count = records.len();
        let (keys, args) = scripts::write_args(&records, types);
        let reply = self.eval(&Scripts::get().write, keys, args).await?;
        scripts::parse_write(reply, count).map_err(|e| self.reply_error(e))
    }

    /// Uploads a large value to a fresh staging key in chunks; returns its name.
    async fn stage(&self, ty: DataType, items: &[Bytes]) -> Result<Bytes, SideError> {
        let Side::Remote(pool) = self else {
            return Err(
                self.reply_error(ReplyError { script: "stage", detail: "local values are never staged".into() })
            );
        };
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let staging_key = Bytes::from(format!(
            "__replhub__:stage:{}:{:x}:{}",
            std::process::id(),
            nanos,
            STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let script = &Scripts::get().stage;
        let client = pool.client();
        let mut first = true;
        if ty == DataType::String {
            let value = items.first().cloned().unwrap_or_default();
            for start in (0..value.len().max(1)).step_by(STRING_CHUNK) {
                let chunk = value.slice(start..(start + STRING_CHUNK).min(value.len()));
                let mut url_args: Vec<Bytes> =
                    vec![Bytes::from(script.source.clone()), Bytes::from_static(b"1"), staging_key.clone()];
                url_args.extend(scripts::stage_args(first, ty));
                client.put_command("EVAL", &url_args, chunk).await?;
                first = false;
            }
        } else {
            // Collections go as encoded POSTs, in chunks of whole elements (pairs for hash and zset).
            let step = if matches!(ty, DataType::Hash | DataType::Zset) { 2 } else { 1 };
            let mut start = 0;
            while start < items.len() || first {
                let mut end = start;
                let mut size = 0;
                while end < items.len() && (size < COLLECTION_CHUNK || end == start) {
                    size += items[end..(end + step).min(items.len())]
                        .iter()
                        .map(|i| codec::pct_encoded_len(i) + 1)
                        .sum::<usize>();
                    end = (end + step).min(items.len());
                }
                let mut argv: Vec<Bytes> =
                    vec![Bytes::from(script.source.clone()), Bytes::from_static(b"1"), staging_key.clone()];
                argv.extend(scripts::stage_args(first, ty));
                argv.extend(items[start..end].iter().cloned());
                client.command("EVAL", &argv).await?;
                first = false;
                start = end;
            }
        }
        Ok(staging_key)
    }

    /// One step of a namespace scan (only keys in `mask`'s buckets).
    pub async fn scan_step(
        &self,
        cursor: &[u8],
        pattern: &[u8],
        count: usize,
        mask: &BucketMask,
    ) -> Result<(Bytes, Vec<ScanEntry>), SideError> {
        let args = scripts::scan_args(cursor, pattern, count, true, mask);
        let reply = self.eval(&Scripts::get().scan, Vec::new(), args).await?;
        scripts::parse_scan(reply).map_err(|e| self.reply_error(e))
    }

    /// One step of a bucket summary of a namespace.
    pub async fn bucket_step(
        &self,
        cursor: &[u8],
        pattern: &[u8],
        count: usize,
        types: &[DataType],
    ) -> Result<(Bytes, BucketSums), SideError> {
        let args = scripts::bucket_args(cursor, pattern, count, types);
        let reply = self.eval(&Scripts::get().buckets, Vec::new(), args).await?;
        scripts::parse_buckets(reply).map_err(|e| self.reply_error(e))
    }
}
