//! Fencing, observed on Redis: a leader paused past its lease wakes up to
//! find it lapsed and publishes nothing — not even the notifications its
//! LISTEN connection still held.

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
