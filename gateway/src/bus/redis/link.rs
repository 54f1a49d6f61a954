//! The Redis connection's life: connect with backoff, apply subscribe and
//! unsubscribe requests in the order the registry made them, ping every
//! [`HEALTH_EVERY`] for readiness, and re-subscribe everything wanted after
//! a disconnection (a Redis restart, or a Sentinel failover to a new
//! master). Pushes do not pass through here (see [`super::inbound`]), so a
//! subscription round trip — one per channel on a Redis Cluster — never
//! holds deliveries up.

use super::inbound::Inbound;
use super::metrics::RedisBusMetrics;
use pgws_service::backoff::Backoff;
use pgws_service::redis_client::{describe_error, RedisClient, RedisConfig, RESPONSE_TIMEOUT};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A change of what this node subscribes to, in registry order.
pub enum Subscription {
    /// Subscribe to this Redis channel.
    Add(String),
    /// Unsubscribe from it.
    Remove(String),
    /// Answer once every request before this one is in effect in Redis
    /// (a subscription's reader waits for it before reading history).
    Confirm(oneshot::Sender<()>),
}

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
    /// Redis channels some local socket reads.
    pub wanted: HashSet<String>,
    /// Confirmations waiting until the subscriptions are back in effect.
    pub confirming: Vec<oneshot::Sender<()>>,
}

impl Link {
    /// Run until `stop` (or until the bus handles are gone).
    pub async fn run(
        mut self,
        mut ops: mpsc::UnboundedReceiver<Subscription>,
        stop: CancellationToken,
    ) {
        let Some(mut client) = self.connect(&mut ops, &stop).await else {
            return;
        };
        *self.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        let mut synced = self.resubscribe(&mut client).await;
        if synced {
            self.confirm_waiting();
        }
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let resync = self.inbound.resync.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                op = ops.recv() => match op {
                    Some(Subscription::Confirm(reply)) => {
                        if synced {
                            let _ = reply.send(());
                        } else {
                            self.confirming.push(reply);
                        }
                    }
                    Some(op) => {
                        if !self.apply(&mut client, op).await {
                            synced = false;
                        }
                    }
                    None => break,
                },
                // The connection dropped: re-subscribe everything once Redis
                // answers again — possibly on a new master (Sentinel).
                _ = resync.notified() => synced = false,
                _ = health.tick() => {
                    let alive = ping(&mut client).await;
                    self.set_up(alive);
                    if alive && !synced {
                        synced = self.resubscribe(&mut client).await;
                    } else if !alive {
                        synced = false;
                    }
                    if synced {
                        self.confirm_waiting();
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
        ops: &mut mpsc::UnboundedReceiver<Subscription>,
        stop: &CancellationToken,
    ) -> Option<RedisClient> {
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
                    let retry = tokio::time::sleep(delay);
                    tokio::pin!(retry);
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = &mut retry => break,
                            op = ops.recv() => match op {
                                Some(Subscription::Add(c)) => { self.wanted.insert(c); }
                                Some(Subscription::Remove(c)) => { self.wanted.remove(&c); }
                                Some(Subscription::Confirm(reply)) => self.confirming.push(reply),
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
            Subscription::Confirm(reply) => {
                let _ = reply.send(());
                Ok(())
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

    /// The subscriptions are in effect: answer whoever waits for that.
    fn confirm_waiting(&mut self) {
        for reply in self.confirming.drain(..) {
            let _ = reply.send(());
        }
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
