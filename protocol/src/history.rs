//! Channel state and history in Redis (cluster mode): the encoding, and
//! the two scripts that touch them — the leader's publish script and the
//! gateways' read script — side by side, so they cannot drift apart.
//!
//! * State `{p:msg:<ch>}:s`: the string `b:t:s:r:o:l:f:pe:pn:pi` — the
//!   epoch's base, the continuity's term and session, the run's start, the
//!   newest offset ([`ChannelState`]), the history ttl in milliseconds that
//!   was in force when it was written (readers ignore older entries), the
//!   fencing epoch of the leader that wrote it last, and the NOTIFY-stream
//!   position of the last notification published on it. `PX` is the
//!   channel-state ttl.
//! * History `{p:msg:<ch>}:h`: a stream capped at `PGWS_HISTORY_SIZE`
//!   entries (`MAXLEN`), field `o` the offset, `d` the payload; its ids are
//!   Redis time, so an entry older than the ttl is recognised by its id.
//!   `PX` is the history ttl: a quiet channel's history goes away whole.
//!
//! The publish script assigns the offset, appends to history and publishes
//! in one atomic step: a message is in history if and only if it was
//! published, and a reader that reads the state after a message's offset
//! was assigned also finds it in history (or the history was trimmed, and
//! it says so). It refuses (offset `-1`, nothing written or published) a
//! message from a leader with a smaller fencing epoch than the state's
//! last writer: a deposed leader cannot write into a sequence its successor
//! has moved on. And it skips (offset `-2`) a message whose stream
//! position is not after the channel's last published one, so a new leader
//! replaying the notifications its predecessor may not have published
//! never publishes one twice. Given the fencing epoch key, it also
//! refuses (offset `-3`) a whole batch whose epoch is not the current
//! one, read atomically with the append: a deposed leader's batch in
//! flight while the lock moved lands nowhere, not even on channels its
//! successor has not written yet.

use crate::position::{ChannelState, Continuity};

/// The leader's publish script, for a batch of notifications.
///
/// * `KEYS`: optionally first the fencing epoch key (`{p}:epoch`: an odd
///   number of keys says it is there), then per notification its
///   channel's state key then history key. A Redis Cluster cannot take
///   the epoch key with a channel's keys (other slots): there the check
///   below is the per-channel fence alone.
/// * `ARGV[1..7]`: the continuity's term and session (the epoch the
///   messages get), the leader's fencing epoch, history size, history ttl
///   (ms), channel-state ttl (ms), publish command (`PUBLISH`, or
///   `SPUBLISH` on a cluster).
/// * then per notification: the header before the position numbers, the
///   header after them, the pub/sub channel, the payload
///   (`crate::republish::Header`), and its position in the NOTIFY stream
///   (`"<marker epoch> <marker counter> <index>"`, or empty when unknown).
///
/// A notification from the durable outbox carries `"D <base> <generation> <offset>"`
/// instead of a stream position: PostgreSQL numbered it, so it is kept at
/// exactly that offset under the epoch `(base, DURABLE, generation)` — skipped (-2)
/// when the channel already has it, and the channel starts over at it
/// when it does not follow the channel's newest. `"R <base> <generation>
/// <offset>"` is a *replay* of one a previous term published (a new term
/// re-reads a tail before its saved cursor, for a Redis that lost its
/// data): taken only where the channel has no message yet or it continues
/// the channel's newest, skipped (-2) everywhere else. A NOTIFY on a channel the
/// outbox numbers starts a sequence of its own (a new base).
///
/// Returns each notification's offset; -3 for every notification when the
/// epoch key was given and its value is not the leader's fencing epoch
/// (the lock moved while the batch was in flight: nothing is written or
/// published); -1 where it was fenced (the
/// channel was last written by a leader with a larger fencing epoch), -2
/// where it was already published (its stream position is at or before
/// the channel's last published one: a new leader resuming where its
/// predecessor stopped).
///
/// The state string is `b:t:s:r:o:l:f:pe:pn:pi`: base, continuity term and
/// session, run start, newest offset, history ttl, the fencing epoch of
/// its last writer, and the stream position of its last published
/// notification (zeros when unknown). A state written before the last four
/// fields existed reads them as zero.
pub const PUBLISH_SCRIPT: &str = r#"
local term, session, fence = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local size, ttl, state_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local publish = ARGV[7]
local DURABLE = 9007199254740991
-- With the fencing epoch key first: a batch of any epoch but the current
-- one (a deposed leader's, in flight while the lock moved) is refused whole.
local first = #KEYS % 2
local count = (#KEYS - first) / 2
if first == 1 and tonumber(redis.call('GET', KEYS[1]) or '-1') ~= fence then
  local refused = {}
  for i = 1, count do refused[i] = -3 end
  return refused
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
-- Each channel's state is read once per batch and written once at the end.
local states, touched, offsets = {}, {}, {}
for i = 1, count do
  local skey, hkey = KEYS[first + 2 * i - 1], KEYS[first + 2 * i]
  local a = 7 + 5 * (i - 1)
  local st = states[skey]
  if not st then
    local raw = redis.call('GET', skey)
    local f = {}
    if raw then
      for field in string.gmatch(raw, '[^:]+') do table.insert(f, tonumber(field)) end
    end
    if #f >= 5 then
      st = {b = f[1], t = f[2], s = f[3], r = f[4], o = f[5], f = f[7] or 0,
            pe = f[8] or 0, pn = f[9] or 0, pi = f[10] or 0, h = hkey}
    else
      st = {b = now_ms, t = term, s = session, r = 0, o = 0, f = 0, pe = 0, pn = 0, pi = 0, h = hkey}
      redis.call('DEL', hkey)
    end
    states[skey] = st
  end
  local pe, pn, pi = string.match(ARGV[a + 5], '^(%d+) (%d+) (%d+)$')
  pe, pn, pi = tonumber(pe), tonumber(pn), tonumber(pi)
  -- An outbox message: "D <base> <generation> <offset>", numbered in PostgreSQL;
  -- "R …" replays one a previous term published: taken only where the
  -- channel has no message yet or it continues the channel (a Redis that
  -- lost its data), skipped everywhere else.
  local dkind, db, dgen, dof = string.match(ARGV[a + 5], '^([DR]) (%d+) (%d+) (%d+)$')
  db, dgen, dof = tonumber(db), tonumber(dgen), tonumber(dof)
  local ours = db and st.t == DURABLE and st.b == db and st.s == dgen
  local seen = (pe and st.pe > 0 and (pe < st.pe or (pe == st.pe and (pn < st.pn or (pn == st.pn and pi <= st.pi)))))
    or (ours and dof <= st.o)
    or (dkind == 'R' and not (st.o == 0 or (ours and dof == st.o + 1)))
  if fence < st.f then
    offsets[i] = -1
  elseif seen then
    offsets[i] = -2
  else
    if db then
      if not (ours and dof == st.o + 1) then
        -- The channel starts over at the outbox's position. A channel
        -- with no message here (state lost or never written) continues
        -- the outbox's sequence: a reader at dof - 1 misses nothing that
        -- history now holds. One that had messages of another sequence
        -- is recoverable only from dof on.
        local start = dof
        if st.o == 0 then start = dof - 1 end
        st.b, st.t, st.s, st.r, st.o = db, DURABLE, dgen, start, dof - 1
        st.pe, st.pn, st.pi = 0, 0, 0
        redis.call('DEL', hkey)
      end
    else
      if st.t == DURABLE then
        -- A NOTIFY on a channel the outbox numbers: a sequence of its own.
        st.b, st.t, st.s, st.r, st.o = math.max(now_ms, st.b + 1), term, session, 0, 0
        redis.call('DEL', hkey)
      elseif term > st.t or (term == st.t and session > st.s) then
        st.t, st.s, st.r = term, session, st.o
      end
    end
    st.o = st.o + 1
    st.f = fence
    if pe then
      st.pe, st.pn, st.pi = pe, pn, pi
    end
    if not st.dirty then
      st.dirty = true
      table.insert(touched, skey)
    end
    if size > 0 then
      redis.call('XADD', hkey, 'MAXLEN', size, '*', 'o', string.format('%d', st.o), 'd', ARGV[a + 4])
    end
    redis.call(publish, ARGV[a + 3],
      ARGV[a + 1] .. string.format('%d %d %d %d', st.b, st.t, st.s, st.o) .. ARGV[a + 2] .. '\n' .. ARGV[a + 4])
    offsets[i] = st.o
  end
end
for _, skey in ipairs(touched) do
  local st = states[skey]
  redis.call('SET', skey, string.format('%d:%d:%d:%d:%d:%d:%d:%d:%d:%d', st.b, st.t, st.s, st.r, st.o, ttl,
    st.f, st.pe, st.pn, st.pi), 'PX', state_ttl)
  if size > 0 then
    redis.call('PEXPIRE', st.h, ttl)
  end
end
return offsets
"#;

/// A gateway's read of one channel, for a subscription.
///
/// * `KEYS`: the channel's state key, history key.
/// * `ARGV`: the current continuity's term and session and a ttl (ms) —
///   used only to create a missing state, so that the first message
///   continues the epoch the first subscriber was given (the leader's first
///   write sets the real ttl) — then the `since` offset (-1 for none) and
///   the `since` epoch's base.
///
/// Returns the state string, then — when `since` is in the state's
/// sequence and history may hold what follows it — the offset and payload
/// of each entry after it, oldest first, none older than the history ttl.
/// Whether those are complete is decided by the caller
/// ([`crate::position::Recovery::complete`]).
pub const READ_SCRIPT: &str = r#"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local raw = redis.call('GET', KEYS[1])
if not raw then
  raw = string.format('%d:%d:%d:0:0:0', now_ms, tonumber(ARGV[1]), tonumber(ARGV[2]))
  redis.call('SET', KEYS[1], raw, 'PX', tonumber(ARGV[3]))
  return {raw}
end
local out = {raw}
local since, since_base = tonumber(ARGV[4]), tonumber(ARGV[5])
local b, o, l = string.match(raw, '^(%d+):%d+:%d+:%d+:(%d+):(%d+)')
if b and since >= 0 and tonumber(b) == since_base then
  local want = tonumber(o) - since
  if want > 0 and want <= redis.call('XLEN', KEYS[2]) then
    local oldest = '-'
    if tonumber(l) > 0 then
      oldest = string.format('%d', now_ms - tonumber(l))
    end
    local entries = redis.call('XREVRANGE', KEYS[2], '+', oldest, 'COUNT', want)
    for i = #entries, 1, -1 do
      local fields = entries[i][2]
      local offset, data
      for f = 1, #fields, 2 do
        if fields[f] == 'o' then offset = fields[f + 1] elseif fields[f] == 'd' then data = fields[f + 1] end
      end
      table.insert(out, offset or '0')
      table.insert(out, data or '')
    end
  end
end
return out
"#;

/// A channel's state as stored in Redis, with the history ttl it was
/// written under (ms).
pub fn parse_state(text: &str) -> Option<(ChannelState, u64)> {
    let mut fields = text.split(':').map(|f| f.parse::<u64>().ok());
    let mut next = || fields.next().flatten();
    let state = ChannelState {
        base: next()?,
        continuity: Continuity {
            term: next()?,
            session: next()?,
        },
        run_start: next()?,
        offset: next()?,
    };
    let ttl = next()?;
    Some((state, ttl))
}

/// The current continuity and channel-state ttl as kept in
/// `{p}:continuity` (fields `t`, `s`, `ttl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Current {
    /// The current continuity (zero before any leader ran).
    pub continuity: Continuity,
    /// The channel-state ttl the leader uses, ms.
    pub state_ttl_ms: u64,
}

/// The channel-state ttl a gateway uses to create a state before any
/// leader has said which one is configured: one day.
pub const DEFAULT_STATE_TTL_MS: u64 = 86_400_000;

/// The longest a state created by a gateway for a subscriber (of a channel
/// that has no message yet) lives before the channel's first message:
/// subscribing to names nobody publishes on costs Redis at most this long.
pub const CREATED_STATE_TTL_MS: u64 = 300_000;

/// Moves `{p}:continuity` forward (never back) and records the
/// channel-state ttl. `KEYS[1]` the key; `ARGV`: term, session, ttl (ms).
/// Returns 1 when written, 0 when a newer continuity is already there.
pub const ADVANCE_CONTINUITY_SCRIPT: &str = r#"
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local s = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local term, session = tonumber(ARGV[1]), tonumber(ARGV[2])
if term < t or (term == t and session <= s) then
  return 0
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 's', ARGV[2], 'ttl', ARGV[3])
return 1
"#;

#[cfg(test)]
mod tests {

    #[test]
    fn the_scripts_durable_term_is_the_outbox_continuity() {
        let line = format!(
            "local DURABLE = {}",
            crate::position::Continuity::DURABLE.term
        );
        assert!(PUBLISH_SCRIPT.contains(&line));
    }

    use super::*;

    #[test]
    fn states_parse_as_the_scripts_write_them() {
        let (state, ttl) =
            parse_state("1795838085123:1795838000000:2:40:42:300000").expect("parse");
        assert_eq!(
            state,
            ChannelState {
                base: 1_795_838_085_123,
                continuity: Continuity {
                    term: 1_795_838_000_000,
                    session: 2
                },
                run_start: 40,
                offset: 42,
            }
        );
        assert_eq!(ttl, 300_000);
        let (longer, _) = parse_state(
            "1795838085123:1795838000000:2:40:42:300000:1795838000000:1795838000000:5:7",
        )
        .expect("the current form, with fence and stream position");
        assert_eq!(longer, state);
        for bad in ["", "1:2:3:4:5", "1:2:3:4:x:6", "a:b:c:d:e:f"] {
            assert_eq!(parse_state(bad), None, "{bad:?}");
        }
    }
}
