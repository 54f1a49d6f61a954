//! Server-Sent Events and HTTP publish in cluster mode: a stream that
//! reconnects to another gateway with its `Last-Event-ID` gets exactly
//! what it missed (history in Redis), and an `Idempotency-Key` retried
//! through another gateway is published once (the key is in Redis).

mod common;

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

fn sse_path(channel: &str) -> String {
    format!("/{channel}/{}", token(json!({"mode": "r"})))
}

async fn open(gw: &Server, path: &str, extra: &[(&str, &str)]) -> Sse {
    let mut sse = Sse::open(gw.addr, path, extra).await;
    assert_eq!(sse.status, 200, "{}", sse.body);
    let first = sse.next_block().await.expect("the first block");
    assert!(first.id.is_some(), "{first:?}");
    sse
}

fn payloads(data: Vec<String>) -> Vec<String> {
    data.iter().map(|d| payload_of(d)).collect()
}

#[tokio::test]
async fn a_stream_reconnecting_to_another_gateway_recovers_what_it_missed() {
    let env = vec![("PGWS_HISTORY_SIZE".to_string(), "10".to_string())];
    let c = Cluster::start_full(&redis_url(), false, env, 1, 2).await;
    let chat = unique("chat");
    let path = sse_path(&chat);
    let db = db().await;
    let mut first = open(&c.gateways[0], &path, &[]).await;
    for n in 1..=3 {
        c.notify(&db, &chat, &format!("m{n}")).await;
    }
    assert_eq!(payloads(first.messages(3).await), ["m1", "m2", "m3"]);
    let last = first.last_event_id.clone().expect("an id");
    drop(first);
    for n in 4..=5 {
        c.notify(&db, &chat, &format!("m{n}")).await;
    }
    // m4 and m5 are in history or still on their way: replayed, or
    // delivered live to the new stream (it is subscribed before it
    // recovers) — once either way.
    let mut second = open(&c.gateways[1], &path, &[("Last-Event-ID", &last)]).await;
    c.notify(&db, &chat, "m6").await;
    assert_eq!(
        payloads(second.messages(3).await),
        ["m4", "m5", "m6"],
        "exactly what was missed, then live"
    );
    c.gateways[1]
        .wait_metric("pgws_sse_recoveries_total{outcome=\"recovered\"}", 1.0)
        .await;

    // An id from another epoch (or another cluster): reset.
    let mut reset = open(&c.gateways[0], &path, &[("Last-Event-ID", "1.1.1:1")]).await;
    let event = reset.next_event().await;
    assert_eq!(event.event.as_deref(), Some("pgws-reset"), "{event:?}");
}

#[tokio::test]
async fn reconnecting_between_gateways_while_notifications_pour_in_sees_each_once() {
    let env = vec![("PGWS_HISTORY_SIZE".to_string(), "1000".to_string())];
    let c = Cluster::start_full(&redis_url(), false, env, 1, 2).await;
    let chat = unique("chat");
    let path = sse_path(&chat);
    const TOTAL: usize = 300;
    // Subscribed before the first notification: a fresh stream starts now.
    let mut first = Some(open(&c.gateways[0], &path, &[]).await);
    let (listen_channel, chat_sent) = (c.listen_channel.clone(), chat.clone());
    let sending = tokio::spawn(async move {
        let db = db().await;
        for n in 1..=TOTAL {
            let text = json!({"channel": chat_sent, "payload": format!("m{n}")}).to_string();
            notify(&db, &listen_channel, &text).await;
        }
    });
    let mut got = Vec::new();
    let mut last: Option<String> = None;
    let mut connections = 0;
    while got.len() < TOTAL {
        let extra: Vec<(&str, &str)> = last
            .iter()
            .map(|id| ("Last-Event-ID", id.as_str()))
            .collect();
        let mut sse = match first.take() {
            Some(sse) => sse,
            None => open(&c.gateways[connections % 2], &path, &extra).await,
        };
        got.extend(payloads(sse.messages(23.min(TOTAL - got.len())).await));
        last = sse.last_event_id.clone();
        connections += 1;
    }
    sending.await.expect("sender");
    let want: Vec<String> = (1..=TOTAL).map(|n| format!("m{n}")).collect();
    assert_eq!(
        got, want,
        "each once, in order, over {connections} connections"
    );
}

#[tokio::test]
async fn an_idempotency_key_holds_across_gateways() {
    let c = Cluster::start(&redis_url(), 1, 2).await;
    let chat = unique("chat");
    let mut pg = listen_ready(&c.listen_channel).await;
    let auth = format!("Bearer {}", token(json!({"mode": "rw", "sub": "carol"})));
    let key = unique("key");
    let keyed = [
        ("Authorization", auth.as_str()),
        ("Idempotency-Key", key.as_str()),
    ];
    let path = format!("/{chat}");
    let mut replayed = Vec::new();
    for gw in [0, 1, 0] {
        let (status, headers, body) = http_post(c.gateways[gw].addr, &path, &keyed, b"once").await;
        assert_eq!(status, 202, "{body}");
        let reply: Value = serde_json::from_str(&body).expect("json");
        replayed.push(reply["replayed"].clone());
        let header = headers.iter().find(|(n, _)| n == "idempotent-replayed");
        assert!(header.is_some(), "{headers:?}");
    }
    assert_eq!(replayed, [json!(false), json!(true), json!(true)]);
    let (status, _, _) = http_post(
        c.gateways[1].addr,
        &path,
        &[("Authorization", &auth)],
        b"sentinel",
    )
    .await;
    assert_eq!(status, 202);
    let mut got = Vec::new();
    loop {
        let v: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        let payload = v["payload"].as_str().unwrap_or("").to_string();
        got.push(payload.clone());
        if payload == "sentinel" {
            break;
        }
    }
    assert_eq!(
        got,
        ["once", "sentinel"],
        "published once, through the leader"
    );
}
