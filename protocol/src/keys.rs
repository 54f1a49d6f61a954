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
//! | `{p}:epoch` | integer | fencing epoch: `max(previous + 1, Redis time in ms)` at every acquisition; on a single Redis the publish script reads it and refuses a batch of any other epoch |
//! | `{p}:writes` | stream | writers' envelopes waiting for NOTIFY (field `m`, channel `c`, optional traceparent `t`) |
//! | `{p}:appended:<gateway>:<n>` | integer, PX 30 s | how many messages of a gateway's append batch `n` went in: written with the batch, read before a retry so that a retry never appends twice |
//! | `{p}:progress` | string `"<marker epoch> <counter> <index>"` | the NOTIFY-stream position of the leader's last published notification (`PGWS_STANDBY_LISTEN`): where a successor resumes |
//! | `{p}:marker-key` | string, no ttl | the coordinators' secret that signs stream markers (64 hex digits, made by the first coordinator that finds none): a role that may NOTIFY cannot forge a marker |
//! | `{p}:standbys` | sorted set, member node id, score expiry (Redis ms) | standbys whose buffer reaches back to `{p}:progress` (`PGWS_STANDBY_LISTEN`): while one is alive, a standby whose buffer does not defers in the election |
//! | `{p}:continuity` | hash `t`, `s`, `ttl` | the current [continuity](crate::position::Continuity) (term, session) and the channel-state ttl (ms); written by the leader, only ever moved forward |
//! | `p:msg:<channel>` | pub/sub channel | notifications for one websocket channel |
//! | `{p:msg:<channel>}:s` | string, PX ttl | the channel's offsets and epoch ([`crate::history`]) |
//! | `{p:msg:<channel>}:h` | stream, PX ttl | the channel's history: the last messages, field `o` the offset, `d` the payload |
//! | `{p:msg:<channel>}:pc` | hash, client id → `<user>\n<entry JSON>` | the channel's presence: one field per subscribed client on any gateway (`PGWS_PRESENCE`); gone when empty |
//! | `{p:msg:<channel>}:pu` | hash, user → number of its clients | the channel's unique users (for `presence_stats`); gone when empty |
//! | `{p:msg:<channel>}:po` | string `1` | the database was told the channel is occupied (`PGWS_OCCUPANCY_EVENTS`): set by the join that made it occupied, deleted by the vacated check |
//! | `{p}:presence` | sorted set, member gateway id, score expiry (Redis ms) | the gateways holding presence entries, refreshed every `PGWS_PRESENCE_TTL`/3; an expired member is swept |
//! | `{p}:presence:<gateway>` | set of channels | the channels where a gateway has presence entries, for the sweep after it died |
//!
//! A channel's state and history keys hash to the same slot as its pub/sub
//! channel, so the leader's publish script can touch all three on a Redis
//! Cluster: they are the pub/sub name in braces — or, when the name
//! already holds a hash tag (a channel like `room{7}`), the name as it is.

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

    /// Where the current continuity is kept.
    pub fn continuity(&self) -> String {
        format!("{{{}}}:continuity", self.prefix)
    }

    /// The NOTIFY-stream position of the leader's last published
    /// notification (with standby listening).
    pub fn progress(&self) -> String {
        format!("{{{}}}:progress", self.prefix)
    }

    /// The coordinators' secret that signs stream markers.
    pub fn marker_key(&self) -> String {
        format!("{{{}}}:marker-key", self.prefix)
    }

    /// The standbys able to take over without a gap, with their expiry.
    pub fn standbys(&self) -> String {
        format!("{{{}}}:standbys", self.prefix)
    }

    /// The key of websocket `channel`'s offsets and epoch.
    pub fn channel_state(&self, channel: &str) -> String {
        format!("{}:s", same_slot(&self.channel(channel)))
    }

    /// The key of websocket `channel`'s history stream.
    pub fn channel_history(&self, channel: &str) -> String {
        format!("{}:h", same_slot(&self.channel(channel)))
    }

    /// The hash of websocket `channel`'s present clients.
    pub fn presence_clients(&self, channel: &str) -> String {
        format!("{}:pc", same_slot(&self.channel(channel)))
    }

    /// The hash of websocket `channel`'s users and their client counts.
    pub fn presence_users(&self, channel: &str) -> String {
        format!("{}:pu", same_slot(&self.channel(channel)))
    }

    /// Set while the database was told websocket `channel` is occupied
    /// (`PGWS_OCCUPANCY_EVENTS`): its `ChannelOccupied` was sent and its
    /// `ChannelVacated` not yet.
    pub fn presence_occupied(&self, channel: &str) -> String {
        format!("{}:po", same_slot(&self.channel(channel)))
    }

    /// The gateways holding presence entries, scored by expiry.
    pub fn presence_gateways(&self) -> String {
        format!("{{{}}}:presence", self.prefix)
    }

    /// The channels where gateway `gateway` has presence entries.
    pub fn presence_gateway_channels(&self, gateway: &str) -> String {
        format!("{{{}}}:presence:{gateway}", self.prefix)
    }

    /// The key holding an HTTP publish's `Idempotency-Key` (`scope` names
    /// the channel, the token's subject and the client's key).
    pub fn idempotency(&self, scope: &str) -> String {
        format!("{}:idem:{}", self.prefix, scope)
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

/// A key prefix that hashes to the same Redis Cluster slot as `name`:
/// `name` itself when it holds a hash tag; `{name}` when that is one; and
/// for the rare name that has neither (a `}` with no tag, like `x{}y`), a
/// tag known to hash to `name`'s slot, then the name.
fn same_slot(name: &str) -> String {
    if hash_tag(name).is_some() {
        name.to_string()
    } else if !name.contains('}') {
        format!("{{{name}}}")
    } else {
        format!("{{{}}}{name}", tag_for_slot(slot(name)))
    }
}

/// The part of `key` Redis Cluster hashes, when it is not the whole key:
/// what lies between the first `{` and the next `}`, if not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The slot Redis Cluster assigns to `key`: CRC16 (XMODEM) of its hash tag
/// or of the whole key, modulo 16384.
pub fn slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key).as_bytes();
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// A short string that hashes to `slot`: the first of `0`, `1`, `2` … (in
/// hex) that does. Computed once, for all slots, on first use (a few
/// hundred thousand CRCs).
fn tag_for_slot(slot_wanted: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        let mut n = 0u64;
        while missing > 0 {
            let candidate = format!("{n:x}");
            let at = usize::from(slot(&candidate));
            if tags[at].is_empty() {
                tags[at] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot_wanted)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordination_keys_share_one_hash_tag() {
        let k = KeySpace::new("pgws");
        for key in [
            k.leader(),
            k.epoch(),
            k.writes(),
            k.append_marker("g", 1),
            k.continuity(),
            k.progress(),
            k.presence_gateways(),
            k.presence_gateway_channels("g"),
        ] {
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

    #[test]
    fn a_channels_state_and_history_share_its_pub_sub_slot() {
        // The CRC16 of "123456789" is 0x31C3, the reference value of the
        // Redis Cluster specification (under 16384: it is also the slot).
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        // From the specification: an empty tag hashes the whole key.
        assert_eq!(hash_tag("foo{}{bar}"), None);
        assert_eq!(hash_tag("foo{{bar}}zap"), Some("{bar"));
        for prefix in ["pgws", "a{b}c"] {
            let k = KeySpace::new(prefix);
            for channel in ["chat", "room{7}", "x{}y", "{", "}{", "ünï"] {
                let pubsub = k.channel(channel);
                for key in [
                    k.channel_state(channel),
                    k.channel_history(channel),
                    k.presence_clients(channel),
                    k.presence_users(channel),
                ] {
                    assert_eq!(slot(&key), slot(&pubsub), "{key} vs {pubsub}");
                }
            }
        }
        let k = KeySpace::new("p");
        assert_eq!(k.channel_state("chat"), "{p:msg:chat}:s");
        assert_eq!(k.channel_history("room{7}"), "p:msg:room{7}:h");
    }
}
