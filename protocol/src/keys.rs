//! The Redis key and channel layout of cluster mode, defined once.
//!
//! Everything lives under `PGWS_REDIS_PREFIX` (default `pgws`), so several
//! clusters — and parallel test runs — can share one Redis. The keys the
//! coordinators coordinate on carry the hash tag `{<prefix>}` so that on a
//! Redis Cluster they share one slot (the Lua scripts touch several of
//! them); the per-channel pub/sub channels carry no tag, so sharded pub/sub
//! spreads them over the cluster.
//!
//! | name | type | what |
//! |---|---|---|
//! | `{p}:leader` | string, PX ttl | the coordinator lock: the holder's node id |
//! | `{p}:epoch` | integer | fencing epoch: `max(previous + 1, Redis time in ms)` at every acquisition |
//! | `{p}:writes` | stream | writers' envelopes waiting for NOTIFY (field `m`, channel `c`, optional traceparent `t`) |
//! | `{p}:appended:<gateway>:<n>` | integer, PX 30 s | how many messages of a gateway's append batch `n` went in: written with the batch, read before a retry so that a retry never appends twice |
//! | `p:msg:<channel>` | pub/sub channel | notifications for one websocket channel |

/// Stream entry field holding the envelope.
pub const FIELD_MESSAGE: &str = "m";
/// Stream entry field holding the websocket channel.
pub const FIELD_CHANNEL: &str = "c";
/// Stream entry field holding the writer's W3C traceparent (optional).
pub const FIELD_TRACE: &str = "t";

/// Key and channel names for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// The layout under `prefix`.
    pub fn new(prefix: &str) -> KeySpace {
        KeySpace {
            prefix: prefix.to_string(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The coordinator lock.
    pub fn leader(&self) -> String {
        format!("{{{}}}:leader", self.prefix)
    }

    /// The fencing epoch counter.
    pub fn epoch(&self) -> String {
        format!("{{{}}}:epoch", self.prefix)
    }

    /// The writers' stream.
    pub fn writes(&self) -> String {
        format!("{{{}}}:writes", self.prefix)
    }

    /// The marker of append batch `batch` of gateway instance `gateway`.
    pub fn append_marker(&self, gateway: &str, batch: u64) -> String {
        format!("{{{}}}:appended:{gateway}:{batch}", self.prefix)
    }

    /// The pub/sub channel carrying notifications for websocket `channel`.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:msg:{}", self.prefix, channel)
    }

    /// The websocket channel of a pub/sub channel name, if it is ours.
    pub fn channel_of<'a>(&self, pubsub_channel: &'a str) -> Option<&'a str> {
        pubsub_channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(":msg:"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordination_keys_share_one_hash_tag() {
        let k = KeySpace::new("pgws");
        for key in [k.leader(), k.epoch(), k.writes(), k.append_marker("g", 1)] {
            assert!(key.starts_with("{pgws}:"), "{key}");
        }
    }

    #[test]
    fn channel_names_round_trip_and_are_prefix_scoped() {
        let k = KeySpace::new("a");
        let name = k.channel("chat:room");
        assert_eq!(k.channel_of(&name), Some("chat:room"));
        assert_eq!(KeySpace::new("b").channel_of(&name), None);
        assert_eq!(KeySpace::new("a:msg").channel_of("a:msg:msg:x"), Some("x"));
    }
}
