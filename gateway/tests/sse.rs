//! Server-Sent Events on a standalone gateway: the stream's headers and
//! first block, events with v2 positions as ids, multi-line payloads,
//! the token's sources and refusals, `Last-Event-ID` recovery (exactly
//! what was missed) and the reset event, keep-alive comments, the close
//! at the token's `exp`, the meta events and the shared connection limit.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn reader() -> String {
    token(json!({"mode": "r"}))
}

fn payload(channel: &str, n: u64) -> String {
    format!(r#"{{"channel":"{channel}","n":{n}}}"#)
}

async fn open(gw: &Server, path: &str, extra: &[(&str, &str)]) -> Sse {
    let sse = Sse::open(gw.addr, path, extra).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    sse
}

/// The first block: `retry:` and the starting `id:`, no data.
async fn preamble(sse: &mut Sse) -> SseBlock {
    let first = sse.next_block().await.expect("a first block");
    assert!(first.retry.is_some() && first.id.is_some(), "{first:?}");
    assert_eq!(first.data, None);
    first
}

#[tokio::test]
async fn a_stream_receives_events_with_positions_and_multi_line_payloads() {
    let gw = Server::gateway()
        .env("PGWS_SSE_RETRY", "1500")
        .start()
        .await;
    let chat = unique("chat");
    let mut sse = open(&gw, &format!("/{chat}/{}", reader()), &[]).await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    let first = preamble(&mut sse).await;
    assert_eq!(first.retry, Some(1500));
    let start = first.id.expect("id");
    let (epoch, offset) = start.rsplit_once(':').expect("epoch:offset");
    assert_eq!(offset, "0", "a new channel starts at 0");

    let db = db().await;
    let multi = format!("{{\"channel\":\"{chat}\",\n\"a\":1,\r\n\"b\":2,\r\"c\":3}}");
    notify(&db, &gw.listen_channel, &payload(&chat, 1)).await;
    notify(&db, &gw.listen_channel, &multi).await;
    let one = sse.next_event().await;
    assert_eq!(one.data.as_deref(), Some(payload(&chat, 1).as_str()));
    assert_eq!(one.id, Some(format!("{epoch}:1")));
    let two = sse.next_event().await;
    assert_eq!(
        two.data,
        Some(multi.replace("\r\n", "\n").replace('\r', "\n")),
        "every line break starts a data: line"
    );
    assert_eq!(two.id, Some(format!("{epoch}:2")));
    gw.wait_metric("pgws_sse_events_total", 2.0).await;
    assert_eq!(gw.metric("pgws_sse_streams").await, 1.0);
}

#[tokio::test]
async fn the_token_comes_from_the_path_the_query_or_a_bearer_header() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let t = reader();
    let bearer = format!("Bearer {t}");
    let mut streams = vec![
        open(&gw, &format!("/{chat}?token={t}"), &[]).await,
        open(&gw, &format!("/{chat}"), &[("Authorization", &bearer)]).await,
        open(
            &gw,
            &format!("/{}", token(json!({"mode": "r", "channel": chat}))),
            &[],
        )
        .await,
    ];
    for s in &mut streams {
        preamble(s).await;
    }
    let db = db().await;
    notify(&db, &gw.listen_channel, &payload(&chat, 7)).await;
    for s in &mut streams {
        assert_eq!(s.messages(1).await, vec![payload(&chat, 7)]);
    }
}

#[tokio::test]
async fn refusals_are_answered_before_the_stream_with_the_reason() {
    let gw = Server::gateway()
        .env("PGWS_MAX_CONNECTIONS", "1")
        .start()
        .await;
    let chat = unique("chat");
    let cases = [
        (format!("/{chat}"), 401, "Missing token"),
        (format!("/{chat}/a.b.c"), 401, ""),
        (
            format!("/{chat}/{}", token(json!({"mode": "r", "exp": now() - 60}))),
            401,
            "Token expired",
        ),
        (
            format!("/{chat}/{}", token(json!({"mode": "w"}))),
            403,
            "Token mode does not allow reading",
        ),
        (
            format!(
                "/{chat}/{}",
                token(json!({"mode": "r", "channel": "other"}))
            ),
            403,
            "No allowed channels",
        ),
        ("/a/b/c".to_string(), 404, "Not found"),
    ];
    for (path, status, reason) in cases {
        let s = Sse::open(gw.addr, &path, &[]).await;
        assert_eq!(s.status, status, "{path}: {}", s.body);
        assert!(s.body.contains(reason), "{path}: {}", s.body);
    }
    // One slot (PGWS_MAX_CONNECTIONS), shared with websockets.
    let mut first = open(&gw, &format!("/{chat}/{}", reader()), &[]).await;
    preamble(&mut first).await;
    let second = Sse::open(gw.addr, &format!("/{chat}/{}", reader()), &[]).await;
    assert_eq!(second.status, 503, "{}", second.body);
    assert!(second.body.contains("Too many connections"));
    drop(first);
    wait_until(|| async { gw.metric("pgws_sse_streams").await == 0.0 }).await;
    let mut again = open(&gw, &format!("/{chat}/{}", reader()), &[]).await;
    preamble(&mut again).await;
}

#[tokio::test]
async fn last_event_id_replays_exactly_what_was_missed_and_a_new_epoch_resets() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let path = format!("/{chat}/{}", reader());
    let db = db().await;
    let mut sse = open(&gw, &path, &[]).await;
    preamble(&mut sse).await;
    for n in 1..=3 {
        notify(&db, &gw.listen_channel, &payload(&chat, n)).await;
    }
    sse.messages(3).await;
    let last = sse.last_event_id.clone().expect("an id");
    assert!(last.ends_with(":3"), "{last}");
    drop(sse);
    wait_until(|| async { gw.metric("pgws_sse_streams").await == 0.0 }).await;

    // Missed while away, then live ones after the reconnect.
    for n in 4..=6 {
        notify(&db, &gw.listen_channel, &payload(&chat, n)).await;
    }
    // The gateway has them (in history, for no reader) before the reconnect.
    gw.wait_metric("pgws_notifications_unrouted_total", 3.0)
        .await;
    let mut back = open(&gw, &path, &[("Last-Event-ID", &last)]).await;
    let first = preamble(&mut back).await;
    assert_eq!(
        first.id.as_deref(),
        Some(last.as_str()),
        "starts where it was"
    );
    notify(&db, &gw.listen_channel, &payload(&chat, 7)).await;
    let got = back.messages(4).await;
    let want: Vec<String> = (4..=7).map(|n| payload(&chat, n)).collect();
    assert_eq!(got, want, "no loss, no duplicate, in order");
    assert!(back
        .last_event_id
        .as_deref()
        .is_some_and(|id| id.ends_with(":7")));
    gw.wait_metric("pgws_sse_replayed_events_total", 3.0).await;

    // The query form, as a page that stored the id would send it.
    let query = format!("{path}?lastEventId={}", last.replace(':', "%3A"));
    let mut page = open(&gw, &query, &[]).await;
    preamble(&mut page).await;
    assert_eq!(page.messages(4).await, want);

    // Unknown epoch, or a malformed id: a reset event, then live.
    for id in ["ffff.1.1:3", "garbage"] {
        let mut reset = open(&gw, &path, &[("Last-Event-ID", id)]).await;
        let first = preamble(&mut reset).await;
        let event = reset.next_event().await;
        assert_eq!(event.event.as_deref(), Some("pgws-reset"), "{event:?}");
        let data: Value = serde_json::from_str(event.data.as_deref().unwrap_or("")).expect("json");
        assert_eq!(data["channel"], chat.as_str());
        assert_eq!(data["offset"], 7);
        assert!(first.id.is_some_and(|id| id.ends_with(":7")));
    }
    assert!(gw.metric("pgws_sse_resets_total").await >= 2.0);
    notify(&db, &gw.listen_channel, &payload(&chat, 8)).await;
    assert_eq!(back.messages(1).await, vec![payload(&chat, 8)]);
}

#[tokio::test]
async fn reconnecting_while_notifications_pour_in_sees_each_once_in_order() {
    // History holds the whole run: a reconnect that a loaded machine makes
    // late still recovers (the default 100 would be a reset, not a bug).
    let gw = Server::gateway()
        .env("PGWS_HISTORY_SIZE", "1000")
        .start()
        .await;
    let chat = unique("chat");
    let path = format!("/{chat}/{}", reader());
    const TOTAL: u64 = 400;
    // Subscribed before the first notification: a fresh stream starts now.
    let mut first = Some(open(&gw, &path, &[]).await);
    let listen_channel = gw.listen_channel.clone();
    let chat_sent = chat.clone();
    // One transaction per notification, as fast as PostgreSQL takes them.
    let sending = tokio::spawn(async move {
        let db = db().await;
        for n in 1..=TOTAL {
            notify(&db, &listen_channel, &payload(&chat_sent, n)).await;
        }
    });
    let mut got = Vec::new();
    let mut last: Option<String> = None;
    let mut reconnects = 0;
    while (got.len() as u64) < TOTAL {
        let extra: Vec<(&str, &str)> = last
            .iter()
            .map(|id| ("Last-Event-ID", id.as_str()))
            .collect();
        let mut sse = match first.take() {
            Some(sse) => sse,
            None => open(&gw, &path, &extra).await,
        };
        preamble(&mut sse).await;
        // A few messages, then drop the connection mid-stream.
        for data in sse
            .messages(37.min((TOTAL - got.len() as u64) as usize))
            .await
        {
            got.push(data);
        }
        last = sse.last_event_id.clone();
        reconnects += 1;
    }
    sending.await.expect("sender");
    let want: Vec<String> = (1..=TOTAL).map(|n| payload(&chat, n)).collect();
    assert_eq!(
        got, want,
        "every message once, in order, over {reconnects} connections"
    );
    assert!(reconnects > 5);
    assert_eq!(gw.metric("pgws_sse_resets_total").await, 0.0);
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments_and_close_at_the_tokens_exp() {
    let gw = Server::gateway()
        .env("PGWS_SSE_KEEP_ALIVE", "1")
        .start()
        .await;
    let chat = unique("chat");
    let mut idle = open(&gw, &format!("/{chat}/{}", reader()), &[]).await;
    preamble(&mut idle).await;
    let started = Instant::now();
    let block = idle.next_block().await.expect("a block");
    assert_eq!(block.comment.as_deref(), Some("keep-alive"), "{block:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let expiring = token(json!({"mode": "r", "exp": now() + 2}));
    let mut sse = open(&gw, &format!("/{chat}/{expiring}"), &[]).await;
    preamble(&mut sse).await;
    let close = loop {
        let block = sse.next_block().await.expect("the close event");
        if block.event.is_some() {
            break block;
        }
    };
    assert_eq!(close.event.as_deref(), Some("pgws-close"));
    let data: Value = serde_json::from_str(close.data.as_deref().unwrap_or("")).expect("json");
    assert_eq!(data["code"], 3001, "{data}");
    assert_eq!(sse.next_block().await, None, "the stream ended");
}

#[tokio::test]
async fn a_stream_sends_the_meta_channels_open_and_close_events() {
    let meta = unique("meta");
    let gw = Server::gateway()
        .env("PGWS_META_CHANNEL", &meta)
        .start()
        .await;
    let chat = unique("chat");
    let mut pg = listen_ready(&gw.listen_channel).await;
    let mut sse = open(&gw, &format!("/{chat}/{}", reader()), &[]).await;
    preamble(&mut sse).await;
    let opened: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(opened["event"], "ConnectionOpen");
    assert_eq!(opened["channel"], meta.as_str());
    drop(sse);
    let closed: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(closed["event"], "ConnectionClose");
}

async fn wait_until<F, Fut>(mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle stream holds about what an idle websocket does: the gateway
/// writes a connection's first event stream itself, without hyper's two
/// 8 KiB per-connection buffers (26 KiB per stream before, ~5 KiB after
/// in a release build: docs/benchmarks.md; in this debug build 30.7 KiB
/// through hyper, 10.2 KiB without).
#[tokio::test]
async fn idle_streams_hold_no_per_connection_http_buffers() {
    let gw = Server::gateway()
        .env("PGWS_SSE_KEEP_ALIVE", "600")
        .start()
        .await;
    let chat = unique("chat");
    let path = format!("/{chat}/{}", reader());
    let mut streams = Vec::new();
    // Warm-up: the channel, the allocator's arenas.
    for _ in 0..50 {
        streams.push(open(&gw, &path, &[]).await);
    }
    const N: u64 = 400;
    let before = gw.rss_kib();
    for _ in 0..N {
        streams.push(open(&gw, &path, &[]).await);
    }
    gw.wait_metric("pgws_sse_streams", (N + 50) as f64).await;
    let per_stream = gw.rss_kib().saturating_sub(before) as f64 / N as f64;
    eprintln!("{per_stream:.2} KiB per idle stream");
    assert!(
        per_stream < 18.0,
        "{per_stream:.2} KiB per idle stream (hyper's buffers alone are 16)"
    );
}
