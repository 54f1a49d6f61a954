//! Fencing, observed on Redis: a leader paused past its lease wakes up to
//! find it lapsed and publishes nothing — not even the notifications its
//! LISTEN connection still held; and the publish script itself refuses a
//! deposed leader's batch that reaches Redis after the epoch moved.

use pgws_protocol::history::PUBLISH_SCRIPT;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::republish::Header;
use pgws_testkit::cluster::{wait_listen_backends, Cluster};
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
