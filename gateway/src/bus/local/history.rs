//! Standalone mode's channel states and history, in memory.
//!
//! Every notification the listener hands over gets its channel's next
//! offset here ([`History::record`]), under the same lock that a
//! subscription's read ([`History::read`]) takes — so a reader registered
//! before its read receives, live, every message the read did not see
//! (the argument is in `docs/architecture.md`, "Recovery").
//!
//! * Continuity: `(process start in ms, LISTEN session)`. A lost `LISTEN`
//!   connection starts a new session: every channel's next message starts
//!   a new epoch, and a recovery from before the loss is refused at once.
//! * Each channel keeps its last `PGWS_HISTORY_SIZE` messages (the same
//!   `Bytes` the sockets were sent: no copy); reads ignore those older
//!   than `PGWS_HISTORY_TTL`, and a sweep every [`SWEEP_EVERY`] drops them
//!   and forgets channels quiet for `PGWS_CHANNEL_STATE_TTL`.
//! * At most `PGWS_HISTORY_MAX_CHANNELS` channels are tracked. A read
//!   (a subscription) of an unknown channel keeps an **empty** state — no
//!   message yet, so the first one keeps the epoch the reader was told —
//!   and empty states go first when the bound is reached: all of them at
//!   once. Only a message makes room by forgetting the tenth least
//!   recently active channels (counted in `pgws_history_evicted_total`;
//!   their next message starts a new epoch). A read never does: with the
//!   bound full of channels that carried messages, it is answered from a
//!   state it does not keep (`pgws_history_untracked_reads_total`). So
//!   readers of made-up names cannot push out the history of real, quiet
//!   channels (issue #18, item 4).

use crate::bus::{Recovered, Replayed};
use bytes::Bytes;
use pgws_protocol::position::{ChannelState, Continuity, Position, Recovery, Since};
use pgws_service::history::HistoryConfig;
use prometheus::{IntCounter, IntGauge, Registry};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often expired history and forgotten channels are swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// History metrics.
#[derive(Clone)]
pub struct HistoryMetrics {
    channels: IntGauge,
    messages: IntGauge,
    evicted: IntCounter,
    untracked: IntCounter,
}

impl HistoryMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<HistoryMetrics> {
        let m = HistoryMetrics {
            channels: IntGauge::new(
                "pgws_history_channels",
                "Channels whose offsets (and history) this gateway keeps (standalone mode)",
            )?,
            messages: IntGauge::new(
                "pgws_history_messages",
                "Messages held in history (standalone mode)",
            )?,
            evicted: IntCounter::new(
                "pgws_history_evicted_total",
                "Channel states forgotten early because PGWS_HISTORY_MAX_CHANNELS was reached",
            )?,
            untracked: IntCounter::new(
                "pgws_history_untracked_reads_total",
                "Subscriptions answered from a channel state not kept, because PGWS_HISTORY_MAX_CHANNELS was full of channels that carried messages",
            )?,
        };
        registry.register(Box::new(m.untracked.clone()))?;
        registry.register(Box::new(m.channels.clone()))?;
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.evicted.clone()))?;
        Ok(m)
    }
}

struct Entry {
    offset: u64,
    at: Instant,
    payload: Bytes,
}

struct Channel {
    state: ChannelState,
    entries: VecDeque<Entry>,
    /// When its last message came (for the channel-state ttl).
    touched: Instant,
    /// Its place in the order of activity (unique; for eviction); `0`
    /// while empty: created by a read, no message yet.
    recency: u64,
}

#[derive(Default)]
struct Channels {
    map: HashMap<Arc<str>, Channel>,
    /// The last base handed out (bases are unique in this process).
    last_base: u64,
    /// The last recency handed out.
    last_recency: u64,
    /// Entries over all channels.
    messages: usize,
}

/// Why a channel state is about to be created.
#[derive(Clone, Copy)]
enum Need {
    /// A subscription reads an unknown channel.
    ForRead,
    /// A message arrived on an unknown channel.
    ForMessage,
}

/// Offsets and history of every channel this process has seen.
pub struct History {
    config: HistoryConfig,
    max_channels: usize,
    term: u64,
    /// Lost LISTEN sessions so far, each counted twice: when lost, and
    /// when the next session starts.
    losses: AtomicU64,
    /// A session was lost and none has started since.
    lost: std::sync::atomic::AtomicBool,
    channels: Mutex<Channels>,
    metrics: HistoryMetrics,
}

impl History {
    /// Empty history; the term is this process's start.
    pub fn new(config: HistoryConfig, max_channels: usize, metrics: HistoryMetrics) -> History {
        History {
            config,
            max_channels: max_channels.max(1),
            term: pgws_protocol::clock::unix_now().as_millis() as u64,
            losses: AtomicU64::new(0),
            lost: std::sync::atomic::AtomicBool::new(false),
            channels: Mutex::new(Channels::default()),
            metrics,
        }
    }

    fn continuity(&self) -> Continuity {
        Continuity {
            term: self.term,
            session: 1 + self.losses.load(Ordering::Acquire),
        }
    }

    /// The LISTEN connection was lost: what follows is a new session.
    pub fn session_lost(&self) {
        self.losses.fetch_add(1, Ordering::AcqRel);
        self.lost.store(true, Ordering::Release);
    }

    /// A LISTEN session started: after a loss, yet another session, newer
    /// than the epoch a client subscribing during the outage was given
    /// (what was committed meanwhile is lost: that client must see the
    /// epoch change). Found by the chaos checker (issue 20).
    pub fn session_started(&self) {
        if self.lost.swap(false, Ordering::AcqRel) {
            self.losses.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Give a notification on `channel` its offset and keep it in history.
    pub fn record(&self, channel: &Arc<str>, payload: &Bytes) -> Option<Position> {
        let continuity = self.continuity();
        let now = Instant::now();
        let mut guard = self.lock();
        let channels = &mut *guard;
        let size = self.config.size;
        let recency = channels.last_recency + 1;
        channels.last_recency = recency;
        let durable = channels
            .map
            .get(channel)
            .is_some_and(|c| c.state.continuity.is_durable());
        if durable {
            // A NOTIFY on a channel the outbox numbers: a sequence of its
            // own, under a new base (the outbox's offsets are not ours).
            if let Some(old) = channels.map.remove(channel) {
                channels.messages -= old.entries.len();
            }
        }
        if !channels.map.contains_key(channel) {
            self.make_room(channels, Need::ForMessage);
        }
        let ch = self.channel(channels, channel, continuity, now);
        // This process's continuity only moves forward: never fenced.
        let position = ch.state.advance(continuity).ok()?;
        ch.touched = now;
        ch.recency = recency;
        let mut change: isize = 0;
        if size > 0 {
            ch.entries.push_back(Entry {
                offset: position.offset,
                at: now,
                payload: payload.clone(),
            });
            change += 1;
            while ch.entries.len() > size {
                ch.entries.pop_front();
                change -= 1;
            }
        }
        channels.messages = channels.messages.saturating_add_signed(change);
        self.metrics.messages.set(channels.messages as i64);
        Some(position)
    }

    /// Keep a message the durable outbox numbered, at its own `position`:
    /// `None` when history already has it (a batch handed over again).
    /// A message that does not follow the channel's newest in the same
    /// epoch starts the channel over at it: recoverable from just before
    /// it when the channel had no message here, else only from it on
    /// (whatever came before is not known here).
    pub fn record_at(
        &self,
        channel: &Arc<str>,
        position: Position,
        payload: &Bytes,
    ) -> Option<Position> {
        let now = Instant::now();
        let mut guard = self.lock();
        let channels = &mut *guard;
        let recency = channels.last_recency + 1;
        channels.last_recency = recency;
        if !channels.map.contains_key(channel) {
            self.make_room(channels, Need::ForMessage);
        }
        let ch = self.channel(channels, channel, self.continuity(), now);
        let same = ch.state.epoch() == position.epoch;
        if same && position.offset <= ch.state.offset {
            return None;
        }
        let mut change: isize = 0;
        if !same || position.offset != ch.state.offset + 1 {
            // A channel with no message yet continues the outbox's
            // sequence (a reader just before this message misses nothing
            // history holds); one that had another sequence's messages is
            // recoverable only from this message on.
            let previous = position.offset.saturating_sub(1);
            let run_start = if ch.state.offset == 0 {
                previous
            } else {
                position.offset
            };
            change -= ch.entries.len() as isize;
            ch.entries.clear();
            ch.state = ChannelState {
                base: position.epoch.base,
                continuity: position.epoch.continuity,
                run_start,
                offset: previous,
            };
        }
        ch.state.offset = position.offset;
        ch.touched = now;
        ch.recency = recency;
        if self.config.size > 0 {
            ch.entries.push_back(Entry {
                offset: position.offset,
                at: now,
                payload: payload.clone(),
            });
            change += 1;
            while ch.entries.len() > self.config.size {
                ch.entries.pop_front();
                change -= 1;
            }
        }
        channels.messages = channels.messages.saturating_add_signed(change);
        self.metrics.messages.set(channels.messages as i64);
        Some(position)
    }

    /// Where `channel` stands and, with `since`, what was missed.
    pub fn read(&self, channel: &str, since: Option<&Since>) -> Recovered {
        let continuity = self.continuity();
        let now = Instant::now();
        let mut guard = self.lock();
        let channels = &mut *guard;
        if !channels.map.contains_key(channel) && !self.make_room(channels, Need::ForRead) {
            self.metrics.untracked.inc();
            let state = ChannelState::new(Self::next_base(channels), continuity);
            return Recovered::decide(&state, since, Vec::new());
        }
        let key: Arc<str> = Arc::from(channel);
        let ch = self.channel(channels, &key, continuity, now);
        let state = ch.state.as_of(continuity);
        let entries = match since.map(|s| state.recovery(s)) {
            Some(Recovery::Replay { first, last }) if first <= last => {
                let oldest = now.checked_sub(self.config.ttl);
                ch.entries
                    .iter()
                    .filter(|e| e.offset >= first && e.offset <= last)
                    .filter(|e| oldest.is_none_or(|o| e.at >= o))
                    .map(|e| Replayed {
                        offset: e.offset,
                        payload: e.payload.clone(),
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        Recovered::decide(&state, since, entries)
    }

    /// A base no channel of this process had: bases are unique.
    fn next_base(channels: &mut Channels) -> u64 {
        let base =
            (pgws_protocol::clock::unix_now().as_millis() as u64).max(channels.last_base + 1);
        channels.last_base = base;
        base
    }

    /// Make room for one more channel if the map is at its bound: empty
    /// states first, then — for a message only — the least recently
    /// active. Whether there is room.
    fn make_room(&self, channels: &mut Channels, need: Need) -> bool {
        if channels.map.len() < self.max_channels {
            return true;
        }
        let before = channels.map.len();
        channels.map.retain(|_, c| c.recency != 0);
        if channels.map.len() < before {
            self.metrics.channels.set(channels.map.len() as i64);
            return true;
        }
        match need {
            Need::ForRead => false,
            Need::ForMessage => {
                self.evict(channels);
                true
            }
        }
    }

    /// The channel's entry, created empty if missing (the caller made
    /// room).
    fn channel<'c>(
        &self,
        channels: &'c mut Channels,
        name: &Arc<str>,
        continuity: Continuity,
        now: Instant,
    ) -> &'c mut Channel {
        if !channels.map.contains_key(name) {
            let base = Self::next_base(channels);
            channels.map.insert(
                name.clone(),
                Channel {
                    state: ChannelState::new(base, continuity),
                    entries: VecDeque::new(),
                    touched: now,
                    recency: 0,
                },
            );
            self.metrics.channels.set(channels.map.len() as i64);
        }
        channels
            .map
            .get_mut(name)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Forget the tenth least recently active channels.
    fn evict(&self, channels: &mut Channels) {
        let mut recency: Vec<u64> = channels.map.values().map(|c| c.recency).collect();
        let cut = (recency.len() / 10).max(1);
        let (_, threshold, _) = recency.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        let before = channels.map.len();
        let mut freed = 0;
        channels.map.retain(|_, c| {
            let keep = c.recency > threshold;
            if !keep {
                freed += c.entries.len();
            }
            keep
        });
        channels.messages -= freed;
        let evicted = before - channels.map.len();
        self.metrics.evicted.inc_by(evicted as u64);
        tracing::warn!(
            evicted,
            limit = self.max_channels,
            "PGWS_HISTORY_MAX_CHANNELS reached: the least recently active channels start new epochs"
        );
    }

    /// Drop history older than the ttl and channels quiet for the
    /// channel-state ttl.
    pub fn sweep(&self) {
        let now = Instant::now();
        let oldest = now.checked_sub(self.config.ttl);
        let forgotten = now.checked_sub(self.config.state_ttl);
        let mut guard = self.lock();
        let channels = &mut *guard;
        let mut freed = 0;
        channels.map.retain(|_, c| {
            if let Some(oldest) = oldest {
                while c.entries.front().is_some_and(|e| e.at < oldest) {
                    c.entries.pop_front();
                    freed += 1;
                }
            }
            let keep = forgotten.is_none_or(|f| c.touched >= f);
            if !keep {
                freed += c.entries.len();
            }
            keep
        });
        channels.messages -= freed;
        self.metrics.channels.set(channels.map.len() as i64);
        self.metrics.messages.set(channels.messages as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(size: usize, max_channels: usize) -> History {
        History::new(
            HistoryConfig {
                size,
                ttl: Duration::from_secs(300),
                state_ttl: Duration::from_secs(3600),
            },
            max_channels,
            HistoryMetrics::register(&Registry::new()).expect("metrics"),
        )
    }

    fn since(position: &Position) -> Since {
        Since {
            epoch: position.epoch.to_string(),
            offset: position.offset,
        }
    }

    fn offsets(r: &Recovered) -> Option<Vec<u64>> {
        r.replay
            .as_ref()
            .map(|v| v.iter().map(|e| e.offset).collect())
    }

    #[test]
    fn a_reader_recovers_exactly_what_it_missed() {
        let h = history(10, 100);
        let chat: Arc<str> = Arc::from("chat");
        let start = h.read("chat", None).position;
        assert_eq!(start.offset, 0);
        let first = h.record(&chat, &Bytes::from("m1")).expect("position");
        assert_eq!(
            first.epoch, start.epoch,
            "the first subscriber's epoch holds"
        );
        for i in 2..=5 {
            h.record(&chat, &Bytes::from(format!("m{i}")));
        }
        let r = h.read("chat", Some(&since(&first)));
        assert_eq!(offsets(&r), Some(vec![2, 3, 4, 5]));
        assert_eq!(r.position.offset, 5);
        let up_to_date = h.read("chat", Some(&since(&r.position)));
        assert_eq!(offsets(&up_to_date), Some(vec![]));
    }

    #[test]
    fn trimmed_history_or_a_lost_session_is_not_recovered() {
        let h = history(3, 100);
        let chat: Arc<str> = Arc::from("chat");
        let first = h.record(&chat, &Bytes::from("m1")).expect("position");
        for _ in 0..4 {
            h.record(&chat, &Bytes::from("m"));
        }
        assert_eq!(offsets(&h.read("chat", Some(&since(&first)))), None);
        let newest = h.read("chat", None).position;
        h.session_lost();
        let after = h.read("chat", Some(&since(&newest)));
        assert_eq!(offsets(&after), None, "a hole may follow the newest");
        assert_ne!(after.position.epoch, newest.epoch);
        assert_eq!(after.position.offset, newest.offset, "offsets continue");
    }

    #[test]
    fn a_client_that_subscribed_during_an_outage_sees_the_epoch_change_after_it() {
        let h = history(10, 100);
        let chat: Arc<str> = Arc::from("chat");
        h.record(&chat, &Bytes::from("m1"));
        h.session_lost();
        // Subscribed while nothing LISTENs: what is committed now is lost.
        let during = h.read("chat", None).position;
        h.session_started();
        let fresh = h.read("chat", None).position;
        let next = h.record(&chat, &Bytes::from("m2")).expect("position");
        assert_eq!(
            next.epoch, fresh.epoch,
            "nothing lost after the session started"
        );
        assert_ne!(
            next.epoch, during.epoch,
            "the hole after the subscription is announced"
        );
        let r = h.read("chat", Some(&since(&during)));
        assert_eq!(offsets(&r), None, "not recovered across it");
        h.session_started();
        let then = h.record(&chat, &Bytes::from("m3")).expect("position");
        assert_eq!(then.epoch, next.epoch, "one more session per loss only");
    }

    #[test]
    fn beyond_the_channel_bound_the_least_active_are_forgotten() {
        let h = history(1, 10);
        for i in 0..10 {
            h.record(&Arc::from(format!("c{i}")), &Bytes::from("m"));
        }
        let c9 = h.read("c9", None).position;
        h.record(&Arc::from("new"), &Bytes::from("m"));
        assert!(h.lock().map.len() <= 10);
        assert_eq!(h.metrics.evicted.get(), 1);
        assert!(!h.lock().map.contains_key("c0"), "the oldest went first");
        assert_eq!(h.read("c9", None).position, c9, "recent ones stay");
    }

    #[test]
    fn reads_of_unknown_channels_never_push_out_one_that_carried_messages() {
        let h = history(10, 10);
        let quiet: Arc<str> = Arc::from("quiet");
        let first = h.record(&quiet, &Bytes::from("m1")).expect("position");
        h.record(&quiet, &Bytes::from("m2"));
        for i in 0..100 {
            h.read(&format!("junk{i}"), None);
        }
        assert!(h.lock().map.len() <= 10);
        let r = h.read("quiet", Some(&since(&first)));
        assert_eq!(
            offsets(&r),
            Some(vec![2]),
            "the quiet channel's history stays"
        );
        assert_eq!(h.metrics.evicted.get(), 0);
    }

    #[test]
    fn with_the_bound_full_of_active_channels_a_read_keeps_no_state() {
        let h = history(1, 3);
        for i in 0..3 {
            h.record(&Arc::from(format!("c{i}")), &Bytes::from("m"));
        }
        let junk = h.read("junk", None);
        assert_eq!(junk.position.offset, 0);
        assert!(!h.lock().map.contains_key("junk"));
        assert_eq!(h.metrics.untracked.get(), 1);
        assert_eq!(h.lock().map.len(), 3, "nothing was evicted for a read");
        assert_eq!(h.metrics.evicted.get(), 0);
    }
}
