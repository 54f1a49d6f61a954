//! One process's presence entries by channel: the whole of presence
//! standalone, and in cluster mode this gateway's own share of it (what it
//! re-adds when it finds itself swept, and which channels it is on).

use pgws_protocol::presence::Member;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Channel {
    members: HashMap<String, Member>,
    users: HashMap<String, u32>,
}

/// Members by channel.
#[derive(Default)]
pub struct Store(Mutex<HashMap<Arc<str>, Channel>>);

/// What a join or leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The member was added (join) or removed (leave).
    pub member: bool,
    /// The channel got its first member (join) or lost its last (leave).
    pub channel: bool,
}

impl Store {
    /// Add `member` to `channel`.
    pub fn join(&self, channel: &Arc<str>, member: &Member) -> Changed {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = !map.contains_key(channel);
        let entry = map.entry(channel.clone()).or_default();
        if entry.members.contains_key(&member.client) {
            return Changed {
                member: false,
                channel: false,
            };
        }
        entry.members.insert(member.client.clone(), member.clone());
        *entry.users.entry(member.user.clone()).or_default() += 1;
        Changed {
            member: true,
            channel: first,
        }
    }

    /// Remove client `client` from `channel`.
    pub fn leave(&self, channel: &str, client: &str) -> Changed {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get_mut(channel) else {
            return Changed {
                member: false,
                channel: false,
            };
        };
        let Some(member) = entry.members.remove(client) else {
            return Changed {
                member: false,
                channel: false,
            };
        };
        if let Some(n) = entry.users.get_mut(&member.user) {
            *n -= 1;
            if *n == 0 {
                entry.users.remove(&member.user);
            }
        }
        let empty = entry.members.is_empty();
        if empty {
            map.remove(channel);
        }
        Changed {
            member: true,
            channel: empty,
        }
    }

    /// The entries of `channel`, unless there are more than `max`: then
    /// `Err(count)`.
    pub fn list(&self, channel: &str, max: usize) -> Result<Vec<String>, u64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get(channel) else {
            return Ok(Vec::new());
        };
        if entry.members.len() > max {
            return Err(entry.members.len() as u64);
        }
        Ok(entry.members.values().map(|m| m.entry.clone()).collect())
    }

    /// `(clients, users)` of `channel`.
    pub fn stats(&self, channel: &str) -> (u64, u64) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(channel)
            .map_or((0, 0), |e| (e.members.len() as u64, e.users.len() as u64))
    }

    /// Every `(channel, member)`.
    pub fn all(&self) -> Vec<(Arc<str>, Member)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(c, e)| e.members.values().map(move |m| (c.clone(), m.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_counted_once_and_channels_come_and_go() {
        let s = Store::default();
        let chat: Arc<str> = Arc::from("chat");
        let sub = serde_json::json!("alice");
        let a = Member::new("g.1".into(), Some(&sub), None);
        let b = Member::new("g.2".into(), Some(&sub), None);
        assert!(s.join(&chat, &a).channel);
        assert!(!s.join(&chat, &a).member, "idempotent");
        assert!(!s.join(&chat, &b).channel);
        assert_eq!(s.stats("chat"), (2, 1));
        assert_eq!(s.list("chat", 1), Err(2));
        assert!(!s.leave("chat", "g.1").channel);
        assert!(s.leave("chat", "g.2").channel);
        assert_eq!(s.stats("chat"), (0, 0));
        assert!(s.all().is_empty());
    }
}
