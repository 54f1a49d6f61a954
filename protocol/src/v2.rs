//! Protocol v2 (`pgws.v2`): the client's commands and the server's frames.
//!
//! Every frame is a JSON object in a text frame (see `docs/protocol.md`).
//! This module only parses and encodes — what a command does is the
//! gateway's session layer. Parsing answers, for anything it refuses,
//! whether the refusal can be a reply (the frame had a usable `id`) or
//! must close the socket with 1008.

use crate::position::{Position, Since};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// The subprotocol a client offers to speak v2.
pub const SUBPROTOCOL: &str = "pgws.v2";

/// Longest channel name a command may carry, in bytes.
pub const MAX_CHANNEL_NAME: usize = 1024;

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The token, as the first frame, when none came with the upgrade.
    Connect {
        /// Replied to only when present.
        id: Option<u64>,
        /// The JWT.
        token: String,
    },
    /// Start reading a channel, optionally replaying from `since`.
    Subscribe {
        /// Command id.
        id: u64,
        /// The channel.
        channel: String,
        /// The last position the client read.
        since: Option<Since>,
        /// The subscription's options.
        options: SubscribeOptions,
    },
    /// Stop reading a channel.
    Unsubscribe {
        /// Command id.
        id: u64,
        /// The channel.
        channel: String,
    },
    /// One NOTIFY with the v1 envelope.
    Publish {
        /// Command id.
        id: u64,
        /// The channel.
        channel: String,
        /// The envelope's `payload`.
        data: String,
    },
    /// Replace the socket's token.
    Refresh {
        /// Command id.
        id: u64,
        /// The new JWT.
        token: String,
    },
    /// An application-level heartbeat.
    Ping {
        /// Command id.
        id: u64,
    },
    /// Who is subscribed to a channel.
    Presence {
        /// Command id.
        id: u64,
        /// The channel.
        channel: String,
    },
    /// How many clients and users are subscribed to a channel.
    PresenceStats {
        /// Command id.
        id: u64,
        /// The channel.
        channel: String,
    },
}

/// A subscription's options (`subscribe`'s optional fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// `"presence":true`: receive `join`/`leave` frames for the channel.
    pub presence: bool,
    /// `"echo":false`: do not receive the messages this socket published.
    pub echo: bool,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            presence: false,
            echo: true,
        }
    }
}

impl Command {
    /// The command's name, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Connect { .. } => "connect",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Publish { .. } => "publish",
            Command::Refresh { .. } => "refresh",
            Command::Ping { .. } => "ping",
            Command::Presence { .. } => "presence",
            Command::PresenceStats { .. } => "presence_stats",
        }
    }
}

/// An error reply's code (they follow HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: malformed.
    BadRequest,
    /// 401: a `refresh` token that is invalid or expired.
    Unauthorized,
    /// 403: not allowed by the token.
    Forbidden,
    /// 404: unknown channel state.
    NotFound,
    /// 409: already subscribed.
    Conflict,
    /// 413: too large.
    TooLarge,
    /// 429: rate or subscription limit.
    TooMany,
    /// 503: temporarily unavailable.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for metrics initialisation.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::TooMany,
        ErrorCode::Unavailable,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::TooMany => 429,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// A command that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No usable `id` (or not a JSON object at all): close with 1008.
    #[error("{0}")]
    Fatal(String),
    /// Malformed, but the client can be told: an error reply to `id`.
    #[error("{reason}")]
    Reply {
        /// The command's id.
        id: u64,
        /// Why.
        reason: String,
    },
}

/// Parse one text frame.
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
        return Err(ParseError::Fatal("Frame is not a JSON object".into()));
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => "",
    };
    let id = match object.get("id") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id > 0 => Some(id),
            _ => return Err(ParseError::Fatal("Invalid id".into())),
        },
        Some(_) => return Err(ParseError::Fatal("Invalid id".into())),
    };
    if kind == "connect" {
        return Ok(Command::Connect {
            id,
            token: string_field(&object, "token").ok_or_else(|| match id {
                Some(id) => ParseError::Reply {
                    id,
                    reason: "Missing token".into(),
                },
                None => ParseError::Fatal("Missing token".into()),
            })?,
        });
    }
    let Some(id) = id else {
        return Err(ParseError::Fatal("Missing id".into()));
    };
    let fields = Fields {
        object: &object,
        id,
    };
    match kind {
        "subscribe" => Ok(Command::Subscribe {
            id,
            channel: fields.channel()?,
            since: fields.since()?,
            options: SubscribeOptions {
                presence: fields.flag("presence", false)?,
                echo: fields.flag("echo", true)?,
            },
        }),
        "unsubscribe" => Ok(Command::Unsubscribe {
            id,
            channel: fields.channel()?,
        }),
        "publish" => Ok(Command::Publish {
            id,
            channel: fields.channel()?,
            data: fields.string("data")?,
        }),
        "refresh" => Ok(Command::Refresh {
            id,
            token: fields.string("token")?,
        }),
        "ping" => Ok(Command::Ping { id }),
        "presence" => Ok(Command::Presence {
            id,
            channel: fields.channel()?,
        }),
        "presence_stats" => Ok(Command::PresenceStats {
            id,
            channel: fields.channel()?,
        }),
        "" => Err(fields.bad("Missing type")),
        other => Err(fields.bad(format!("Unknown command type {:?}", truncate(other, 64)))),
    }
}

fn string_field(object: &Map<String, Value>, name: &str) -> Option<String> {
    match object.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// A command's fields, with errors that reply to its id.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    id: u64,
}

impl Fields<'_> {
    fn bad(&self, reason: impl Into<String>) -> ParseError {
        ParseError::Reply {
            id: self.id,
            reason: reason.into(),
        }
    }

    fn string(&self, name: &str) -> Result<String, ParseError> {
        string_field(self.object, name)
            .ok_or_else(|| self.bad(format!("Missing or invalid {name}")))
    }

    fn flag(&self, name: &str, default: bool) -> Result<bool, ParseError> {
        match self.object.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.bad(format!("Invalid {name}: expected true or false"))),
        }
    }

    fn channel(&self) -> Result<String, ParseError> {
        let channel = self.string("channel")?;
        if channel.is_empty() {
            return Err(self.bad("Empty channel"));
        }
        if channel.len() > MAX_CHANNEL_NAME {
            return Err(self.bad(format!("Channel name longer than {MAX_CHANNEL_NAME} bytes")));
        }
        Ok(channel)
    }

    fn since(&self) -> Result<Option<Since>, ParseError> {
        let since = match self.object.get("since") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(since)) => since,
            Some(_) => return Err(self.bad("Invalid since")),
        };
        let epoch = match since.get("epoch") {
            Some(Value::String(e)) => e.clone(),
            _ => return Err(self.bad("Invalid since.epoch")),
        };
        let offset = match since.get("offset").and_then(Value::as_u64) {
            Some(offset) => offset,
            None => return Err(self.bad("Invalid since.offset")),
        };
        Ok(Some(Since { epoch, offset }))
    }
}

/// Append `text` as a JSON string.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail, and a str always serialises.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A `message` frame: a notification on a subscribed channel. `data` is
/// the NOTIFY payload, verbatim, as a JSON string; a message from a source
/// that assigns no position (a coordinator older than v2, during a rolling
/// upgrade) has no `epoch` and `offset`.
pub fn message(channel: &str, position: Option<&Position>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + channel.len() + data.len() + data.len() / 8);
    out.extend_from_slice(br#"{"type":"message","channel":"#);
    push_json_string(&mut out, channel);
    if let Some(p) = position {
        let mut tail = String::with_capacity(48);
        let _ = write!(tail, r#","epoch":"{}","offset":{}"#, p.epoch, p.offset);
        out.extend_from_slice(tail.as_bytes());
    }
    out.extend_from_slice(br#","data":"#);
    push_json_string(&mut out, data);
    out.push(b'}');
    out
}

/// An `echo` frame: in place of a message this socket published itself on
/// a subscription with `"echo":false` — its position without its data, so
/// the client's offsets stay contiguous.
pub fn echo(channel: &str, position: Option<&Position>) -> Vec<u8> {
    let mut out = br#"{"type":"echo","channel":"#.to_vec();
    push_json_string(&mut out, channel);
    if let Some(p) = position {
        let tail = format!(r#","epoch":"{}","offset":{}"#, p.epoch, p.offset);
        out.extend_from_slice(tail.as_bytes());
    }
    out.push(b'}');
    out
}

/// A success reply, with the result fields of a subscribe when given.
pub fn reply(id: u64, subscribed: Option<&Subscribed>) -> String {
    let mut out = format!(r#"{{"type":"reply","id":{id}"#);
    if let Some(s) = subscribed {
        let _ = write!(
            out,
            r#","epoch":"{}","offset":{}"#,
            s.position.epoch, s.position.offset
        );
        if let Some(replayed) = s.recovered {
            match replayed {
                Some(n) => {
                    let _ = write!(out, r#","recovered":true,"replayed":{n}"#);
                }
                None => out.push_str(r#","recovered":false"#),
            }
        }
    }
    out.push('}');
    out
}

/// What a subscribe's reply reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's newest position when the subscription went live.
    pub position: Position,
    /// Without `since`: `None`. With it: `Some(Some(n))` when recovered
    /// with `n` messages replayed, `Some(None)` when not recovered.
    pub recovered: Option<Option<u64>>,
}

/// An error reply.
pub fn error(id: u64, code: ErrorCode, reason: &str) -> String {
    let mut out = format!(
        r#"{{"type":"reply","id":{id},"error":{{"code":{},"reason":"#,
        code.code()
    );
    // A String is a Vec<u8> of UTF-8; serde_json writes valid UTF-8.
    let mut bytes = std::mem::take(&mut out).into_bytes();
    push_json_string(&mut bytes, reason);
    bytes.extend_from_slice(b"}}");
    String::from_utf8(bytes).unwrap_or_default()
}

/// An `unsubscribed` frame: the server ended a subscription.
pub fn unsubscribed(channel: &str, reason: &str) -> String {
    let mut bytes = br#"{"type":"unsubscribed","channel":"#.to_vec();
    push_json_string(&mut bytes, channel);
    bytes.extend_from_slice(br#","reason":"#);
    push_json_string(&mut bytes, reason);
    bytes.push(b'}');
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::{Continuity, Epoch};

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse(
                r#"{"type":"subscribe","id":7,"channel":"chat","since":{"epoch":"a.b.c","offset":41}}"#
            ),
            Ok(Command::Subscribe {
                id: 7,
                channel: "chat".into(),
                since: Some(Since {
                    epoch: "a.b.c".into(),
                    offset: 41
                }),
                options: SubscribeOptions::default(),
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","id":7,"channel":"c","presence":true,"echo":false}"#),
            Ok(Command::Subscribe {
                id: 7,
                channel: "c".into(),
                since: None,
                options: SubscribeOptions {
                    presence: true,
                    echo: false
                },
            })
        );
        assert_eq!(
            parse(r#"{"type":"presence_stats","id":8,"channel":"c"}"#),
            Ok(Command::PresenceStats {
                id: 8,
                channel: "c".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"connect","token":"t"}"#),
            Ok(Command::Connect {
                id: None,
                token: "t".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"publish","id":1,"channel":"c","data":"hi"}"#),
            Ok(Command::Publish {
                id: 1,
                channel: "c".into(),
                data: "hi".into()
            })
        );
        assert_eq!(
            parse(r#"{"id":3,"type":"ping"}"#),
            Ok(Command::Ping { id: 3 })
        );
    }

    #[test]
    fn refusals_reply_when_there_is_an_id_and_close_otherwise() {
        for fatal in [
            "nope",
            "[1]",
            r#"{"type":"ping"}"#,
            r#"{"type":"ping","id":0}"#,
            r#"{"type":"ping","id":-1}"#,
            r#"{"type":"ping","id":"1"}"#,
            r#"{"type":"ping","id":1.5}"#,
            r#"{"type":"connect"}"#,
        ] {
            assert!(matches!(parse(fatal), Err(ParseError::Fatal(_))), "{fatal}");
        }
        for (bad, why) in [
            (
                r#"{"type":"subscribe","id":2}"#,
                "Missing or invalid channel",
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":""}"#,
                "Empty channel",
            ),
            (
                r#"{"type":"subscribe","id":2,"channel":"c","since":{"epoch":"e"}}"#,
                "Invalid since.offset",
            ),
            (
                r#"{"type":"publish","id":2,"channel":"c","data":{}}"#,
                "Missing or invalid data",
            ),
            (
                r#"{"type":"launch","id":2}"#,
                "Unknown command type \"launch\"",
            ),
            (r#"{"id":2}"#, "Missing type"),
            (
                r#"{"type":"subscribe","id":2,"channel":"c","echo":0}"#,
                "Invalid echo: expected true or false",
            ),
            (
                r#"{"type":"presence","id":2}"#,
                "Missing or invalid channel",
            ),
        ] {
            assert_eq!(
                parse(bad),
                Err(ParseError::Reply {
                    id: 2,
                    reason: why.into()
                }),
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"type":"subscribe","id":2,"channel":"{}"}}"#,
            "x".repeat(MAX_CHANNEL_NAME + 1)
        );
        assert!(matches!(parse(&long), Err(ParseError::Reply { id: 2, .. })));
    }

    #[test]
    fn frames_are_json_with_the_payload_verbatim() {
        let p = Position {
            epoch: Epoch {
                base: 255,
                continuity: Continuity {
                    term: 16,
                    session: 1,
                },
            },
            offset: 42,
        };
        let payload = "{\"channel\":\"chat\",\n\"x\":\"ü \\\" </script>\"}";
        let m = json(&message("ch\"at", Some(&p), payload));
        assert_eq!(m["type"], "message");
        assert_eq!(m["channel"], "ch\"at");
        assert_eq!(m["epoch"], "ff.10.1");
        assert_eq!(m["offset"], 42);
        assert_eq!(m["data"], payload);
        let bare = json(&message("c", None, "x"));
        assert!(bare.get("epoch").is_none() && bare.get("offset").is_none());

        let r = json(
            reply(
                7,
                Some(&Subscribed {
                    position: p,
                    recovered: Some(Some(3)),
                }),
            )
            .as_bytes(),
        );
        assert_eq!(
            (
                r["id"].as_u64(),
                r["recovered"].as_bool(),
                r["replayed"].as_u64()
            ),
            (Some(7), Some(true), Some(3))
        );
        let r = json(
            reply(
                8,
                Some(&Subscribed {
                    position: p,
                    recovered: Some(None),
                }),
            )
            .as_bytes(),
        );
        assert_eq!(r["recovered"], false);
        assert!(r.get("replayed").is_none());
        let r = json(reply(9, None).as_bytes());
        assert_eq!(r, serde_json::json!({"type":"reply","id":9}));
        let e = json(error(4, ErrorCode::Forbidden, "Channel \"x\" not allowed").as_bytes());
        assert_eq!(e["error"]["code"], 403);
        assert_eq!(e["error"]["reason"], "Channel \"x\" not allowed");
        let u = json(unsubscribed("c", "Token no longer allows this channel").as_bytes());
        assert_eq!(u["type"], "unsubscribed");
    }
}
