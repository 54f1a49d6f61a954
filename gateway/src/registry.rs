//! The node-local registry: which sockets read which channel.
//!
//! Sharded by channel hash so that sockets joining and leaving on different
//! channels do not contend; each shard is a `std::sync::RwLock` (not a Tokio
//! one) because nothing async happens while it is held — fan-out only calls
//! the non-blocking `try_send`.

use crate::session::{Delivery, SessionControl, SessionId};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

const SHARDS: usize = 64;

/// One reading socket, as seen by fan-out.
#[derive(Clone)]
pub struct Subscriber {
    /// The socket's id, to remove it again.
    pub id: SessionId,
    /// Its bounded send queue.
    pub queue: mpsc::Sender<Arc<Delivery>>,
    /// Used to cut it off when the queue is full.
    pub control: Arc<SessionControl>,
}

type Shard = RwLock<HashMap<Arc<str>, Vec<Subscriber>>>;

/// Sockets by channel.
pub struct Registry {
    shards: Box<[Shard]>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl Registry {
    fn shard(&self, channel: &str) -> &Shard {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    /// Add `subscriber` to `channel`; true when it is the channel's first.
    pub fn insert(&self, channel: &str, subscriber: Subscriber) -> bool {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match shard.get_mut(channel) {
            Some(list) => {
                list.push(subscriber);
                false
            }
            None => {
                shard.insert(Arc::from(channel), vec![subscriber]);
                true
            }
        }
    }

    /// Remove socket `id` from `channel`; true when the channel has no
    /// reader left.
    pub fn remove(&self, channel: &str, id: SessionId) -> bool {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let Some(list) = shard.get_mut(channel) else {
            return false;
        };
        list.retain(|s| s.id != id);
        if list.is_empty() {
            shard.remove(channel);
            true
        } else {
            false
        }
    }

    /// Call `f` for every reader of `channel`; returns how many there were.
    pub fn for_each(&self, channel: &str, mut f: impl FnMut(&Subscriber)) -> usize {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match shard.get(channel) {
            Some(list) => {
                list.iter().for_each(&mut f);
                list.len()
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(id: u64) -> Subscriber {
        let (queue, _rx) = mpsc::channel(1);
        Subscriber {
            id: SessionId(id),
            queue,
            control: Arc::default(),
        }
    }

    #[test]
    fn first_and_last_reader_are_reported() {
        let r = Registry::default();
        assert!(r.insert("chat", subscriber(1)));
        assert!(!r.insert("chat", subscriber(2)));
        assert!(!r.remove("chat", SessionId(1)));
        assert!(r.remove("chat", SessionId(2)));
        assert_eq!(r.for_each("chat", |_| {}), 0);
        assert!(!r.remove("chat", SessionId(3)), "unknown channel");
    }

    #[test]
    fn for_each_visits_only_the_channel() {
        let r = Registry::default();
        r.insert("a", subscriber(1));
        r.insert("a", subscriber(2));
        r.insert("b", subscriber(3));
        let mut seen = Vec::new();
        assert_eq!(r.for_each("a", |s| seen.push(s.id.0)), 2);
        seen.sort_unstable();
        assert_eq!(seen, vec![1, 2]);
    }
}
