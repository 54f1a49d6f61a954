//! Presence: who is subscribed to a channel — the entry a client is
//! listed with, the `join`/`leave` frames, how a presence event travels on
//! Redis pub/sub, and the Lua scripts that keep presence in Redis (cluster
//! mode). `docs/protocol.md` ("Presence") is the contract,
//! `docs/architecture.md` ("Presence") the argument.
//!
//! * An **entry** is a JSON object: `{"client":"<id>","sub":<sub>,"info":{…}}`
//!   — `sub` and `info` only when the token has them (`info` from the
//!   `presence_info` claim, bounded by the gateway).
//! * A client counts toward the channel's **users** under its `sub` (as
//!   JSON text), or, without one, under its own client id.
//! * On Redis, a presence event is a message on the channel's pub/sub
//!   channel — the one its notifications use, so that every gateway hands
//!   it to its sockets in the same order as the channel's messages — of
//!   the form `pgwsp join <entry>` or `pgwsp leave <entry>`. It never starts
//!   with a republished notification's `pgws1`/`pgws2` header.
//! * In a channel's presence hash a client's field holds
//!   `<user>\n<entry>`: the user for the count, the entry for listing.

use serde_json::Value;
use std::fmt::Write as _;

/// What a presence event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A client's subscription became live.
    Join,
    /// A client's subscription ended (or its gateway was swept).
    Leave,
}

impl Change {
    /// The frame type and the word on Redis.
    pub const fn as_str(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
        }
    }
}

/// The magic a presence event on Redis starts with.
pub const EVENT_MAGIC: &[u8] = b"pgwsp ";

/// One client as presence lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The client id (`<gateway>.<socket>`).
    pub client: String,
    /// What it counts toward unique users under.
    pub user: String,
    /// The entry's JSON object text.
    pub entry: String,
}

impl Member {
    /// The member for client `client` with the token's `sub` and the
    /// already bounded `info` object text.
    pub fn new(client: String, sub: Option<&Value>, info: Option<&str>) -> Member {
        let mut entry = String::with_capacity(64);
        entry.push_str(r#"{"client":"#);
        push_json(&mut entry, &Value::String(client.clone()));
        let user = match sub {
            Some(sub) => {
                entry.push_str(r#","sub":"#);
                push_json(&mut entry, sub);
                sub.to_string()
            }
            None => format!("~{client}"),
        };
        if let Some(info) = info {
            entry.push_str(r#","info":"#);
            entry.push_str(info);
        }
        entry.push('}');
        Member {
            client,
            user,
            entry,
        }
    }

    /// The value of its field in a channel's presence hash.
    pub fn stored(&self) -> String {
        format!("{}\n{}", self.user, self.entry)
    }

    /// Its presence event on Redis.
    pub fn event(&self, change: Change) -> Vec<u8> {
        event(change, &self.entry)
    }
}

fn push_json(out: &mut String, value: &Value) {
    let _ = write!(out, "{value}");
}

/// A presence event on Redis.
pub fn event(change: Change, entry: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENT_MAGIC.len() + 6 + entry.len());
    out.extend_from_slice(EVENT_MAGIC);
    out.extend_from_slice(change.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(entry.as_bytes());
    out
}

/// A message from a channel's pub/sub channel, if it is a presence event:
/// the change and the entry text.
pub fn decode_event(message: &[u8]) -> Option<(Change, &[u8])> {
    let rest = message.strip_prefix(EVENT_MAGIC)?;
    if let Some(entry) = rest.strip_prefix(b"join ") {
        return Some((Change::Join, entry));
    }
    rest.strip_prefix(b"leave ")
        .map(|entry| (Change::Leave, entry))
}

/// The entry part of a stored hash value (`<user>\n<entry>`).
pub fn stored_entry(stored: &[u8]) -> Option<&[u8]> {
    let at = stored.iter().position(|&b| b == b'\n')?;
    Some(&stored[at + 1..])
}

/// A `join` or `leave` frame: `{"type":"join","channel":"chat","member":{…}}`.
pub fn frame(change: Change, channel: &str, entry: &str) -> Vec<u8> {
    let mut out = String::with_capacity(48 + channel.len() + entry.len());
    let _ = write!(out, r#"{{"type":"{}","channel":"#, change.as_str());
    push_json(&mut out, &Value::String(channel.to_string()));
    out.push_str(r#","member":"#);
    out.push_str(entry);
    out.push('}');
    out.into_bytes()
}

/// A `presence` command's reply: `{"type":"reply","id":5,"members":[…]}`.
pub fn list_reply<'a>(id: u64, entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = format!(r#"{{"type":"reply","id":{id},"members":["#);
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(entry);
    }
    out.push_str("]}");
    out
}

/// A `presence_stats` command's reply.
pub fn stats_reply(id: u64, clients: u64, users: u64) -> String {
    format!(r#"{{"type":"reply","id":{id},"clients":{clients},"users":{users}}}"#)
}

/// Redis time in milliseconds, as the scripts compute it.
const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Add a client: KEYS the channel's clients and users hashes and its
/// occupied flag; ARGV the client id, its stored value, its user, the
/// publish command, the pub/sub channel, the join event and `1` when
/// occupancy events are on. Idempotent: an entry already there is not
/// added nor announced again. Returns 1 when added, 2 when added as the
/// channel's first client while the occupied flag was not set (it is set
/// now: the caller sends `ChannelOccupied`).
pub const JOIN_SCRIPT: &str = r#"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call(ARGV[4], ARGV[5], ARGV[6])
if ARGV[7] == '1' and redis.call('HLEN', KEYS[1]) == 1
   and redis.call('SET', KEYS[3], '1', 'NX') then
  return 2
end
return 1
"#;

/// Remove a client: the same KEYS, ARGV the same first six with the leave
/// event, then this leave's vacancy token. Returns 1 when it was there, 2
/// when it was the channel's last client while the occupied flag was set:
/// the flag now holds the token, and the caller runs [`VACATE_SCRIPT`]
/// with it after the grace period (a later last leave replaces the token,
/// so only the latest check can vacate).
pub const LEAVE_SCRIPT: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[3], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
redis.call(ARGV[4], ARGV[5], ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[3], ARGV[7])
  return 2
end
return 1
"#;

/// The vacancy check, a grace period after a channel lost its last client:
/// KEYS the channel's clients hash and occupied flag; ARGV the token of
/// the leave (or sweep) that emptied it. Returns 1 when the channel is
/// still empty and the flag still holds the token: the flag is gone and
/// the caller sends `ChannelVacated`. Returns 0 when a client came back
/// (neither event is sent), 2 when a later leave's check is responsible.
pub const VACATE_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[2])
return 1
"#;

/// A gateway's heartbeat: KEYS the gateways' sorted set; ARGV the gateway
/// id and the ttl (ms). Returns 1 when the gateway was still listed (0:
/// new, or swept as dead — its entries are gone and must be re-added).
pub fn heartbeat_script() -> String {
    format!(
        "{NOW}{}",
        r#"
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if had then return 1 end
return 0
"#
    )
}

/// Claim one expired gateway for sweeping: KEYS the gateways' sorted set;
/// ARGV the lease (ms). Its score moves to now + lease, so no other
/// sweeper takes it meanwhile, and another does if this one dies. Returns
/// its id, or nil.
pub fn claim_script() -> String {
    format!(
        "{NOW}{}",
        r#"
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
if #dead == 0 then return false end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), dead[1])
return dead[1]
"#
    )
}

/// Remove every entry of a dead gateway from one channel, announcing a
/// leave for each: KEYS the channel's clients and users hashes; ARGV the
/// gateway's client id prefix (`<gateway>.`), the publish command and the
/// pub/sub channel; KEYS[3] the channel's occupied flag and ARGV[4] a
/// vacancy token, as for [`LEAVE_SCRIPT`]. Returns how many were removed
/// and 1 when the channel is empty now with the flag set (now to the
/// token: the caller checks for vacancy after the grace), else 0.
pub const SWEEP_SCRIPT: &str = r#"
local removed = 0
local cursor = '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', ARGV[1] .. '*', 'COUNT', 1000)
  cursor = r[1]
  local kv = r[2]
  for i = 1, #kv, 2 do
    if redis.call('HDEL', KEYS[1], kv[i]) == 1 then
      local v = kv[i + 1]
      local nl = string.find(v, '\n', 1, true)
      if nl then
        local user = string.sub(v, 1, nl - 1)
        if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
          redis.call('HDEL', KEYS[2], user)
        end
        redis.call(ARGV[2], ARGV[3], 'pgwsp leave ' .. string.sub(v, nl + 1))
      end
      removed = removed + 1
    end
  end
until cursor == '0'
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[3], ARGV[4])
  return {removed, 1}
end
return {removed, 0}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_frames_and_events_round_trip() {
        let m = Member::new(
            "ab.7".into(),
            Some(&json!("alice")),
            Some(r#"{"name":"Alice"}"#),
        );
        assert_eq!(m.user, "\"alice\"");
        let entry: Value = serde_json::from_str(&m.entry).expect("json");
        assert_eq!(
            entry,
            json!({"client":"ab.7","sub":"alice","info":{"name":"Alice"}})
        );
        let anonymous = Member::new("ab.8".into(), None, None);
        assert_eq!(anonymous.user, "~ab.8");
        assert_eq!(anonymous.entry, r#"{"client":"ab.8"}"#);

        let event = m.event(Change::Leave);
        assert_eq!(
            decode_event(&event),
            Some((Change::Leave, m.entry.as_bytes()))
        );
        assert_eq!(decode_event(b"pgws2 1 2 3"), None);
        assert_eq!(
            stored_entry(m.stored().as_bytes()),
            Some(m.entry.as_bytes())
        );

        let f: Value =
            serde_json::from_slice(&frame(Change::Join, "ch\"at", &m.entry)).expect("json");
        assert_eq!(f["type"], "join");
        assert_eq!(f["channel"], "ch\"at");
        assert_eq!(f["member"]["sub"], "alice");
        let l: Value =
            serde_json::from_str(&list_reply(5, [m.entry.as_str(), anonymous.entry.as_str()]))
                .expect("json");
        assert_eq!(l["members"].as_array().map(Vec::len), Some(2));
        let s: Value = serde_json::from_str(&stats_reply(6, 3, 2)).expect("json");
        assert_eq!(s, json!({"type":"reply","id":6,"clients":3,"users":2}));
    }
}
