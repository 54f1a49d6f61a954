//! What presence's front ([`super::Presence`]) and its Redis backend
//! share: the query error and the counters.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Why a presence query was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// More members than `PGWS_PRESENCE_MAX_LIST`.
    #[error("{0} clients: more than PGWS_PRESENCE_MAX_LIST, use presence_stats")]
    TooMany(u64),
    /// Redis did not answer.
    #[error("presence unavailable, try again")]
    Unavailable,
}

/// Presence's counters.
#[derive(Clone)]
pub struct PresenceMetrics {
    /// `pgws_presence_changes_total{change}`: joins and leaves of this
    /// gateway's members.
    pub changes: IntCounterVec,
    /// `pgws_presence_queries_total{query}`.
    pub queries: IntCounterVec,
    /// `pgws_presence_info_dropped_total`: `presence_info` claims not
    /// listed (not an object, or over the bound).
    pub info_dropped: IntCounter,
    /// `pgws_presence_dropped_total`: changes not written to Redis (its
    /// queue was full).
    pub dropped: IntCounter,
    /// `pgws_presence_swept_total`: entries of dead gateways removed by
    /// this one.
    pub swept: IntCounter,
    /// `pgws_presence_resyncs_total`: times this gateway found itself
    /// swept and re-added its members.
    pub resyncs: IntCounter,
}

impl PresenceMetrics {
    pub(super) fn register(registry: &Registry) -> prometheus::Result<PresenceMetrics> {
        let changes = IntCounterVec::new(
            Opts::new(
                "pgws_presence_changes_total",
                "Presence joins and leaves of this gateway's subscriptions",
            ),
            &["change"],
        )?;
        let queries = IntCounterVec::new(
            Opts::new("pgws_presence_queries_total", "Presence queries answered"),
            &["query"],
        )?;
        let info_dropped = IntCounter::new(
            "pgws_presence_info_dropped_total",
            "presence_info claims left out of presence (not an object, or over PGWS_PRESENCE_INFO_MAX_BYTES)",
        )?;
        let dropped = IntCounter::new(
            "pgws_presence_dropped_total",
            "Presence changes not written to Redis because the queue to it was full",
        )?;
        let swept = IntCounter::new(
            "pgws_presence_swept_total",
            "Presence entries of dead gateways removed (with leave events) by this gateway",
        )?;
        let resyncs = IntCounter::new(
            "pgws_presence_resyncs_total",
            "Times this gateway found its presence entries swept and re-added them",
        )?;
        registry.register(Box::new(changes.clone()))?;
        registry.register(Box::new(queries.clone()))?;
        for c in [&info_dropped, &dropped, &swept, &resyncs] {
            registry.register(Box::new(c.clone()))?;
        }
        Ok(PresenceMetrics {
            changes,
            queries,
            info_dropped,
            dropped,
            swept,
            resyncs,
        })
    }
}
