//! Capture: turning keyspace events on either side into dirty keys.
//!
//! Local events arrive through the server's shared subscriber
//! (`local::LocalRedis` routes them here by prefix). Remote events come from
//! a PSUBSCRIBE stream through Webdis, owned by [`run_remote_stream`], which
//! also proves the stream end to end: it subscribes to a second pattern for
//! a heartbeat key under `__replhub__:` and writes that key (with a TTL)
//! every `heartbeat.interval`. Its keyspace event shows that the stream is
//! alive and that the remote still has notifications enabled (a Redis
//! restart resets them, and Webdis's stream then hangs silently forever).
//! No heartbeat within `heartbeat.timeout`, or no response headers in that
//! time, means reconnect and resync.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Link;
use crate::backoff::Backoff;
use crate::config::Direction;
use crate::echo::Verdict;
use crate::local::{EventSink, LocalError, LostReason, Registration};
use crate::metrics::ResyncReason;
use crate::notify_flags;
use crate::webdis::codec::glob_escape;
use crate::webdis::stream::StreamMessage;

/// Longest wait for the response head of a PSUBSCRIBE.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The payload of the heartbeat's PUBLISH probe (a real keyspace event's
/// payload is an event name such as `set`).
const PROBE: &[u8] = b"replhub-probe";

/// Deadline of the small CONFIG commands on the remote.
const CONFIG_TIMEOUT: Duration = Duration::from_secs(5);

/// Receives local events for one link (weakly, so a stopped link is freed).
struct LocalSink {
    link: Weak<Link>,
}

impl EventSink for LocalSink {
    fn keys_changed(&self, keys: Vec<Bytes>) {
        let Some(link) = self.link.upgrade() else { return };
        link.on_events(true, keys);
    }

    fn events_lost(&self, reason: LostReason) {
        let Some(link) = self.link.upgrade() else { return };
        link.res.echo.forget_server(&link.local_id);
        link.request_resync(match reason {
            LostReason::Reconnect => ResyncReason::Reconnect,
            LostReason::Overflow => ResyncReason::Overflow,
        });
    }
}

/// Registers the link with its local server: event capture for push and
/// both links, reconnect notices for all.
pub(super) async fn register_local(link: &Arc<Link>) -> Result<Registration, LocalError> {
    let crate::side::Side::Local(server) = &link.local else {
        unreachable!("the local side of a link is always local")
    };
    let direction = link.config.direction;
    let capture = matches!(direction, Direction::Push | Direction::Both).then(|| link.config.local.prefix.clone());
    let sink = Arc::new(LocalSink { link: Arc::downgrade(link) });
    let (registration, warning) = server.register(capture, notify_flags::local_needed(direction), sink).await?;
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    Ok(registration)
}

impl Link {
    /// Events for `keys` (full keys) on the local (`local == true`) or remote side.
    pub(super) fn on_events(&self, local: bool, keys: impl IntoIterator<Item = Bytes>) {
        let prefix = if local { &self.config.local.prefix } else { &self.config.remote.prefix };
        let server = if local { &self.local_id } else { &self.remote_id };
        let both = self.config.direction == Direction::Both;
        let mut dirty = Vec::new();
        for key in keys {
            let Some(suffix) = key.strip_prefix(prefix.as_slice()) else { continue };
            let suffix = key.slice_ref(suffix);
            if both {
                match self.res.echo.on_event(server, &key) {
                    Verdict::Echo => {
                        self.count_echoes(1);
                        continue;
                    }
                    Verdict::HeldBack => continue,
                    Verdict::Genuine => {}
                }
            }
            dirty.push(suffix);
        }
        self.mark_all(dirty, Instant::now());
    }

    fn heartbeat_key(&self) -> Bytes {
        Bytes::from(format!("__replhub__:hb:{}:{}", self.config.name, std::process::id()))
    }

    /// Makes sure the remote has the flags this link needs. When CONFIG is
    /// refused (or the remote is down) it says so once per link, not at
    /// every reconnect attempt.
    async fn ensure_remote_flags(&self) {
        let Some(needed) = notify_flags::remote_needed(self.config.direction) else { return };
        let client = self.remote_pool.client();
        let problem = match client.command_within("CONFIG", &["GET", "notify-keyspace-events"], CONFIG_TIMEOUT).await {
            Ok(crate::resp::Value::Array(items)) => {
                let current = items
                    .get(1)
                    .and_then(|v| v.as_bytes())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                match notify_flags::merged(&current, &needed) {
                    None => None,
                    Some(flags) => match client
                        .command_within("CONFIG", &["SET", "notify-keyspace-events", flags.as_str()], CONFIG_TIMEOUT)
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(from = %current, to = %flags, "enabled keyspace notifications on the remote");
                            None
                        }
                        Err(error) => Some(format!("cannot set the remote's notify-keyspace-events ({error})")),
                    },
                }
            }
            Ok(other) => Some(format!("unexpected reply to CONFIG GET notify-keyspace-events: {}", other.describe())),
            Err(error) => Some(format!("cannot read the remote's notify-keyspace-events ({error})")),
        };
        match problem {
            Some(problem) if !self.flags_warned.swap(true, std::sync::atomic::Ordering::Relaxed) => tracing::warn!(
                "{problem}; the remote Redis must have at least the flags \"{needed}\" (e.g. in its redis.conf); the heartbeat shows whether events arrive"
            ),
            Some(problem) => tracing::debug!("{problem}"),
            None => {}
        }
    }

    /// Writes the heartbeat key through Webdis (EVAL, which a safe ACL allows).
    /// Writes the heartbeat key and, in the same script, PUBLISHes a probe
    /// on the key's own keyspace channel. The probe is not the heartbeat
    /// (only the real keyspace event proves that notifications are on), but
    /// PUBLISH says how many subscribers got it: 0 means this stream's
    /// subscription is gone from the remote Redis (it restarted, or dropped
    /// Webdis's pub/sub connection) although the stream stays open, silent.
    async fn beat(&self, key: &Bytes, channel: &Bytes, ttl: Duration) -> Result<i64, crate::webdis::WebdisError> {
        let script =
            "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return redis.call('PUBLISH', ARGV[3], ARGV[4])";
        let stamp = super::base::now_ms().to_string();
        let ttl_ms = ttl.as_millis().to_string();
        let args: [&[u8]; 7] = [script.as_bytes(), b"1", key, stamp.as_bytes(), ttl_ms.as_bytes(), channel, PROBE];
        let reply = self.remote_pool.client().command_within("EVAL", &args, ttl / 2).await?;
        Ok(reply.as_integer().unwrap_or(0))
    }
}

/// Why a stream ended.
enum StreamEnd {
    Cancelled,
    /// Reconnect; the resync after it runs for this reason.
    Reconnect(ResyncReason, String),
}

/// Owns the remote event stream of a pull or both link: connect, read,
/// heartbeat, reconnect — until the link stops. Each new stream, once its
/// first heartbeat proves it works, asks for the resync that covers what
/// happened without it: `startup` the first time, then the reason the
/// previous stream ended.
pub(super) async fn run_remote_stream(link: Arc<Link>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut resync_reason = ResyncReason::Startup;
    loop {
        link.ensure_remote_flags().await;
        let opened = tokio::time::Instant::now();
        match stream_once(&link, resync_reason).await {
            StreamEnd::Cancelled => return,
            StreamEnd::Reconnect(reason, error) => {
                tracing::warn!(%error, "the remote event stream is down; reconnecting");
                link.status.set_stream_ok(false, Some(error));
                link.res.echo.forget_server(&link.remote_id);
                // Only a stream that never confirmed keeps the earlier reason (e.g. startup).
                if link.stream_confirmed_since(opened) {
                    resync_reason = reason;
                }
                if link.stream_confirmed_since(opened) && opened.elapsed() > link.config.heartbeat.timeout * 2 {
                    backoff.reset();
                }
                if !link.sleep(backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

async fn stream_once(link: &Arc<Link>, resync_reason: ResyncReason) -> StreamEnd {
    let heartbeat = link.config.heartbeat;
    let db = link.config.remote.db;
    let channel_prefix = format!("__keyspace@{db}__:").into_bytes();
    let hb_key = link.heartbeat_key();
    let mut namespace = channel_prefix.clone();
    namespace.extend_from_slice(&glob_escape(&link.config.remote.prefix));
    namespace.push(b'*');
    let mut hb_pattern = channel_prefix.clone();
    hb_pattern.extend_from_slice(&glob_escape(&hb_key));
    let hb_channel = super::concat(&channel_prefix, &hb_key);

    let pool_generation = link.remote_pool.generation();
    let client = link.remote_pool.client();
    let patterns = [namespace, hb_pattern];
    // Response headers come within milliseconds from a working Webdis; one
    // that got the request while its Redis was unreachable never answers.
    let subscribe = client.subscribe(&patterns, heartbeat.timeout.min(SUBSCRIBE_TIMEOUT));
    let mut stream = tokio::select! {
        result = subscribe => match result {
            Ok(stream) => stream,
            Err(error) => {
                link.count_error(error.kind());
                return StreamEnd::Reconnect(ResyncReason::Reconnect, format!("cannot subscribe: {error}"));
            }
        },
        _ = link.cancel.cancelled() => return StreamEnd::Cancelled,
    };

    let mut ticker = tokio::time::interval(heartbeat.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut last_beat: Option<tokio::time::Instant> = None;
    loop {
        let deadline = last_beat.unwrap_or(started) + heartbeat.timeout;
        tokio::select! {
            message = stream.next_message() => match message {
                Ok(StreamMessage::Event { channel, payload, .. }) => {
                    if channel == hb_channel && payload.as_ref() == PROBE {
                        // Only proves the subscription exists; see `beat`.
                    } else if channel == hb_channel {
                        if last_beat.is_none() {
                            link.note_stream_confirmed();
                            link.status.set_stream_ok(true, None);
                            link.request_resync(resync_reason);
                        }
                        last_beat = Some(tokio::time::Instant::now());
                    } else if let Some(key) = channel.strip_prefix(channel_prefix.as_slice()) {
                        link.on_events(false, [channel.slice_ref(key)]);
                    }
                }
                Ok(StreamMessage::Subscribed { .. }) => {}
                Err(error) => {
                    link.count_error("stream");
                    return StreamEnd::Reconnect(ResyncReason::Reconnect, error.to_string());
                }
            },
            _ = ticker.tick() => {
                if link.remote_pool.generation() != pool_generation {
                    return StreamEnd::Reconnect(ResyncReason::Reconnect, "the client certificate changed; re-establishing the stream".to_string());
                }
                // A heartbeat the remote refuses will not come back on the
                // stream either, and whatever broke (Webdis or its Redis
                // restarting) has most likely left the stream silent: start
                // over at once rather than wait for the heartbeat timeout.
                match link.beat(&hb_key, &hb_channel, heartbeat.timeout * 2).await {
                    Ok(0) => {
                        link.count_error("heartbeat_unsubscribed");
                        return StreamEnd::Reconnect(
                            ResyncReason::Heartbeat,
                            "the remote Redis no longer has this stream's subscription (it restarted or dropped Webdis's pub/sub connection)".to_string(),
                        );
                    }
                    Ok(_) => {}
                    Err(error) => {
                        link.count_error(error.kind());
                        return StreamEnd::Reconnect(ResyncReason::Heartbeat, format!("the heartbeat write failed: {error}"));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                link.count_error("heartbeat_timeout");
                let why = if last_beat.is_none() {
                    format!(
                        "no heartbeat event within {:?} of subscribing: events do not arrive (does the remote Redis have notify-keyspace-events with at least \"Kg$lshzxet\"?)",
                        heartbeat.timeout
                    )
                } else {
                    format!("no heartbeat event for {:?}: the stream is stuck", heartbeat.timeout)
                };
                return StreamEnd::Reconnect(ResyncReason::Heartbeat, why);
            }
            _ = link.cancel.cancelled() => return StreamEnd::Cancelled,
        }
    }
}
