//! Cluster mode's bus: Redis pub/sub in, a Redis stream out.
//!
//! * **In:** one RESP3 connection carries the subscriptions as push
//!   messages. The gateway subscribes to `p:msg:<channel>` on a channel's
//!   first local reader and unsubscribes after its last, so a node only
//!   receives what its sockets read. Every message is checked against the
//!   newest fencing epoch seen: anything from an older epoch (a deposed
//!   leader) is dropped and counted. Then it is a plain call into fan-out.
//! * **Out:** writers' envelopes are appended to `{p}:writes`, and refused
//!   once the stream holds `PGWS_WRITE_STREAM_MAX_LEN` entries, so a writer
//!   is told (close 1013) instead of its message being trimmed away while
//!   no coordinator drains the stream. One appender task batches the
//!   messages of all sockets — up to 256 per call — so Redis sees a round
//!   trip per batch, not per message. Far from the bound a batch is one
//!   `MULTI`/`XADD…`/`XLEN`/`EXEC`; near it, a script checks the bound
//!   message by message.
//!
//! One task owns the connection's lifecycle: connect with backoff, apply
//! subscribe/unsubscribe requests, ping every second for readiness, and
//! re-subscribe everything wanted after Redis comes back.

use super::BusError;
use crate::fanout::Fanout;
use crate::session::Delivery;
use pgws_coordinator::backoff::Backoff;
use pgws_coordinator::redis_client::{
    describe_error, message_of, RedisClient, RedisConfig, RESPONSE_TIMEOUT,
};
use pgws_protocol::bus;
use pgws_protocol::keys::{KeySpace, FIELD_CHANNEL, FIELD_MESSAGE, FIELD_TRACE};
use prometheus::{IntCounter, IntGauge, Registry};
use redis::{PushInfo, PushKind, Script};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Append a batch near the bound: ARGV = max length, then (channel,
/// envelope, traceparent) per message; `{c}`/`{m}`/`{t}` become the field
/// names of `pgws_protocol::keys`. Appends in order until the stream holds
/// the maximum; returns how many were appended (the rest are refused) and
/// the stream's length.
const APPEND: &str = r"
local length = redis.call('XLEN', KEYS[1])
local max = tonumber(ARGV[1])
local appended = 0
for i = 2, #ARGV, 3 do
  if length >= max then
    break
  end
  if ARGV[i + 2] == '' then
    redis.call('XADD', KEYS[1], '*', '{c}', ARGV[i], '{m}', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[1], '*', '{c}', ARGV[i], '{m}', ARGV[i + 1], '{t}', ARGV[i + 2])
  end
  length = length + 1
  appended = appended + 1
end
return {appended, length}";

/// Most messages appended in one call.
const APPEND_BATCH: usize = 256;
/// Below this share of `PGWS_WRITE_STREAM_MAX_LEN` (as last seen) a batch is
/// appended with a plain `MULTI`/`XADD…`/`XLEN`/`EXEC`; above it, with the
/// script that checks the bound message by message. The script costs Redis
/// about 3 µs per message more than a plain `XADD` (measured with `INFO
/// commandstats`); the half of the bound left as headroom absorbs whatever
/// other gateways append between two of our batches.
const FAST_PATH_SHARE: f64 = 0.5;
/// Writes waiting for the appender before writers wait.
const APPEND_QUEUE: usize = 4096;
/// Pause between attempts while Redis does not answer.
const APPEND_RETRY: Duration = Duration::from_millis(250);

/// Answer `Unavailable` to every message whose deadline has passed, and
/// drop it unsent.
fn refuse_expired(batch: &mut Vec<Append>) {
    let now = Instant::now();
    let (expired, live): (Vec<Append>, Vec<Append>) =
        batch.drain(..).partition(|a| a.deadline <= now);
    *batch = live;
    for append in expired {
        let _ = append.reply.send(Err(BusError::Unavailable));
    }
}

/// How often the connection is pinged for readiness.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Redis bus metrics.
#[derive(Clone)]
pub struct RedisBusMetrics {
    up: IntGauge,
    subscriptions: IntGauge,
    received: IntCounter,
    stale: IntCounter,
    malformed: IntCounter,
}

impl RedisBusMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<RedisBusMetrics> {
        let m = RedisBusMetrics {
            up: IntGauge::new("pgws_redis_up", "1 while Redis answers")?,
            subscriptions: IntGauge::new("pgws_redis_subscriptions", "Redis channels this gateway subscribes to")?,
            received: IntCounter::new("pgws_bus_messages_received_total", "Notifications received from Redis")?,
            stale: IntCounter::new(
                "pgws_bus_stale_dropped_total",
                "Notifications dropped because a newer coordinator epoch was already seen (fencing)",
            )?,
            malformed: IntCounter::new("pgws_bus_malformed_total", "Redis messages that could not be decoded")?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.stale.clone()))?;
        registry.register(Box::new(m.malformed.clone()))?;
        Ok(m)
    }
}

enum Subscription {
    Add(String),
    Remove(String),
}

/// One writer's message on its way to the stream.
struct Append {
    channel: String,
    envelope: String,
    traceparent: String,
    /// After this the writer is told `Unavailable`, and the message is not
    /// sent any more.
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Result<(), BusError>>,
}

/// The handle sessions use.
#[derive(Clone)]
pub struct RedisBus {
    ops: mpsc::UnboundedSender<Subscription>,
    keys: KeySpace,
    appends: mpsc::Sender<Append>,
    up: Arc<AtomicBool>,
}

impl RedisBus {
    /// Start the connection task; it runs until `stop`.
    pub fn start(
        config: RedisConfig,
        keys: KeySpace,
        max_len: usize,
        fanout: Arc<Fanout>,
        metrics: RedisBusMetrics,
        stop: CancellationToken,
    ) -> (RedisBus, tokio::task::JoinHandle<()>) {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (appends_tx, appends_rx) = mpsc::channel(APPEND_QUEUE);
        let slot = Arc::new(RwLock::new(None));
        let bus = RedisBus {
            ops: ops_tx,
            keys: keys.clone(),
            appends: appends_tx,
            up: Arc::new(AtomicBool::new(false)),
        };
        let appender = Appender {
            slot: slot.clone(),
            stream: keys.writes(),
            max_len,
            last_len: max_len,
            script: Script::new(
                &APPEND
                    .replace("{c}", FIELD_CHANNEL)
                    .replace("{m}", FIELD_MESSAGE)
                    .replace("{t}", FIELD_TRACE),
            ),
        };
        let link = Link {
            config,
            keys,
            fanout,
            metrics,
            slot,
            up: bus.up.clone(),
            wanted: HashSet::new(),
            newest_epoch: 0,
        };
        let task = tokio::spawn(async move {
            let appending = tokio::spawn(appender.run(appends_rx));
            link.run(ops_rx, stop).await;
            appending.abort();
        });
        (bus, task)
    }

    /// Whether Redis currently answers.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Append `envelope` to the writes stream, unless it is full. Messages
    /// from all sockets are batched into one script call by the appender.
    pub async fn publish(
        &self,
        channel: &str,
        envelope: String,
        traceparent: Option<&str>,
        wait: Duration,
    ) -> Result<(), BusError> {
        let deadline = Instant::now() + wait.max(Duration::from_millis(100));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let append = Append {
            channel: channel.to_string(),
            envelope,
            traceparent: traceparent.unwrap_or_default().to_string(),
            deadline,
            reply,
        };
        let queued = tokio::time::timeout_at(deadline.into(), self.appends.send(append)).await;
        if !matches!(queued, Ok(Ok(()))) {
            return Err(BusError::Full);
        }
        // The appender answers every message it took: at its deadline if
        // Redis stayed unreachable, else once the Redis call carrying it
        // returned (bounded by the response timeout).
        answer.await.unwrap_or(Err(BusError::Closed))
    }

    /// `channel` got its first local reader.
    pub fn subscribe(&self, channel: &str) {
        let _ = self.ops.send(Subscription::Add(self.keys.channel(channel)));
    }

    /// `channel` lost its last local reader.
    pub fn unsubscribe(&self, channel: &str) {
        let _ = self
            .ops
            .send(Subscription::Remove(self.keys.channel(channel)));
    }
}

/// Batches writers' messages into one Redis call per batch.
struct Appender {
    slot: Arc<RwLock<Option<RedisClient>>>,
    stream: String,
    max_len: usize,
    script: Script,
    /// The stream's length after our last append (the bound until known).
    last_len: usize,
}

impl Appender {
    async fn run(mut self, mut appends: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        while appends.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            // While Redis is unreachable (restarting, or failing over behind
            // Sentinel) the batch is retried until each writer's deadline.
            loop {
                refuse_expired(&mut batch);
                let Some(first_deadline) = batch.iter().map(|a| a.deadline).min() else {
                    break;
                };
                if let Ok(appended) = self.append(&batch).await {
                    for (i, append) in batch.drain(..).enumerate() {
                        let result = if i < appended {
                            Ok(())
                        } else {
                            Err(BusError::Full)
                        };
                        let _ = append.reply.send(result);
                    }
                    break;
                }
                let pause = (Instant::now() + APPEND_RETRY).min(first_deadline);
                tokio::time::sleep_until(pause.into()).await;
            }
        }
    }

    /// How many of `batch` (a prefix) were appended; Err when Redis failed.
    async fn append(&mut self, batch: &[Append]) -> Result<usize, ()> {
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut client) = client else {
            return Err(());
        };
        let far_from_bound =
            ((self.last_len + batch.len()) as f64) < self.max_len as f64 * FAST_PATH_SHARE;
        let result = if far_from_bound {
            self.append_all(&mut client, batch)
                .await
                .map(|len| (batch.len(), len))
        } else {
            self.append_bounded(&mut client, batch).await
        };
        match result {
            Ok((appended, len)) => {
                self.last_len = len;
                Ok(appended)
            }
            Err(e) => {
                self.last_len = self.max_len;
                tracing::warn!(error = %e, messages = batch.len(), "cannot queue writes in Redis");
                Err(())
            }
        }
    }

    /// Append every message in one transaction; returns the new length.
    async fn append_all(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
    ) -> redis::RedisResult<usize> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for a in batch {
            let add = pipe.cmd("XADD").arg(&self.stream).arg("*");
            add.arg(FIELD_CHANNEL)
                .arg(&a.channel)
                .arg(FIELD_MESSAGE)
                .arg(&a.envelope);
            if !a.traceparent.is_empty() {
                add.arg(FIELD_TRACE).arg(&a.traceparent);
            }
            add.ignore();
        }
        pipe.cmd("XLEN").arg(&self.stream);
        let (len,): (usize,) = pipe.query_async(client).await?;
        Ok(len)
    }

    /// Append in order while the stream is under the bound; returns how
    /// many were appended and the new length.
    async fn append_bounded(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
    ) -> redis::RedisResult<(usize, usize)> {
        let mut invocation = self.script.key(&self.stream);
        invocation.arg(self.max_len);
        for a in batch {
            invocation
                .arg(&a.channel)
                .arg(&a.envelope)
                .arg(&a.traceparent);
        }
        let (appended, len): (i64, i64) = invocation.invoke_async(client).await?;
        Ok((appended.max(0) as usize, len.max(0) as usize))
    }
}

/// What a push meant for the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    /// A message (delivered or dropped) or an acknowledgement.
    Handled,
    /// The connection dropped: subscriptions must be made again.
    ConnectionLost,
}

/// The connection task's state.
struct Link {
    config: RedisConfig,
    keys: KeySpace,
    fanout: Arc<Fanout>,
    metrics: RedisBusMetrics,
    slot: Arc<RwLock<Option<RedisClient>>>,
    up: Arc<AtomicBool>,
    /// Redis channels some local socket reads.
    wanted: HashSet<String>,
    newest_epoch: u64,
}

impl Link {
    async fn run(
        mut self,
        mut ops: mpsc::UnboundedReceiver<Subscription>,
        stop: CancellationToken,
    ) {
        let (push_tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let Some(mut client) = self.connect(push_tx, &mut ops, &stop).await else {
            return;
        };
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        let mut synced = self.resubscribe(&mut client).await;
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                op = ops.recv() => match op {
                    Some(op) => {
                        if !self.apply(&mut client, op).await {
                            synced = false;
                        }
                    }
                    None => break,
                },
                push = pushes.recv() => match push {
                    Some(push) => {
                        if self.on_push(push) == Push::ConnectionLost {
                            // Re-subscribe everything once Redis answers
                            // again — possibly on a new master (Sentinel).
                            synced = false;
                        }
                    }
                    None => break,
                },
                _ = health.tick() => {
                    let alive = ping(&mut client).await;
                    self.set_up(alive);
                    if alive && !synced {
                        synced = self.resubscribe(&mut client).await;
                    } else if !alive {
                        synced = false;
                    }
                }
            }
        }
        self.set_up(false);
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Connect with backoff, keeping track of wanted channels meanwhile.
    async fn connect(
        &mut self,
        push_tx: mpsc::UnboundedSender<PushInfo>,
        ops: &mut mpsc::UnboundedReceiver<Subscription>,
        stop: &CancellationToken,
    ) -> Option<RedisClient> {
        let mut backoff = Backoff::new();
        loop {
            match RedisClient::connect(&self.config, Some(push_tx.clone()), Some(RESPONSE_TIMEOUT))
                .await
            {
                Ok(client) => {
                    tracing::info!("connected to Redis");
                    self.set_up(true);
                    return Some(client);
                }
                Err(e) => {
                    let delay = backoff.next_delay().min(Duration::from_secs(5));
                    tracing::warn!(error = %describe_error(&e), retry_in_ms = delay.as_millis() as u64, "cannot connect to Redis");
                    let retry = tokio::time::sleep(delay);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = &mut retry => break,
                            op = ops.recv() => match op {
                                Some(Subscription::Add(c)) => { self.wanted.insert(c); }
                                Some(Subscription::Remove(c)) => { self.wanted.remove(&c); }
                                None => return None,
                            },
                        }
                    }
                }
            }
        }
    }

    /// Apply one request; false when Redis refused it (retried later).
    async fn apply(&mut self, client: &mut RedisClient, op: Subscription) -> bool {
        let result = match op {
            Subscription::Add(channel) => {
                let r = client.subscribe(std::slice::from_ref(&channel)).await;
                self.wanted.insert(channel);
                r
            }
            Subscription::Remove(channel) => {
                let r = client.unsubscribe(std::slice::from_ref(&channel)).await;
                self.wanted.remove(&channel);
                r
            }
        };
        self.metrics.subscriptions.set(self.wanted.len() as i64);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "subscription change failed: will retry when Redis answers");
        }
        result.is_ok()
    }

    /// Subscribe to everything wanted (idempotent); true on success.
    async fn resubscribe(&mut self, client: &mut RedisClient) -> bool {
        self.metrics.subscriptions.set(self.wanted.len() as i64);
        if self.wanted.is_empty() {
            return true;
        }
        let channels: Vec<String> = self.wanted.iter().cloned().collect();
        match client.subscribe(&channels).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "re-subscribing failed");
                false
            }
        }
    }

    fn on_push(&mut self, push: PushInfo) -> Push {
        if push.kind == PushKind::Disconnection {
            tracing::warn!("Redis connection lost");
            self.set_up(false);
            return Push::ConnectionLost;
        }
        let Some((channel, message)) = message_of(&push) else {
            tracing::debug!(kind = ?push.kind, "Redis push");
            return Push::Handled;
        };
        let Some(channel) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.keys.channel_of(c))
        else {
            return Push::Handled;
        };
        self.metrics.received.inc();
        let published = match bus::decode(bytes::Bytes::copy_from_slice(message)) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.malformed.inc();
                tracing::warn!(error = %e, "malformed message on Redis");
                return Push::Handled;
            }
        };
        if published.epoch < self.newest_epoch {
            self.metrics.stale.inc();
            return Push::Handled;
        }
        self.newest_epoch = published.epoch;
        let delivery = Arc::new(Delivery {
            payload: published.payload,
            received_at: instant_of_micros(published.sent_at_us),
        });
        match published
            .traceparent
            .filter(|_| pgws_coordinator::telemetry::enabled())
        {
            Some(traceparent) => {
                let span =
                    tracing::info_span!("pgws.fanout", channel = %channel, epoch = published.epoch);
                pgws_coordinator::telemetry::set_remote_parent(&span, &traceparent);
                span.in_scope(|| self.fanout.deliver_to(channel, &delivery));
            }
            None => self.fanout.deliver_to(channel, &delivery),
        }
        Push::Handled
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(up));
    }
}

async fn ping(client: &mut RedisClient) -> bool {
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(client);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}

/// The local `Instant` corresponding to Unix microseconds `at` (in the past).
fn instant_of_micros(at: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    let ago = Duration::from_micros(now.saturating_sub(at));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
