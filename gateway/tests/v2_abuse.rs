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

/// A v2 socket that reads nothing: a receive buffer of a few KiB, the
/// upgrade, one `subscribe` with `since`, then silence.
async fn silent_subscriber(gw: &Server, token: &str, subscribe: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET /{token} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        pgws_protocol::v2::SUBPROTOCOL
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    while raw::find(&head, b"\r\n\r\n").is_none() {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let frame = raw::client_frame(true, 1, subscribe.as_bytes());
    stream.write_all(&frame).await.expect("subscribe");
    stream
}

/// The send queues (bytes sent or queued, not acknowledged) of the server
/// ends of established connections to `port` (`/proc/net/tcp`) that have
/// any: the client's window is closed, so the gateway's write is stuck.
fn stalled_on_server(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let established = *fields.get(3)? == "01";
            let tx = u64::from_str_radix(fields.get(4)?.split(':').next()?, 16).ok()?;
            (local_port == port && established && tx > 0).then_some(tx)
        })
        .collect()
}

#[tokio::test]
async fn a_large_replay_to_sockets_that_do_not_read_is_held_within_the_flush_bound() {
    const SOCKETS: usize = 64;
    const MESSAGES: u64 = 100;
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "200")
        .env("PGWS_SEND_TIMEOUT", "60000")
        .env("PGWS_SOCKET_SEND_BUFFER", "65536")
        .start()
        .await;
    let chat = unique("chat");
    let db = db().await;
    // ~7.9 KB of NOTIFY payload, mostly escaped quotes: each doubles again
    // in a v2 frame's JSON string.
    let pad = "\\\"".repeat(3900);
    let payload = |n: u64| format!(r#"{{"channel":"{chat}","n":{n},"pad":"{pad}"}}"#);
    assert!(payload(MESSAGES).len() < 7999);
    let mut reader = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let start = Pos::of(&reader.subscribe(&chat, None).await);
    for n in 1..=MESSAGES {
        notify(&db, &gw.listen_channel, &payload(n)).await;
    }
    assert_eq!(
        reader.read_messages(MESSAGES as usize).await.len(),
        MESSAGES as usize
    );
    drop(reader);

    let subscribe = json!({"type": "subscribe", "id": 1, "channel": chat,
        "since": {"epoch": start.epoch, "offset": 0}})
    .to_string();
    let read_token = token(json!({"mode": "r"}));
    // One reading client first, so that what the allocator keeps after a
    // replay is in the baseline.
    let mut warm = V2::connect(&gw.url(&read_token)).await;
    warm.send_text(&subscribe).await;
    let reply = warm.reply_to(1).await;
    assert_eq!(reply["replayed"], MESSAGES, "{reply}");
    assert_eq!(
        warm.read_messages(MESSAGES as usize).await.len(),
        MESSAGES as usize
    );
    let before = gw.rss_kib();

    let mut silent = Vec::new();
    for _ in 0..SOCKETS {
        silent.push(silent_subscriber(&gw, &read_token, &subscribe).await);
    }
    gw.wait_metric(
        "pgws_v2_recoveries_total{outcome=\"recovered\"}",
        1.0 + SOCKETS as f64,
    )
    .await;
    // Every socket's write is stuck on its closed window: whatever the
    // gateway encoded for it is held now.
    let deadline = std::time::Instant::now() + WAIT;
    while stalled_on_server(gw.addr.port()).len() < SOCKETS {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} writes stalled",
            stalled_on_server(gw.addr.port()).len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let held = gw.rss_kib().saturating_sub(before);
    let in_kernel: u64 = stalled_on_server(gw.addr.port()).iter().sum();
    let per_socket = held as f64 / SOCKETS as f64;
    let kernel_per_socket = in_kernel as f64 / 1024.0 / SOCKETS as f64;
    println!(
        "{SOCKETS} silent sockets during a {MESSAGES}-message replay: +{held} KiB RSS, \
         {per_socket:.0} KiB each; {kernel_per_socket:.0} KiB each in the kernel's send queues"
    );
    assert!(
        per_socket < 200.0,
        "a socket that does not read holds {per_socket:.0} KiB of replay"
    );
    // SO_SNDBUF 64 KiB, which Linux doubles.
    assert!(
        kernel_per_socket <= 256.0,
        "the kernel holds {kernel_per_socket:.0} KiB per socket"
    );
    drop(silent);
}

#[tokio::test]
async fn a_replay_over_the_socket_byte_bound_is_answered_not_recovered_and_counted() {
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "50")
        .env("PGWS_REPLAY_MAX_BYTES", "20000")
        .start()
        .await;
    let chat = unique("chat");
    let db = db().await;
    let pad = "x".repeat(3000);
    let payload = |n: u64| format!(r#"{{"channel":"{chat}","n":{n},"pad":"{pad}"}}"#);
    let mut reader = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let start = Pos::of(&reader.subscribe(&chat, None).await);
    for n in 1..=10 {
        notify(&db, &gw.listen_channel, &payload(n)).await;
    }
    assert_eq!(reader.read_messages(10).await.len(), 10);
    let since = |offset| Pos {
        epoch: start.epoch.clone(),
        offset,
    };

    // Ten messages of ~3 KB: over 20,000 bytes.
    let mut late = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let reply = late.subscribe(&chat, Some(&since(0))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(
        gw.metric("pgws_v2_recoveries_total{outcome=\"too_large\"}")
            .await,
        1.0
    );
    // Four fit, and are replayed.
    let mut recent = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    let reply = recent.subscribe(&chat, Some(&since(6))).await;
    assert_eq!(reply["replayed"], 4, "{reply}");
    let got: Vec<u64> = recent.read_messages(4).await.iter().map(|m| m.0).collect();
    assert_eq!(got, vec![7, 8, 9, 10]);
    let bytes = gw.metric("pgws_v2_replayed_bytes_total").await;
    assert_eq!(
        bytes,
        (7..=10).map(|n| payload(n).len()).sum::<usize>() as f64
    );
}
