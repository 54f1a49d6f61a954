//! The Redis connection's life: connect with backoff, apply the
//! subscription [`Plan`] — everything pending at once, pipelined — ping
//! every [`HEALTH_EVERY`] for readiness, and re-subscribe everything wanted
//! after a disconnection (a Redis restart, or a Sentinel failover to a new
//! master). Pushes do not pass through here (see [`super::inbound`]), so a
//! subscription round trip never holds deliveries up; and since a round
//! trip carries every change made while the previous one was in flight,
//! churn cannot build a backlog of round trips (`docs/architecture.md`,
//! "How the Redis bus subscribes").

use super::gaps::Seeds;
use super::inbound::Inbound;
use super::metrics::RedisBusMetrics;
use super::plan::{Batch, Plan, CHUNK};
use futures_util::future::join_all;
use pgws_service::backoff::Backoff;
use pgws_service::redis_client::{describe_error, RedisClient, RedisConfig, RESPONSE_TIMEOUT};
use redis::RedisResult;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the connection is pinged for readiness.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The connection task's state.
pub struct Link {
    /// Where Redis is.
    pub config: RedisConfig,
    /// Metrics.
    pub metrics: RedisBusMetrics,
    /// The client the appender uses, once connected.
    pub slot: Arc<RwLock<Option<RedisClient>>>,
    /// Readiness.
    pub up: Arc<AtomicBool>,
    /// Where the connection's pushes go.
    pub inbound: Arc<Inbound>,
    /// What to subscribe to, shared with the bus handle.
    pub plan: Arc<Plan>,
    /// Where each channel stood when it was subscribed (for the delivery
    /// task's gap check).
    pub seeds: Arc<Seeds>,
}

impl Link {
    /// Run until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let Some(mut client) = self.connect(&stop).await else {
            return;
        };
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        let mut synced = self.resync(&client).await;
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resync = self.inbound.resync.clone();
        let plan = self.plan.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                // While not synced, changes wait for the re-subscription,
                // which takes them too.
                _ = plan.changed(), if synced => {
                    synced = self.apply(&client).await;
                }
                // The connection dropped: re-subscribe everything once Redis
                // answers again — possibly on a new master (Sentinel).
                _ = resync.notified() => synced = false,
                _ = health.tick() => {
                    let alive = ping(&mut client).await;
                    self.set_up(alive);
                    if alive && !synced {
                        synced = self.resync(&client).await;
                    } else if !alive {
                        synced = false;
                    }
                }
            }
        }
        self.set_up(false);
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Connect with backoff (changes meanwhile wait in the plan).
    async fn connect(&mut self, stop: &CancellationToken) -> Option<RedisClient> {
        let mut backoff = Backoff::new();
        loop {
            let handler = self.inbound.handler();
            match RedisClient::connect(&self.config, Some(handler), Some(RESPONSE_TIMEOUT)).await {
                Ok(client) => {
                    tracing::info!(redis = %self.config.describe(), "connected to Redis");
                    self.set_up(true);
                    return Some(client);
                }
                Err(e) => {
                    let delay = backoff.next_delay().min(Duration::from_secs(5));
                    tracing::warn!(error = %describe_error(&e), retry_in_ms = delay.as_millis() as u64, "cannot connect to Redis");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Apply everything pending; false when Redis refused (the whole plan
    /// is applied again when it answers).
    async fn apply(&mut self, client: &RedisClient) -> bool {
        let batch = self.plan.take();
        let Some(batch) = self.seed(client, batch).await else {
            return false;
        };
        let (left, joined) = tokio::join!(
            change(client, &batch.unsubscribe, false),
            change(client, &batch.subscribe, true)
        );
        self.settle(left.and(joined), batch.ticket, "subscription change")
    }

    /// Subscribe to everything wanted (idempotent), and apply what is
    /// pending; true on success.
    async fn resync(&mut self, client: &RedisClient) -> bool {
        let batch = self.plan.take();
        let Some(batch) = self.seed(client, batch).await else {
            return false;
        };
        let wanted = self.plan.wanted();
        let (left, joined) = tokio::join!(
            change(client, &batch.unsubscribe, false),
            change(client, &wanted, true)
        );
        self.settle(left.and(joined), batch.ticket, "re-subscribing")
    }

    /// Before a batch's `SUBSCRIBE`: read where its channels stand, so
    /// that what is published from then on is owed to their readers (see
    /// [`super::gaps`]). One read per new channel, all in flight together.
    /// When a read fails nothing of the batch is applied: it goes back to
    /// the plan (`None`), and is seeded and applied again once Redis
    /// answers — a channel is never subscribed without its seed.
    async fn seed(&self, client: &RedisClient, batch: Batch) -> Option<Batch> {
        self.seeds.forget(&batch.unsubscribe);
        if batch.subscribe.is_empty() || self.seeds.read(client, &batch.subscribe).await {
            return Some(batch);
        }
        tracing::warn!(
            channels = batch.subscribe.len(),
            "cannot read where the channels to subscribe stand: will retry when Redis answers"
        );
        self.plan.untake(batch);
        None
    }

    /// After a batch: confirm its readers, or log the failure.
    fn settle(&self, result: RedisResult<()>, ticket: u64, what: &str) -> bool {
        self.metrics
            .subscriptions
            .set(self.plan.wanted_len() as i64);
        self.metrics
            .queued
            .set(self.plan.pending_subscribes() as i64);
        match result {
            Ok(()) => {
                self.plan.applied(ticket);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed: will retry when Redis answers");
                false
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(up));
    }
}

/// (Un)subscribe `channels`: one command per [`CHUNK`] channels (one per
/// channel on a Redis Cluster, where each goes to its shard), all in flight
/// together on the multiplexed connection.
async fn change(client: &RedisClient, channels: &[String], subscribe: bool) -> RedisResult<()> {
    let chunk = if client.is_cluster() { 1 } else { CHUNK };
    let calls = channels.chunks(chunk).map(|chunk| {
        let mut client = client.clone();
        async move {
            if subscribe {
                client.subscribe(chunk).await
            } else {
                client.unsubscribe(chunk).await
            }
        }
    });
    join_all(calls).await.into_iter().collect()
}

async fn ping(client: &mut RedisClient) -> bool {
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(client);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ping).await,
        Ok(Ok(_))
    )
}
