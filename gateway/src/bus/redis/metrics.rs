//! The cluster bus's metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Redis bus metrics.
#[derive(Clone)]
pub struct RedisBusMetrics {
    pub up: IntGauge,
    pub subscriptions: IntGauge,
    pub received: IntCounter,
    pub stale: IntCounter,
    pub malformed: IntCounter,
    pub overflow: IntCounter,
    /// Subscribes waiting for the link (bounded by
    /// `PGWS_REDIS_SUBSCRIPTION_QUEUE`).
    pub queued: IntGauge,
    /// Readers refused because their Redis subscription could not be
    /// queued (`queue_full`) or was not confirmed in time (`unconfirmed`).
    pub refused: IntCounterVec,
}

/// The `reason` labels of `pgws_bus_subscriptions_refused_total`.
pub const REFUSED_REASONS: [&str; 2] = ["queue_full", "unconfirmed"];

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
            queued: IntGauge::new(
                "pgws_redis_subscription_queue",
                "Channels whose Redis subscription waits to be applied (bounded by PGWS_REDIS_SUBSCRIPTION_QUEUE)",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "pgws_bus_subscriptions_refused_total",
                    "Readers refused because their Redis subscription could not be queued or confirmed, by reason",
                ),
                &["reason"],
            )?,
        };
        for reason in REFUSED_REASONS {
            m.refused.with_label_values(&[reason]);
        }
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.stale.clone()))?;
        registry.register(Box::new(m.malformed.clone()))?;
        registry.register(Box::new(m.overflow.clone()))?;
        registry.register(Box::new(m.queued.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        Ok(m)
    }
}
