//! Limits: message sizes, slow consumers, connection caps, keep-alive.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_frame_over_the_size_limit_is_closed_with_1009() {
    let gw = Server::gateway()
        .env("PGWS_MAX_MESSAGE_SIZE", "1000")
        .start()
        .await;
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"rw"}))))).await;
    send(&mut ws, &"x".repeat(1001)).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn a_message_too_large_for_notify_is_closed_with_1009_and_counted() {
    let gw = Server::start().await;
    let mut pg = listen_ready(&gw.listen_channel).await;
    let chat = unique("chat");
    let mut ws = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    send(&mut ws, &"x".repeat(7990)).await; // fits the frame limit, not NOTIFY with its envelope
    assert_eq!(
        expect_close(&mut ws).await,
        (1009, "Message too big".to_string())
    );
    gw.wait_metric("pgws_messages_rejected_total{reason=\"too_large\"}", 1.0)
        .await;
    // The largest message that fits still goes through on a new socket.
    let mut ws = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    send(&mut ws, "small").await;
    let got: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(got["payload"], "small");
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_others_are_not_held_up() {
    let gw = Server::gateway()
        .env("PGWS_SEND_QUEUE_SIZE", "256")
        .env("PGWS_SEND_TIMEOUT", "60000")
        .start()
        .await;
    let chat = unique("chat");
    let t = token(json!({"mode":"r"}));
    let mut stuck = connect(&gw.url(&format!("{chat}/{t}"))).await;
    let mut healthy = connect(&gw.url(&format!("{chat}/{t}"))).await;
    let db = db().await;
    // Steps of 100 notifications of 7 kB; the healthy reader reads each step
    // before the next is sent, so its queue never holds more than 100. The
    // stuck reader's kernel buffers and then its queue fill up.
    let step: i32 = 100;
    let mut overflowed = false;
    for _ in 0..80 {
        db.execute(
            "SELECT pg_notify($1, json_build_object('channel', $2::text, 'payload', repeat('x', 7000) || g)::text) FROM generate_series(1, $3) g",
            &[&gw.listen_channel, &chat, &step],
        )
        .await
        .expect("notify step");
        for _ in 0..step {
            next_text(&mut healthy).await;
        }
        if gw.metric("pgws_slow_consumer_disconnects_total").await >= 1.0 {
            overflowed = true;
            break;
        }
    }
    assert!(overflowed, "the stuck reader was never cut off");
    assert!(gw.metric("pgws_send_queue_drops_total").await >= 1.0);
    // Once the stuck client reads again, it finds the close code behind the
    // frames already in flight.
    assert_eq!(
        expect_close(&mut stuck).await,
        (3008, "Slow consumer".to_string())
    );
    // The healthy reader is still served.
    db.execute(
        "SELECT pg_notify($1, $2)",
        &[
            &gw.listen_channel,
            &format!(r#"{{"channel":"{chat}","payload":"after"}}"#),
        ],
    )
    .await
    .expect("notify");
    assert!(next_text(&mut healthy).await.contains("after"));
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let gw = Server::gateway()
        .env("PGWS_MAX_CONNECTIONS", "2")
        .start()
        .await;
    let url = gw.url(&format!("chat/{}", token(json!({"mode":"r"}))));
    let mut first = connect(&url).await;
    let _second = connect(&url).await;
    assert_eq!(
        refused(&url).await,
        (503, "Too many connections".to_string())
    );
    first.close(None).await.expect("close");
    // The slot is released once the first socket has fully ended.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match try_connect(
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .expect("req"),
        )
        .await
        {
            Ok(_) => break,
            Err((503, _)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    }
}

#[tokio::test]
async fn the_server_pings_and_drops_silent_peers() {
    let gw = Server::gateway()
        .env("PGWS_PING_INTERVAL", "1")
        .start()
        .await;
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"r"}))))).await;
    // tungstenite answers pings automatically while we read.
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Ping(_)))) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    // A raw TCP client that completes the handshake and then never answers
    // is dropped after two intervals.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    let request = format!(
        "GET /chat/{} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(json!({"mode":"r"}))
    );
    raw.write_all(request.as_bytes()).await.expect("write");
    let mut sink = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the silent peer was not dropped");
    gw.wait_metric(
        "pgws_connections_closed_total{reason=\"ping_timeout\"}",
        1.0,
    )
    .await;
}

/// Read from a raw socket until `done` says the bytes so far suffice.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> bool,
) {
    use tokio::io::AsyncReadExt;
    let deadline = std::time::Instant::now() + WAIT;
    while !done(seen) {
        let mut chunk = [0u8; 1024];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut chunk))
            .await
            .expect("the gateway answered in time")
            .expect("read");
        assert!(n > 0, "connection closed early: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_read_and_an_unmasked_frame_is_closed_with_1002() {
    use tokio::io::AsyncWriteExt;
    let gw = Server::start().await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    // The handshake and a masked ping in one write: the ping arrives in the
    // same packet as the upgrade request.
    let mut first = format!(
        "GET /chat/{} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token(json!({"mode": "r"}))
    )
    .into_bytes();
    let mask = [1u8, 2, 3, 4];
    first.extend_from_slice(&[0x89, 0x82]);
    first.extend_from_slice(&mask);
    first.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    stream.write_all(&first).await.expect("write");
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |s| {
        find(s, &[0x8A, 2, b'h', b'i']).is_some()
    })
    .await;
    assert!(
        seen.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&seen)
    );

    // A client frame without a mask breaks RFC 6455: 1002.
    seen.clear();
    stream
        .write_all(&[0x81, 2, b'n', b'o'])
        .await
        .expect("write");
    read_until(&mut stream, &mut seen, |s| {
        find(s, &[0x88]).is_some_and(|i| s.len() >= i + 4)
    })
    .await;
    let at = find(&seen, &[0x88]).expect("close frame");
    assert_eq!(u16::from_be_bytes([seen[at + 2], seen[at + 3]]), 1002);
}
