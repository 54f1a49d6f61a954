//! Protocol v2 commands from clients: parsing anything, and what the
//! server would answer. Properties: nothing panics; a refusal with an id is
//! an error reply that is valid JSON naming that id; every frame the server
//! writes from a command's fields (replies, errors, `unsubscribed`,
//! `message`) is valid JSON that gives the fields back exactly; a `since`
//! epoch either parses into the epoch that prints the same or into nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_protocol::position::{Epoch, Position};
use pgws_protocol::v2::{self, Command, ErrorCode, ParseError};
use serde_json::Value;

fn json(text: &[u8]) -> Value {
    serde_json::from_slice(text).expect("the server writes valid JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match v2::parse(text) {
        Ok(Command::Subscribe { id, channel, since }) => {
            assert!(id > 0 && !channel.is_empty());
            let reply = json(v2::reply(id, None).as_bytes());
            assert_eq!(reply["id"], id);
            let m = json(&v2::message(&channel, None, text));
            assert_eq!(m["channel"].as_str(), Some(channel.as_str()));
            assert_eq!(m["data"].as_str(), Some(text));
            if let Some(since) = since {
                if let Some(epoch) = Epoch::parse(&since.epoch) {
                    assert_eq!(Epoch::parse(&epoch.to_string()), Some(epoch));
                    let p = Position { epoch, offset: since.offset };
                    let m = json(&v2::message(&channel, Some(&p), ""));
                    assert_eq!(m["offset"], since.offset);
                }
            }
        }
        Ok(Command::Unsubscribe { channel, .. }) => {
            let u = json(v2::unsubscribed(&channel, text).as_bytes());
            assert_eq!(u["channel"].as_str(), Some(channel.as_str()));
            assert_eq!(u["reason"].as_str(), Some(text));
        }
        Ok(Command::Publish { id, channel, data }) => {
            assert!(id > 0 && !channel.is_empty() && channel.len() <= v2::MAX_CHANNEL_NAME);
            let _ = data;
        }
        Ok(Command::Connect { .. } | Command::Refresh { .. } | Command::Ping { .. }) => {}
        Err(ParseError::Reply { id, reason }) => {
            for code in ErrorCode::ALL {
                let e = json(v2::error(id, code, &reason).as_bytes());
                assert_eq!(e["id"], id);
                assert_eq!(e["error"]["code"], code.code());
                assert_eq!(e["error"]["reason"].as_str(), Some(reason.as_str()));
            }
        }
        Err(ParseError::Fatal(reason)) => assert!(!reason.is_empty()),
    }
});
