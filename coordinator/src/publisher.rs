//! The leader's republisher: every notification from the listener goes to
//! the Redis pub/sub channel of its websocket channel, stamped with the
//! leader's epoch and a sequence number (`pgws_protocol::bus`).
//!
//! The listener hands notifications over with a non-blocking `try_send`
//! into a bounded queue; one task drains it in batches, pipelining the
//! `PUBLISH`es (`SPUBLISH` on a cluster). The lease is checked before every
//! batch: a leader whose lease lapsed publishes nothing.

use crate::election::Lease;
use pgws_postgres::listener::{Notification, NotificationSink};
use pgws_protocol::keys::KeySpace;
use pgws_protocol::{clock, republish, routing};
use pgws_service::events::RateLimit;
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, Registry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Most notifications published in one pipeline.
const BATCH: usize = 256;
/// Notifications waiting to be published before new ones are dropped.
const QUEUE: usize = 65_536;

/// Publisher metrics.
#[derive(Clone)]
pub struct PublisherMetrics {
    published: IntCounter,
    dropped: IntCounter,
    /// The log side of `dropped` (per notification: rate-limited).
    drop_log: Arc<RateLimit>,
}

/// Why notifications were not republished.
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The queue from the listener was full.
    QueueFull,
    /// The leader's lease ran out.
    LeaseLapsed,
    /// Redis refused or failed.
    RedisFailed,
    /// Redis did not answer in time.
    RedisTimedOut,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Dropped::QueueFull => "the publish queue is full",
            Dropped::LeaseLapsed => "the lease lapsed",
            Dropped::RedisFailed => "publishing to Redis failed",
            Dropped::RedisTimedOut => "publishing to Redis timed out",
        }
    }
}

impl PublisherMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<PublisherMetrics> {
        let m = PublisherMetrics {
            published: IntCounter::new(
                "pgws_notifications_published_total",
                "Notifications republished on Redis",
            )?,
            dropped: IntCounter::new(
                "pgws_notifications_dropped_total",
                "Notifications not republished (queue full, Redis error, or lease lapsed)",
            )?,
            drop_log: Arc::new(RateLimit::default()),
        };
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        Ok(m)
    }

    /// `n` notifications were not republished: counted, and logged at
    /// most once a second with the running total.
    pub fn dropped(&self, n: usize, why: Dropped, detail: Option<&dyn std::fmt::Display>) {
        self.dropped.inc_by(n as u64);
        if self.drop_log.allow() {
            let total = self.dropped.get();
            match detail {
                Some(detail) => {
                    tracing::warn!(dropped = n, total, error = %detail, "{}: notifications dropped", why.reason())
                }
                None => tracing::warn!(
                    dropped = n,
                    total,
                    "{}: notifications dropped",
                    why.reason()
                ),
            }
        }
    }
}

/// The listener's sink in cluster mode.
pub struct PublisherSink {
    queue: mpsc::Sender<Notification>,
    metrics: PublisherMetrics,
}

/// How far the publisher is behind the listener. The forwarder waits on it
/// before each NOTIFY batch, so the leader's own writes never overflow the
/// queue (only a burst of NOTIFYs from elsewhere in the database can).
pub struct Backlog {
    queue: mpsc::Sender<Notification>,
    published: Notify,
}

impl Backlog {
    /// Notifications queued and not yet published.
    pub fn pending(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Resolves once at most `limit` notifications are queued.
    pub async fn below(&self, limit: usize) {
        loop {
            // Created before the check: a batch published in between still
            // wakes us.
            let published = self.published.notified();
            if self.pending() <= limit {
                return;
            }
            published.await;
        }
    }
}

impl NotificationSink for PublisherSink {
    fn deliver(&self, notification: Notification) {
        if self.queue.try_send(notification).is_err() {
            self.metrics.dropped(1, Dropped::QueueFull, None);
        }
    }
}

/// What one term's publisher needs.
pub struct Publisher {
    /// Redis.
    pub redis: RedisClient,
    /// Key layout.
    pub keys: KeySpace,
    /// The listen channel (routing fallback).
    pub listen_channel: String,
    /// This term's epoch.
    pub epoch: u64,
    /// This term's lease.
    pub lease: Arc<Lease>,
    /// Metrics.
    pub metrics: PublisherMetrics,
}

/// A started publisher.
pub struct Publishing {
    /// Where the listener hands notifications over.
    pub sink: Arc<PublisherSink>,
    /// How far behind it is (the forwarder waits on it).
    pub backlog: Arc<Backlog>,
    /// The task publishing until the term ends.
    pub task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Start publishing what the sink receives until `term` ends.
    pub fn start(self, term: CancellationToken) -> Publishing {
        let (tx, rx) = mpsc::channel(QUEUE);
        let backlog = Arc::new(Backlog {
            queue: tx.clone(),
            published: Notify::new(),
        });
        let sink = Arc::new(PublisherSink {
            queue: tx,
            metrics: self.metrics.clone(),
        });
        Publishing {
            sink,
            backlog: backlog.clone(),
            task: tokio::spawn(self.run(rx, backlog, term)),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Notification>,
        backlog: Arc<Backlog>,
        term: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut seq = 0u64;
        loop {
            let n = tokio::select! {
                _ = term.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                return;
            }
            if !self.lease.valid() {
                self.metrics.dropped(n, Dropped::LeaseLapsed, None);
                batch.clear();
                continue;
            }
            let commands: Vec<redis::Cmd> = batch
                .iter()
                .map(|notification| {
                    seq += 1;
                    let text = std::str::from_utf8(&notification.payload).unwrap_or("");
                    let channel = routing::target_channel(text, &self.listen_channel);
                    let sent_at_us = clock::unix_micros_at(notification.received_at);
                    let traceparent = pgws_service::telemetry::enabled().then(|| {
                        let span = tracing::info_span!("pgws.publish", channel = %channel, epoch = self.epoch, seq);
                        pgws_service::telemetry::traceparent(&span)
                    });
                    let message = republish::encode(self.epoch, seq, sent_at_us, traceparent.flatten().as_deref(), &notification.payload);
                    self.redis
                        .publish_cmd(&self.keys.channel(&channel), &message)
                })
                .collect();
            let sent = tokio::time::timeout(Duration::from_secs(5), self.send(commands)).await;
            match sent {
                Ok(Ok(())) => self.metrics.published.inc_by(n as u64),
                Ok(Err(e)) => self.metrics.dropped(n, Dropped::RedisFailed, Some(&e)),
                Err(_) => self.metrics.dropped(n, Dropped::RedisTimedOut, None),
            }
            batch.clear();
            backlog.published.notify_waiters();
        }
    }
}

impl Publisher {
    /// Send one batch: one pipeline on a single Redis; on a cluster, where a
    /// pipeline would go to one node, each `SPUBLISH` separately — issued
    /// together, so they still share round trips per node.
    async fn send(&mut self, commands: Vec<redis::Cmd>) -> redis::RedisResult<()> {
        if !self.redis.is_cluster() {
            let mut pipe = redis::pipe();
            for cmd in commands {
                pipe.add_command(cmd).ignore();
            }
            return pipe.query_async::<()>(&mut self.redis).await;
        }
        let sends = commands.iter().map(|cmd| {
            let mut redis = self.redis.clone();
            async move { cmd.query_async::<i64>(&mut redis).await }
        });
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .try_for_each(|r| r.map(|_| ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn notification() -> Notification {
        Notification {
            payload: bytes::Bytes::from_static(b"{}"),
            received_at: Instant::now(),
        }
    }

    #[tokio::test]
    async fn the_forwarder_waits_until_the_publisher_has_caught_up() {
        let (tx, mut rx) = mpsc::channel(8);
        let backlog = Arc::new(Backlog {
            queue: tx.clone(),
            published: Notify::new(),
        });
        for _ in 0..6 {
            tx.try_send(notification()).expect("room");
        }
        assert_eq!(backlog.pending(), 6);
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.below(2).await }
        });
        // One batch of three published: still above the limit.
        for _ in 0..3 {
            rx.recv().await.expect("queued");
        }
        backlog.published.notify_waiters();
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "released with {} pending",
            backlog.pending()
        );
        // The next batch brings it under: released.
        for _ in 0..3 {
            rx.recv().await.expect("queued");
        }
        backlog.published.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released once caught up")
            .expect("task");
    }
}
