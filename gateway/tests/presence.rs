//! Presence and echo suppression, against real gateways, PostgreSQL and
//! Redis: `presence` / `presence_stats` answers, `join`/`leave` frames in
//! the same order as the channel's messages on every socket, who may ask,
//! and — in cluster mode, across two gateways — a gateway killed with
//! `kill -9` leaving presence (with leave events) within the documented
//! bound and leaving no key behind; a socket that asked for no echo does
//! not receive what it published (v2 `echo:false`, v1 `?echo=false`).

mod common;

use common::cluster::*;
use common::*;
use futures_util::SinkExt;
use pgws_protocol::keys::KeySpace;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn presence_token(sub: &str) -> String {
    token(json!({"mode": "rw", "sub": sub, "presence": true,
                 "presence_info": {"name": sub.to_uppercase()}}))
}

async fn watch(c: &mut V2, channel: &str) -> Value {
    let reply = c
        .request(json!({"type": "subscribe", "channel": channel, "presence": true}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    reply
}

/// The next `join` or `leave` frame (messages are skipped).
async fn next_change(c: &mut V2) -> (String, Value) {
    loop {
        let f = c.next_frame().await;
        if f["type"] == "join" || f["type"] == "leave" {
            return (
                f["type"].as_str().unwrap_or("").to_string(),
                f["member"].clone(),
            );
        }
    }
}

/// Wait for the change of `client` (any client when empty), skipping
/// others.
async fn change_of(c: &mut V2, kind: &str, client: &str) -> Value {
    loop {
        let (k, member) = next_change(c).await;
        if k == kind && (client.is_empty() || member["client"] == client) {
            return member;
        }
    }
}

fn clients(reply: &Value) -> Vec<String> {
    let mut ids: Vec<String> = reply["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["client"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Subscribe `c` to `channel` with presence events; its own client id
/// (from its own join frame).
async fn join(c: &mut V2, channel: &str, sub: &str) -> String {
    watch(c, channel).await;
    loop {
        let (kind, member) = next_change(c).await;
        if kind == "join" && member["sub"] == sub {
            return member["client"].as_str().unwrap_or("").to_string();
        }
    }
}

#[tokio::test]
async fn standalone_presence_lists_counts_and_announces_in_order() {
    let gw = Server::gateway().env("PGWS_PRESENCE", "true").start().await;
    let chat = unique("chat");
    let mut alice = V2::connect(&gw.url(&presence_token("alice"))).await;
    let alice_id = join(&mut alice, &chat, "alice").await;

    let mut bob = V2::connect(&gw.url(&presence_token("bob"))).await;
    assert!(bob.subscribe(&chat, None).await.get("error").is_none());
    let bob_member = next_change(&mut alice).await;
    assert_eq!(bob_member.0, "join");
    assert_eq!(bob_member.1["sub"], "bob");
    assert_eq!(bob_member.1["info"], json!({"name": "BOB"}));
    let bob_id = bob_member.1["client"].as_str().unwrap_or("").to_string();

    // A second socket of alice: three clients, two users.
    let mut alice2 = V2::connect(&gw.url(&presence_token("alice"))).await;
    alice2.subscribe(&chat, None).await;
    let list = bob
        .request(json!({"type": "presence", "channel": chat}))
        .await;
    assert_eq!(clients(&list).len(), 3, "{list}");
    assert!(clients(&list).contains(&alice_id) && clients(&list).contains(&bob_id));
    let stats = bob
        .request(json!({"type": "presence_stats", "channel": chat}))
        .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(3), Some(2))
    );

    // Ordered with the channel's messages: a second watcher sees the same
    // sequence of messages and changes as the first.
    let mut carol = V2::connect(&gw.url(&presence_token("carol"))).await;
    join(&mut carol, &chat, "carol").await;
    let db = db().await;
    let mut churn = Vec::new();
    for n in 0..20 {
        notify(
            &db,
            &gw.listen_channel,
            &format!(r#"{{"channel":"{chat}","n":{n}}}"#),
        )
        .await;
        if n % 4 == 0 {
            let mut c = V2::connect(&gw.url(&presence_token(&format!("u{n}")))).await;
            c.subscribe(&chat, None).await;
            churn.push(c);
        } else if n % 4 == 2 {
            churn.pop();
        }
    }
    churn.clear();
    notify(
        &db,
        &gw.listen_channel,
        &format!(r#"{{"channel":"{chat}","n":"end"}}"#),
    )
    .await;
    let a = sequence_until_end(&mut alice).await;
    let c = sequence_until_end(&mut carol).await;
    assert_eq!(a, c, "both watchers see one order");
    // Each join is announced before its subscribe is answered, so before
    // the last message; a leave may come after it.
    assert_eq!(
        a.iter().filter(|e| e.starts_with("join")).count(),
        5,
        "{a:?}"
    );
    assert_eq!(a.iter().filter(|e| e.starts_with('m')).count(), 20, "{a:?}");

    // Leaves: bob unsubscribes, alice2 closes.
    bob.request(json!({"type": "unsubscribe", "channel": chat}))
        .await;
    change_of(&mut alice, "leave", &bob_id).await;
    drop(alice2);
    let stats = carol
        .request(json!({"type": "presence_stats", "channel": chat}))
        .await;
    assert!(stats["clients"].as_u64() <= Some(3), "{stats}");
}

/// Messages (`m<n>`) and changes (`join <sub>`) up to the message `end`
/// (changes of the churn clients only: `u<n>` subs).
async fn sequence_until_end(c: &mut V2) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let f = c.next_frame().await;
        match f["type"].as_str() {
            Some("message") => {
                let data: Value =
                    serde_json::from_str(f["data"].as_str().unwrap_or("{}")).expect("json");
                if data["n"] == "end" {
                    return seen;
                }
                seen.push(format!("m{}", data["n"]));
            }
            Some(kind @ ("join" | "leave")) => {
                let sub = f["member"]["sub"].as_str().unwrap_or("").to_string();
                if sub.starts_with('u') {
                    seen.push(format!("{kind} {sub}"));
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn presence_is_refused_without_the_claim_or_the_variable_and_info_is_bounded() {
    let gw = Server::gateway()
        .env("PGWS_PRESENCE", "true")
        .env("PGWS_PRESENCE_INFO_MAX_BYTES", "20")
        .start()
        .await;
    let chat = unique("chat");
    let mut plain = V2::connect(&gw.url(&token(json!({"mode": "r", "sub": "x"})))).await;
    let r = plain
        .request(json!({"type": "presence", "channel": chat}))
        .await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    let r = plain
        .request(json!({"type": "subscribe", "channel": chat, "presence": true}))
        .await;
    assert_eq!(r["error"]["code"], 403, "{r}");
    // Subscribed without events, it is still listed; its info is too big.
    let big = token(json!({"mode": "r", "sub": "x", "presence_info": {"bio": "x".repeat(100)}}));
    let mut listed = V2::connect(&gw.url(&big)).await;
    listed.subscribe(&chat, None).await;
    let mut asker = V2::connect(&gw.url(&presence_token("a"))).await;
    let deadline = Instant::now() + WAIT;
    let list = loop {
        let list = asker
            .request(json!({"type": "presence", "channel": chat}))
            .await;
        if clients(&list).len() == 1 || Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(list["members"][0]["sub"], "x", "{list}");
    assert!(list["members"][0].get("info").is_none(), "{list}");
    assert_eq!(gw.metric("pgws_presence_info_dropped_total").await, 1.0);

    let off = Server::gateway().start().await;
    let mut c = V2::connect(&off.url(&presence_token("a"))).await;
    let r = c
        .request(json!({"type": "presence_stats", "channel": chat}))
        .await;
    assert_eq!(r["error"]["code"], 404, "{r}");
}

#[tokio::test]
async fn a_socket_that_asks_for_no_echo_does_not_get_its_own_messages() {
    let gw = Server::gateway().start().await;
    let chat = unique("chat");
    let rw = token(json!({"mode": "rw"}));
    let mut quiet = V2::connect(&gw.url(&rw)).await;
    let r = quiet
        .request(json!({"type": "subscribe", "channel": chat, "echo": false}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let mut other = V2::connect(&gw.url(&rw)).await;
    other.subscribe(&chat, None).await;
    quiet
        .request(json!({"type": "publish", "channel": chat, "data": "mine"}))
        .await;
    // `other` receives it: it has gone round the database.
    let m = other.next_message().await;
    assert!(m["data"].as_str().unwrap_or("").contains("mine"), "{m}");
    other
        .request(json!({"type": "publish", "channel": chat, "data": "theirs"}))
        .await;
    // In place of its own message: an `echo` frame, its offset only.
    let echo = quiet.next_frame().await;
    assert_eq!(echo["type"], "echo", "{echo}");
    assert_eq!(echo["offset"], 1, "{echo}");
    assert!(echo.get("data").is_none());
    let m = quiet.next_message().await;
    assert!(m["data"].as_str().unwrap_or("").contains("theirs"), "{m}");
    assert_eq!(m["offset"], 2);
    assert_eq!(gw.metric("pgws_echo_suppressed_total").await, 1.0);

    // v1: `?echo=false`.
    let url = format!("{}?echo=false", gw.url(&format!("{chat}/{rw}")));
    let mut v1 = connect(&url).await;
    let mut v1_other = connect(&gw.url(&format!("{chat}/{rw}"))).await;
    v1.send(Message::text("v1-mine")).await.expect("send");
    let got = next_text(&mut v1_other).await;
    assert!(got.contains("v1-mine"), "{got}");
    v1_other
        .send(Message::text("v1-theirs"))
        .await
        .expect("send");
    let got = next_text(&mut v1).await;
    assert!(got.contains("v1-theirs"), "v1 socket got {got}");
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// Keys under the cluster's prefix that presence made.
async fn presence_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for pattern in [
        format!("*{prefix}*:pc"),
        format!("*{prefix}*:pu"),
        format!("{{{prefix}}}:presence*"),
    ] {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(conn)
            .await
            .expect("keys");
        keys.extend(found);
    }
    keys
}

#[tokio::test]
async fn cluster_presence_spans_gateways_and_a_killed_gateway_leaves_within_the_bound() {
    let ttl_ms = 1500u64;
    let env = vec![
        ("PGWS_PRESENCE".to_string(), "true".to_string()),
        ("PGWS_PRESENCE_TTL".to_string(), ttl_ms.to_string()),
    ];
    let c = Cluster::start_full(&redis_url(), false, env, 1, 2).await;
    let chat = unique("chat");
    let mut alice = V2::connect(&c.url(0, &presence_token("alice"))).await;
    join(&mut alice, &chat, "alice").await;
    let mut dave = V2::connect(&c.url(0, &presence_token("dave"))).await;
    join(&mut dave, &chat, "dave").await;
    change_of(&mut alice, "join", "").await; // dave's

    // Two clients on the second gateway: alice sees both join.
    let mut bobs = Vec::new();
    let mut bob_ids = Vec::new();
    for _ in 0..2 {
        let mut bob = V2::connect(&c.url(1, &presence_token("bob"))).await;
        bob_ids.push(join(&mut bob, &chat, "bob").await);
        bobs.push(bob);
    }
    for id in &bob_ids {
        change_of(&mut alice, "join", id).await;
        change_of(&mut dave, "join", id).await;
    }
    // Either gateway answers for the whole cluster.
    let list = bobs[0]
        .request(json!({"type": "presence", "channel": chat}))
        .await;
    assert_eq!(clients(&list).len(), 4, "{list}");
    let stats = alice
        .request(json!({"type": "presence_stats", "channel": chat}))
        .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(4), Some(3))
    );

    // Messages and changes in one order on both watchers (different
    // gateways' changes, the leader's messages).
    let db = db().await;
    for n in 0..6 {
        c.notify(&db, &chat, &format!("n{n}")).await;
        if n == 2 {
            let mut u = V2::connect(&c.url(1, &presence_token("u1"))).await;
            u.subscribe(&chat, None).await;
            drop(u);
        }
    }
    c.notify(&db, &chat, "end").await;
    let a = sequence_until_end_cluster(&mut alice).await;
    let d = sequence_until_end_cluster(&mut dave).await;
    assert_eq!(a, d, "one order on every gateway");

    // kill -9 the second gateway: its clients leave within ttl * 4/3.
    let killed_at = Instant::now();
    c.gateways[1].signal("KILL");
    // Swept in any order.
    let mut left = std::collections::BTreeSet::new();
    while left.len() < bob_ids.len() {
        let (kind, member) = next_change(&mut alice).await;
        let id = member["client"].as_str().unwrap_or("").to_string();
        if kind == "leave" && bob_ids.contains(&id) {
            left.insert(id);
        }
    }
    let took = killed_at.elapsed();
    let bound = Duration::from_millis(ttl_ms * 4 / 3 + 1000);
    assert!(took <= bound, "leaves after {took:?}, bound {bound:?}");
    drop(bobs);
    let list = alice
        .request(json!({"type": "presence", "channel": chat}))
        .await;
    assert_eq!(clients(&list).len(), 2, "{list}");

    // Nothing of the dead gateway is left; once everyone leaves, nothing.
    let mut conn = redis_conn(&c.redis_url).await;
    let keys = KeySpace::new(&c.prefix);
    let listed: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.presence_gateways())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("zrange");
    assert_eq!(listed.len(), 1, "only the live gateway: {listed:?}");
    drop(alice);
    drop(dave);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = presence_keys(&mut conn, &c.prefix).await;
        // The live gateway's own entry in `{p}:presence` stays.
        if left.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "keys left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As [`sequence_until_end`], for the cluster's notify helper (its
/// payload in the notification's `payload` field).
async fn sequence_until_end_cluster(c: &mut V2) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let f = c.next_frame().await;
        match f["type"].as_str() {
            Some("message") => {
                if payload_of(f["data"].as_str().unwrap_or("{}")) == "end" {
                    return seen;
                }
                seen.push(format!("m{}", f["offset"]));
            }
            Some(kind @ ("join" | "leave")) => {
                seen.push(format!("{kind} {}", f["member"]["client"]));
            }
            _ => {}
        }
    }
}
