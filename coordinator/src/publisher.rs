//! The leader's republisher: every notification from the listener gets
//! its channel's next offset, goes into the channel's history and out on
//! the Redis pub/sub channel of its websocket channel — one atomic script
//! (`pgws_protocol::history`), stamped with the leader's fencing epoch
//! and a sequence number (`pgws_protocol::republish`).
//!
//! The listener hands notifications over with a non-blocking `try_send`
//! into a bounded queue; one task drains it in batches: one script call
//! per batch on a single Redis, one per notification (issued together) on
//! a cluster, where each channel's keys live in its own slot. The lease is
//! checked before every batch: a leader whose lease lapsed publishes
//! nothing. On a single Redis the script also compares the batch's epoch
//! with `{p}:epoch`, atomically with the append: a batch still in flight
//! when the lock moved is refused whole, and the term ends.
//!
//! **Continuity.** Offsets are assigned in the continuity `(fencing epoch,
//! session)`. The session starts at 1 and moves on whenever this leader
//! may have missed a notification: the `LISTEN` connection was lost, the
//! queue from the listener was full, the lease lapsed, or a batch failed
//! in Redis (it may or may not have gone out). Every channel's next message
//! then starts a new epoch, and `{p}:continuity` — which gateways read
//! when a client recovers — is moved forward at once, so a recovery across
//! the hole answers "not recovered" even before the channel's next message.

use crate::election::Lease;
use crate::stream::StreamPos;
use pgws_postgres::listener::{Notification, NotificationSink};
use pgws_protocol::history::{ADVANCE_CONTINUITY_SCRIPT, PUBLISH_SCRIPT};
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::Continuity;
use pgws_protocol::republish::Header;
use pgws_protocol::{clock, routing};
use pgws_service::events::RateLimit;
use pgws_service::history::HistoryConfig;
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, Registry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The publish script (hashed once).
static PUBLISH: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PUBLISH_SCRIPT));
/// The script that moves `{p}:continuity` forward.
static ADVANCE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ADVANCE_CONTINUITY_SCRIPT));

/// Most notifications published in one script call.
const BATCH: usize = 256;
/// The publish script's answer for every notification of a batch whose
/// epoch is no longer the current one.
const DEPOSED: i64 = -3;
/// Notifications waiting to be published before new ones are dropped.
const QUEUE: usize = 65_536;

/// Publisher metrics.
#[derive(Clone)]
pub struct PublisherMetrics {
    published: IntCounter,
    dropped: IntCounter,
    /// Notifications a new leader replayed that its predecessor had
    /// already published (skipped by the script).
    repeated: IntCounter,
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
    /// A newer leader has moved the channel's sequence on (this leader is
    /// deposed and does not know it yet).
    Fenced,
    /// The fencing epoch in Redis is no longer this leader's: the lock
    /// moved while the batch was in flight. Nothing of it was written.
    Deposed,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Dropped::QueueFull => "the publish queue is full",
            Dropped::LeaseLapsed => "the lease lapsed",
            Dropped::RedisFailed => "publishing to Redis failed",
            Dropped::RedisTimedOut => "publishing to Redis timed out",
            Dropped::Fenced => "a newer leader owns the channel",
            Dropped::Deposed => "the fencing epoch moved on: this leader is deposed",
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
                "Notifications not republished (queue full, Redis error, lease lapsed, or fenced by a newer leader)",
            )?,
            repeated: IntCounter::new(
                "pgws_notifications_already_published_total",
                "Notifications a new leader replayed from its standby buffer that its predecessor had already published (skipped)",
            )?,
            drop_log: Arc::new(RateLimit::default()),
        };
        registry.register(Box::new(m.repeated.clone()))?;
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

/// A notification and, when stream markers are on, its place in the
/// NOTIFY stream.
pub type Positioned = (Notification, Option<StreamPos>);

/// The listener's sink in cluster mode.
pub struct PublisherSink {
    queue: mpsc::Sender<Positioned>,
    metrics: PublisherMetrics,
    holes: Arc<Holes>,
}

/// Times this term may have missed a notification; each starts a new
/// continuity session.
#[derive(Default)]
pub struct Holes {
    count: AtomicU64,
    /// Wakes the publisher to move `{p}:continuity` on at once.
    changed: Notify,
}

impl Holes {
    /// A notification may have been missed.
    pub fn open(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// The continuity of everything published from now on: `base`, one
    /// session on for every hole so far.
    fn continuity(&self, base: Continuity) -> Continuity {
        Continuity {
            term: base.term,
            session: base.session + self.count.load(Ordering::Acquire),
        }
    }
}

/// How far the publisher is behind the listener. The forwarder waits on it
/// before each NOTIFY batch, so the leader's own writes never overflow the
/// queue (only a burst of NOTIFYs from elsewhere in the database can).
pub struct Backlog {
    queue: mpsc::Sender<Positioned>,
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

impl PublisherSink {
    /// Queue a notification at its place in the NOTIFY stream.
    pub fn deliver_at(&self, notification: Notification, pos: Option<StreamPos>) {
        if self.queue.try_send((notification, pos)).is_err() {
            self.metrics.dropped(1, Dropped::QueueFull, None);
            self.holes.open();
        }
    }
}

impl NotificationSink for PublisherSink {
    fn deliver(&self, notification: Notification) {
        self.deliver_at(notification, None);
    }

    fn session_lost(&self) {
        self.holes.open();
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
    /// This term's fencing epoch.
    pub epoch: u64,
    /// The continuity messages are published in: the predecessor's, when
    /// this term resumed exactly where it stopped; else `(epoch, 1)`.
    pub continuity: Continuity,
    /// Notifications the predecessor may not have published, from the
    /// standby buffer: published first, in order.
    pub replay: Vec<Positioned>,
    /// This term's lease.
    pub lease: Arc<Lease>,
    /// History size and ttls.
    pub history: HistoryConfig,
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

/// One notification, ready for the publish script.
struct Prepared {
    state_key: String,
    history_key: String,
    header_prefix: String,
    header_suffix: String,
    pubsub_channel: String,
    payload: bytes::Bytes,
    /// `"<marker epoch> <counter> <index>"`, or empty.
    position: String,
}

impl Publisher {
    /// Start publishing what the sink receives until `term` ends.
    pub fn start(self, term: CancellationToken) -> Publishing {
        let (tx, rx) = mpsc::channel(QUEUE);
        let backlog = Arc::new(Backlog {
            queue: tx.clone(),
            published: Notify::new(),
        });
        let holes = Arc::new(Holes::default());
        let sink = Arc::new(PublisherSink {
            queue: tx,
            metrics: self.metrics.clone(),
            holes: holes.clone(),
        });
        Publishing {
            sink,
            backlog: backlog.clone(),
            task: tokio::spawn(self.run(rx, backlog, holes, term)),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Positioned>,
        backlog: Arc<Backlog>,
        holes: Arc<Holes>,
        term: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut seq = 0u64;
        let mut announced = None;
        let mut replay = std::mem::take(&mut self.replay).into_iter();
        loop {
            let continuity = holes.continuity(self.continuity);
            if announced != Some(continuity) && self.announce(continuity).await {
                announced = Some(continuity);
            }
            // The replay first, then live notifications.
            batch.extend(replay.by_ref().take(BATCH));
            let n = if !batch.is_empty() {
                batch.len()
            } else {
                tokio::select! {
                    _ = term.cancelled() => return,
                    _ = holes.changed.notified() => continue,
                    n = rx.recv_many(&mut batch, BATCH) => n,
                }
            };
            if n == 0 {
                return;
            }
            // Read after the batch arrived: a notification from after a
            // lost session is never given the continuity from before it.
            let continuity = holes.continuity(self.continuity);
            if !self.lease.valid() {
                self.metrics.dropped(n, Dropped::LeaseLapsed, None);
                holes.open();
            } else {
                let prepared = batch
                    .iter()
                    .map(|(n, pos)| self.prepare(n, *pos, &mut seq))
                    .collect();
                let last_pos = batch.iter().rev().find_map(|(_, pos)| *pos);
                let sent =
                    tokio::time::timeout(Duration::from_secs(5), self.send(continuity, prepared))
                        .await;
                match sent {
                    Ok(Ok(offsets)) if offsets.contains(&DEPOSED) => {
                        // Nothing more from this term: the lock is gone.
                        self.lease.revoke();
                        self.metrics.dropped(n, Dropped::Deposed, None);
                        holes.open();
                    }
                    Ok(Ok(offsets)) => {
                        let fenced = offsets.iter().filter(|o| **o == -1).count();
                        let repeated = offsets.iter().filter(|o| **o == -2).count();
                        self.metrics
                            .published
                            .inc_by((n - fenced - repeated) as u64);
                        self.metrics.repeated.inc_by(repeated as u64);
                        if fenced > 0 {
                            self.metrics.dropped(fenced, Dropped::Fenced, None);
                        }
                        if let Some(pos) = last_pos {
                            self.record_progress(pos).await;
                        }
                    }
                    Ok(Err(e)) => {
                        self.metrics.dropped(n, Dropped::RedisFailed, Some(&e));
                        holes.open();
                    }
                    Err(_) => {
                        self.metrics.dropped(n, Dropped::RedisTimedOut, None);
                        holes.open();
                    }
                }
            }
            batch.clear();
            backlog.published.notify_waiters();
        }
    }

    /// Move `{p}:continuity` forward to `continuity`; false if Redis
    /// could not be told (tried again before the next batch).
    async fn announce(&mut self, continuity: Continuity) -> bool {
        let mut invocation = ADVANCE.key(self.keys.continuity());
        invocation
            .arg(continuity.term)
            .arg(continuity.session)
            .arg(self.history.state_ttl.as_millis() as u64);
        let call = invocation.invoke_async::<i64>(&mut self.redis);
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => {
                tracing::info!(
                    term = continuity.term,
                    session = continuity.session,
                    "new continuity: every channel's next message starts a new epoch"
                );
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot record the continuity in Redis");
                false
            }
            Err(_) => {
                tracing::warn!("recording the continuity in Redis timed out");
                false
            }
        }
    }

    /// Record how far this leader has published, for a successor
    /// resuming from a standby buffer (best effort: a lagging record only
    /// makes the successor replay more, and the script skips what was
    /// published).
    async fn record_progress(&mut self, pos: StreamPos) {
        let mut cmd = redis::cmd("SET");
        let now_ms = clock::unix_now().as_millis() as u64;
        cmd.arg(self.keys.progress()).arg(format!("{pos} {now_ms}"));
        let set = cmd.query_async::<()>(&mut self.redis);
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), set).await {
            tracing::debug!(error = %e, "cannot record the publish progress");
        }
    }

    fn prepare(
        &self,
        notification: &Notification,
        pos: Option<StreamPos>,
        seq: &mut u64,
    ) -> Prepared {
        let text = std::str::from_utf8(&notification.payload).unwrap_or("");
        let channel = routing::target_channel(text, &self.listen_channel).to_string();
        self.prepare_for(&channel, notification, pos, seq)
    }

    /// [`Publisher::prepare`] with the channel already known.
    fn prepare_for(
        &self,
        channel: &str,
        notification: &Notification,
        pos: Option<StreamPos>,
        seq: &mut u64,
    ) -> Prepared {
        *seq += 1;
        let traceparent = pgws_service::telemetry::enabled()
            .then(|| {
                let span = tracing::info_span!("pgws.publish", channel = %channel, epoch = self.epoch, seq = *seq);
                pgws_service::telemetry::traceparent(&span)
            })
            .flatten();
        let header = Header {
            epoch: self.epoch,
            seq: *seq,
            sent_at_us: clock::unix_micros_at(notification.received_at),
            traceparent: traceparent.as_deref(),
        };
        Prepared {
            state_key: self.keys.channel_state(channel),
            history_key: self.keys.channel_history(channel),
            header_prefix: header.script_prefix(),
            header_suffix: header.script_suffix(),
            pubsub_channel: self.keys.channel(channel),
            payload: notification.payload.clone(),
            position: pos.map(|p| p.to_string()).unwrap_or_default(),
        }
    }

    /// Publish messages of the durable outbox at the offsets PostgreSQL
    /// gave them (`"D <base> <offset>"` in the script). `Err` when the
    /// lease lapsed or Redis failed: the reader hands the batch over again,
    /// and the script skips what was already published.
    pub async fn publish_durable(
        &mut self,
        batch: &[pgws_postgres::outbox::OutboxMessage],
        seq: &mut u64,
    ) -> Result<(), String> {
        if !self.lease.valid() {
            return Err("the lease lapsed".into());
        }
        let received_at = std::time::Instant::now();
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|m| {
                let channel = if m.channel.is_empty() {
                    self.listen_channel.clone()
                } else {
                    m.channel.clone()
                };
                let notification = Notification {
                    payload: m.payload.clone(),
                    received_at,
                    source: 0,
                };
                let mut p = self.prepare_for(&channel, &notification, None, seq);
                p.position = format!("D {} {} {}", m.base, m.generation, m.offset);
                p
            })
            .collect();
        let continuity = self.continuity;
        let sent = tokio::time::timeout(Duration::from_secs(5), self.send(continuity, prepared))
            .await
            .map_err(|_| "Redis timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if sent.contains(&DEPOSED) {
            self.lease.revoke();
            self.metrics.dropped(sent.len(), Dropped::Deposed, None);
            return Err("the fencing epoch moved on: this leader is deposed".into());
        }
        let fenced = sent.iter().filter(|o| **o == -1).count();
        let repeated = sent.iter().filter(|o| **o == -2).count();
        self.metrics
            .published
            .inc_by((sent.len() - fenced - repeated) as u64);
        self.metrics.repeated.inc_by(repeated as u64);
        if fenced > 0 {
            self.metrics.dropped(fenced, Dropped::Fenced, None);
            return Err(format!(
                "{fenced} outbox messages fenced: a newer leader wrote their channels"
            ));
        }
        Ok(())
    }

    /// The publish script for `batch`, in the continuity given.
    fn invocation<'s>(
        &self,
        script: &'s redis::Script,
        continuity: Continuity,
        batch: &[Prepared],
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        // One Redis: the script checks the batch's epoch against the
        // current one (a cluster keeps the epoch key in another slot).
        if !self.redis.is_cluster() {
            invocation.key(self.keys.epoch());
        }
        invocation
            .arg(continuity.term)
            .arg(continuity.session)
            .arg(self.epoch)
            .arg(self.history.size)
            .arg(self.history.ttl.as_millis() as u64)
            .arg(self.history.state_ttl.as_millis() as u64)
            .arg(self.redis.publish_command());
        for p in batch {
            invocation.key(&p.state_key).key(&p.history_key);
            invocation
                .arg(&p.header_prefix)
                .arg(&p.header_suffix)
                .arg(&p.pubsub_channel)
                .arg(&p.payload[..])
                .arg(&p.position);
        }
        invocation
    }

    /// Send one batch; the offsets assigned, -1 where fenced. One script
    /// call on a single Redis; on a cluster, where a script's keys must
    /// share a slot, one per notification — issued together, so they still
    /// share round trips per node, and in order on each connection.
    async fn send(
        &mut self,
        continuity: Continuity,
        batch: Vec<Prepared>,
    ) -> redis::RedisResult<Vec<i64>> {
        let script = &*PUBLISH;
        if !self.redis.is_cluster() {
            let invocation = self.invocation(script, continuity, &batch);
            return invocation.invoke_async(&mut self.redis).await;
        }
        let calls = batch.chunks(1).map(|one| {
            let invocation = self.invocation(script, continuity, one);
            let mut redis = self.redis.clone();
            async move { invocation.invoke_async::<Vec<i64>>(&mut redis).await }
        });
        let mut offsets = Vec::with_capacity(batch.len());
        for result in futures_util::future::join_all(calls).await {
            offsets.extend(result?);
        }
        Ok(offsets)
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
            source: 0,
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
            tx.try_send((notification(), None)).expect("room");
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
