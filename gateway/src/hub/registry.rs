//! The node-local registry: which sockets read which channel.
//!
//! Sharded by channel hash so that sockets joining and leaving on different
//! channels do not contend; each shard is a `std::sync::RwLock` (not a Tokio
//! one) because nothing async happens while it is held.
//!
//! * **Fan-out holds no lock while sending.** Each channel keeps an
//!   immutable snapshot of its readers (`Arc<[Arc<Subscriber>]>`); fan-out
//!   takes the shard's read lock only to clone that `Arc`, then sends. A
//!   join or leave makes the snapshot stale (O(1)); the next fan-out
//!   rebuilds it once — O(readers), the same order as the sending it is
//!   about to do — so a channel with 100,000 readers never blocks the
//!   shard while its messages go out.
//! * **The bus sees subscribes and unsubscribes in registry order.** The
//!   `on_first`/`on_last` callbacks of [`Registry::insert`] and
//!   [`Registry::remove`] run while the shard's write lock is held, so when
//!   a channel's last reader leaves while its next first reader joins, the
//!   bus is told "unsubscribe" then "subscribe", never the reverse (which
//!   would leave the node unsubscribed while a reader waits). Callbacks
//!   must not block: the bus only queues the request.

use super::member::{SessionId, Subscriber};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

const SHARDS: usize = 64;

/// The readers of one channel, as fan-out sees them at one moment.
pub type Readers = Arc<[Arc<Subscriber>]>;

/// One channel's readers.
#[derive(Default)]
struct Channel {
    members: Vec<Arc<Subscriber>>,
    /// Where each member is in `members` (for O(1) removal).
    position: HashMap<SessionId, usize>,
    /// `members` as fan-out last saw them; `None` once stale.
    snapshot: Option<Readers>,
}

type Shard = RwLock<HashMap<Arc<str>, Channel>>;

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

    /// Add `subscriber` to `channel`; `on_first` runs, under the shard's
    /// lock, when it is the channel's first reader.
    pub fn insert(&self, channel: &str, subscriber: Subscriber, on_first: impl FnOnce()) {
        let added: Result<(), std::convert::Infallible> =
            self.try_insert(channel, subscriber, || {
                on_first();
                Ok(())
            });
        let Ok(()) = added;
    }

    /// [`Registry::insert`], unless `on_first` refuses: then nothing is
    /// added and its error is returned (the bus could not take the
    /// channel's subscription).
    pub fn try_insert<E>(
        &self,
        channel: &str,
        subscriber: Subscriber,
        on_first: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let entry = match shard.get_mut(channel) {
            Some(entry) => entry,
            None => {
                on_first()?;
                shard.entry(Arc::from(channel)).or_default()
            }
        };
        entry.position.insert(subscriber.id, entry.members.len());
        entry.members.push(Arc::new(subscriber));
        entry.snapshot = None;
        Ok(())
    }

    /// Remove socket `id` from `channel`; `on_last` runs, under the shard's
    /// lock, when the channel has no reader left.
    pub fn remove(&self, channel: &str, id: SessionId, on_last: impl FnOnce()) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        let Some(at) = entry.position.remove(&id) else {
            return;
        };
        entry.members.swap_remove(at);
        if let Some(moved) = entry.members.get(at) {
            entry.position.insert(moved.id, at);
        }
        entry.snapshot = None;
        if entry.members.is_empty() {
            shard.remove(channel);
            on_last();
        }
    }

    /// The readers of `channel` right now (empty when none).
    pub fn readers(&self, channel: &str) -> Readers {
        let shard = self.shard(channel);
        {
            let read = shard.read().unwrap_or_else(|p| p.into_inner());
            match read.get(channel) {
                None => return Arc::new([]),
                Some(Channel {
                    snapshot: Some(snapshot),
                    ..
                }) => return snapshot.clone(),
                Some(_) => {}
            }
        }
        let mut write = shard.write().unwrap_or_else(|p| p.into_inner());
        match write.get_mut(channel) {
            None => Arc::new([]),
            Some(entry) => {
                let members = &entry.members;
                entry
                    .snapshot
                    .get_or_insert_with(|| members.iter().cloned().collect())
                    .clone()
            }
        }
    }
}

#[cfg(test)]
mod tests;
