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
//!
//! A hole on the listener's side lies at a point of the *heard* stream, so
//! each notification carries the listener-side holes counted when it was
//! heard ([`Holes::heard`]), not when it is published: what was heard
//! before a lost session and still queued keeps the continuity from before
//! it, and what is heard after the new session begins gets one that is
//! newer than any a client could have been given during the outage (a lost
//! session counts twice: once when lost, once when the next one starts). Publisher-side holes (a dropped batch) count when they happen,
//! for everything published after them. Found by the chaos checker
//! (issue 20): a notification queued at the loss was published in the new
//! continuity, and the hole after it went unannounced.

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
    /// Sentinel failovers seen while publishing (each a new continuity).
    master_moves: IntCounter,
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
            master_moves: IntCounter::new(
                "pgws_publisher_master_moves_total",
                "Redis master switches (Sentinel failover) seen by a leader while publishing: each starts a new epoch on every channel",
            )?,
        };
        registry.register(Box::new(m.master_moves.clone()))?;
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

/// A notification in the publisher's queue: with the listener-side holes
/// counted when it was heard.
type Queued = (Notification, Option<StreamPos>, u64);

/// The listener's sink in cluster mode.
pub struct PublisherSink {
    queue: mpsc::Sender<Queued>,
    metrics: PublisherMetrics,
    holes: Arc<Holes>,
}

/// Times this term may have missed a notification; each starts a new
/// continuity session.
#[derive(Default)]
pub struct Holes {
    /// Holes in the heard stream (lost sessions, a full queue): each
    /// notification carries the count from when it was heard.
    heard: AtomicU64,
    /// A session was lost and none has started since: the next one opens
    /// another hole (the outage was one).
    lost: std::sync::atomic::AtomicBool,
    /// Holes on the publishing side (a batch dropped), counted for
    /// everything published after them.
    publishing: AtomicU64,
    /// Wakes the publisher to move `{p}:continuity` on at once.
    changed: Notify,
}

impl Holes {
    /// A batch in hand may have been missed (publisher side).
    pub fn open(&self) {
        self.publishing.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// A notification may have been missed at this point of the heard
    /// stream (listener side).
    fn open_heard(&self) {
        self.heard.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// The `LISTEN` session was lost: a hole now, and another when the
    /// next session starts.
    fn session_lost(&self) {
        self.lost.store(true, Ordering::Release);
        self.open_heard();
    }

    /// A `LISTEN` session started: after a loss, the outage ends here.
    fn session_started(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            self.open_heard();
        }
    }

    /// The listener-side count for a notification heard now.
    fn heard_now(&self) -> u64 {
        self.heard.load(Ordering::Acquire)
    }

    /// The continuity of a notification heard with `heard` listener-side
    /// holes and published now: `base`, one session on for every hole.
    fn continuity(&self, base: Continuity, heard: u64) -> Continuity {
        Continuity {
            term: base.term,
            session: base.session + heard + self.publishing.load(Ordering::Acquire),
        }
    }

    /// The newest continuity so far (what `{p}:continuity` is moved to).
    fn newest(&self, base: Continuity) -> Continuity {
        self.continuity(base, self.heard.load(Ordering::Acquire))
    }
}

/// How far the publisher is behind the listener. The forwarder waits on it
/// before each NOTIFY batch, so the leader's own writes never overflow the
/// queue (only a burst of NOTIFYs from elsewhere in the database can).
pub struct Backlog {
    queue: mpsc::Sender<Queued>,
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
        let heard = self.holes.heard_now();
        if self.queue.try_send((notification, pos, heard)).is_err() {
            self.metrics.dropped(1, Dropped::QueueFull, None);
            self.holes.open_heard();
        }
    }
}

impl NotificationSink for PublisherSink {
    fn deliver(&self, notification: Notification) {
        self.deliver_at(notification, None);
    }

    fn session_lost(&self) {
        self.holes.session_lost();
    }

    fn session_started(&self) {
        self.holes.session_started();
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
        mut rx: mpsc::Receiver<Queued>,
        backlog: Arc<Backlog>,
        holes: Arc<Holes>,
        term: CancellationToken,
    ) {
        let mut batch: Vec<Queued> = Vec::with_capacity(BATCH);
        let mut seq = 0u64;
        let mut announced = None;
        // The replay was heard before this term began: no hole of this
        // term's listener lies before it.
        let mut replay = std::mem::take(&mut self.replay)
            .into_iter()
            .map(|(n, pos)| (n, pos, 0));
        let mut master = self.redis.master();
        loop {
            self.follow_master(&mut master, &holes);
            let newest = holes.newest(self.continuity);
            if announced.is_none_or(|a| a < newest) && self.announce(newest).await {
                announced = Some(newest);
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
            // One continuity per run of notifications heard between the
            // same holes (usually the whole batch).
            let mut rest = std::mem::take(&mut batch);
            while !rest.is_empty() {
                let heard = rest[0].2;
                let cut = rest.iter().position(|q| q.2 != heard).unwrap_or(rest.len());
                let tail = rest.split_off(cut);
                let run: Vec<Positioned> = rest.into_iter().map(|(n, pos, _)| (n, pos)).collect();
                rest = tail;
                let pinned = self.follow_master(&mut master, &holes);
                let continuity = holes.continuity(self.continuity, heard);
                if announced.is_none_or(|a| a < continuity) && self.announce(continuity).await {
                    announced = Some(continuity);
                }
                self.publish_run(run, continuity, &holes, &mut seq, &pinned)
                    .await;
            }
            backlog.published.notify_waiters();
        }
    }

    /// Behind Sentinel: when the handle has followed a failover since
    /// `seen`, open a hole, so that everything published from now on is in
    /// a new continuity (a new epoch on every channel). The new master may
    /// lack the old one's last appends — history, offsets — and this leader
    /// would otherwise assign those offsets again in the same epoch to other
    /// messages: a silent loss for readers that had them, and live and
    /// recovered views that differ (what `pgws-chaos --sentinel` found).
    ///
    /// Returns the handle fixed to the master judged here: the batch
    /// whose continuity follows from this judgement is sent on it, so it
    /// reaches that master or fails (then a hole opens) — it cannot land
    /// on a master the handle moves to meanwhile, in the old epoch.
    fn follow_master(&self, seen: &mut Option<String>, holes: &Holes) -> RedisClient {
        let (now, pinned) = self.redis.pinned();
        if now == *seen {
            return pinned;
        }
        if let (Some(from), Some(to)) = (seen.as_deref(), now.as_deref()) {
            self.metrics.master_moves.inc();
            tracing::warn!(
                from,
                to,
                "the Redis master moved while publishing: every channel's next message starts a new epoch"
            );
            holes.open();
        }
        *seen = now;
        pinned
    }

    /// Publish `batch` (heard between the same holes) in `continuity`, or
    /// drop it and open a hole.
    async fn publish_run(
        &mut self,
        batch: Vec<Positioned>,
        continuity: Continuity,
        holes: &Holes,
        seq: &mut u64,
        client: &RedisClient,
    ) {
        let n = batch.len();
        if !self.lease.valid() {
            self.metrics.dropped(n, Dropped::LeaseLapsed, None);
            holes.open();
            return;
        }
        let prepared = batch
            .iter()
            .map(|(n, pos)| self.prepare(n, *pos, seq))
            .collect();
        let last_pos = batch.iter().rev().find_map(|(_, pos)| *pos);
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            self.send(client, continuity, prepared),
        )
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
    /// gave them (`"D <base> <offset>"` in the script; `"R …"` for what
    /// lies at or below `replayed`: a previous term published it). `Err` when the
    /// lease lapsed or Redis failed: the reader hands the batch over again,
    /// and the script skips what was already published.
    pub async fn publish_durable(
        &mut self,
        batch: &[pgws_postgres::outbox::OutboxMessage],
        seq: &mut u64,
        replayed: &pgws_postgres::outbox::reader::Cursors,
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
                // A replay of a previous term's: only where Redis lost it.
                let kind = if replayed.covers(m.shard, m.seq) {
                    "R"
                } else {
                    "D"
                };
                p.position = format!("{kind} {} {} {}", m.base, m.generation, m.offset);
                p
            })
            .collect();
        let continuity = self.continuity;
        let client = self.redis.clone();
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            self.send(&client, continuity, prepared),
        )
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
        &self,
        client: &RedisClient,
        continuity: Continuity,
        batch: Vec<Prepared>,
    ) -> redis::RedisResult<Vec<i64>> {
        let script = &*PUBLISH;
        if !client.is_cluster() {
            let invocation = self.invocation(script, continuity, &batch);
            return invocation.invoke_async(&mut client.clone()).await;
        }
        let calls = batch.chunks(1).map(|one| {
            let invocation = self.invocation(script, continuity, one);
            let mut redis = client.clone();
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

    #[test]
    fn a_hole_in_the_heard_stream_lies_where_it_was_heard() {
        let holes = Holes::default();
        let base = Continuity {
            term: 7,
            session: 1,
        };
        let before = holes.heard_now();
        holes.session_lost();
        // Announced at once: newer than anything heard before the loss.
        assert!(holes.newest(base) > holes.continuity(base, before));
        let during = holes.newest(base);
        assert_eq!(holes.heard_now(), before + 1, "the outage is one hole");
        holes.session_started();
        let after = holes.heard_now();
        // Queued before the loss and published now: still the old one.
        assert_eq!(holes.continuity(base, before), base);
        // Heard after the new session began: newer than the one a client
        // may have been given during the outage.
        assert!(holes.continuity(base, after) > during, "{after}");
        holes.session_started();
        assert_eq!(holes.heard_now(), after, "one more hole per loss only");
        // A dropped batch moves on everything published after it.
        holes.open();
        assert_eq!(
            holes.continuity(base, after).session,
            base.session + after + 1
        );
    }

    #[tokio::test]
    async fn the_forwarder_waits_until_the_publisher_has_caught_up() {
        let (tx, mut rx) = mpsc::channel(8);
        let backlog = Arc::new(Backlog {
            queue: tx.clone(),
            published: Notify::new(),
        });
        for _ in 0..6 {
            tx.try_send((notification(), None, 0)).expect("room");
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
