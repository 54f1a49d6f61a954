//! Cluster mode's bus: Redis pub/sub in, a Redis stream out.
//!
//! * **In** ([`inbound`]): one RESP3 connection carries the subscriptions
//!   as push messages. The gateway subscribes to `p:msg:<channel>` on a
//!   channel's first local reader and unsubscribes after its last, so a
//!   node only receives what its sockets read. Messages go through a
//!   bounded queue to one delivery task, which drops (and counts) anything
//!   from an older fencing epoch than the newest it has seen — a deposed
//!   leader — and calls fan-out.
//! * **Subscriptions** ([`plan`], [`link`]): the registry's requests are
//!   coalesced per channel (the latest desired state wins) in a bounded
//!   plan, which the link applies — everything pending in one round trip —
//!   on the connection it keeps alive (connect with backoff, ping for
//!   readiness, re-subscribe after a disconnection). A reader is confirmed
//!   once the round trip carrying its change has returned.
//! * **History** ([`history`]): a new subscription waits until this node's
//!   Redis subscription to its channel is confirmed, then reads the
//!   channel's position and what the client missed.
//! * **Out** ([`appender`]): writers' envelopes are appended to
//!   `{p}:writes`, batched across sockets, and refused once the stream
//!   holds `PGWS_WRITE_STREAM_MAX_LEN` entries, so a writer is told
//!   (close 1013) instead of its message being trimmed away while no
//!   coordinator drains the stream.

mod appender;
mod gaps;
mod history;
mod idempotency;
mod inbound;
mod link;
mod metrics;
mod plan;

use super::{Bus, BusError, BusFuture, Inbox, Lifecycle, Readiness, Recovered, Started};
use appender::{Append, Appender, APPEND_QUEUE};
use inbound::Inbound;
use link::Link;
use metrics::RedisBusMetrics;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::Since;
use pgws_service::redis_client::{RedisClient, RedisConfig};
use plan::Plan;
pub use plan::DEFAULT_LIMIT as DEFAULT_SUBSCRIPTION_QUEUE;
use prometheus::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The cluster bus's settings.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// Where Redis is.
    pub redis: RedisConfig,
    /// Key layout under `PGWS_REDIS_PREFIX`.
    pub keys: KeySpace,
    /// `PGWS_WRITE_STREAM_MAX_LEN`.
    pub stream_max_len: usize,
    /// `PGWS_REDIS_SUBSCRIPTION_QUEUE`: most channels whose subscription
    /// may wait for Redis.
    pub subscription_queue: usize,
}

/// The handle sessions use.
pub struct RedisBus {
    plan: Arc<Plan>,
    metrics: RedisBusMetrics,
    keys: KeySpace,
    appends: mpsc::Sender<Append>,
    up: Arc<AtomicBool>,
    /// The link's client, once connected.
    slot: Arc<RwLock<Option<RedisClient>>>,
}

/// How long a subscription may wait for Redis (its confirmation, then the
/// history read) before the client is told 503.
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Start the Redis link, the delivery task and the appender; metrics go
/// to `registry`. A Redis bus never fails for good: it reconnects.
pub fn start(
    config: RedisBusConfig,
    inbox: Arc<dyn Inbox>,
    registry: &Registry,
) -> prometheus::Result<Started> {
    let metrics = RedisBusMetrics::register(registry)?;
    let plan = Arc::new(Plan::new(config.subscription_queue));
    let (appends_tx, appends_rx) = mpsc::channel(APPEND_QUEUE);
    let slot = Arc::new(RwLock::new(None));
    let up = Arc::new(AtomicBool::new(false));
    let appender = Appender::new(slot.clone(), config.keys.clone(), config.stream_max_len);
    let seeds = Arc::new(gaps::Seeds::new(config.keys.clone()));
    let gaps = gaps::Gaps::new(
        slot.clone(),
        seeds.clone(),
        plan.clone(),
        gaps::GapMetrics::register(registry)?,
    );
    let (inbound, delivering) = Inbound::start(
        config.keys.clone(),
        inbox,
        metrics.clone(),
        up.clone(),
        gaps,
    );
    let link = Link {
        config: config.redis,
        metrics: metrics.clone(),
        slot: slot.clone(),
        up: up.clone(),
        inbound,
        plan: plan.clone(),
        seeds,
    };
    let stop = CancellationToken::new();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let appending = tokio::spawn(appender.run(appends_rx));
            link.run(stop).await;
            appending.abort();
            delivering.abort();
        })
    };
    let idempotency = Arc::new(idempotency::RedisKeys {
        slot: slot.clone(),
        keys: config.keys.clone(),
    });
    Ok(Started {
        idempotency: Some(idempotency),
        bus: Arc::new(RedisBus {
            plan,
            metrics,
            keys: config.keys,
            appends: appends_tx,
            up,
            slot,
        }),
        lifecycle: Lifecycle {
            failure: None,
            workers: JoinSet::new(),
            abort: CancellationToken::new(),
            stop,
            background: vec![running],
        },
    })
}

impl RedisBus {
    /// Wait until every subscription asked for so far is in effect, at
    /// most until `deadline`.
    async fn confirm_until(&self, deadline: Instant) -> Result<(), BusError> {
        let ticket = self.plan.ticket();
        tokio::time::timeout_at(deadline.into(), self.plan.confirmed(ticket))
            .await
            .map_err(|_| {
                self.refuse(
                    "unconfirmed",
                    "Redis did not confirm the subscription in time",
                );
                BusError::Unavailable
            })
    }

    /// A reader refused for `reason`: one log line, one count.
    fn refuse(&self, reason: &'static str, detail: &str) {
        self.metrics.refused.with_label_values(&[reason]).inc();
        tracing::debug!(reason, detail, "subscription refused");
    }
}

impl Bus for RedisBus {
    /// Append `envelope` to the writes stream, unless it is full. Messages
    /// from all sockets are batched into one Redis call by the appender.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        envelope: String,
        traceparent: Option<&'a str>,
        wait: Duration,
    ) -> BusFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
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
        })
    }

    fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let queued = self.plan.request(self.keys.channel(channel), true);
        self.metrics
            .queued
            .set(self.plan.pending_subscribes() as i64);
        queued.map_err(|full| {
            self.refuse("queue_full", &full.to_string());
            BusError::SubscriptionQueueFull
        })
    }

    fn unsubscribe(&self, channel: &str) {
        // Never refused: no more unsubscribes than subscribed channels.
        let _ = self.plan.request(self.keys.channel(channel), false);
        self.metrics
            .queued
            .set(self.plan.pending_subscribes() as i64);
    }

    fn confirm(&self) -> BusFuture<'_, Result<(), BusError>> {
        Box::pin(self.confirm_until(Instant::now() + RECOVER_TIMEOUT))
    }

    fn recover<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Since>,
    ) -> BusFuture<'a, Result<Recovered, BusError>> {
        Box::pin(async move {
            let deadline = Instant::now() + RECOVER_TIMEOUT;
            self.confirm_until(deadline).await?;
            let read = async {
                let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
                let mut client = client.ok_or(BusError::Unavailable)?;
                history::read(&mut client, &self.keys, channel, since).await
            };
            tokio::time::timeout_at(deadline.into(), read)
                .await
                .unwrap_or(Err(BusError::Unavailable))
        })
    }

    fn readiness(&self) -> Readiness {
        let up = self.up.clone();
        Box::new(move || {
            if up.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("redis unreachable".into())
            }
        })
    }
}
