//! What this node should be subscribed to in Redis, and how far Redis has
//! caught up with it.
//!
//! The registry asks for changes (a channel's first reader: subscribe;
//! after its last: unsubscribe) under its lock, so asking never waits and
//! never does I/O. Changes are not queued one by one: each channel has at
//! most one **pending** change — the latest desired state — so a subscribe
//! and an unsubscribe of one channel still waiting cancel out, and a
//! socket churning one channel costs one entry, not one round trip per
//! command. The link ([`super::link`]) takes everything pending at once
//! and applies it in one `SUBSCRIBE` and one `UNSUBSCRIBE` (each with many
//! channels, in chunks of [`CHUNK`]), so a round trip serves every change
//! made while the previous one was in flight.
//!
//! * **Bound:** at most `limit` channels may have a pending subscribe
//!   (`PGWS_REDIS_SUBSCRIPTION_QUEUE`); beyond it a new one is refused
//!   ([`QueueFull`]) and the caller tells its client. Unsubscribes are never
//!   refused (there can be no more of them than channels subscribed).
//! * **Confirmation:** every change is numbered; the link publishes the
//!   number up to which Redis has applied them on a `watch` channel. A
//!   reader waits for the number current when it registered
//!   ([`Plan::confirmed`]) — one value shared by every waiter, so nothing
//!   grows while Redis is down; each waiter is bounded by its own timeout.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::{watch, Notify};

/// Most channels in one `SUBSCRIBE` / `UNSUBSCRIBE` command.
pub const CHUNK: usize = 1_000;

/// `PGWS_REDIS_SUBSCRIPTION_QUEUE`'s default.
pub const DEFAULT_LIMIT: usize = 10_000;

/// A subscribe refused: `limit` channels already wait for Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{limit} subscription changes already wait for Redis")]
pub struct QueueFull {
    /// The limit.
    pub limit: usize,
}

/// Changes taken by the link, to apply in Redis.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Channels to subscribe to.
    pub subscribe: Vec<String>,
    /// Channels to unsubscribe from.
    pub unsubscribe: Vec<String>,
    /// Once applied, every change up to this number is in effect.
    pub ticket: u64,
}

#[derive(Default)]
struct State {
    /// What the link has applied or is applying.
    wanted: HashSet<String>,
    /// Channels whose desired state differs from `wanted`: true to
    /// subscribe.
    pending: HashMap<String, bool>,
    /// Pending subscribes (the bounded part of `pending`).
    subscribes: usize,
    /// The number of the latest change asked for.
    requested: u64,
}

/// The shared plan: the registry writes it, the link applies it.
pub struct Plan {
    state: Mutex<State>,
    limit: usize,
    /// Wakes the link when something is pending.
    changed: Notify,
    applied: watch::Sender<u64>,
}

impl Plan {
    /// An empty plan allowing `limit` pending subscribes.
    pub fn new(limit: usize) -> Plan {
        Plan {
            state: Mutex::new(State::default()),
            limit,
            changed: Notify::new(),
            applied: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask for `channel` to be subscribed (`true`) or not. Never waits.
    pub fn request(&self, channel: String, subscribe: bool) -> Result<(), QueueFull> {
        let mut s = self.lock();
        let was = s.pending.remove(&channel);
        if was == Some(true) {
            s.subscribes -= 1;
        }
        // Back to what the link has: the pending change cancels out.
        if s.wanted.contains(&channel) != subscribe {
            if subscribe {
                if was.is_none() && s.subscribes >= self.limit {
                    return Err(QueueFull { limit: self.limit });
                }
                s.subscribes += 1;
            }
            s.pending.insert(channel, subscribe);
        }
        s.requested += 1;
        drop(s);
        self.changed.notify_one();
        Ok(())
    }

    /// The number a reader registered now must wait for.
    pub fn ticket(&self) -> u64 {
        self.lock().requested
    }

    /// Resolves once every change up to `ticket` is in effect in Redis.
    pub async fn confirmed(&self, ticket: u64) {
        let mut applied = self.applied.subscribe();
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = applied.wait_for(|&a| a >= ticket).await;
    }

    /// Resolves when a change is pending (or was made since the last
    /// call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Take every pending change: the link applies it next.
    pub fn take(&self) -> Batch {
        let mut s = self.lock();
        let mut batch = Batch {
            ticket: s.requested,
            ..Batch::default()
        };
        let pending = std::mem::take(&mut s.pending);
        s.subscribes = 0;
        for (channel, subscribe) in pending {
            if subscribe {
                s.wanted.insert(channel.clone());
                batch.subscribe.push(channel);
            } else {
                s.wanted.remove(&channel);
                batch.unsubscribe.push(channel);
            }
        }
        batch
    }

    /// Give back a batch the link could not start applying (it sent no
    /// command): its changes are pending again, unless a newer change of
    /// the same channel is pending already.
    pub fn untake(&self, batch: Batch) {
        let mut s = self.lock();
        for channel in batch.subscribe {
            if !s.pending.contains_key(&channel) {
                s.wanted.remove(&channel);
                s.pending.insert(channel, true);
                s.subscribes += 1;
            }
        }
        for channel in batch.unsubscribe {
            if !s.pending.contains_key(&channel) {
                s.wanted.insert(channel.clone());
                s.pending.insert(channel, false);
            }
        }
        drop(s);
        self.changed.notify_one();
    }

    /// Every channel the link has applied or is applying (to subscribe
    /// again on a new connection).
    pub fn wanted(&self) -> Vec<String> {
        self.lock().wanted.iter().cloned().collect()
    }

    /// Whether the link has applied, or is applying, a subscription to
    /// `channel` (a pub/sub name).
    pub fn is_wanted(&self, channel: &str) -> bool {
        self.lock().wanted.contains(channel)
    }

    /// How many channels are subscribed (or being subscribed).
    pub fn wanted_len(&self) -> usize {
        self.lock().wanted.len()
    }

    /// How many subscribes wait for the link.
    pub fn pending_subscribes(&self) -> usize {
        self.lock().subscribes
    }

    /// Every change up to `ticket` is in effect: wake whoever waits.
    pub fn applied(&self, ticket: u64) {
        self.applied.send_if_modified(|a| {
            let newer = ticket > *a;
            if newer {
                *a = ticket;
            }
            newer
        });
    }
}

#[cfg(test)]
mod tests;
