//! The leader's forwarder: writers' envelopes from the Redis stream into
//! `pg_notify`, removed from the stream only after the NOTIFY committed.
//!
//! Gateways `XADD` envelopes to `{p}:writes`; the stream holds exactly the
//! messages not yet in PostgreSQL, and its length is the bound gateways
//! check before adding. The leader reads it from the start with plain
//! `XREAD` (a term begins with whatever a previous leader left), NOTIFYs
//! each batch (one transaction per fold-safe chunk), then trims everything
//! up to the batch's last entry with one `XTRIM MINID`. No consumer group:
//! a single reader per term needs no pending-entries list, and dropping it
//! removes two writes per message from Redis (the group's pending entry and
//! its acknowledgement) and the per-entry `XDEL` — measured in
//! `docs/benchmarks.md`.
//!
//! The next batch is read while the current one is NOTIFYed; batches are
//! still sent strictly one after the other, so stream order (and with it
//! each socket's order) is kept. Every NOTIFY comes back through the
//! leader's own LISTEN to be republished, so a batch waits while the
//! publisher is far behind: a backlog of writes drains at the speed Redis
//! takes the republishing, instead of overflowing the publisher's queue. Delivery is at least once: a leader that
//! dies between commit and trim leaves entries its successor sends again.

use crate::election::Lease;
use crate::publisher::Backlog;
use pgws_postgres::relay::Notifier;
use pgws_protocol::keys::{KeySpace, FIELD_MESSAGE, FIELD_TRACE};
use pgws_service::redis_client::RedisClient;
use prometheus::{IntGauge, Registry};
use redis::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries per read (NOTIFYed in as few transactions as folding allows).
const BATCH: usize = 1024;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// NOTIFY no further batch while the publisher has more than this many
/// notifications queued: what the drain sends comes back through the
/// listener, and must not overflow the publisher's queue.
const PUBLISH_BACKLOG_LIMIT: usize = 16_384;

/// Forwarder metrics.
#[derive(Clone)]
pub struct ForwarderMetrics {
    /// Entries in the writes stream (not yet NOTIFYed).
    pub stream_length: IntGauge,
}

impl ForwarderMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<ForwarderMetrics> {
        let m = ForwarderMetrics {
            stream_length: IntGauge::new(
                "pgws_stream_pending",
                "Writers' messages in the Redis stream not yet sent with NOTIFY",
            )?,
        };
        registry.register(Box::new(m.stream_length.clone()))?;
        Ok(m)
    }
}

/// Why the forwarder stopped.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// Redis failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something that is not a stream read.
    #[error("unexpected reply to XREAD: {0}")]
    Reply(String),
}

/// One writer's message read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stream id, `<ms>-<seq>`.
    pub id: String,
    /// The envelope to NOTIFY.
    pub message: String,
    /// The writer's traceparent, when traced.
    pub trace: Option<String>,
}

/// One term's forwarder.
pub struct Forwarder {
    /// For the trim.
    pub redis: RedisClient,
    /// A connection without response timeout, for blocking reads.
    pub blocking: RedisClient,
    /// Key layout.
    pub keys: KeySpace,
    /// Sends the NOTIFYs.
    pub notifier: Notifier,
    /// This term's lease.
    pub lease: Arc<Lease>,
    /// The publisher's queue, for back-pressure.
    pub backlog: Arc<Backlog>,
    /// Metrics.
    pub metrics: ForwarderMetrics,
}

impl Forwarder {
    /// Relay until `term` ends or Redis fails.
    pub async fn run(mut self, term: CancellationToken) -> Result<(), ForwarderError> {
        let key = self.keys.writes();
        let mut blocking = self.blocking.clone();
        let mut current: Vec<Entry> = Vec::new();
        // From the start: what a previous leader read but never trimmed is
        // sent again (at least once).
        let mut cursor = "0-0".to_string();
        loop {
            let read_next = read_after(&mut blocking, &key, &cursor);
            let (next, relayed) = tokio::select! {
                _ = term.cancelled() => return Ok(()),
                both = async { tokio::join!(read_next, self.relay(std::mem::take(&mut current))) } => both,
            };
            if !relayed? {
                return Ok(());
            }
            current = next?;
            if let Some(last) = current.last() {
                cursor.clone_from(&last.id);
            }
        }
    }

    /// NOTIFY `entries`, then trim them from the stream. False when the
    /// term ended (lease lapsed or aborted) before they were sent.
    async fn relay(&mut self, entries: Vec<Entry>) -> Result<bool, ForwarderError> {
        let Some(trim_from) = entries.last().map(|last| id_after(&last.id)) else {
            return Ok(true);
        };
        self.backlog.below(PUBLISH_BACKLOG_LIMIT).await;
        if !self.lease.valid() {
            return Ok(false);
        }
        // One span per traced write, open while its batch is NOTIFYed.
        let _spans: Vec<tracing::Span> = if pgws_service::telemetry::enabled() {
            entries
                .iter()
                .filter_map(|e| e.trace.as_deref())
                .map(|tp| {
                    let span = tracing::info_span!("pgws.relay", batch = entries.len());
                    pgws_service::telemetry::set_remote_parent(&span, tp);
                    span
                })
                .collect()
        } else {
            Vec::new()
        };
        // The envelopes move into the batch: no copy per message.
        let payloads: Vec<String> = entries
            .into_iter()
            .map(|e| e.message)
            .filter(|m| !m.is_empty())
            .collect();
        if self.notifier.send(&payloads).await.is_err() {
            return Ok(false);
        }
        // One round trip: drop everything up to and including the batch's
        // last entry, and read what is left.
        let key = self.keys.writes();
        let mut pipe = redis::pipe();
        pipe.cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg(trim_from)
            .ignore()
            .cmd("XLEN")
            .arg(&key);
        let (length,): (i64,) = pipe.query_async(&mut self.redis).await?;
        self.metrics.stream_length.set(length);
        Ok(true)
    }
}

/// Up to [`BATCH`] entries after `cursor`; waits up to [`BLOCK`] for some.
async fn read_after(
    client: &mut RedisClient,
    key: &str,
    cursor: &str,
) -> Result<Vec<Entry>, ForwarderError> {
    let reply: Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(cursor)
        .query_async(client)
        .await?;
    entries_of(reply)
}

/// The smallest stream id greater than `id` (`XTRIM MINID` keeps ids ≥ it).
fn id_after(id: &str) -> String {
    match id.split_once('-') {
        Some((ms, seq)) => match seq.parse::<u64>() {
            Ok(seq) if seq < u64::MAX => format!("{ms}-{}", seq + 1),
            _ => format!("{}-0", ms.parse::<u64>().unwrap_or(0).saturating_add(1)),
        },
        None => format!("{id}-1"),
    }
}

/// The entries of an `XREAD` reply, in order, taken straight from the
/// reply (no map per entry). An entry without an envelope (gateways never
/// write one) comes out with an empty message, which is not NOTIFYed.
pub fn entries_of(reply: Value) -> Result<Vec<Entry>, ForwarderError> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP3: { key => entries }; RESP2: [[key, entries]].
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        other => return Err(ForwarderError::Reply(format!("{other:?}"))),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(entries) = stream else {
            return Err(ForwarderError::Reply("entries are not an array".into()));
        };
        out.reserve(entries.len());
        for entry in entries {
            out.push(entry_of(entry)?);
        }
    }
    Ok(out)
}

fn entry_of(entry: Value) -> Result<Entry, ForwarderError> {
    let Value::Array(parts) = entry else {
        return Err(ForwarderError::Reply("an entry is not an array".into()));
    };
    let mut parts = parts.into_iter();
    let id = parts
        .next()
        .and_then(text)
        .ok_or_else(|| ForwarderError::Reply("entry without id".into()))?;
    let fields: Vec<Value> = match parts.next() {
        Some(Value::Array(fields)) => fields,
        Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    };
    let (mut message, mut trace) = (String::new(), None);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match text(name).as_deref() {
            Some(FIELD_MESSAGE) => message = text(value).unwrap_or_default(),
            Some(FIELD_TRACE) => trace = text(value),
            _ => {}
        }
    }
    Ok(Entry { id, message, trace })
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn the_next_id_is_just_past_the_last() {
        assert_eq!(id_after("1700000000000-0"), "1700000000000-1");
        assert_eq!(id_after("5-41"), "5-42");
        assert_eq!(id_after(&format!("5-{}", u64::MAX)), "6-0");
    }

    #[test]
    fn entries_come_out_in_order_from_either_protocol() {
        let entries = Value::Array(vec![
            entry("1-0", &[("c", "chat"), ("m", "one")]),
            entry(
                "1-1",
                &[("c", "chat"), ("m", "two"), ("t", "00-abc-def-01")],
            ),
        ]);
        let resp3 = Value::Map(vec![(bulk("{p}:writes"), entries.clone())]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("{p}:writes"), entries])]);
        for reply in [resp3, resp2] {
            let got = entries_of(reply).expect("entries");
            assert_eq!(
                got,
                vec![
                    Entry {
                        id: "1-0".into(),
                        message: "one".into(),
                        trace: None
                    },
                    Entry {
                        id: "1-1".into(),
                        message: "two".into(),
                        trace: Some("00-abc-def-01".into())
                    },
                ]
            );
        }
        assert!(entries_of(Value::Nil).expect("nil").is_empty());
        assert!(entries_of(Value::Int(3)).is_err());
    }
}
