//! Fencing, observed on Redis: a leader paused past its lease wakes up to
//! find it lapsed and publishes nothing — not even the notifications its
//! LISTEN connection still held; and the publish script itself refuses a
//! deposed leader's batch that reaches Redis after the epoch moved — at
//! the script level, and end to end with the batch held in the network
//! (a fault proxy) while the lock passes to the standby.

use pgws_protocol::history::PUBLISH_SCRIPT;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::republish::Header;
use pgws_testkit::cluster::{wait_listen_backends, Cluster};
use pgws_testkit::proxy::Proxy;
use pgws_testkit::republished::subscribe;
use pgws_testkit::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_paused_leader_that_wakes_up_publishes_nothing_and_stands_by() {
    let c = Cluster::start(&redis_url(), 2, 0).await;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let db = db().await;
    let old = c.leader().await;
    let old_epoch = c.coordinators[old].metric("pgws_coordinator_epoch").await as u64;
    c.coordinators[old].signal("STOP");
    c.coordinators[old].wait_stopped().await;
    // While it sleeps, notifications queue up on its LISTEN connection too.
    for i in 0..20 {
        let payload = json!({"channel": "chat", "payload": format!("during-{i}")}).to_string();
        notify(&db, &c.listen_channel, &payload).await;
    }
    let new = c.leader_except(&[old]).await;
    let new_epoch = c.coordinators[new].metric("pgws_coordinator_epoch").await as u64;
    assert!(new_epoch > old_epoch);
    c.coordinators[old].signal("CONT");
    let deadline = Instant::now() + WAIT;
    while c.coordinators[old].metric("pgws_coordinator_leader").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the old leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_listen_backends(&db, &c.listen_channel, 1).await;
    let marker = json!({"channel": "chat", "payload": "final"}).to_string();
    notify(&db, &c.listen_channel, &marker).await;
    // Everything published since the pause carries the new epoch.
    loop {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the marker in time")
            .expect("subscription");
        assert_ne!(m.epoch, old_epoch, "the deposed leader published: {m:?}");
        if m.payload == marker {
            break;
        }
    }
    assert_eq!(c.leader().await, new, "the new leader keeps leading");
}

/// One notification on `channel` through the publish script, as the leader
/// of fencing epoch `fence` on a single Redis sends it (epoch key first).
async fn publish_as(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    fence: u64,
    channel: &str,
    payload: &str,
) -> Vec<i64> {
    let header = Header {
        epoch: fence,
        seq: 1,
        sent_at_us: 0,
        traceparent: None,
    };
    redis::Script::new(PUBLISH_SCRIPT)
        .key(keys.epoch())
        .key(keys.channel_state(channel))
        .key(keys.channel_history(channel))
        .arg(fence)
        .arg(1)
        .arg(fence)
        .arg(100)
        .arg(60_000)
        .arg(60_000)
        .arg("PUBLISH")
        .arg(header.script_prefix())
        .arg(header.script_suffix())
        .arg(keys.channel(channel))
        .arg(payload)
        .arg("")
        .invoke_async(redis)
        .await
        .expect("publish script")
}

#[tokio::test]
async fn the_publish_script_refuses_a_batch_whose_epoch_is_no_longer_current() {
    let keys = KeySpace::new(&unique("pgws-fence"));
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut rx = subscribe(&redis_url(), keys.prefix(), "chat").await;
    let (deposed, successor) = (1_795_838_000_000u64, 1_795_838_000_001u64);
    // The lock moved: the epoch is the successor's, which has not written
    // "chat" yet (no channel state to fence against).
    let _: () = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(successor)
        .query_async(&mut redis)
        .await
        .expect("SET epoch");
    let refused = publish_as(&mut redis, &keys, deposed, "chat", "from the deposed").await;
    assert_eq!(refused, vec![-3], "the deposed leader's batch is refused");
    let history: u64 = redis::cmd("XLEN")
        .arg(keys.channel_history("chat"))
        .query_async(&mut redis)
        .await
        .expect("XLEN");
    assert_eq!(history, 0, "nothing of it in history");
    let state: Option<String> = redis::cmd("GET")
        .arg(keys.channel_state("chat"))
        .query_async(&mut redis)
        .await
        .expect("GET state");
    assert_eq!(state, None, "no channel state written");
    // The current leader's batch goes through, and it is the first thing
    // anyone hears on the channel.
    let accepted = publish_as(&mut redis, &keys, successor, "chat", "from the successor").await;
    assert_eq!(accepted, vec![1]);
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("published in time")
        .expect("subscription");
    assert_eq!(first.payload, "from the successor");
    assert_eq!(first.epoch, successor);
    let _: () = redis::cmd("DEL")
        .arg(keys.epoch())
        .arg(keys.channel_state("chat"))
        .arg(keys.channel_history("chat"))
        .query_async(&mut redis)
        .await
        .expect("DEL");
}

/// Issue 20, hole 3, end to end: the leader's batch for a channel nobody
/// else has written is held in the network (sent while its lease was
/// valid) until the lock has passed to the standby, then delivered. The
/// script refuses it: nothing in history, nothing published, and the
/// successor's first message is the channel's first.
#[tokio::test]
async fn a_batch_held_in_the_network_while_the_lock_moves_lands_nowhere() {
    let proxy = Proxy::start(redis_addr()).await.expect("proxy");
    let mut c = Cluster::start(&redis_url(), 0, 0).await;
    let through_proxy = c
        .coordinator_builder()
        .env("PGWS_REDIS_URL", format!("redis://{}", proxy.addr()))
        .start()
        .await;
    c.coordinators.push(through_proxy);
    assert_eq!(c.leader().await, 0);
    c.add_coordinator().await;
    let channel = unique("victim");
    let keys = KeySpace::new(&c.prefix);
    let mut rx = subscribe(&c.redis_url, &c.prefix, &channel).await;
    let db = db().await;
    proxy.hold();
    let in_flight = json!({"channel": channel, "payload": "in flight"}).to_string();
    notify(&db, &c.listen_channel, &in_flight).await;
    proxy.wait_held(b"in flight").await;
    // The lock passes while the batch is held.
    let successor = c.leader_except(&[0]).await;
    proxy.release();
    // The held batch has reached Redis once the old leader has an answer.
    let deadline = Instant::now() + WAIT;
    loop {
        let answered = c.coordinators[0]
            .metric("pgws_notifications_published_total")
            .await
            + c.coordinators[0]
                .metric("pgws_notifications_dropped_total")
                .await;
        if answered >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held batch was never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut redis = redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let history: u64 = redis::cmd("XLEN")
        .arg(keys.channel_history(&channel))
        .query_async(&mut redis)
        .await
        .expect("XLEN");
    assert_eq!(history, 0, "the deposed leader's batch is in history");
    assert_eq!(
        c.coordinators[0]
            .metric("pgws_notifications_published_total")
            .await,
        0.0
    );
    let after = json!({"channel": channel, "payload": "after"}).to_string();
    notify(&db, &c.listen_channel, &after).await;
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the successor publishes")
        .expect("subscription");
    assert_eq!(first.payload, after, "the first message on the channel");
    let successor_epoch = c.coordinators[successor]
        .metric("pgws_coordinator_epoch")
        .await as u64;
    assert_eq!(first.epoch, successor_epoch);
}
