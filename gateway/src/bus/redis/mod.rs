//! Cluster mode's bus: Redis pub/sub in, a Redis stream out.
//!
//! * **In** ([`inbound`]): one RESP3 connection carries the subscriptions
//!   as push messages. The gateway subscribes to `p:msg:<channel>` on a
//!   channel's first local reader and unsubscribes after its last, so a
//!   node only receives what its sockets read. Messages go through a
//!   bounded queue to one delivery task, which drops (and counts) anything
//!   from an older fencing epoch than the newest it has seen — a deposed
//!   leader — and calls fan-out.
//! * **Subscriptions** ([`link`]): the connection's life — connect with
//!   backoff, subscribe and unsubscribe in the registry's order, ping for
//!   readiness, re-subscribe after a disconnection.
//! * **Out** ([`appender`]): writers' envelopes are appended to
//!   `{p}:writes`, batched across sockets, and refused once the stream
//!   holds `PGWS_WRITE_STREAM_MAX_LEN` entries, so a writer is told
//!   (close 1013) instead of its message being trimmed away while no
//!   coordinator drains the stream.

mod appender;
mod inbound;
mod link;

use super::BusError;
use crate::fanout::Fanout;
use appender::{Append, Appender, APPEND_QUEUE};
use inbound::Inbound;
use link::Link;
use pgws_protocol::keys::KeySpace;
use pgws_service::redis_client::RedisConfig;
use prometheus::{IntCounter, IntGauge, Registry};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Redis bus metrics.
#[derive(Clone)]
pub struct RedisBusMetrics {
    up: IntGauge,
    subscriptions: IntGauge,
    received: IntCounter,
    stale: IntCounter,
    malformed: IntCounter,
    overflow: IntCounter,
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
            overflow: IntCounter::new(
                "pgws_bus_overflow_total",
                "Notifications from Redis dropped because the delivery queue was full",
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.stale.clone()))?;
        registry.register(Box::new(m.malformed.clone()))?;
        registry.register(Box::new(m.overflow.clone()))?;
        Ok(m)
    }
}

/// A change of what this node subscribes to, in registry order.
enum Subscription {
    Add(String),
    Remove(String),
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
        let appender = Appender::new(slot.clone(), keys.clone(), max_len);
        let (inbound, delivering) = Inbound::start(keys, fanout, metrics.clone(), bus.up.clone());
        let link = Link {
            config,
            metrics,
            slot,
            up: bus.up.clone(),
            inbound,
            wanted: HashSet::new(),
        };
        let task = tokio::spawn(async move {
            let appending = tokio::spawn(appender.run(appends_rx));
            link.run(ops_rx, stop).await;
            appending.abort();
            delivering.abort();
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
