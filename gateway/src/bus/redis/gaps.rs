//! Gaps in what reaches this gateway, filled from history.
//!
//! A gateway receives a channel's messages only while its Redis
//! subscription is in effect. After Redis was lost and came back, what the
//! leader published before this gateway had subscribed again never
//! arrives — and with the durable outbox the leader does publish, at once,
//! what committed meanwhile. Offsets make the hole visible: within one
//! epoch base they increase by exactly one, so a message whose offset is
//! more than one past the last one delivered here says what is missing.
//! The delivery task then reads the missing offsets from the channel's
//! history and delivers them first, in order; a message at or before the
//! last one delivered (the same base) is a duplicate and is dropped.
//!
//! What history no longer holds cannot be filled (counted as
//! `outcome="unfilled"`); v2 clients still see the jump in offsets. The
//! positions kept here are forgotten for channels quiet for [`FORGET`].

use super::history;
use crate::bus::Replayed;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::{Position, Since};
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A channel quiet this long is forgotten here.
pub const FORGET: Duration = Duration::from_secs(600);
/// The longest a history read for a gap may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Gap metrics.
#[derive(Clone)]
pub struct GapMetrics {
    gaps: IntCounterVec,
    filled: IntCounter,
    duplicates: IntCounter,
}

impl GapMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<GapMetrics> {
        let m = GapMetrics {
            gaps: IntCounterVec::new(
                Opts::new(
                    "pgws_bus_gaps_total",
                    "Holes in a channel's offsets seen by this gateway (its subscription was not in effect), by outcome",
                ),
                &["outcome"],
            )?,
            filled: IntCounter::new(
                "pgws_bus_gap_messages_total",
                "Messages delivered from history to fill holes",
            )?,
            duplicates: IntCounter::new(
                "pgws_bus_duplicates_dropped_total",
                "Messages dropped because this gateway had already delivered their offset",
            )?,
        };
        registry.register(Box::new(m.gaps.clone()))?;
        registry.register(Box::new(m.filled.clone()))?;
        registry.register(Box::new(m.duplicates.clone()))?;
        Ok(m)
    }
}

/// What to do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it, after these (the hole before it, oldest first).
    Deliver(Vec<Replayed>),
    /// Already delivered: drop it.
    Duplicate,
}

/// The last position delivered per channel, and the client to read
/// history with.
pub struct Gaps {
    slot: Arc<RwLock<Option<RedisClient>>>,
    keys: KeySpace,
    last: HashMap<Arc<str>, (Position, Instant)>,
    swept: Instant,
    metrics: GapMetrics,
}

impl Gaps {
    /// No position known yet.
    pub fn new(
        slot: Arc<RwLock<Option<RedisClient>>>,
        keys: KeySpace,
        metrics: GapMetrics,
    ) -> Gaps {
        Gaps {
            slot,
            keys,
            last: HashMap::new(),
            swept: Instant::now(),
            metrics,
        }
    }

    /// Judge a message at `position` on `channel`, reading history for a
    /// hole before it.
    pub async fn check(&mut self, channel: &Arc<str>, position: Option<Position>) -> Verdict {
        let Some(position) = position else {
            return Verdict::Deliver(Vec::new());
        };
        let now = Instant::now();
        self.sweep(now);
        let previous = self.last.get(channel).map(|(p, _)| *p);
        let verdict = match previous {
            Some(last) if last.epoch.base == position.epoch.base => {
                if position.offset <= last.offset {
                    self.metrics.duplicates.inc();
                    return Verdict::Duplicate;
                }
                if position.offset > last.offset + 1 {
                    Verdict::Deliver(self.fill(channel, last, position).await)
                } else {
                    Verdict::Deliver(Vec::new())
                }
            }
            _ => Verdict::Deliver(Vec::new()),
        };
        self.last.insert(channel.clone(), (position, now));
        verdict
    }

    /// The messages after `last` and before `next`, from history; empty
    /// (and counted) when history cannot give all of them.
    async fn fill(&self, channel: &str, last: Position, next: Position) -> Vec<Replayed> {
        let missing = next.offset - last.offset - 1;
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let since = Since {
            epoch: next.epoch.to_string(),
            offset: last.offset,
        };
        let read = async {
            let mut client = client?;
            history::read(&mut client, &self.keys, channel, Some(&since))
                .await
                .ok()
        };
        let replay = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.replay)
            .unwrap_or_default();
        let hole: Vec<Replayed> = replay
            .into_iter()
            .filter(|e| e.offset > last.offset && e.offset < next.offset)
            .collect();
        let complete = hole.len() as u64 == missing
            && hole
                .iter()
                .zip(last.offset + 1..)
                .all(|(e, want)| e.offset == want);
        if complete {
            self.metrics.gaps.with_label_values(&["filled"]).inc();
            self.metrics.filled.inc_by(missing);
            tracing::info!(channel, missing, "filled a hole from history");
            hole
        } else {
            self.metrics.gaps.with_label_values(&["unfilled"]).inc();
            tracing::warn!(
                channel,
                missing,
                after = last.offset,
                "a hole in a channel's offsets that history cannot fill: its readers miss those messages"
            );
            Vec::new()
        }
    }

    fn sweep(&mut self, now: Instant) {
        if now.duration_since(self.swept) < FORGET / 10 {
            return;
        }
        self.swept = now;
        self.last
            .retain(|_, (_, seen)| now.duration_since(*seen) < FORGET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_protocol::position::{Continuity, Epoch};

    fn at(base: u64, offset: u64) -> Option<Position> {
        Some(Position {
            epoch: Epoch {
                base,
                continuity: Continuity::DURABLE,
            },
            offset,
        })
    }

    fn gaps() -> (Gaps, GapMetrics) {
        let metrics = GapMetrics::register(&Registry::new()).expect("metrics");
        (
            Gaps::new(
                Arc::new(RwLock::new(None)),
                KeySpace::new("p"),
                metrics.clone(),
            ),
            metrics,
        )
    }

    #[tokio::test]
    async fn repeats_are_dropped_and_a_hole_history_cannot_fill_is_counted() {
        let (mut gaps, metrics) = gaps();
        let ch: Arc<str> = Arc::from("c");
        assert_eq!(gaps.check(&ch, at(1, 5)).await, Verdict::Deliver(vec![]));
        assert_eq!(gaps.check(&ch, at(1, 6)).await, Verdict::Deliver(vec![]));
        assert_eq!(gaps.check(&ch, at(1, 6)).await, Verdict::Duplicate);
        assert_eq!(gaps.check(&ch, at(1, 3)).await, Verdict::Duplicate);
        // No Redis client: the hole 7..=9 cannot be read.
        assert_eq!(gaps.check(&ch, at(1, 10)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 1);
        assert_eq!(metrics.duplicates.get(), 2);
        // A new base starts over: a lower offset is not a repeat.
        assert_eq!(gaps.check(&ch, at(2, 1)).await, Verdict::Deliver(vec![]));
        assert_eq!(gaps.check(&ch, None).await, Verdict::Deliver(vec![]));
    }
}
