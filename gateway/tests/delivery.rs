//! Database → websocket and websocket → database, end to end.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn notify_reaches_every_reader_of_the_channel_verbatim() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let other = unique("other");
    let mut r1 = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"r"}))))).await;
    let mut r2 = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"rw"}))))).await;
    let mut elsewhere = connect(&gw.url(&format!("{other}/{}", token(json!({"mode":"r"}))))).await;
    let db = db().await;

    let payload = format!(r#"{{"channel":"{chat}","payload":"hi", "extra": [1, 2]}}"#);
    notify(&db, &gw.listen_channel, &payload).await;
    assert_eq!(
        next_text(&mut r1).await,
        payload,
        "verbatim, whitespace included"
    );
    assert_eq!(next_text(&mut r2).await, payload);

    // The other channel's reader gets only its own message: the marker sent
    // after the chat message is the first thing it sees.
    let marker = format!(r#"{{"channel":"{other}","payload":"marker"}}"#);
    notify(&db, &gw.listen_channel, &marker).await;
    assert_eq!(next_text(&mut elsewhere).await, marker);
}

#[tokio::test]
async fn write_only_sockets_receive_nothing() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let mut writer = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    let mut reader = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"r"}))))).await;
    let db = db().await;
    notify(
        &db,
        &gw.listen_channel,
        &format!(r#"{{"channel":"{chat}","payload":"1"}}"#),
    )
    .await;
    assert!(next_text(&mut reader).await.contains(r#""payload":"1""#));
    // The writer has nothing to read: after a ping round trip it still has
    // received no text.
    use futures_util::SinkExt;
    writer
        .send(tokio_tungstenite::tungstenite::Message::Ping(
            b"p".to_vec().into(),
        ))
        .await
        .expect("ping");
    match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut writer)).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Pong(p)))) => assert_eq!(&p[..], b"p"),
        other => panic!("a write-only socket got {other:?} before the pong"),
    }
}

#[tokio::test]
async fn payloads_without_a_channel_go_to_the_listen_channel_name() {
    let gw = Server::start().await;
    let mut reader = connect(&gw.url(&format!(
        "{}/{}",
        gw.listen_channel,
        token(json!({"mode":"r"}))
    )))
    .await;
    let db = db().await;
    for payload in [
        "plain text",
        "[1,2,3]",
        r#"{"channel":7}"#,
        r#"{"no":"channel"}"#,
    ] {
        notify(&db, &gw.listen_channel, payload).await;
        assert_eq!(next_text(&mut reader).await, payload);
    }
}

#[tokio::test]
async fn per_channel_order_is_kept() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let mut reader = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"r"}))))).await;
    let db = db().await;
    db.execute(
        "SELECT pg_notify($1, json_build_object('channel', $2::text, 'payload', g::text)::text) FROM generate_series(1, 500) g",
        &[&gw.listen_channel, &chat],
    )
    .await
    .expect("notify many");
    for i in 1..=500 {
        let v: Value = serde_json::from_str(&next_text(&mut reader).await).expect("json");
        assert_eq!(v["payload"], i.to_string());
    }
}

#[tokio::test]
async fn a_writer_message_becomes_one_notify_per_channel_with_claims() {
    let gw = Server::start().await;
    let mut pg = listen_ready(&gw.listen_channel).await;
    let (a, b) = (unique("a"), unique("b"));
    let claims = json!({"mode":"rw","channels":[a, b],"role":"admin","message_delivered_at":1});
    let mut ws = connect(&gw.url(&token(claims))).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    send(&mut ws, "hello \"world\"").await;

    let mut seen = Vec::new();
    for _ in 0..2 {
        let v: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json envelope");
        assert_eq!(v["event"], "WebsocketMessage");
        assert_eq!(v["payload"], "hello \"world\"");
        assert_eq!(v["claims"]["mode"], "rw");
        assert_eq!(v["claims"]["role"], "admin");
        let at = v["claims"]["message_delivered_at"]
            .as_f64()
            .expect("timestamp");
        assert!(
            at >= before - 1.0 && at < before + 60.0,
            "delivered_at {at} replaces the token's"
        );
        seen.push(v["channel"].as_str().expect("channel").to_string());
    }
    seen.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(seen, want);

    // Loop-back: the writer reads both channels, so it gets both back.
    for _ in 0..2 {
        let v: Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
        assert_eq!(v["payload"], "hello \"world\"");
    }
}

#[tokio::test]
async fn repeated_identical_messages_are_all_sent() {
    // PostgreSQL folds identical notifications within one transaction; the
    // relay must not batch a message with its own repeat.
    let gw = Server::start().await;
    let mut pg = listen_ready(&gw.listen_channel).await;
    let chat = unique("chat");
    let mut ws = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    for _ in 0..50 {
        send(&mut ws, "same").await;
    }
    for _ in 0..50 {
        let v: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        assert_eq!(v["payload"], "same");
    }
}

#[tokio::test]
async fn read_only_sockets_do_not_notify() {
    let gw = Server::start().await;
    let mut pg = listen_ready(&gw.listen_channel).await;
    let chat = unique("chat");
    let mut reader = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"r"}))))).await;
    let mut writer = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    send(&mut reader, "ignored").await;
    send(&mut writer, "counted").await;
    // Messages from one gateway are queued in order per channel: the first
    // NOTIFY seen is the writer's.
    let v: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(v["payload"], "counted");
    assert!(next_text(&mut reader).await.contains("counted"));
    gw.wait_metric("pgws_messages_rejected_total{reason=\"read_only\"}", 1.0)
        .await;
}

#[tokio::test]
async fn meta_channel_announces_open_and_close() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", meta.clone())
        .start()
        .await;
    let watcher_token = token(json!({"mode":"r","channel": meta}));
    let mut watcher = connect(&gw.url(&format!("{meta}/{watcher_token}"))).await;
    // The watcher's own ConnectionOpen arrives first.
    let own: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(own["event"], "ConnectionOpen");

    let (a, b) = (unique("a"), unique("b"));
    let mut ws = connect(&gw.url(&token(json!({"mode":"r","channels":[a, b],"user":"u1"})))).await;
    let open: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(open["event"], "ConnectionOpen");
    assert_eq!(open["channel"], meta.as_str());
    assert_eq!(open["payload"], format!("{a},{b}"));
    assert_eq!(open["channels"], json!([a, b]));
    assert_eq!(open["claims"]["user"], "u1");
    assert!(open["claims"]["message_delivered_at"].is_number());

    ws.close(None).await.expect("close");
    let close: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(close["event"], "ConnectionClose");
    assert_eq!(close["payload"], format!("{a},{b}"));
}

#[tokio::test]
async fn the_meta_channel_is_read_only_by_tokens_that_name_it_and_written_by_nobody() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", meta.clone())
        .start()
        .await;
    // A token without channel claims may open any channel — but not this.
    let (status, body) = refused(&gw.url(&format!("{meta}/{}", token(json!({"mode":"r"}))))).await;
    assert_eq!((status, body.as_str()), (403, "No allowed channels"));
    let mut watcher = connect(&gw.url(&format!(
        "{meta}/{}",
        token(json!({"mode":"r","channels":[meta]}))
    )))
    .await;
    next_text(&mut watcher).await; // its own ConnectionOpen

    // A socket on "a,b" (one channel with a comma): the array says so.
    let mut comma = connect(&gw.url(&format!("a%2Cb/{}", token(json!({"mode":"r"}))))).await;
    let open: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(
        (open["payload"].as_str(), &open["channels"]),
        (Some("a,b"), &json!(["a,b"]))
    );
    comma.close(None).await.expect("close");
    next_text(&mut watcher).await; // its ConnectionClose

    // A writer on the meta channel and another: only the other is written.
    let mut pg = listen_ready(&gw.listen_channel).await;
    let chat = unique("chat");
    let writer_token = token(json!({"mode":"w","channels":[chat, meta]}));
    let mut writer = connect(&gw.url(&writer_token)).await;
    send(&mut writer, "hello").await;
    let v: Value = loop {
        let v: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        if v["event"] == "WebsocketMessage" {
            break v;
        }
    };
    assert_eq!(v["channel"], chat.as_str());
    // Only the meta channel: ignored and counted, the socket stays open.
    let mut meta_writer = connect(&gw.url(&format!(
        "{meta}/{}",
        token(json!({"mode":"w","channel": meta}))
    )))
    .await;
    send(&mut meta_writer, "spoofed event").await;
    gw.wait_metric("pgws_messages_rejected_total{reason=\"meta_channel\"}", 1.0)
        .await;
    notify(&db().await, &gw.listen_channel, "marker").await;
    loop {
        let text = recv_within(&mut pg).await;
        assert!(
            !text.contains("spoofed event"),
            "written to the meta channel: {text}"
        );
        assert!(
            !(text.contains("WebsocketMessage")
                && text.contains(&format!("\"channel\":\"{meta}\""))),
            "{text}"
        );
        if text == "marker" {
            break;
        }
    }
}

#[tokio::test]
async fn a_public_meta_channel_behaves_as_the_original() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", meta.clone())
        .env("PGWS_META_CHANNEL_PUBLIC", "true")
        .start()
        .await;
    let mut watcher = connect(&gw.url(&format!("{meta}/{}", token(json!({"mode":"rw"}))))).await;
    let own: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(own["event"], "ConnectionOpen");
    send(&mut watcher, "posted on the meta channel").await;
    let echo: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(echo["payload"], "posted on the meta channel");
}
