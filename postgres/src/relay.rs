//! The NOTIFY relay: turns queued envelopes into `pg_notify` calls.
//!
//! `pool_size` workers each own one connection (`application_name` `pgws
//! notify`) and one bounded queue. A message goes to the worker chosen by
//! hashing its websocket channel, so messages on one channel are sent in the
//! order they were queued while channels proceed in parallel.
//!
//! A worker takes everything waiting in its queue (up to `max_batch`) and
//! sends it as one statement, `SELECT pg_notify($1, p) FROM unnest($2)`: one
//! transaction, one commit, many notifications. PostgreSQL folds identical
//! payloads on one channel within a transaction into a single notification,
//! so a batch is cut before any payload it already holds — a repeated
//! message is never swallowed.
//!
//! A lost connection is re-established with backoff and the batch retried
//! (at-least-once: a batch whose commit was in flight when the connection
//! died may be sent twice). A batch PostgreSQL rejects is retried one message
//! at a time so one bad message cannot take its neighbours down; what still
//! fails is logged and counted in `pgws_notify_errors_total`.

use crate::pg::{self, PgConfig};
use pgws_service::backoff::Backoff;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to connect.
    pub db: PgConfig,
    /// The channel every NOTIFY is sent on (`PGWS_LISTEN_CHANNEL`).
    pub listen_channel: String,
    /// Number of connections and workers (`PGWS_POOL_SIZE`).
    pub pool_size: usize,
    /// Messages each worker's queue holds before `enqueue` waits.
    pub queue_capacity: usize,
    /// Most notifications sent in one transaction.
    pub max_batch: usize,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The queue stayed full for the whole wait.
    #[error("the NOTIFY queue is full")]
    Full,
    /// The relay has shut down.
    #[error("the NOTIFY relay has stopped")]
    Closed,
}

/// The relay's metrics.
#[derive(Clone)]
pub struct RelayMetrics {
    sent: IntCounter,
    errors: IntCounter,
    batches: IntCounter,
    batch_size: Histogram,
    queue_depth: IntGauge,
    reconnects: IntCounter,
}

impl RelayMetrics {
    /// Create and register the relay's metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<RelayMetrics> {
        let sent = IntCounter::new(
            "pgws_notify_sent_total",
            "Notifications committed with pg_notify",
        )?;
        let errors = IntCounter::new(
            "pgws_notify_errors_total",
            "Messages PostgreSQL refused to NOTIFY (logged, not retried)",
        )?;
        let batches = IntCounter::new(
            "pgws_notify_batches_total",
            "Transactions that sent notifications",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("pgws_notify_batch_size", "Notifications per transaction").buckets(
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
            ),
        )?;
        let queue_depth = IntGauge::new(
            "pgws_notify_queue_depth",
            "Messages waiting to be sent with pg_notify",
        )?;
        let reconnects = IntCounter::new(
            "pgws_notify_reconnects_total",
            "Times a NOTIFY connection was lost and re-established",
        )?;
        for c in [&sent, &errors, &batches, &reconnects] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        Ok(RelayMetrics {
            sent,
            errors,
            batches,
            batch_size,
            queue_depth,
            reconnects,
        })
    }
}

/// The handle used to queue messages. Dropping every clone lets the workers
/// finish what is queued and stop.
#[derive(Clone)]
pub struct Relay {
    shards: Vec<mpsc::Sender<String>>,
    metrics: RelayMetrics,
}

impl Relay {
    /// Start `pool_size` workers. `abort` stops them even with work queued
    /// (the end of a shutdown grace period); they are in the returned set.
    pub fn start(
        config: RelayConfig,
        metrics: RelayMetrics,
        abort: CancellationToken,
    ) -> (Relay, JoinSet<()>) {
        let mut workers = JoinSet::new();
        let shards = (0..config.pool_size.max(1))
            .map(|index| {
                let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
                let notifier = Notifier::new(
                    format!("notify-{index}"),
                    config.db.clone(),
                    config.listen_channel.clone(),
                    metrics.clone(),
                    abort.clone(),
                );
                workers.spawn(notifier.run_queue(rx, config.max_batch));
                tx
            })
            .collect();
        (Relay { shards, metrics }, workers)
    }

    /// Queue `envelope` for NOTIFY, keyed by its websocket `channel`; waits up
    /// to `wait` for room.
    pub async fn enqueue(
        &self,
        channel: &str,
        envelope: String,
        wait: Duration,
    ) -> Result<(), RelayError> {
        let shard = &self.shards[shard_for(channel, self.shards.len())];
        // Count first: the worker may dequeue (and decrement) before
        // `send` even returns.
        self.metrics.queue_depth.inc();
        let sent = match shard.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RelayError::Closed),
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                match shard.send_timeout(envelope, wait).await {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(RelayError::Full),
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(RelayError::Closed),
                }
            }
        };
        if sent.is_err() {
            self.metrics.queue_depth.dec();
        }
        sent
    }
}

fn shard_for(channel: &str, shards: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() % shards as u64) as usize
}

/// The relay was told to abandon its work (the end of a shutdown grace
/// period, or the end of a leader's term).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("aborted")]
pub struct Aborted;

/// What became of one transaction.
enum Outcome {
    Sent,
    Refused(tokio_postgres::Error),
    Aborted,
}

struct Prepared {
    client: Client,
    many: Statement,
}

/// One NOTIFY connection and what it needs to send batches through it:
/// fold-safe cutting, reconnects with backoff, one-by-one retry of a batch
/// PostgreSQL refuses. Used by the relay's workers and by the cluster
/// coordinator's stream drain.
pub struct Notifier {
    name: String,
    db: PgConfig,
    listen_channel: String,
    metrics: RelayMetrics,
    abort: CancellationToken,
    connection: Option<Prepared>,
}

impl Notifier {
    /// A notifier that connects on first use. `abort` stops its retries.
    pub fn new(
        name: String,
        db: PgConfig,
        listen_channel: String,
        metrics: RelayMetrics,
        abort: CancellationToken,
    ) -> Notifier {
        Notifier {
            name,
            db,
            listen_channel,
            metrics,
            abort,
            connection: None,
        }
    }

    async fn run_queue(mut self, mut rx: mpsc::Receiver<String>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            let received = tokio::select! {
                _ = self.abort.cancelled() => 0,
                n = rx.recv_many(&mut batch, max_batch) => n,
            };
            if received == 0 {
                break; // every sender dropped and the queue is empty, or aborted
            }
            self.metrics.queue_depth.sub(received as i64);
            if self.send(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
        if !rx.is_empty() || !batch.is_empty() {
            let lost = rx.len() + batch.len();
            self.metrics.errors.inc_by(lost as u64);
            tracing::error!(
                worker = %self.name,
                lost,
                "NOTIFY relay stopped with messages still queued"
            );
        }
    }

    /// Send `batch` in order, as few transactions as PostgreSQL's folding of
    /// identical payloads allows. Returns once every message was committed
    /// (or refused by PostgreSQL, counted and logged), or when aborted.
    pub async fn send(&mut self, batch: &[String]) -> Result<(), Aborted> {
        let mut start = 0;
        while start < batch.len() {
            let end = start + fold_safe_prefix(&batch[start..]);
            let chunk = &batch[start..end];
            start = end;
            match self.transact(chunk).await {
                Outcome::Sent => continue,
                Outcome::Aborted => return Err(Aborted),
                Outcome::Refused(e) if chunk.len() == 1 => self.count_refused(&chunk[0], &e),
                Outcome::Refused(e) => {
                    tracing::warn!(worker = %self.name, error = %pg::error_chain(&e), size = chunk.len(), "PostgreSQL refused a NOTIFY batch: sending one by one");
                    for payload in chunk {
                        match self.transact(std::slice::from_ref(payload)).await {
                            Outcome::Sent => {}
                            Outcome::Aborted => return Err(Aborted),
                            Outcome::Refused(e) => self.count_refused(payload, &e),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Send `payloads` (no duplicates) in one statement, reconnecting and
    /// retrying while the connection is what fails.
    async fn transact(&mut self, payloads: &[String]) -> Outcome {
        let mut backoff = Backoff::new();
        loop {
            if !self.ensure_connected(&mut backoff).await {
                return Outcome::Aborted;
            }
            let Some(prepared) = &self.connection else {
                continue;
            };
            let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
            let params: [&(dyn ToSql + Sync); 2] = [&self.listen_channel, &refs];
            let result = tokio::select! {
                _ = self.abort.cancelled() => return Outcome::Aborted,
                r = prepared.client.execute(&prepared.many, &params) => r,
            };
            let connection_lost = prepared.client.is_closed();
            match result {
                Ok(_) => {
                    self.count_sent(payloads.len());
                    return Outcome::Sent;
                }
                Err(e) if connection_lost || e.code().is_none() => {
                    tracing::warn!(worker = %self.name, error = %pg::error_chain(&e), "NOTIFY connection lost: retrying the batch");
                    self.metrics.reconnects.inc();
                    self.connection = None;
                }
                Err(e) => return Outcome::Refused(e),
            }
        }
    }

    fn count_refused(&self, payload: &str, error: &tokio_postgres::Error) {
        self.metrics.errors.inc();
        tracing::error!(worker = %self.name, error = %pg::error_chain(error), bytes = payload.len(), "PostgreSQL refused a NOTIFY: message dropped");
    }

    fn count_sent(&self, n: usize) {
        self.metrics.sent.inc_by(n as u64);
        self.metrics.batches.inc();
        self.metrics.batch_size.observe(n as f64);
    }

    /// (Re)connect with backoff until connected. False if aborted.
    async fn ensure_connected(&mut self, backoff: &mut Backoff) -> bool {
        while self.connection.is_none() {
            let attempt = tokio::select! {
                _ = self.abort.cancelled() => return false,
                r = self.connect() => r,
            };
            match attempt {
                Ok(prepared) => self.connection = Some(prepared),
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(worker = %self.name, error = %e, retry_in_s = delay.as_secs(), "cannot connect a NOTIFY connection");
                    tokio::select! {
                        _ = self.abort.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        true
    }

    /// Connect and prepare the statement; the error is the whole reason.
    async fn connect(&self) -> Result<Prepared, String> {
        let (client, connection) = pg::connect(&self.db, pg::NOTIFY_APP_NAME)
            .await
            .map_err(|e| e.to_string())?;
        let worker = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%worker, error = %e, "NOTIFY connection ended");
            }
        });
        // A function scan over unnest yields rows in array order, so the
        // notifications are queued (and delivered) in batch order.
        let many = client
            .prepare("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)")
            .await
            .map_err(|e| pg::error_chain(&e))?;
        Ok(Prepared { client, many })
    }
}

/// Length of the longest prefix of `batch` with no repeated payload.
fn fold_safe_prefix(batch: &[String]) -> usize {
    let mut seen = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .position(|payload| !seen.insert(payload.as_str()))
        .unwrap_or(batch.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_batch_is_cut_before_a_repeated_payload() {
        assert_eq!(fold_safe_prefix(&strings(&["a", "b", "a", "c"])), 2);
        assert_eq!(fold_safe_prefix(&strings(&["a", "a"])), 1);
        assert_eq!(fold_safe_prefix(&strings(&["a", "b", "c"])), 3);
        assert_eq!(fold_safe_prefix(&[]), 0);
    }

    #[test]
    fn a_channel_always_maps_to_the_same_shard() {
        for shards in 1..8 {
            let s = shard_for("chat", shards);
            assert!(s < shards);
            assert_eq!(s, shard_for("chat", shards));
        }
    }
}
