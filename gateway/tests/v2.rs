//! Protocol v2 on a standalone gateway: negotiation, the token in the
//! upgrade or in `connect`, every command and its replies, bad input,
//! limits, token refresh, and recovery from in-memory history — including
//! while notifications keep arriving.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn read_token() -> String {
    token(json!({"mode": "rw"}))
}

async fn v2(gw: &Server) -> V2 {
    V2::connect(&gw.url(&read_token())).await
}

fn chat_payload(channel: &str, n: u64) -> String {
    format!(r#"{{"channel":"{channel}","n":{n}}}"#)
}

/// A round trip on the socket: everything sent before it has been handled.
async fn settle(c: &mut V2) {
    let reply = c.request(json!({"type": "ping"})).await;
    assert!(reply.get("error").is_none(), "{reply}");
}

#[tokio::test]
async fn a_v2_socket_negotiates_subscribes_receives_publishes_and_unsubscribes() {
    let gw = Server::start().await;
    let response = tokio_tungstenite::connect_async(v2_request(&gw.url(&read_token())))
        .await
        .expect("upgrade")
        .1;
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"pgws.v2"[..])
    );
    let mut c = v2(&gw).await;
    let chat = unique("chat");
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong, json!({"type": "reply", "id": 1}));

    let reply = c.subscribe(&chat, None).await;
    assert_eq!(reply["offset"], 0, "{reply}");
    assert!(reply["epoch"].is_string());
    assert!(reply.get("recovered").is_none() && reply.get("replayed").is_none());

    let db = db().await;
    let payload = format!(r#"{{"channel":"{chat}", "text":"ü \"quoted\""}}"#);
    notify(&db, &gw.listen_channel, &payload).await;
    let m = c.next_message().await;
    assert_eq!(m["channel"], chat.as_str());
    assert_eq!(
        m["data"],
        payload.as_str(),
        "the payload verbatim, as a string"
    );
    assert_eq!(m["offset"], 1);
    assert_eq!(m["epoch"], reply["epoch"], "the subscription's epoch");

    let mut pg = listen_ready(&gw.listen_channel).await;
    let ok = c
        .request(json!({"type": "publish", "channel": chat, "data": "hello"}))
        .await;
    assert!(ok.get("error").is_none(), "{ok}");
    let envelope: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(envelope["event"], "WebsocketMessage");
    assert_eq!(envelope["channel"], chat.as_str());
    assert_eq!(envelope["payload"], "hello");
    assert_eq!(envelope["claims"]["mode"], "rw");

    let ok = c
        .request(json!({"type": "unsubscribe", "channel": chat}))
        .await;
    assert!(ok.get("error").is_none());
    let again = c
        .request(json!({"type": "unsubscribe", "channel": chat}))
        .await;
    assert!(again.get("error").is_none(), "unsubscribing twice succeeds");
    notify(&db, &gw.listen_channel, &chat_payload(&chat, 2)).await;
    // Notifications are handled in order: once a marker on another channel
    // arrives, the one on `chat` before it would have, had it been sent.
    let other = unique("other");
    c.subscribe(&other, None).await;
    notify(&db, &gw.listen_channel, &chat_payload(&other, 1)).await;
    loop {
        let m = c.next_message().await;
        if m["channel"] == other.as_str() {
            break;
        }
        // Only the writer's own message (offset 2) may still come back.
        assert_eq!(m["offset"], 2, "nothing after unsubscribe: {m}");
    }
}

#[tokio::test]
async fn the_token_may_come_in_a_connect_frame_and_its_problems_close_with_4xxx() {
    let gw = Server::gateway()
        .env("PGWS_CONNECT_TIMEOUT", "500")
        .start()
        .await;
    let chat = unique("chat");

    let mut c = V2::connect(&gw.url("")).await;
    c.send_text(&json!({"type": "connect", "id": 1, "token": read_token()}).to_string())
        .await;
    assert_eq!(c.reply_to(1).await, json!({"type": "reply", "id": 1}));
    let reply = c.subscribe(&chat, None).await;
    assert_eq!(reply["offset"], 0);

    // Without an id, connect gets no reply: the next command's is first.
    let mut quiet = V2::connect(&gw.url("")).await;
    quiet
        .send_text(&json!({"type": "connect", "token": read_token()}).to_string())
        .await;
    let pong = quiet.request(json!({"type": "ping"})).await;
    assert_eq!(pong["id"], 1);
    assert!(quiet.frames.is_empty(), "{:?}", quiet.frames);

    let expired = token(json!({"mode": "r", "exp": now() - 10}));
    for (first, code, reason) in [
        (
            json!({"type": "connect", "token": expired}).to_string(),
            4401,
            "Token expired",
        ),
        (
            json!({"type": "connect", "token": "a.b.c"}).to_string(),
            4401,
            "",
        ),
        (
            json!({"type": "connect", "token": token(json!({"channel": "x"}))}).to_string(),
            4403,
            "Missing mode",
        ),
        (
            json!({"type": "ping", "id": 1}).to_string(),
            4400,
            "Expected a connect frame first, got ping",
        ),
        ("not json".to_string(), 4400, ""),
    ] {
        let mut c = V2::connect(&gw.url("")).await;
        c.send_text(&first).await;
        let (got_code, got_reason) = c.expect_close().await;
        assert_eq!(got_code, code, "{first}: {got_reason}");
        assert!(got_reason.contains(reason), "{first}: {got_reason}");
    }

    let mut silent = V2::connect(&gw.url("")).await;
    let started = Instant::now();
    let (code, reason) = silent.expect_close().await;
    assert_eq!((code, reason.as_str()), (4408, "No connect frame in time"));
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A bad token in the upgrade itself is refused before it, as in v1.
    let refused = try_connect(v2_request(&gw.url("not.a.token"))).await;
    assert!(matches!(refused, Err((401, _))), "{refused:?}");
}

#[tokio::test]
async fn bad_commands_get_an_error_reply_and_unusable_frames_close_the_socket() {
    let gw = Server::gateway()
        .env("PGWS_MAX_SUBSCRIPTIONS", "2")
        .start()
        .await;
    let narrow = token(json!({"mode": "r", "channels": ["a", "b", "c"]}));
    let mut c = V2::connect(&gw.url(&narrow)).await;
    let expect_error = |reply: &Value, code: u64| {
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(reply["error"]["reason"].is_string());
    };
    expect_error(&c.subscribe("elsewhere", None).await, 403);
    assert!(c.subscribe("a", None).await.get("error").is_none());
    expect_error(&c.subscribe("a", None).await, 409);
    assert!(c.subscribe("b", None).await.get("error").is_none());
    expect_error(&c.subscribe("c", None).await, 429);
    expect_error(
        &c.request(json!({"type": "publish", "channel": "a", "data": "x"}))
            .await,
        403,
    );
    expect_error(&c.request(json!({"type": "launch"})).await, 400);
    expect_error(&c.request(json!({"type": "subscribe"})).await, 400);
    expect_error(
        &c.request(json!({"type": "subscribe", "channel": "a", "since": {"epoch": "e"}}))
            .await,
        400,
    );
    expect_error(
        &c.request(json!({"type": "connect", "token": read_token()}))
            .await,
        400,
    );

    let mut w = v2(&gw).await;
    let big = "x".repeat(8_000);
    expect_error(
        &w.request(json!({"type": "publish", "channel": "a", "data": big}))
            .await,
        413,
    );
    assert!(w
        .request(json!({"type": "ping"}))
        .await
        .get("error")
        .is_none());

    for (frame, code) in [
        ("[1,2]", 1008),
        (r#"{"type":"ping"}"#, 1008),
        (r#"{"type":"ping","id":-3}"#, 1008),
    ] {
        let mut s = v2(&gw).await;
        s.send_text(frame).await;
        let (got, reason) = s.expect_close().await;
        assert_eq!(got, code, "{frame}: {reason}");
        assert!(!reason.is_empty());
    }
    let mut b = v2(&gw).await;
    b.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(b.expect_close().await.0, 1003);

    // None of that disturbed the first socket.
    assert!(c
        .request(json!({"type": "ping"}))
        .await
        .get("error")
        .is_none());
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "pgws_v2_errors_total{code=\"403\"}") >= 2.0);
    assert!(metric_value(&metrics, "pgws_v2_errors_total{code=\"429\"}") >= 1.0);
}

#[tokio::test]
async fn commands_beyond_the_rate_are_refused_with_429_and_the_socket_stays() {
    let gw = Server::gateway()
        .env("PGWS_COMMAND_RATE", "5")
        .start()
        .await;
    let mut c = v2(&gw).await;
    for id in 1..=20 {
        c.send_text(&json!({"type": "ping", "id": id}).to_string())
            .await;
    }
    let mut limited = 0;
    for id in 1..=20 {
        let reply = c.reply_to(id).await;
        if reply["error"]["code"] == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 10, "{limited} of 20 limited at 5/s");
    // Tokens come back with time: poll until a ping passes again.
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = c.request(json!({"type": "ping"})).await;
        if reply.get("error").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the bucket never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn refresh_replaces_the_token_in_place_and_ends_what_it_no_longer_allows() {
    let gw = Server::start().await;
    let (a, b) = (unique("a"), unique("b"));
    let soon_exp = now() + 2;
    let soon = token(json!({"mode": "r", "channels": [a, b], "exp": soon_exp}));
    let mut c = V2::connect(&gw.url(&soon)).await;
    assert!(c.subscribe(&a, None).await.get("error").is_none());
    assert!(c.subscribe(&b, None).await.get("error").is_none());

    let bad = c
        .request(json!({"type": "refresh", "token": token(json!({"mode": "r", "exp": now() - 5}))}))
        .await;
    assert_eq!(bad["error"]["code"], 401, "{bad}");

    let later = token(json!({"mode": "r", "channels": [a], "exp": now() + 60}));
    let ok = c.request(json!({"type": "refresh", "token": later})).await;
    assert!(ok.get("error").is_none(), "{ok}");
    let ended = c
        .frames
        .pop_front()
        .expect("an unsubscribed frame before the reply");
    assert_eq!(ended["type"], "unsubscribed");
    assert_eq!(ended["channel"], b.as_str());

    // Past the first token's exp the socket is still open.
    let deadline = Instant::now() + WAIT;
    while now() <= soon_exp {
        assert!(Instant::now() < deadline);
        settle(&mut c).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    settle(&mut c).await;
    let db = db().await;
    notify(&db, &gw.listen_channel, &chat_payload(&b, 1)).await;
    notify(&db, &gw.listen_channel, &chat_payload(&a, 1)).await;
    let m = c.next_message().await;
    assert_eq!(m["channel"], a.as_str(), "b ended with the refresh");
}

#[tokio::test]
async fn expiry_still_closes_with_3001_without_a_refresh() {
    let gw = Server::start().await;
    let mut c = V2::connect(&gw.url(&token(json!({"mode": "r", "exp": now() + 1})))).await;
    assert_eq!(c.expect_close().await.0, 3001);
}

#[tokio::test]
async fn a_client_recovers_exactly_what_it_missed_then_live_messages() {
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "20")
        .start()
        .await;
    let chat = unique("chat");
    let db = db().await;
    let mut c = v2(&gw).await;
    let start = Pos::of(&c.subscribe(&chat, None).await);
    for n in 1..=3 {
        notify(&db, &gw.listen_channel, &chat_payload(&chat, n)).await;
    }
    let seen = c.read_messages(3).await;
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    let last = Pos {
        epoch: start.epoch.clone(),
        offset: 3,
    };
    drop(c);

    for n in 4..=8 {
        notify(&db, &gw.listen_channel, &chat_payload(&chat, n)).await;
    }
    // Recover once the gateway has them all (a recovery racing them is
    // the next test's business).
    gw.wait_metric("pgws_notifications_received_total", 8.0)
        .await;
    let mut back = v2(&gw).await;
    let reply = back.subscribe(&chat, Some(&last)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["replayed"], 5);
    assert_eq!(reply["offset"], 8);
    notify(&db, &gw.listen_channel, &chat_payload(&chat, 9)).await;
    let got = back.read_messages(6).await;
    let expected: Vec<(u64, String)> = (4..=9).map(|n| (n, chat_payload(&chat, n))).collect();
    assert_eq!(got, expected, "the missed ones in order, then live, once");

    // Nothing missed: recovered, nothing replayed.
    let newest = Pos {
        epoch: start.epoch.clone(),
        offset: 9,
    };
    let mut current = v2(&gw).await;
    let reply = current.subscribe(&chat, Some(&newest)).await;
    assert_eq!(
        (reply["recovered"].clone(), reply["replayed"].clone()),
        (json!(true), json!(0))
    );

    // Older than history (20 kept): not recovered, no replay.
    for n in 10..=40 {
        notify(&db, &gw.listen_channel, &chat_payload(&chat, n)).await;
    }
    gw.wait_metric("pgws_notifications_received_total", 40.0)
        .await;
    let mut late = v2(&gw).await;
    let reply = late.subscribe(&chat, Some(&last)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert!(reply.get("replayed").is_none());
    notify(&db, &gw.listen_channel, &chat_payload(&chat, 41)).await;
    assert_eq!(late.read_messages(1).await[0].0, 41, "live only");

    // Beyond the newest, or another epoch: not recovered.
    for since in [
        Pos {
            epoch: start.epoch.clone(),
            offset: 1000,
        },
        Pos {
            epoch: "1.2.3".into(),
            offset: 1,
        },
        Pos {
            epoch: "garbage".into(),
            offset: 1,
        },
    ] {
        let mut c = v2(&gw).await;
        let reply = c.subscribe(&chat, Some(&since)).await;
        assert_eq!(reply["recovered"], false, "{since:?}: {reply}");
    }
    let metrics = gw.metrics().await;
    assert!(metric_value(&metrics, "pgws_v2_recoveries_total{outcome=\"recovered\"}") >= 2.0);
    assert!(metric_value(&metrics, "pgws_v2_replayed_messages_total") >= 5.0);
}

#[tokio::test]
async fn a_restarted_gateway_is_a_new_epoch_and_history_off_recovers_nothing() {
    let channel = unique("pgws-t");
    let gw = Server::gateway()
        .env("PGWS_LISTEN_CHANNEL", channel.clone())
        .start()
        .await;
    let chat = unique("chat");
    let db = db().await;
    let mut c = v2(&gw).await;
    c.subscribe(&chat, None).await;
    notify(&db, &channel, &chat_payload(&chat, 1)).await;
    let m = c.next_message().await;
    let pos = Pos::of(&m);
    drop(c);
    drop(gw);

    let gw = Server::gateway()
        .env("PGWS_LISTEN_CHANNEL", channel.clone())
        .env("PGWS_HISTORY_SIZE", "0")
        .start()
        .await;
    let mut c = v2(&gw).await;
    let reply = c.subscribe(&chat, Some(&pos)).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], m["epoch"]);
    // History off: offsets still count; a recovery needing history fails,
    // one needing nothing succeeds.
    notify(&db, &channel, &chat_payload(&chat, 1)).await;
    notify(&db, &channel, &chat_payload(&chat, 2)).await;
    let got = c.read_messages(2).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
    let fresh = Pos::of(&reply);
    let mut d = v2(&gw).await;
    let needs_history = d.subscribe(&chat, Some(&fresh)).await;
    assert_eq!(needs_history["recovered"], false);
    let mut e = v2(&gw).await;
    let newest = Pos {
        epoch: fresh.epoch,
        offset: 2,
    };
    let nothing_missed = e.subscribe(&chat, Some(&newest)).await;
    assert_eq!(nothing_missed["recovered"], true);
}

#[tokio::test]
async fn recovering_while_notifications_pour_in_sees_every_offset_exactly_once_in_order() {
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "10000")
        .start()
        .await;
    let chat = unique("chat");
    const TOTAL: u64 = 3_000;
    let mut c = v2(&gw).await;
    let pos = Pos::of(&c.subscribe(&chat, None).await);
    let listen_channel = gw.listen_channel.clone();
    let pump_channel = chat.clone();
    let pump = tokio::spawn(async move {
        let db = db().await;
        for n in 1..=TOTAL {
            notify(&db, &listen_channel, &chat_payload(&pump_channel, n)).await;
        }
    });
    // Read a little, then drop the socket and recover from the last offset
    // read, many times while the pump runs.
    let (seen, reconnects) =
        read_while_reconnecting(c, &chat, pos, TOTAL as usize, |_| v2(&gw)).await;
    pump.await.expect("pump");
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(seen, expected, "every offset once, in order");
    assert!(
        reconnects >= 20,
        "only {reconnects} recoveries raced the pump"
    );
}

#[tokio::test]
async fn v2_sockets_send_meta_events_with_their_claimed_channels() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", meta.clone())
        .start()
        .await;
    let mut watcher = connect(&gw.url(&format!(
        "{meta}/{}",
        token(json!({"mode": "r", "channel": meta}))
    )))
    .await;
    // The watcher's own ConnectionOpen comes first.
    let own: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(own["channels"], json!([meta]));
    let c = V2::connect(&gw.url(&token(json!({"mode": "r", "channels": ["x", "y"]})))).await;
    let open: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(open["event"], "ConnectionOpen");
    assert_eq!(open["channels"], json!(["x", "y"]));
    drop(c);
    let close: Value = serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(close["event"], "ConnectionClose");
    assert_eq!(close["channels"], json!(["x", "y"]));
}
