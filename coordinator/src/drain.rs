//! The leader's drain: writers' envelopes from the Redis stream into
//! `pg_notify`, acknowledged only after the NOTIFY committed.
//!
//! Gateways `XADD` envelopes to `{p}:writes`. The leader reads them through
//! the consumer group `relay`: first it claims (`XAUTOCLAIM`) whatever a
//! previous leader read but never acknowledged, then it reads new entries
//! (`XREADGROUP … >`). Each batch goes through a [`Notifier`] (one
//! transaction per fold-safe chunk), then is `XACK`ed and `XDEL`eted, so the
//! stream's length is the number of messages not yet in PostgreSQL — the
//! bound gateways check before adding.
//!
//! Delivery is at least once: a leader that dies between commit and ack
//! leaves entries its successor sends again. Entries are read in stream
//! order by a single consumer, so per-channel order is kept.

use crate::election::Lease;
use crate::redis_client::RedisClient;
use crate::relay::Notifier;
use pgws_protocol::keys::{KeySpace, FIELD_MESSAGE, FIELD_TRACE, WRITES_GROUP};
use prometheus::{IntGauge, Registry};
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Entries per read (NOTIFYed in as few transactions as folding allows).
const BATCH: usize = 1024;
/// How long one blocking read waits for new entries.
const BLOCK: Duration = Duration::from_millis(1000);

/// Drain metrics.
#[derive(Clone)]
pub struct DrainMetrics {
    /// Entries in the writes stream (not yet NOTIFYed).
    pub stream_length: IntGauge,
}

impl DrainMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<DrainMetrics> {
        let m = DrainMetrics {
            stream_length: IntGauge::new(
                "pgws_stream_pending",
                "Writers' messages in the Redis stream not yet sent with NOTIFY",
            )?,
        };
        registry.register(Box::new(m.stream_length.clone()))?;
        Ok(m)
    }
}

/// Why the drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// Redis failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One term's drain.
pub struct Drain {
    /// For XACK/XDEL/XLEN.
    pub redis: RedisClient,
    /// A connection without response timeout, for blocking reads.
    pub blocking: RedisClient,
    /// Key layout.
    pub keys: KeySpace,
    /// This node's consumer name.
    pub consumer: String,
    /// Sends the NOTIFYs.
    pub notifier: Notifier,
    /// This term's lease.
    pub lease: Arc<Lease>,
    /// Metrics.
    pub metrics: DrainMetrics,
}

impl Drain {
    /// Relay until `term` ends or Redis fails.
    ///
    /// The next batch is read while the current one is NOTIFYed: reading
    /// marks entries as delivered to this consumer (a successor claims them
    /// if this leader dies), and batches are still sent strictly one after
    /// the other, so order is kept.
    pub async fn run(mut self, term: CancellationToken) -> Result<(), DrainError> {
        self.ensure_group().await?;
        self.claim_abandoned(&term).await?;
        let options = StreamReadOptions::default()
            .group(WRITES_GROUP, &self.consumer)
            .count(BATCH)
            .block(BLOCK.as_millis() as usize);
        let key = self.keys.writes();
        let mut blocking = self.blocking.clone();
        let mut current: Vec<StreamId> = Vec::new();
        loop {
            let read_next = read_new(&mut blocking, &key, &options);
            let (next, relayed) = tokio::select! {
                _ = term.cancelled() => return Ok(()),
                both = async { tokio::join!(read_next, self.relay(&current)) } => both,
            };
            if !relayed? {
                return Ok(());
            }
            current = next?;
        }
    }

    async fn ensure_group(&mut self) -> Result<(), DrainError> {
        // From the start of the stream: messages written while no
        // coordinator ran are delivered by the first one.
        let created: redis::RedisResult<()> = self
            .redis
            .xgroup_create_mkstream(self.keys.writes(), WRITES_GROUP, "0")
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Take over every entry another consumer read but never acknowledged.
    async fn claim_abandoned(&mut self, term: &CancellationToken) -> Result<(), DrainError> {
        let key = self.keys.writes();
        let mut cursor = "0-0".to_string();
        loop {
            if term.is_cancelled() {
                return Ok(());
            }
            let reply: StreamAutoClaimReply = self
                .redis
                .xautoclaim_options(
                    &key,
                    WRITES_GROUP,
                    &self.consumer,
                    0,
                    &cursor,
                    StreamAutoClaimOptions::default().count(BATCH),
                )
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "claimed writes a previous leader left unacknowledged"
                );
            }
            if !self.relay(&reply.claimed).await? {
                return Ok(());
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            cursor = reply.next_stream_id;
        }
    }

    /// NOTIFY `entries`, then acknowledge and delete them. False when the
    /// term ended (lease lapsed or aborted) before they were sent.
    async fn relay(&mut self, entries: &[StreamId]) -> Result<bool, DrainError> {
        if entries.is_empty() {
            return Ok(true);
        }
        if !self.lease.valid() {
            return Ok(false);
        }
        let payloads: Vec<String> = entries
            .iter()
            .map(|e| e.get::<String>(FIELD_MESSAGE).unwrap_or_default())
            .collect();
        // One span per traced write, open while its batch is NOTIFYed.
        let _spans: Vec<tracing::Span> = if crate::telemetry::enabled() {
            entries
                .iter()
                .filter_map(|e| e.get::<String>(FIELD_TRACE))
                .map(|tp| {
                    let span = tracing::info_span!("pgws.relay", batch = entries.len());
                    crate::telemetry::set_remote_parent(&span, &tp);
                    span
                })
                .collect()
        } else {
            Vec::new()
        };
        if !self.notifier.send(&payloads).await {
            return Ok(false);
        }
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let key = self.keys.writes();
        // One round trip: acknowledge, delete, and read what is left.
        let mut pipe = redis::pipe();
        pipe.xack(&key, WRITES_GROUP, &ids)
            .ignore()
            .xdel(&key, &ids)
            .ignore()
            .xlen(&key);
        let (length,): (i64,) = pipe.query_async(&mut self.redis).await?;
        self.metrics.stream_length.set(length);
        Ok(true)
    }
}

/// The next entries no consumer of the group has read yet; waits up to
/// [`BLOCK`] for some.
async fn read_new(
    client: &mut RedisClient,
    key: &str,
    options: &StreamReadOptions,
) -> Result<Vec<StreamId>, DrainError> {
    let reply: Option<StreamReadReply> = client.xread_options(&[key], &[">"], options).await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect())
}
