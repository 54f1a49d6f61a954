//! A verified token's claims: who may open what (with the meta channel
//! guarded or public), and the envelopes built from them. The first byte
//! picks the policy and the requested channel; the rest is the claims
//! (JSON) and doubles as a message payload. Properties: nothing panics; a
//! grant is never empty; a guarded meta channel is granted only when the
//! claims name it; every envelope is JSON that gives back the channel and
//! the payload exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_gateway::auth::{authorize, MetaChannel};
use pgws_protocol::envelope::{build, build_meta, ClaimsJson, Event};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let meta = MetaChannel {
        name: Some("server-info".into()),
        public: selector & 1 == 1,
    };
    let named = |c: &str| {
        claims.get("channel").and_then(Value::as_str) == Some(c)
            || claims
                .get("channels")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(c)))
    };
    let requested = match (selector >> 1) % 4 {
        0 => None,
        1 => Some("chat".to_string()),
        2 => Some("server-info".to_string()),
        _ => claims
            .get("channel")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    let Ok(grant) = authorize(claims.clone(), requested.as_deref(), &meta) else {
        return;
    };
    assert!(!grant.channels.is_empty());
    for channel in &grant.channels {
        assert!(
            !meta.guards(channel) || named(channel),
            "meta channel granted: {channel}"
        );
    }
    let json = ClaimsJson::new(&claims);
    let payload = String::from_utf8_lossy(rest);
    for channel in &grant.channels {
        let text = build(Event::WebsocketMessage, channel, &payload, &json, 1.25);
        let v: Value = serde_json::from_str(&text).expect("an envelope is JSON");
        assert_eq!(v["channel"].as_str(), Some(channel.as_str()));
        assert_eq!(v["payload"].as_str(), Some(payload.as_ref()));
        assert!(v["claims"].is_object());
    }
    let text = build_meta(
        Event::ConnectionOpen,
        "server-info",
        &grant.channels,
        &json,
        1.25,
    );
    let v: Value = serde_json::from_str(&text).expect("a meta event is JSON");
    let listed: Vec<&str> = v["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        listed,
        grant
            .channels
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
});
