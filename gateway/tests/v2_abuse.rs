//! What one v2 client must not be able to do to others or to the gateway
//! (issue #18, items 3–5): push other channels' history out by reading
//! made-up names, become someone else (or more) with `refresh`, or make
//! the gateway hold a whole replay for a socket that does not read.

mod common;

use common::*;
use serde_json::{json, Value};

fn chat_payload(channel: &str, n: u64) -> String {
    format!(r#"{{"channel":"{channel}","n":{n}}}"#)
}

#[tokio::test]
async fn reading_made_up_channels_does_not_evict_a_quiet_channels_history() {
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "20")
        .env("PGWS_HISTORY_MAX_CHANNELS", "100")
        .env("PGWS_COMMAND_RATE", "10000")
        .start()
        .await;
    let chat = unique("chat");
    let db = db().await;
    let mut reader = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let start = Pos::of(&reader.subscribe(&chat, None).await);
    notify(&db, &gw.listen_channel, &chat_payload(&chat, 1)).await;
    let (offset, _) = reader.read_messages(1).await[0].clone();
    drop(reader);
    notify(&db, &gw.listen_channel, &chat_payload(&chat, 2)).await;
    gw.wait_metric("pgws_notifications_received_total", 2.0)
        .await;

    let mut junk = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    for i in 0..150 {
        let name = format!("junk-{i}");
        let reply = junk.subscribe(&name, None).await;
        assert!(reply.get("error").is_none(), "{reply}");
        let gone = junk
            .request(json!({"type": "unsubscribe", "channel": name}))
            .await;
        assert!(gone.get("error").is_none(), "{gone}");
    }

    let mut back = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let since = Pos {
        epoch: start.epoch.clone(),
        offset,
    };
    let reply = back.subscribe(&chat, Some(&since)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["replayed"], 1, "{reply}");
    assert_eq!(back.read_messages(1).await[0].0, offset + 1);
    assert_eq!(gw.metric("pgws_history_evicted_total").await, 0.0);
}

/// The `ConnectionOpen` / `ConnectionClose` events on `meta`, in order,
/// until a close: each one's event, `sub` claim and channels.
async fn meta_events(watcher: &mut Ws, until_closes: usize) -> Vec<(String, Value, Value)> {
    let mut events = Vec::new();
    while events
        .iter()
        .filter(|e: &&(String, Value, Value)| e.0 == "ConnectionClose")
        .count()
        < until_closes
    {
        let event: Value = serde_json::from_str(&next_text(watcher).await).expect("json");
        events.push((
            event["event"].as_str().unwrap_or("").to_string(),
            event["claims"]["sub"].clone(),
            event["channels"].clone(),
        ));
    }
    events
}

#[tokio::test]
async fn a_refresh_keeps_the_identity_and_never_widens_or_the_socket_closes_with_3011() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", meta.clone())
        .start()
        .await;
    let mut watcher = connect(&gw.url(&format!(
        "{meta}/{}",
        token(json!({"mode": "r", "channel": meta, "sub": "watcher"}))
    )))
    .await;
    let own: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(own["event"], "ConnectionOpen");

    let exp = now() + 600;
    let alice =
        json!({"mode": "r", "channels": ["a", "b"], "sub": "alice", "iss": "us", "exp": exp});
    let refused = [
        (
            "another sub",
            json!({"mode": "r", "channels": ["a"], "sub": "mallory", "iss": "us", "exp": exp}),
        ),
        (
            "another iss",
            json!({"mode": "r", "channels": ["a"], "sub": "alice", "iss": "them", "exp": exp}),
        ),
        (
            "no sub",
            json!({"mode": "r", "channels": ["a"], "iss": "us", "exp": exp}),
        ),
        (
            "a wider mode",
            json!({"mode": "rw", "channels": ["a"], "sub": "alice", "iss": "us", "exp": exp}),
        ),
        (
            "more channels",
            json!({"mode": "r", "channels": ["a", "c"], "sub": "alice", "iss": "us", "exp": exp}),
        ),
        (
            "any channel",
            json!({"mode": "r", "sub": "alice", "iss": "us", "exp": exp}),
        ),
        (
            "no exp",
            json!({"mode": "r", "channels": ["a"], "sub": "alice", "iss": "us"}),
        ),
    ];
    for (what, claims) in &refused {
        let mut c = V2::connect(&gw.url(&token(alice.clone()))).await;
        assert!(c.subscribe("a", None).await.get("error").is_none());
        c.send_text(
            &json!({"type": "refresh", "id": 99, "token": token(claims.clone())}).to_string(),
        )
        .await;
        let (code, reason) = c.expect_close().await;
        assert_eq!(code, 3011, "{what}: {reason}");
    }
    // A later exp and fewer channels, same identity: accepted in place.
    let mut c = V2::connect(&gw.url(&token(alice.clone()))).await;
    let narrower =
        json!({"mode": "r", "channels": ["a"], "sub": "alice", "iss": "us", "exp": exp + 600});
    let ok = c
        .request(json!({"type": "refresh", "token": token(narrower)}))
        .await;
    assert!(ok.get("error").is_none(), "{ok}");
    drop(c);

    // Sockets end concurrently, so their events may interleave: every
    // one says alice on a and b, as many closes as opens.
    let events = meta_events(&mut watcher, refused.len() + 1).await;
    let opens = events.iter().filter(|e| e.0 == "ConnectionOpen").count();
    assert_eq!(opens, refused.len() + 1, "{events:?}");
    assert_eq!(events.len(), 2 * opens, "{events:?}");
    for (_, sub, channels) in &events {
        assert_eq!(sub, &json!("alice"), "closed as who opened: {events:?}");
        assert_eq!(channels, &json!(["a", "b"]), "{events:?}");
    }
    let refusals = gw
        .metric("pgws_connections_closed_total{reason=\"refresh_refused\"}")
        .await;
    assert_eq!(refusals, refused.len() as f64);
}
