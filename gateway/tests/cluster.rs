//! Cluster mode: several gateways and coordinators on loopback against the
//! real Redis and PostgreSQL behave like one standalone gateway, and keep
//! doing so while coordinators die.

mod common;

use common::cluster::*;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn each_notify_reaches_every_gateway_once_and_each_write_notifies_once_per_channel() {
    let c = Cluster::start(&redis_url(), 2, 3).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    for k in 0..20 {
        c.notify(&db, &chat, &k.to_string()).await;
    }
    c.notify(&db, &chat, "marker").await;
    for r in readers.iter_mut() {
        for k in 0..20 {
            assert_eq!(
                payload_of(&next_text(r).await),
                k.to_string(),
                "in order, once"
            );
        }
        assert_eq!(payload_of(&next_text(r).await), "marker", "nothing twice");
    }

    let mut pg = listen_ready(&c.listen_channel).await;
    let (a, b) = (unique("a"), unique("b"));
    let mut writer = connect(&c.url(1, &token(json!({"mode":"w","channels":[a, b]})))).await;
    send(&mut writer, "from a browser").await;
    let mut channels = HashSet::new();
    for _ in 0..2 {
        let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        assert_eq!(v["event"], "WebsocketMessage");
        assert_eq!(v["payload"], "from a browser");
        channels.insert(v["channel"].as_str().expect("channel").to_string());
    }
    assert_eq!(channels, HashSet::from([a, b]));
    notify(&db, &c.listen_channel, "after").await;
    assert_eq!(
        recv_within(&mut pg).await,
        "after",
        "exactly one NOTIFY per channel"
    );
}

#[tokio::test]
async fn kill_9_of_the_leader_resumes_delivery_within_the_ttl_and_closes_no_socket() {
    let c = Cluster::start(&redis_url(), 2, 3).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    let leader = c.leader().await;
    c.coordinators[leader].signal("KILL");
    let (took, _) = pump_until_delivered(&c, &db, &chat, &mut readers[0], "after-kill").await;
    assert!(
        took <= TTL + Duration::from_secs(1),
        "delivery resumed after {took:?}"
    );
    assert_eq!(c.leader_except(&[leader]).await, 1 - leader);
    // Every socket is still open and receiving.
    c.notify(&db, &chat, "still-here").await;
    for r in readers.iter_mut().skip(1) {
        loop {
            if payload_of(&next_text(r).await) == "still-here" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn sigterm_of_the_leader_hands_over_within_a_second() {
    let mut c = Cluster::start(&redis_url(), 2, 1).await;
    assert_sigterm_handover(&mut c).await;
}

#[tokio::test]
async fn a_paused_leader_that_wakes_up_publishes_nothing_and_steps_down() {
    let c = Cluster::start(&redis_url(), 2, 2).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    let old = c.leader().await;
    c.coordinators[old].signal("STOP");
    let new = c.leader_except(&[old]).await;
    assert_ne!(new, old);
    let (_, mut seen) = pump_until_delivered(&c, &db, &chat, &mut readers[0], "during-pause").await;
    // Wake the old leader: its lease has lapsed; whatever it still holds
    // (notifications queued on its LISTEN connection) must not reach anyone.
    c.coordinators[old].signal("CONT");
    c.coordinators[old]
        .wait_metric("pgws_election_attempts_total", 1.0)
        .await;
    let deadline = Instant::now() + WAIT;
    while c.coordinators[old].metric("pgws_coordinator_leader").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the old leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_listen_backends(&db, &c.listen_channel, 1).await;
    c.notify(&db, &chat, "final").await;
    for (i, r) in readers.iter_mut().enumerate() {
        let mut got = if i == 0 {
            std::mem::take(&mut seen)
        } else {
            Vec::new()
        };
        loop {
            let p = payload_of(&next_text(r).await);
            let done = p == "final";
            got.push(p);
            if done {
                break;
            }
        }
        let unique: HashSet<&String> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "reader {i} got a duplicate: {got:?}"
        );
    }
    assert_eq!(c.leader().await, new, "the new leader keeps leading");
}

#[tokio::test]
async fn writes_made_while_no_coordinator_runs_are_sent_when_one_starts() {
    let mut c = Cluster::start(&redis_url(), 1, 1).await;
    c.coordinators[0].signal("TERM");
    assert_eq!(c.coordinators[0].wait_exit(WAIT).await.code(), Some(0));
    let chat = unique("chat");
    let mut writer = connect(&c.url(0, &format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    for i in 0..30 {
        send(&mut writer, &format!("m{i}")).await;
    }
    c.gateways[0]
        .wait_metric("pgws_messages_received_total", 30.0)
        .await;
    let mut pg = listen_ready(&c.listen_channel).await;
    c.add_coordinator().await;
    for i in 0..30 {
        let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        assert_eq!(v["payload"], format!("m{i}"), "in order");
    }
}

#[tokio::test]
async fn clusters_with_different_prefixes_do_not_see_each_other() {
    let one = Cluster::start(&redis_url(), 1, 1).await;
    let two = Cluster::start(&redis_url(), 1, 1).await;
    let chat = unique("chat");
    let mut r1 = one.readers(&chat).await;
    let mut r2 = two.readers(&chat).await;
    let db = db().await;
    one.notify(&db, &chat, "for one").await;
    two.notify(&db, &chat, "for two").await;
    assert_eq!(payload_of(&next_text(&mut r1[0]).await), "for one");
    assert_eq!(payload_of(&next_text(&mut r2[0]).await), "for two");
    // And a write into cluster one is relayed by cluster one only, once.
    let mut pg = listen_ready(&one.listen_channel).await;
    let mut w = connect(&one.url(0, &format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    send(&mut w, "written").await;
    assert!(recv_within(&mut pg).await.contains("written"));
    notify(&db, &one.listen_channel, "marker").await;
    assert_eq!(recv_within(&mut pg).await, "marker");
}

#[tokio::test]
async fn killing_one_gateway_disturbs_no_socket_on_the_others() {
    let mut c = Cluster::start(&redis_url(), 1, 3).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    c.gateways[0].signal("KILL");
    c.gateways[0].wait_exit(WAIT).await;
    let db = db().await;
    c.notify(&db, &chat, "survivors").await;
    for r in readers.iter_mut().skip(1) {
        assert_eq!(payload_of(&next_text(r).await), "survivors");
    }
}

#[tokio::test]
async fn gateways_keep_their_sockets_while_redis_is_away() {
    let mut redis = RedisServer::start(&[]).await;
    let c = Cluster::start(&redis.url(), 1, 1).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    c.notify(&db, &chat, "before").await;
    assert_eq!(payload_of(&next_text(&mut readers[0]).await), "before");

    redis.stop();
    let admin = c.gateways[0].admin.expect("admin");
    let deadline = Instant::now() + WAIT;
    while http_get(admin, "/readyz").await.map(|r| r.0).unwrap_or(0) != 503 {
        assert!(Instant::now() < deadline, "readyz stayed 200 without Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart().await;
    let mut g = c.gateways.into_iter().next().expect("gateway");
    g.wait_ready().await;
    c.coordinators[0]
        .wait_metric("pgws_election_terms_total", 2.0)
        .await;
    // The same socket receives again: the subscription was restored.
    let (_, got) =
        pump_until_delivered_single(&db, &c.listen_channel, &chat, &mut readers[0]).await;
    assert!(got.starts_with("after"), "{got}");
    assert_eq!(g.metric("pgws_connections{mode=\"r\"}").await, 1.0);
}

async fn pump_until_delivered_single(
    db: &tokio_postgres::Client,
    listen_channel: &str,
    chat: &str,
    reader: &mut Ws,
) -> (Duration, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let text = json!({"channel": chat, "payload": format!("after-{n}")}).to_string();
        notify(db, listen_channel, &text).await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(100), reader.next()).await
        {
            return (started.elapsed(), payload_of(&t));
        }
        assert!(
            started.elapsed() < WAIT * 2,
            "delivery never resumed after Redis came back"
        );
    }
}

#[tokio::test]
async fn beyond_the_stream_bound_a_writer_is_told_instead_of_losing_messages() {
    // No coordinator drains the stream: it fills up to its bound.
    let c = Cluster::start(&redis_url(), 0, 0).await;
    let gw = c
        .gateway_builder()
        .env("PGWS_WRITE_STREAM_MAX_LEN", "5")
        .start()
        .await;
    let mut writer = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"w"}))))).await;
    for i in 0..6 {
        send(&mut writer, &format!("m{i}")).await;
    }
    assert_eq!(
        expect_close(&mut writer).await,
        (1013, "Try again later".to_string())
    );
    assert_eq!(gw.metric("pgws_messages_received_total").await, 5.0);
    gw.wait_metric("pgws_messages_rejected_total{reason=\"queue_full\"}", 1.0)
        .await;
    // The five queued messages are delivered once a coordinator runs.
    let mut pg = listen_ready(&c.listen_channel).await;
    let mut c = c;
    c.add_coordinator().await;
    for i in 0..5 {
        let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
        assert_eq!(v["payload"], format!("m{i}"));
    }
}

#[tokio::test]
async fn a_writer_waiting_on_its_own_write_is_still_served_and_then_told_clearly() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut redis = RedisServer::start(&[]).await;
    let c = Cluster::start(&redis.url(), 0, 0).await;
    let gw = c
        .gateway_builder()
        .env("PGWS_PING_INTERVAL", "1")
        .env("PGWS_WRITE_TIMEOUT", "4000")
        .start()
        .await;
    let mut writer = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"rw"}))))).await;
    redis.stop();
    let admin = gw.admin.expect("admin");
    let deadline = Instant::now() + WAIT;
    while http_get(admin, "/readyz").await.map(|r| r.0).unwrap_or(0) != 503 {
        assert!(Instant::now() < deadline, "readyz stayed 200 without Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&mut writer, "cannot be queued").await;
    // While its message waits for Redis the socket keeps pinging (and
    // reading the pongs tungstenite sends back): it is not cut off.
    let mut pings = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, writer.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("writer: {other:?}"),
        }
    };
    assert!(pings >= 2, "{pings} pings while the write was waiting");
    let frame = close.expect("a close frame");
    // Never sent: the close says so (1013 means "not sent; retry").
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (1013, "Try again later")
    );
    redis.restart().await;
    gw.wait_metric("pgws_redis_up", 1.0).await;
    assert_eq!(
        redis.cli(&["XLEN", &format!("{{{}}}:writes", c.prefix)]),
        "0",
        "the refused message was not appended"
    );
}
