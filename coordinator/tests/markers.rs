//! Stream markers cannot be forged (issue 20, hole 2): a role that may
//! NOTIFY sends a huge marker on the marker channel; it is counted and
//! ignored, and after a coordinator restart the channels touched since
//! are still delivered (before, the forged position made every later one
//! look "already published" for a day).

use pgws_testkit::cluster::Cluster;
use pgws_testkit::republished::{subscribe, Republished};
use pgws_testkit::*;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

fn standby_env() -> Vec<(String, String)> {
    vec![
        ("PGWS_STANDBY_LISTEN".into(), "true".into()),
        ("PGWS_MARKER_INTERVAL".into(), "50".into()),
    ]
}

/// Notify `payload` on websocket channel `chat` and wait until it is
/// republished (skipping anything else).
async fn delivered(
    c: &Cluster,
    db: &tokio_postgres::Client,
    rx: &mut UnboundedReceiver<Republished>,
    payload: &str,
) {
    let text = json!({"channel": "chat", "payload": payload}).to_string();
    notify(db, &c.listen_channel, &text).await;
    loop {
        let m = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{payload:?} was not republished"))
            .expect("subscription");
        if m.payload == text {
            return;
        }
    }
}

#[tokio::test]
async fn a_forged_marker_is_ignored_and_a_restarted_coordinator_still_delivers() {
    let mut c = Cluster::start_full(&redis_url(), false, standby_env(), 1, 0).await;
    c.coordinators[0]
        .wait_metric("pgws_stream_markers_heard_total", 2.0)
        .await;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let db = db().await;
    let markers = format!("{}.markers", c.listen_channel);
    delivered(&c, &db, &mut rx, "before").await;
    // Issue 20's forgery, from a plain database session.
    notify(&db, &markers, "9000000000000000:0:0").await;
    // "chat" is touched after it (its state records that position).
    delivered(&c, &db, &mut rx, "touched").await;
    c.coordinators[0]
        .wait_metric("pgws_stream_markers_forged_total", 1.0)
        .await;
    // The next coordinator restart: a fresh tracker, real positions.
    c.coordinators[0].signal("TERM");
    c.coordinators[0].wait_exit(WAIT).await;
    c.add_coordinator().await;
    let next = c.leader_except(&[0]).await;
    c.coordinators[next]
        .wait_metric("pgws_stream_markers_heard_total", 2.0)
        .await;
    delivered(&c, &db, &mut rx, "after the restart").await;
    assert_eq!(
        c.coordinators[next]
            .metric("pgws_notifications_already_published_total")
            .await,
        0.0,
        "nothing judged already published"
    );
    // The new coordinator counts a forgery too.
    notify(&db, &markers, "9000000000000000:0:0").await;
    c.coordinators[next]
        .wait_metric("pgws_stream_markers_forged_total", 1.0)
        .await;
}
