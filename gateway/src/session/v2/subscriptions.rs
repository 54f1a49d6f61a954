//! A v2 socket's subscriptions: which channels it reads, where each one
//! stands, and what becomes of each delivery.
//!
//! A subscription is **recovering** from the moment its reader is in the
//! registry until the bus has answered where the channel stands (and what
//! the client missed): live deliveries for it are held back meanwhile, at
//! most [`Subscriptions::buffer_limit`] of them. Once answered it is
//! **catching up**: it owes the client the replay, then the held-back
//! deliveries after the answer's position, and hands them out one frame at
//! a time ([`Subscriptions::next_owed`]) so the socket writes them across
//! turns, a flush bound at a time, never a whole replay into one buffer;
//! live deliveries are still held back (same limit) behind them. Then it is
//! **live**: a delivery at or before the newest position the client has
//! been sent — the subscription's starting point, the last replayed or the
//! last live message — is a duplicate and skipped; everything else is
//! sent, in the order it arrives. That is the whole of "no gap, no
//! duplicate" on this side (`docs/architecture.md`, "Recovery").
//!
//! The replay payload bytes still owed over all subscriptions are counted
//! ([`Subscriptions::owed_bytes`]), for the socket's replay bound.

use crate::bus::{Delivery, Replayed};
use bytes::Bytes;
use pgws_protocol::position::{Epoch, Position};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What to do with one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Send,
    /// Not for this socket (any more), or already sent.
    Skip,
    /// Held back until the subscription's recovery is answered.
    Held,
    /// Held back past the limit: the socket cannot keep up.
    Overflow,
}

/// One frame a catching-up subscription owes its client.
pub enum Owed {
    /// A message from history.
    Replayed {
        /// Its channel.
        channel: Arc<str>,
        /// Its position.
        position: Position,
        /// The NOTIFY payload.
        payload: Bytes,
    },
    /// A live delivery that was held back.
    Delivery(Arc<Delivery>),
}

enum State {
    Recovering {
        held: VecDeque<Arc<Delivery>>,
    },
    CatchingUp {
        /// History still to send, oldest first, in `epoch`.
        replay: VecDeque<Replayed>,
        epoch: Epoch,
        /// Held back; sent after the replay unless at or before `seen`.
        held: VecDeque<Arc<Delivery>>,
        /// The answer's position, then the last held delivery sent.
        seen: Option<Position>,
    },
    Live {
        seen: Option<Position>,
    },
}

struct Subscription {
    /// The `subscribe` command that started it.
    command: u64,
    state: State,
}

/// The subscriptions of one socket.
pub struct Subscriptions {
    by_channel: HashMap<Arc<str>, Subscription>,
    buffer_limit: usize,
    /// Channels catching up, in the order their answers came (a channel
    /// no longer catching up is skipped when reached).
    catching_up: VecDeque<Arc<str>>,
    /// Replay payload bytes not yet handed out.
    owed_bytes: usize,
}

impl Subscriptions {
    /// None yet; at most `buffer_limit` deliveries held per recovering
    /// subscription.
    pub fn new(buffer_limit: usize) -> Subscriptions {
        Subscriptions {
            by_channel: HashMap::new(),
            buffer_limit,
            catching_up: VecDeque::new(),
            owed_bytes: 0,
        }
    }

    /// How many channels are subscribed (recovering or live).
    pub fn len(&self) -> usize {
        self.by_channel.len()
    }

    /// Whether no channel is subscribed.
    pub fn is_empty(&self) -> bool {
        self.by_channel.is_empty()
    }

    /// Whether `channel` is subscribed.
    pub fn contains(&self, channel: &str) -> bool {
        self.by_channel.contains_key(channel)
    }

    /// The subscribed channels.
    pub fn channels(&self) -> Vec<Arc<str>> {
        self.by_channel.keys().cloned().collect()
    }

    /// Command `command` subscribes to `channel`: recovering until
    /// [`Subscriptions::go_live`].
    pub fn begin(&mut self, channel: Arc<str>, command: u64) {
        self.by_channel.insert(
            channel,
            Subscription {
                command,
                state: State::Recovering {
                    held: VecDeque::new(),
                },
            },
        );
    }

    /// Forget `channel`; whether it was subscribed.
    pub fn remove(&mut self, channel: &str) -> bool {
        match self.by_channel.remove(channel) {
            Some(sub) => {
                if let State::CatchingUp { replay, .. } = &sub.state {
                    self.owed_bytes -= replay_bytes(replay);
                }
                true
            }
            None => false,
        }
    }

    /// Replay payload bytes answered and not yet handed out.
    pub fn owed_bytes(&self) -> usize {
        self.owed_bytes
    }

    /// Whether a subscription owes frames.
    pub fn catching_up(&self) -> bool {
        !self.catching_up.is_empty()
    }

    /// Whether `channel`'s subscription is the one command `command`
    /// started, still recovering.
    pub fn is_recovering(&self, channel: &str, command: u64) -> bool {
        matches!(
            self.by_channel.get(channel),
            Some(Subscription { command: c, state: State::Recovering { .. } }) if *c == command
        )
    }

    /// What to do with `delivery`.
    pub fn on_delivery(&mut self, delivery: &Arc<Delivery>) -> Verdict {
        let Some(sub) = self.by_channel.get_mut(&*delivery.channel) else {
            return Verdict::Skip;
        };
        match &mut sub.state {
            State::Recovering { held } | State::CatchingUp { held, .. } => {
                if held.len() >= self.buffer_limit {
                    return Verdict::Overflow;
                }
                held.push_back(delivery.clone());
                Verdict::Held
            }
            State::Live { seen } => admit(seen, delivery),
        }
    }

    /// The recovery of `channel` by command `command` is answered: the
    /// client is owed `replay` (oldest first, in `position`'s epoch, up to
    /// `position`), then what was held back after `position`. Whether that
    /// subscription is still there (not unsubscribed, nor replaced by a
    /// later `subscribe`).
    pub fn answer(
        &mut self,
        channel: &Arc<str>,
        command: u64,
        position: Position,
        replay: Vec<Replayed>,
    ) -> bool {
        let Some(sub) = self.by_channel.get_mut(channel) else {
            return false;
        };
        let State::Recovering { held } = &mut sub.state else {
            return false;
        };
        if sub.command != command {
            return false;
        }
        let replay = VecDeque::from(replay);
        self.owed_bytes += replay_bytes(&replay);
        sub.state = State::CatchingUp {
            replay,
            epoch: position.epoch,
            held: std::mem::take(held),
            seen: Some(position),
        };
        self.catching_up.push_back(channel.clone());
        true
    }

    /// The next frame a catching-up subscription owes, in order: a
    /// subscription's replay, then its held deliveries, then it is live
    /// and the next one's turn. `None` when nothing is owed.
    pub fn next_owed(&mut self) -> Option<Owed> {
        while let Some(channel) = self.catching_up.front() {
            let owed = match self.by_channel.get_mut(channel) {
                Some(sub) => owed_by(channel, &mut sub.state),
                None => Step::Done,
            };
            match owed {
                Step::Frame(owed) => {
                    if let Owed::Replayed { payload, .. } = &owed {
                        self.owed_bytes -= payload.len();
                    }
                    return Some(owed);
                }
                Step::Skipped => {}
                Step::Done => {
                    self.catching_up.pop_front();
                }
            }
        }
        None
    }
}

/// What one step of a catching-up subscription gave.
enum Step {
    Frame(Owed),
    /// A held delivery already sent (a duplicate).
    Skipped,
    /// Nothing more: it is live now (or was not catching up).
    Done,
}

fn owed_by(channel: &Arc<str>, state: &mut State) -> Step {
    let State::CatchingUp {
        replay,
        epoch,
        held,
        seen,
    } = state
    else {
        return Step::Done;
    };
    if let Some(entry) = replay.pop_front() {
        let position = Position {
            epoch: *epoch,
            offset: entry.offset,
        };
        return Step::Frame(Owed::Replayed {
            channel: channel.clone(),
            position,
            payload: entry.payload,
        });
    }
    if let Some(delivery) = held.pop_front() {
        return match admit(seen, &delivery) {
            Verdict::Send => Step::Frame(Owed::Delivery(delivery)),
            _ => Step::Skipped,
        };
    }
    *state = State::Live { seen: *seen };
    Step::Done
}

fn replay_bytes(replay: &VecDeque<Replayed>) -> usize {
    replay.iter().map(|e| e.payload.len()).sum()
}

/// Send `delivery` unless it is at or before `seen`; move `seen` on.
fn admit(seen: &mut Option<Position>, delivery: &Delivery) -> Verdict {
    match (delivery.position, seen.as_ref()) {
        (Some(p), Some(s)) if p.not_after(s) => Verdict::Skip,
        (Some(p), _) => {
            *seen = Some(p);
            Verdict::Send
        }
        (None, _) => Verdict::Send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_protocol::position::{Continuity, Epoch};
    use std::time::Instant;

    fn at(base: u64, session: u64, offset: u64) -> Position {
        Position {
            epoch: Epoch {
                base,
                continuity: Continuity { term: 1, session },
            },
            offset,
        }
    }

    fn delivery(channel: &str, position: Position) -> Arc<Delivery> {
        Arc::new(Delivery::new(
            Arc::from(channel),
            bytes::Bytes::from(format!("m{}", position.offset)),
            Some(position),
            Instant::now(),
        ))
    }

    /// Answer with no replay and take everything owed.
    fn go_live(
        subs: &mut Subscriptions,
        channel: &str,
        command: u64,
        position: Position,
    ) -> Option<Vec<Arc<Delivery>>> {
        if !subs.answer(&Arc::from(channel), command, position, Vec::new()) {
            return None;
        }
        let mut follow = Vec::new();
        while let Some(owed) = subs.next_owed() {
            match owed {
                Owed::Delivery(d) => follow.push(d),
                Owed::Replayed { .. } => panic!("nothing to replay"),
            }
        }
        Some(follow)
    }

    fn replayed(offsets: std::ops::RangeInclusive<u64>) -> Vec<Replayed> {
        offsets
            .map(|offset| Replayed {
                offset,
                payload: bytes::Bytes::from(vec![b'x'; 10]),
            })
            .collect()
    }

    fn offsets(ds: &[Arc<Delivery>]) -> Vec<u64> {
        ds.iter()
            .filter_map(|d| d.position.map(|p| p.offset))
            .collect()
    }

    #[test]
    fn held_deliveries_after_the_recovery_point_follow_it_once() {
        let mut subs = Subscriptions::new(100);
        subs.begin(Arc::from("chat"), 7);
        // Live messages race the history read: 4 and 5 were read from
        // history too, 6 and 7 were not.
        for o in 4..=7 {
            assert_eq!(
                subs.on_delivery(&delivery("chat", at(1, 1, o))),
                Verdict::Held
            );
        }
        let follow = go_live(&mut subs, "chat", 7, at(1, 1, 5)).expect("live");
        assert_eq!(offsets(&follow), vec![6, 7]);
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 7))),
            Verdict::Skip
        );
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 8))),
            Verdict::Send
        );
        assert_eq!(
            subs.on_delivery(&delivery("other", at(1, 1, 1))),
            Verdict::Skip
        );
    }

    #[test]
    fn a_new_run_of_the_same_sequence_is_not_sent_twice_and_a_new_base_is_sent() {
        let mut subs = Subscriptions::new(100);
        subs.begin(Arc::from("chat"), 1);
        go_live(&mut subs, "chat", 1, at(1, 2, 10)).expect("live");
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 10))),
            Verdict::Skip
        );
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(2, 1, 1))),
            Verdict::Send
        );
    }

    #[test]
    fn an_answer_for_a_replaced_subscription_is_ignored() {
        let mut subs = Subscriptions::new(100);
        subs.begin(Arc::from("chat"), 1);
        assert!(subs.remove("chat"));
        subs.begin(Arc::from("chat"), 2);
        assert!(go_live(&mut subs, "chat", 1, at(1, 1, 0)).is_none());
        assert!(subs.is_recovering("chat", 2));
        assert!(go_live(&mut subs, "chat", 2, at(1, 1, 0)).is_some());
    }

    #[test]
    fn holding_back_is_bounded() {
        let mut subs = Subscriptions::new(2);
        subs.begin(Arc::from("chat"), 1);
        for o in 1..=2 {
            assert_eq!(
                subs.on_delivery(&delivery("chat", at(1, 1, o))),
                Verdict::Held
            );
        }
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 3))),
            Verdict::Overflow
        );
    }

    /// The next owed frame's offset (held deliveries + 100).
    fn take(subs: &mut Subscriptions) -> Option<u64> {
        subs.next_owed().map(|owed| match owed {
            Owed::Replayed { position, .. } => position.offset,
            Owed::Delivery(d) => 100 + d.position.map_or(0, |p| p.offset),
        })
    }

    #[test]
    fn the_replay_is_handed_out_a_frame_at_a_time_before_what_was_held() {
        let mut subs = Subscriptions::new(100);
        let chat: Arc<str> = Arc::from("chat");
        subs.begin(chat.clone(), 1);
        subs.on_delivery(&delivery("chat", at(1, 1, 3)));
        assert!(subs.answer(&chat, 1, at(1, 1, 3), replayed(1..=3)));
        assert_eq!(subs.owed_bytes(), 30);
        let mut sent = vec![take(&mut subs), take(&mut subs)];
        // Arrives mid-replay: held behind it, not sent ahead of it.
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 4))),
            Verdict::Held
        );
        while let Some(o) = take(&mut subs) {
            sent.push(Some(o));
        }
        assert_eq!(sent, vec![Some(1), Some(2), Some(3), Some(104)]);
        assert_eq!(subs.owed_bytes(), 0);
        assert!(!subs.catching_up());
        assert_eq!(
            subs.on_delivery(&delivery("chat", at(1, 1, 5))),
            Verdict::Send
        );
    }

    #[test]
    fn leaving_while_catching_up_releases_what_was_owed() {
        let mut subs = Subscriptions::new(100);
        let chat: Arc<str> = Arc::from("chat");
        subs.begin(chat.clone(), 1);
        assert!(subs.answer(&chat, 1, at(1, 1, 5), replayed(1..=5)));
        assert!(subs.next_owed().is_some());
        assert_eq!(subs.owed_bytes(), 40);
        assert!(subs.remove("chat"));
        assert_eq!(subs.owed_bytes(), 0);
        assert!(subs.next_owed().is_none());
        assert!(!subs.catching_up());
    }
}
