//! A lost `LISTEN` session starts a new continuity *where it was lost in
//! the heard stream*: a notification heard before the loss but published
//! after it keeps the old continuity, and what is heard after the listener
//! is back gets a newer one — so the notifications nobody heard in between
//! lie between two epochs, announced. Found by the chaos checker (issue
//! 20): the queued notification was published in the new continuity, and
//! the hole after it was silent (same epoch on both sides, consecutive
//! offsets).

use pgws_testkit::cluster::{wait_listen_backends, Cluster};
use pgws_testkit::proxy::Proxy;
use pgws_testkit::republished::{next, subscribe};
use pgws_testkit::*;
use serde_json::json;

#[tokio::test]
async fn a_notification_queued_when_the_listen_session_is_lost_keeps_the_continuity_from_before() {
    let proxy = Proxy::start(redis_addr()).await.expect("proxy");
    let mut c = Cluster::start(&redis_url(), 0, 0).await;
    let leader = c
        .coordinator_builder()
        .env("PGWS_REDIS_URL", format!("redis://{}", proxy.addr()))
        .start()
        .await;
    c.coordinators.push(leader);
    assert_eq!(c.leader().await, 0);
    let channel = unique("holes");
    let mut rx = subscribe(&c.redis_url, &c.prefix, &channel).await;
    let db = db().await;
    let say = |payload: &str| json!({"channel": channel, "payload": payload}).to_string();
    notify(&db, &c.listen_channel, &say("warm")).await;
    assert_eq!(next(&mut rx).await.payload, say("warm"));
    let heard = c.coordinators[0]
        .metric("pgws_notifications_received_total")
        .await;

    // The publisher is busy with X (held in the network); A waits in its
    // queue, heard before the session is lost.
    proxy.hold();
    notify(&db, &c.listen_channel, &say("X")).await;
    proxy.wait_held(say("X").as_bytes()).await;
    notify(&db, &c.listen_channel, &say("A")).await;
    c.coordinators[0]
        .wait_metric("pgws_notifications_received_total", heard + 2.0)
        .await;
    let pid: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE query = $1",
            &[&format!("LISTEN \"{}\"", c.listen_channel)],
        )
        .await
        .expect("the leader's listener")
        .get(0);
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    c.coordinators[0]
        .wait_metric("pgws_listener_reconnects_total", 1.0)
        .await;
    proxy.release();

    // Listening again: B is heard after the hole.
    wait_listen_backends(&db, &c.listen_channel, 1).await;
    notify(&db, &c.listen_channel, &say("B")).await;
    let x = next(&mut rx).await;
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    assert_eq!(
        [&x.payload, &a.payload, &b.payload],
        [&say("X"), &say("A"), &say("B")]
    );
    let continuity = |m: &pgws_testkit::republished::Republished| {
        m.position.expect("a position").epoch.continuity
    };
    assert_eq!(
        continuity(&a),
        continuity(&x),
        "A was heard before the loss: the continuity from before it"
    );
    assert!(
        continuity(&b) > continuity(&a),
        "the hole between A and B is announced: {:?} then {:?}",
        continuity(&a),
        continuity(&b)
    );
}
