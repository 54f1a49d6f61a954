//! The JSON text a client message or a meta event becomes before it is sent
//! to PostgreSQL with `pg_notify(<listen channel>, <envelope>)`.
//!
//! ```json
//! {"event":"WebsocketMessage","channel":"chat","payload":"hi",
//!  "claims":{"mode":"rw","message_delivered_at":1700000000.123}}
//! ```
//!
//! The claims of a socket never change, so they are serialised once per
//! socket into a [`ClaimsJson`] and spliced into every envelope: building an
//! envelope is string concatenation plus escaping of the payload.

use serde_json::{Map, Value};

/// The claim the gateway adds to every envelope: when the message was
/// processed, in Unix seconds with a fraction.
pub const DELIVERED_AT_CLAIM: &str = "message_delivered_at";

/// The `event` field of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A text frame a client sent on a channel.
    WebsocketMessage,
    /// A socket was accepted (sent on the meta channel).
    ConnectionOpen,
    /// A socket ended (sent on the meta channel; not in the original).
    ConnectionClose,
    /// A channel got its first reader (meta channel, `PGWS_OCCUPANCY_EVENTS`).
    ChannelOccupied,
    /// A channel lost its last reader, and stayed empty for the grace
    /// period (meta channel, `PGWS_OCCUPANCY_EVENTS`).
    ChannelVacated,
}

impl Event {
    /// The name used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::WebsocketMessage => "WebsocketMessage",
            Event::ConnectionOpen => "ConnectionOpen",
            Event::ConnectionClose => "ConnectionClose",
            Event::ChannelOccupied => "ChannelOccupied",
            Event::ChannelVacated => "ChannelVacated",
        }
    }
}

/// A socket's JWT claims, serialised once, without the surrounding braces and
/// without any `message_delivered_at` the token itself carried (the gateway's
/// timestamp replaces it, as in the original).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsJson(String);

impl ClaimsJson {
    /// Serialise `claims` for splicing into envelopes.
    pub fn new(claims: &Map<String, Value>) -> ClaimsJson {
        let mut inner = String::new();
        for (key, value) in claims {
            if key == DELIVERED_AT_CLAIM {
                continue;
            }
            if !inner.is_empty() {
                inner.push(',');
            }
            push_json_string(&mut inner, key);
            inner.push(':');
            // Serialising a `Value` cannot fail: its keys are strings.
            inner.push_str(&value.to_string());
        }
        ClaimsJson(inner)
    }
}

/// Build the envelope text for one message.
pub fn build(
    event: Event,
    channel: &str,
    payload: &str,
    claims: &ClaimsJson,
    delivered_at: f64,
) -> String {
    build_with(event, channel, payload, &[], claims, delivered_at)
}

fn build_with(
    event: Event,
    channel: &str,
    payload: &str,
    channels: &[String],
    claims: &ClaimsJson,
    delivered_at: f64,
) -> String {
    let mut out = String::with_capacity(80 + channel.len() + payload.len() + claims.0.len());
    out.push_str(r#"{"event":""#);
    out.push_str(event.as_str());
    out.push_str(r#"","channel":"#);
    push_json_string(&mut out, channel);
    out.push_str(r#","payload":"#);
    push_json_string(&mut out, payload);
    if !channels.is_empty() {
        out.push_str(r#","channels":["#);
        for (i, c) in channels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, c);
        }
        out.push(']');
    }
    out.push_str(r#","claims":{"#);
    out.push_str(&claims.0);
    if !claims.0.is_empty() {
        out.push(',');
    }
    out.push('"');
    out.push_str(DELIVERED_AT_CLAIM);
    out.push_str(r#"":"#);
    push_json_number(&mut out, delivered_at);
    out.push_str("}}");
    out
}

/// Build a meta event (`ConnectionOpen`/`ConnectionClose`) about a socket on
/// `channels`. `payload` is the original's comma-joined list; `channels`,
/// ours, is the same list as a JSON array, unambiguous when a channel name
/// contains a comma:
///
/// ```json
/// {"event":"ConnectionOpen","channel":"server-info","payload":"a,b",
///  "channels":["a,b"],"claims":{…}}
/// ```
pub fn build_meta(
    event: Event,
    meta_channel: &str,
    channels: &[String],
    claims: &ClaimsJson,
    delivered_at: f64,
) -> String {
    let joined = channels.join(",");
    build_with(event, meta_channel, &joined, channels, claims, delivered_at)
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a `&str` cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn push_json_number(out: &mut String, n: f64) {
    match serde_json::Number::from_f64(n) {
        Some(number) => out.push_str(&number.to_string()),
        None => out.push('0'), // NaN or infinite: cannot happen for a clock reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> ClaimsJson {
        match v {
            Value::Object(map) => ClaimsJson::new(&map),
            _ => unreachable!("test claims are objects"),
        }
    }

    #[test]
    fn meta_events_carry_the_channels_unambiguously() {
        let c = claims(json!({"mode":"r"}));
        let channels = vec!["a,b".to_string(), "c\"d".to_string()];
        let text = build_meta(Event::ConnectionOpen, "server-info", &channels, &c, 1.5);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({"event":"ConnectionOpen","channel":"server-info","payload":"a,b,c\"d",
                   "channels":["a,b","c\"d"],"claims":{"mode":"r","message_delivered_at":1.5}})
        );
    }

    #[test]
    fn envelope_is_valid_json_with_all_fields() {
        let c = claims(json!({"mode":"rw","role":"admin"}));
        let text = build(
            Event::WebsocketMessage,
            "chat",
            "hi \"there\"\n",
            &c,
            1700000000.25,
        );
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v,
            json!({"event":"WebsocketMessage","channel":"chat","payload":"hi \"there\"\n",
                   "claims":{"mode":"rw","role":"admin","message_delivered_at":1700000000.25}})
        );
        assert!(text.starts_with(r#"{"event":"WebsocketMessage","channel":"chat","payload":"#));
    }

    #[test]
    fn token_delivered_at_is_replaced() {
        let c = claims(json!({"message_delivered_at": 1, "mode": "w"}));
        let v: Value = serde_json::from_str(&build(Event::ConnectionOpen, "meta", "a,b", &c, 2.5))
            .expect("json");
        assert_eq!(v["claims"], json!({"mode":"w","message_delivered_at":2.5}));
        assert_eq!(v["event"], "ConnectionOpen");
    }

    #[test]
    fn empty_claims_still_carry_the_timestamp() {
        let c = claims(json!({}));
        let v: Value =
            serde_json::from_str(&build(Event::ConnectionClose, "m", "", &c, 3.0)).expect("json");
        assert_eq!(v["claims"], json!({"message_delivered_at":3.0}));
    }
}
