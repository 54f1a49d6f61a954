//! Occupancy events (`PGWS_OCCUPANCY_EVENTS`), against real gateways,
//! PostgreSQL (LISTEN on the listen channel, where meta events reach the
//! database) and Redis: standalone, the
//! first reader sends `ChannelOccupied` and the last one `ChannelVacated`
//! no sooner than the grace; a re-join within the grace and a flapping
//! channel send nothing more; in cluster mode, readers on two gateways
//! make one `ChannelOccupied`, and `kill -9` of the gateway holding the
//! last reader makes one `ChannelVacated` within the sweep bound plus the
//! grace.

mod common;

use common::cluster::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

const GRACE_MS: u64 = 800;

fn reader() -> String {
    token(json!({"mode": "r", "sub": "reader"}))
}

/// The next occupancy event on the meta channel (connection events
/// skipped): its name and the channel it is about.
async fn next_event(pg: &mut UnboundedReceiver<String>, meta: &str) -> (String, String) {
    loop {
        let text = recv_within(pg).await;
        let v: Value = serde_json::from_str(&text).unwrap_or(json!({"raw": text}));
        let event = v["event"].as_str().unwrap_or("").to_string();
        if event.starts_with("Connection") {
            continue;
        }
        assert_eq!(v["channel"], meta, "{v}");
        assert!(v["claims"]["message_delivered_at"].is_number(), "{v}");
        let channel = v["channels"][0].as_str().unwrap_or("").to_string();
        assert_eq!(v["payload"], channel.as_str(), "{v}");
        return (event, channel);
    }
}

/// No other occupancy event was sent: a marker NOTIFYed now is the next
/// notification after connection events.
async fn nothing_more(pg: &mut UnboundedReceiver<String>, listen: &str) {
    notify(&db().await, listen, "end").await;
    loop {
        let text = recv_within(pg).await;
        if !text.contains("\"event\":\"Connection") {
            assert_eq!(text, "end");
            return;
        }
    }
}

async fn subscribed(url: &str, channel: &str) -> V2 {
    let mut c = V2::connect(url).await;
    let reply = c.subscribe(channel, None).await;
    assert!(reply.get("error").is_none(), "{reply}");
    c
}

async fn unsubscribe(c: &mut V2, channel: &str) {
    let reply = c
        .request(json!({"type": "unsubscribe", "channel": channel}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
}

fn env(meta: &str) -> Vec<(String, String)> {
    [
        ("PGWS_PRESENCE", "true"),
        ("PGWS_META_CHANNEL", meta),
        ("PGWS_OCCUPANCY_EVENTS", "true"),
        ("PGWS_OCCUPANCY_GRACE", &GRACE_MS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[tokio::test]
async fn standalone_first_reader_occupies_and_the_last_vacates_after_the_grace() {
    let meta = unique("meta");
    let listen = unique("occ-listen");
    let mut gw = Server::gateway().env("PGWS_LISTEN_CHANNEL", listen.clone());
    for (k, v) in env(&meta) {
        gw = gw.env(&k, v);
    }
    let gw = gw.start().await;
    let mut pg = listen_ready(&listen).await;
    let chat = unique("chat");
    let url = gw.url(&reader());

    let mut a = subscribed(&url, &chat).await;
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelOccupied".into(), chat.clone())
    );
    let mut b = subscribed(&url, &chat).await;
    // Readers leave, the last one comes back within the grace: nothing.
    unsubscribe(&mut b, &chat).await;
    unsubscribe(&mut a, &chat).await;
    assert!(a.subscribe(&chat, None).await.get("error").is_none());
    gw.wait_metric("pgws_occupancy_suppressed_total", 1.0).await;

    let left = Instant::now();
    unsubscribe(&mut a, &chat).await;
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelVacated".into(), chat.clone())
    );
    assert!(left.elapsed() >= Duration::from_millis(GRACE_MS));

    // Flapping (join and leave in a loop, faster than the grace): one
    // occupied, one vacated once it stops.
    let mut flap = V2::connect(&url).await;
    for _ in 0..10 {
        assert!(flap.subscribe(&chat, None).await.get("error").is_none());
        unsubscribe(&mut flap, &chat).await;
    }
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelOccupied".into(), chat.clone())
    );
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelVacated".into(), chat.clone())
    );
    nothing_more(&mut pg, &listen).await;
    assert_eq!(
        gw.metric("pgws_occupancy_events_total{event=\"ChannelOccupied\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn cluster_occupancy_is_cluster_wide_and_a_killed_gateway_vacates_after_the_sweep() {
    let meta = unique("meta");
    let ttl_ms = 1500u64;
    let mut env = env(&meta);
    env.push(("PGWS_PRESENCE_TTL".into(), ttl_ms.to_string()));
    let c = Cluster::start_full(&redis_url(), false, env, 1, 2).await;
    let mut pg = listen_ready(&c.listen_channel).await;
    let chat = unique("chat");

    let a = subscribed(&c.url(0, &reader()), &chat).await;
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelOccupied".into(), chat.clone())
    );
    let b = subscribed(&c.url(1, &reader()), &chat).await;
    let b2 = subscribed(&c.url(1, &reader()), &chat).await;
    // The first gateway's reader leaves: the channel is still occupied.
    drop(a);
    c.gateways[0]
        .wait_metric("pgws_presence_changes_total{change=\"leave\"}", 1.0)
        .await;

    // kill -9 of the gateway holding the last readers: the sweep empties
    // the channel within ttl * 4/3, the vacated follows a grace later.
    let killed = Instant::now();
    c.gateways[1].signal("KILL");
    assert_eq!(
        next_event(&mut pg, &meta).await,
        ("ChannelVacated".into(), chat.clone())
    );
    let took = killed.elapsed();
    let bound = Duration::from_millis(ttl_ms * 4 / 3 + GRACE_MS + 1000);
    assert!(took <= bound, "vacated after {took:?}, bound {bound:?}");
    // Not from the first reader's leave: the dead gateway's entries
    // expire no sooner than 2/3 ttl after its last heartbeat.
    let floor = Duration::from_millis(ttl_ms / 2 + GRACE_MS);
    assert!(took >= floor, "vacated after {took:?}, before the sweep");
    drop((b, b2));
    nothing_more(&mut pg, &c.listen_channel).await;
    assert_eq!(
        c.gateways[0]
            .metric("pgws_occupancy_events_total{event=\"ChannelVacated\"}")
            .await,
        1.0,
        "the sweeper sent it"
    );
}

#[tokio::test]
async fn occupancy_without_presence_or_a_meta_channel_is_a_configuration_error() {
    for (unset, wanted) in [
        ("PGWS_PRESENCE", "needs PGWS_PRESENCE=true"),
        ("PGWS_META_CHANNEL", "needs PGWS_META_CHANNEL"),
    ] {
        let mut gw = Server::gateway();
        for (k, v) in env(&unique("meta")) {
            if k != unset {
                gw = gw.env(&k, v);
            }
        }
        let out = gw.command().output().expect("run the gateway");
        assert_eq!(out.status.code(), Some(78), "a configuration error");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("PGWS_OCCUPANCY_EVENTS") && log.contains(wanted),
            "{log}"
        );
    }
}
