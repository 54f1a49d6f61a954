//! `pgws_outbox_*`: the reader's and the pruner's counters.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The outbox's metrics.
#[derive(Clone)]
pub struct OutboxMetrics {
    /// 1 while the reader's connection is up and reading.
    pub up: IntGauge,
    /// Age of the oldest commit not yet handed over, in seconds (0 idle).
    pub lag: Gauge,
    /// Messages handed over.
    pub messages: IntCounter,
    /// Poll queries.
    pub polls: IntCounter,
    /// Doorbells heard (a transaction committed while the reader waited).
    pub doorbells: IntCounter,
    /// Messages delivered from a doorbell's bell, without a poll.
    pub rung: IntCounter,
    /// Doorbell notifications not signed with the outbox's key.
    pub forged: IntCounter,
    /// Reader connections lost and made again.
    pub reconnects: IntCounter,
    /// Batches the sink refused (handed over again after a pause).
    pub refused: IntCounter,
    /// Rows pruned, by table.
    pub pruned: IntCounterVec,
    /// Pruning passes that ran to the end.
    pub prune_runs: IntCounter,
    /// VACUUMs run after large pruning passes.
    pub vacuums: IntCounter,
    /// Times the reader found itself further behind than the retention.
    pub behind: IntCounter,
    /// Times the database was found behind the reader (generation moved).
    pub rewinds: IntCounter,
}

impl OutboxMetrics {
    /// Create and register the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<OutboxMetrics> {
        let m = OutboxMetrics {
            up: IntGauge::new(
                "pgws_outbox_up",
                "1 while the outbox reader is connected and reading",
            )?,
            lag: Gauge::new(
                "pgws_outbox_lag_seconds",
                "Age of the oldest outbox commit not yet delivered by the reader (0 when caught up)",
            )?,
            messages: IntCounter::new(
                "pgws_outbox_messages_total",
                "Messages read from the outbox and handed to delivery",
            )?,
            polls: IntCounter::new("pgws_outbox_polls_total", "Outbox poll queries")?,
            doorbells: IntCounter::new(
                "pgws_outbox_doorbells_total",
                "Doorbells heard: a transaction with pgws.send committed while the reader waited",
            )?,
            rung: IntCounter::new(
                "pgws_outbox_rung_messages_total",
                "Outbox messages delivered from the doorbell notification itself, without a poll",
            )?,
            forged: IntCounter::new(
                "pgws_outbox_forged_bells_total",
                "Notifications on the outbox doorbell not signed with the outbox's key (sent by another role; ignored)",
            )?,
            reconnects: IntCounter::new(
                "pgws_outbox_reconnects_total",
                "Times the outbox reader's connection was lost and made again",
            )?,
            refused: IntCounter::new(
                "pgws_outbox_refused_total",
                "Outbox batches delivery could not take (handed over again after a pause)",
            )?,
            pruned: IntCounterVec::new(
                Opts::new(
                    "pgws_outbox_pruned_total",
                    "Rows deleted from the outbox tables past PGWS_OUTBOX_RETENTION",
                ),
                &["table"],
            )?,
            behind: IntCounter::new(
                "pgws_outbox_behind_retention_total",
                "Times the reader was further behind than PGWS_OUTBOX_RETENTION (nothing unread is pruned)",
            )?,
            prune_runs: IntCounter::new(
                "pgws_outbox_prune_runs_total",
                "Pruning passes over the outbox tables that ran to the end",
            )?,
            vacuums: IntCounter::new(
                "pgws_outbox_vacuums_total",
                "VACUUMs of the outbox tables after a pruning pass of 10,000 rows or more",
            )?,
            rewinds: IntCounter::new(
                "pgws_outbox_rewinds_total",
                "Times the outbox database was behind the reader (a failover to a lagging replica, a restore): the generation moved on",
            )?,
        };
        registry.register(Box::new(m.rewinds.clone()))?;
        registry.register(Box::new(m.prune_runs.clone()))?;
        registry.register(Box::new(m.vacuums.clone()))?;
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.polls.clone()))?;
        registry.register(Box::new(m.rung.clone()))?;
        registry.register(Box::new(m.forged.clone()))?;
        registry.register(Box::new(m.doorbells.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.pruned.clone()))?;
        registry.register(Box::new(m.behind.clone()))?;
        Ok(m)
    }
}
