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
//! Before its first delivery on a channel the gateway has no position of
//! its own, so it starts from a **seed**: where the channel stood when the
//! link asked Redis to subscribe to it ([`Seeds`], read *before* the
//! `SUBSCRIBE`, so everything after it is owed to the channel's readers).
//! A message after a seed in the same epoch is judged as after a delivered
//! one. A channel that had no message yet when it was seeded, or whose
//! sequence started over since, owes its readers that whole sequence:
//! every history entry before the first message received, counted as a
//! hole when they do not reach back to the current run's start. Without the seed, a gateway that re-subscribed after a
//! Redis outage during which the leader published a new channel's first
//! messages (the outbox publishes its backlog at once) delivered from the
//! first message it received, silently (`docs/architecture.md`, "What the
//! nemesis found").
//!
//! What history no longer holds cannot be filled (counted as
//! `outcome="unfilled"`); v2 clients still see the jump in offsets. The
//! positions kept here are forgotten for channels quiet for [`FORGET`]
//! that this gateway no longer subscribes to.

use super::history;
use super::plan::Plan;
use crate::bus::Replayed;
use futures_util::future::join_all;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::{ChannelState, Position, Since};
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A channel quiet this long is forgotten here.
pub const FORGET: Duration = Duration::from_secs(600);
/// The longest a history read for a gap may take.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Most messages delivered from history before a channel's first live
/// one (`PGWS_HISTORY_SIZE`'s largest value).
const MAX_SEQUENCE_FILL: usize = pgws_service::history::MAX_HISTORY_SIZE;

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

/// Where a channel stood when the link asked Redis to subscribe to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// No message yet (no state, or a state a subscriber created).
    Nothing,
    /// Its newest message's position.
    At(Position),
}

impl Seed {
    /// The seed a channel state (or its absence) gives.
    pub fn of(state: Option<ChannelState>) -> Seed {
        match state {
            Some(s) if s.offset > 0 => Seed::At(s.position()),
            _ => Seed::Nothing,
        }
    }
}

/// The seeds of channels being subscribed, written by the link before
/// each `SUBSCRIBE` and taken by the delivery task at the channel's next
/// message (where a seed replaces any older position: the channel's
/// readers are owed only what followed it).
pub struct Seeds {
    keys: KeySpace,
    pending: Mutex<HashMap<Arc<str>, Seed>>,
}

impl Seeds {
    /// None yet.
    pub fn new(keys: KeySpace) -> Seeds {
        Seeds {
            keys,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Seed>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the state of each pub/sub channel in `subscribing` and keep it
    /// as the channel's seed; false when any read failed (then the link
    /// subscribes to none of them yet).
    pub async fn read(&self, client: &RedisClient, subscribing: &[String]) -> bool {
        let reads = subscribing.iter().filter_map(|pubsub| {
            let channel = self.keys.channel_of(pubsub)?;
            let mut client = client.clone();
            Some(async move {
                let state = history::state(&mut client, &self.keys, channel).await;
                (channel, state)
            })
        });
        let read = join_all(reads).await;
        let mut pending = self.lock();
        let mut complete = true;
        for (channel, state) in read {
            match state {
                Ok(state) => {
                    pending.insert(Arc::from(channel), Seed::of(state));
                }
                Err(_) => complete = false,
            }
        }
        complete
    }

    /// Keep `seed` for `channel` again (a message it did not apply to).
    fn put_back(&self, channel: &Arc<str>, seed: Seed) {
        self.lock().entry(channel.clone()).or_insert(seed);
    }

    /// Forget the seeds of pub/sub channels no longer subscribed.
    pub fn forget(&self, unsubscribed: &[String]) {
        let mut pending = self.lock();
        for pubsub in unsubscribed {
            if let Some(channel) = self.keys.channel_of(pubsub) {
                pending.remove(channel);
            }
        }
    }

    fn take(&self, channel: &str) -> Option<Seed> {
        let mut pending = self.lock();
        if pending.is_empty() {
            return None;
        }
        pending.remove(channel)
    }
}

/// What this gateway knows of a channel's position.
#[derive(Debug, Clone, Copy)]
enum Known {
    /// Delivered, or seeded at, this position.
    At(Position),
    /// Seeded before the channel's current run began: owed all of it.
    BeforeRun,
}

/// The last position delivered per channel, and the client to read
/// history with.
pub struct Gaps {
    slot: Arc<RwLock<Option<RedisClient>>>,
    keys: KeySpace,
    seeds: Arc<Seeds>,
    plan: Arc<Plan>,
    last: HashMap<Arc<str>, (Known, Instant)>,
    swept: Instant,
    metrics: GapMetrics,
}

impl Gaps {
    /// No position known yet; `seeds` are written by the link, `plan`
    /// says which channels are still subscribed.
    pub fn new(
        slot: Arc<RwLock<Option<RedisClient>>>,
        seeds: Arc<Seeds>,
        plan: Arc<Plan>,
        metrics: GapMetrics,
    ) -> Gaps {
        Gaps {
            slot,
            keys: seeds.keys.clone(),
            seeds,
            plan,
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
        let known = match self.seeds.take(channel) {
            // Still queued from before the seed, in an older sequence (a
            // base is its creation time): not owed, and the seed stands.
            Some(seed @ Seed::At(p)) if position.epoch.base < p.epoch.base => {
                self.seeds.put_back(channel, seed);
                self.metrics.duplicates.inc();
                return Verdict::Duplicate;
            }
            Some(Seed::At(p)) if p.epoch.base == position.epoch.base => Some(Known::At(p)),
            Some(_) => Some(Known::BeforeRun),
            None => self.last.get(channel).map(|(k, _)| *k),
        };
        let verdict = match known {
            Some(Known::At(last)) if last.epoch.base == position.epoch.base => {
                if position.not_after(&last) {
                    self.metrics.duplicates.inc();
                    self.last.insert(channel.clone(), (Known::At(last), now));
                    return Verdict::Duplicate;
                }
                let follows = position.offset == last.offset.saturating_add(1);
                if position.epoch.continuity > last.epoch.continuity && !follows {
                    // A newer run, with a hole or at offsets already
                    // delivered: Redis may have lost what `last` was
                    // assigned in, and the new run renumbered from there.
                    Verdict::Deliver(self.fill_renumbered(channel, last, position).await)
                } else if position.offset > last.offset.saturating_add(1) {
                    Verdict::Deliver(self.fill(channel, last, position).await)
                } else {
                    Verdict::Deliver(Vec::new())
                }
            }
            Some(Known::BeforeRun) if position.offset > 1 => {
                Verdict::Deliver(self.fill_sequence(channel, position).await)
            }
            _ => Verdict::Deliver(Vec::new()),
        };
        self.last
            .insert(channel.clone(), (Known::At(position), now));
        verdict
    }

    /// The channel's state now, `None` when it cannot be read in time.
    async fn state(&self, channel: &str) -> Option<Option<ChannelState>> {
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let read = async {
            let mut client = client?;
            history::state(&mut client, &self.keys, channel).await.ok()
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .ok()
            .flatten()
    }

    /// A newer run of `last`'s sequence reached this gateway first at
    /// `next`, not right after `last`: fill from the run's start when it
    /// lies at or before `last` (the run renumbered offsets this gateway
    /// delivered in the older run — the outside review's F1), else from
    /// `last` as for any hole.
    async fn fill_renumbered(
        &self,
        channel: &str,
        last: Position,
        next: Position,
    ) -> Vec<Replayed> {
        let start = match self.state(channel).await.flatten() {
            Some(s) if s.base == next.epoch.base && s.continuity == next.epoch.continuity => {
                last.offset.min(s.run_start)
            }
            _ => last.offset,
        };
        if next.offset <= start.saturating_add(1) {
            return Vec::new();
        }
        let from = Position {
            epoch: next.epoch,
            offset: start,
        };
        self.fill(channel, from, next).await
    }

    /// Every message of `next`'s sequence before it, for a channel seeded
    /// before that sequence had any message (or before it began): all of
    /// them were published after the seed. History holds a sequence whole
    /// (it is emptied when a channel's base changes), so this takes the
    /// contiguous entries that end right before `next`, and counts a hole
    /// when they do not reach back to the current run's start.
    async fn fill_sequence(&self, channel: &str, next: Position) -> Vec<Replayed> {
        let state = self.state(channel).await.flatten();
        let Some(state) = state.filter(|s| s.base == next.epoch.base) else {
            self.unfilled(channel, next, "the channel's sequence cannot be read");
            return Vec::new();
        };
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Newest first, the entries from the state's newest down to 1 at
        // most (some may be at or after `next`).
        let want = usize::try_from(state.offset.max(next.offset))
            .unwrap_or(usize::MAX)
            .min(MAX_SEQUENCE_FILL);
        let read = async {
            let mut client = client?;
            history::newest(&mut client, &self.keys, channel, want)
                .await
                .ok()
        };
        let newest_first = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut run: Vec<Replayed> = Vec::new();
        let mut expect = next.offset.saturating_sub(1);
        for entry in newest_first {
            if entry.offset >= next.offset {
                continue;
            }
            if entry.offset != expect || expect == 0 {
                break;
            }
            run.push(entry);
            expect -= 1;
        }
        run.reverse();
        let first = run.first().map_or(next.offset, |e| e.offset);
        if first > state.run_start.saturating_add(1) {
            self.unfilled(
                channel,
                next,
                "history no longer holds the start of the channel's run",
            );
            return Vec::new();
        }
        if !run.is_empty() {
            self.metrics.gaps.with_label_values(&["filled"]).inc();
            self.metrics.filled.inc_by(run.len() as u64);
            tracing::info!(
                channel,
                missing = run.len(),
                "filled a channel's first messages from history"
            );
        }
        run
    }

    fn unfilled(&self, channel: &str, next: Position, why: &'static str) {
        self.metrics.gaps.with_label_values(&["unfilled"]).inc();
        tracing::warn!(
            channel,
            before = next.offset,
            why,
            "this gateway's readers are owed a channel's first messages, which cannot be filled: they miss them"
        );
    }

    /// The messages after `last` and before `next`, from history; empty
    /// (and counted) when history cannot give all of them.
    async fn fill(&self, channel: &str, last: Position, next: Position) -> Vec<Replayed> {
        let missing = next.offset.saturating_sub(last.offset).saturating_sub(1);
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
                .zip(last.offset.saturating_add(1)..)
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
        let (keys, plan) = (&self.keys, &self.plan);
        self.last.retain(|channel, (_, seen)| {
            now.duration_since(*seen) < FORGET || plan.is_wanted(&keys.channel(channel))
        });
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
        let seeds = Arc::new(Seeds::new(KeySpace::new("p")));
        let plan = Arc::new(Plan::new(10));
        (
            Gaps::new(Arc::new(RwLock::new(None)), seeds, plan, metrics.clone()),
            metrics,
        )
    }

    fn seed(gaps: &Gaps, channel: &str, seed: Seed) {
        gaps.seeds.lock().insert(Arc::from(channel), seed);
    }

    #[tokio::test]
    async fn a_seed_is_where_the_readers_start() {
        let (mut gaps, metrics) = gaps();
        let ch: Arc<str> = Arc::from("c");
        // Seeded at 4: 4 came before the subscription, 5 follows it.
        seed(&gaps, "c", Seed::At(at(1, 4).expect("position")));
        assert_eq!(gaps.check(&ch, at(1, 4)).await, Verdict::Duplicate);
        assert_eq!(gaps.check(&ch, at(1, 5)).await, Verdict::Deliver(vec![]));
        // A new seed (the channel subscribed again) replaces what was
        // delivered: 9 follows the seed at 8, though 6..=8 were never seen.
        seed(&gaps, "c", Seed::At(at(1, 8).expect("position")));
        assert_eq!(gaps.check(&ch, at(1, 9)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 0);
        // Seeded at 9, the next message is 12: 10 and 11 are owed (no
        // Redis client here, so they are counted as unfilled).
        seed(&gaps, "c", Seed::At(at(1, 9).expect("position")));
        assert_eq!(gaps.check(&ch, at(1, 12)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 1);
    }

    #[tokio::test]
    async fn a_message_still_queued_from_an_older_sequence_leaves_the_seed() {
        let (mut gaps, metrics) = gaps();
        let ch: Arc<str> = Arc::from("c");
        seed(&gaps, "c", Seed::At(at(5, 10).expect("position")));
        // Base 3 is older than the seed's: from the previous subscription.
        assert_eq!(gaps.check(&ch, at(3, 2)).await, Verdict::Duplicate);
        // The seed still judges the next message of its own sequence.
        assert_eq!(gaps.check(&ch, at(5, 10)).await, Verdict::Duplicate);
        assert_eq!(gaps.check(&ch, at(5, 11)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 0);
    }

    #[tokio::test]
    async fn a_channel_seeded_before_its_run_is_owed_the_whole_run() {
        let (mut gaps, metrics) = gaps();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        // Nothing published when seeded, and the first message is the
        // first of its run: nothing owed before it.
        seed(&gaps, "a", Seed::Nothing);
        assert_eq!(gaps.check(&a, at(7, 1)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 0);
        // The first message is the run's 5th (the outbox published its
        // backlog while the gateway re-subscribed): the run's start must
        // be read — here it cannot be, and that is counted, not ignored.
        seed(&gaps, "b", Seed::Nothing);
        assert_eq!(gaps.check(&b, at(7, 5)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 1);
        // A seed in another epoch: the channel started over since.
        seed(&gaps, "a", Seed::At(at(3, 40).expect("position")));
        assert_eq!(gaps.check(&a, at(7, 3)).await, Verdict::Deliver(vec![]));
        assert_eq!(metrics.gaps.with_label_values(&["unfilled"]).get(), 2);
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
        assert_eq!(gaps.check(&ch, at(2, 2)).await, Verdict::Deliver(vec![]));
        // Numbered again in a newer continuity of the same base (Redis lost
        // the state offset 2 was assigned in): new, not a repeat.
        let renumbered = at(2, 2).map(|mut p| {
            p.epoch.continuity.session += 1;
            p
        });
        assert_eq!(gaps.check(&ch, renumbered).await, Verdict::Deliver(vec![]));
        assert_eq!(gaps.check(&ch, renumbered).await, Verdict::Duplicate);
        assert_eq!(gaps.check(&ch, None).await, Verdict::Deliver(vec![]));
    }
}
