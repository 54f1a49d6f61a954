//! Reading a channel's position and history from Redis, for a new
//! subscription (the leader writes them: `pgws_protocol::history`).
//!
//! Two reads: the current continuity (`{p}:continuity`), then the
//! channel's state and the history after `since` in one script. The
//! continuity is read first, so the channel is judged as of a continuity
//! at least as old as the true one at the moment of the second read: a
//! hole that began before it is always seen (the argument is in
//! `docs/architecture.md`, "Recovery").

use crate::bus::{BusError, Recovered, Replayed};
use bytes::Bytes;
use pgws_protocol::history::{
    self, Current, CREATED_STATE_TTL_MS, DEFAULT_STATE_TTL_MS, READ_SCRIPT,
};
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::{ChannelState, Continuity, Epoch, Since};
use pgws_service::redis_client::RedisClient;
use redis::Value;
use std::sync::LazyLock;

static READ: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(READ_SCRIPT));

/// Read `channel`'s position and, with `since`, what followed it.
pub async fn read(
    client: &mut RedisClient,
    keys: &KeySpace,
    channel: &str,
    since: Option<&Since>,
) -> Result<Recovered, BusError> {
    let current = continuity(client, keys).await?;
    let since_base = since
        .and_then(|s| Epoch::parse(&s.epoch))
        .map_or(0, |e| e.base);
    let since_offset = since.map_or(-1, |s| i64::try_from(s.offset).unwrap_or(i64::MAX));
    let mut invocation = READ.key(keys.channel_state(channel));
    invocation
        .key(keys.channel_history(channel))
        .arg(current.continuity.term)
        .arg(current.continuity.session)
        .arg(current.state_ttl_ms.min(CREATED_STATE_TTL_MS))
        .arg(since_offset)
        .arg(since_base);
    let reply: Vec<Value> = invocation.invoke_async(client).await.map_err(|e| {
        tracing::warn!(error = %e, channel, "reading channel history from Redis failed");
        BusError::Unavailable
    })?;
    let mut fields = reply.into_iter();
    let state = fields
        .next()
        .and_then(|v| text(&v))
        .and_then(|t| history::parse_state(&t))
        .map(|(state, _ttl)| state)
        .ok_or_else(|| {
            tracing::warn!(channel, "malformed channel state in Redis");
            BusError::Unavailable
        })?;
    let mut entries = Vec::new();
    while let (Some(offset), Some(data)) = (fields.next(), fields.next()) {
        let offset = text(&offset).and_then(|t| t.parse().ok()).unwrap_or(0);
        entries.push(Replayed {
            offset,
            payload: bytes_of(data),
        });
    }
    Ok(Recovered::decide(
        &state.as_of(current.continuity),
        since,
        entries,
    ))
}

/// `channel`'s state as stored (`None`: no state), without creating one.
pub async fn state(
    client: &mut RedisClient,
    keys: &KeySpace,
    channel: &str,
) -> Result<Option<ChannelState>, BusError> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.channel_state(channel))
        .query_async(client)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, channel, "reading a channel's state from Redis failed");
            BusError::Unavailable
        })?;
    Ok(raw
        .as_deref()
        .and_then(history::parse_state)
        .map(|(state, _ttl)| state))
}

/// Up to `count` of `channel`'s newest history entries, newest first.
pub async fn newest(
    client: &mut RedisClient,
    keys: &KeySpace,
    channel: &str,
    count: usize,
) -> Result<Vec<Replayed>, BusError> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(keys.channel_history(channel))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(client)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, channel, "reading a channel's history from Redis failed");
            BusError::Unavailable
        })?;
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    Ok(entries.into_iter().filter_map(entry).collect())
}

/// One stream entry, `[id, fields]` (the fields a flat array, or a map
/// under RESP3), as the offset `o` and payload `d` it holds.
fn entry(value: Value) -> Option<Replayed> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut fields: Vec<Value> = match parts.into_iter().nth(1)? {
        Value::Array(flat) => flat,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return None,
    };
    let (mut offset, mut payload) = (None, None);
    while fields.len() >= 2 {
        let value = fields.pop()?;
        let name = fields.pop()?;
        match text(&name).as_deref() {
            Some("o") => offset = text(&value).and_then(|t| t.parse().ok()),
            Some("d") => payload = Some(bytes_of(value)),
            _ => {}
        }
    }
    Some(Replayed {
        offset: offset?,
        payload: payload?,
    })
}

/// The continuity the leader last recorded (zero, with the default
/// channel-state ttl, before any leader ran).
async fn continuity(client: &mut RedisClient, keys: &KeySpace) -> Result<Current, BusError> {
    let values: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(keys.continuity())
        .arg("t")
        .arg("s")
        .arg("ttl")
        .query_async(client)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the continuity from Redis failed");
            BusError::Unavailable
        })?;
    let get = |i: usize| values.get(i).copied().flatten();
    Ok(Current {
        continuity: Continuity {
            term: get(0).unwrap_or(0),
            session: get(1).unwrap_or(0),
        },
        state_ttl_ms: get(2).unwrap_or(DEFAULT_STATE_TTL_MS),
    })
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes_of(value: Value) -> Bytes {
    match value {
        Value::BulkString(b) => Bytes::from(b),
        Value::SimpleString(s) => Bytes::from(s),
        _ => Bytes::new(),
    }
}
