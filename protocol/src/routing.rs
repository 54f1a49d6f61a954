//! Which websocket channel a NOTIFY payload is delivered to.
//!
//! The original postgres-websockets parses the payload as JSON and delivers
//! it to the channel named by its `"channel"` field; anything else (not JSON,
//! not an object, no string `channel`) goes to the channel that has the same
//! name as the database listen channel. The payload itself is never changed.

use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Routed<'a> {
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
}

/// The websocket channel `payload` is addressed to, or `fallback` (the listen
/// channel's name) when the payload does not name one.
pub fn target_channel<'a>(payload: &'a str, fallback: &'a str) -> Cow<'a, str> {
    // Only objects can carry a channel; skip the parse for anything else.
    if !payload.trim_start().starts_with('{') {
        return Cow::Borrowed(fallback);
    }
    match serde_json::from_str::<Routed<'a>>(payload) {
        Ok(Routed {
            channel: Some(channel),
        }) => channel,
        _ => Cow::Borrowed(fallback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FALLBACK: &str = "postgres-websockets-listener";

    #[test]
    fn object_with_string_channel_routes_to_it() {
        assert_eq!(
            target_channel(r#"{"channel":"chat","payload":"hi"}"#, FALLBACK),
            "chat"
        );
    }

    #[test]
    fn escaped_channel_names_are_decoded() {
        assert_eq!(target_channel(r#"{"channel":"a\"b"}"#, FALLBACK), "a\"b");
    }

    #[test]
    fn anything_else_goes_to_the_fallback() {
        for payload in [
            "plain text",
            "",
            "[1,2]",
            r#"{"channel":42}"#,
            r#"{"payload":"no channel"}"#,
            r#"{"channel":"chat""#,
            "null",
        ] {
            assert_eq!(
                target_channel(payload, FALLBACK),
                FALLBACK,
                "payload {payload:?}"
            );
        }
    }
}
