//! A v2 socket's subscriptions: which channels it reads, where each one
//! stands, and what becomes of each delivery.
//!
//! A subscription is **recovering** from the moment its reader is in the
//! registry until the bus has answered where the channel stands (and what
//! the client missed): live deliveries for it are held back meanwhile, at
//! most [`Subscriptions::buffer_limit`] of them. Then it is **live**: a
//! delivery at or before the newest position the client has been sent —
//! the subscription's starting point, the last replayed or the last live
//! message — is a duplicate and skipped; everything else is sent, in the
//! order it arrives. That is the whole of "no gap, no duplicate" on this
//! side (`docs/architecture.md`, "Recovery").

use crate::bus::Delivery;
use pgws_protocol::position::Position;
use std::collections::HashMap;
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

enum State {
    Recovering { held: Vec<Arc<Delivery>> },
    Live { seen: Option<Position> },
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
}

impl Subscriptions {
    /// None yet; at most `buffer_limit` deliveries held per recovering
    /// subscription.
    pub fn new(buffer_limit: usize) -> Subscriptions {
        Subscriptions {
            by_channel: HashMap::new(),
            buffer_limit,
        }
    }

    /// How many channels are subscribed (recovering or live).
    pub fn len(&self) -> usize {
        self.by_channel.len()
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
                state: State::Recovering { held: Vec::new() },
            },
        );
    }

    /// Forget `channel`; whether it was subscribed.
    pub fn remove(&mut self, channel: &str) -> bool {
        self.by_channel.remove(channel).is_some()
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
            State::Recovering { held } => {
                if held.len() >= self.buffer_limit {
                    return Verdict::Overflow;
                }
                held.push(delivery.clone());
                Verdict::Held
            }
            State::Live { seen } => admit(seen, delivery),
        }
    }

    /// The recovery of `channel` by command `command` is answered: the
    /// client has everything up to `position`. Returns the held deliveries
    /// that follow it, in order — or `None` when that subscription is gone
    /// (unsubscribed, or replaced by a later `subscribe`).
    pub fn go_live(
        &mut self,
        channel: &str,
        command: u64,
        position: Position,
    ) -> Option<Vec<Arc<Delivery>>> {
        let sub = self.by_channel.get_mut(channel)?;
        if sub.command != command {
            return None;
        }
        let State::Recovering { held } = &mut sub.state else {
            return None;
        };
        let held = std::mem::take(held);
        let mut seen = Some(position);
        let follow = held
            .into_iter()
            .filter(|d| admit(&mut seen, d) == Verdict::Send)
            .collect();
        sub.state = State::Live { seen };
        Some(follow)
    }
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
        let follow = subs.go_live("chat", 7, at(1, 1, 5)).expect("live");
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
        subs.go_live("chat", 1, at(1, 2, 10)).expect("live");
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
        assert!(subs.go_live("chat", 1, at(1, 1, 0)).is_none());
        assert!(subs.is_recovering("chat", 2));
        assert!(subs.go_live("chat", 2, at(1, 1, 0)).is_some());
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
}
