//! The LISTEN connection: supervision, self-healing, honest pg_stat_activity.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The pids of backends running exactly `LISTEN "<channel>"`.
async fn listener_backends(db: &tokio_postgres::Client, channel: &str) -> Vec<(i32, String)> {
    db.query(
        "SELECT pid, application_name FROM pg_stat_activity WHERE query = $1",
        &[&format!("LISTEN \"{channel}\"")],
    )
    .await
    .expect("pg_stat_activity")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn wait_backend(db: &tokio_postgres::Client, channel: &str, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = listener_backends(db, channel).await;
        if let [(pid, _)] = found.as_slice() {
            if Some(*pid) != not {
                return *pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no single listener backend: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn pg_stat_activity_shows_the_listen_and_application_names() {
    let gw = Server::start().await;
    let db = db().await;
    let pid = wait_backend(&db, &gw.listen_channel, None).await;
    let found = listener_backends(&db, &gw.listen_channel).await;
    assert_eq!(found, vec![(pid, "pgws listener".to_string())]);
    // A write opens a NOTIFY connection named for what it does.
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"w"}))))).await;
    send(&mut ws, "hi").await;
    gw.wait_metric("pgws_notify_sent_total", 1.0).await;
    let row = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgws notify' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("query");
    assert!(row.get::<_, i64>(0) >= 1);
}

#[tokio::test]
async fn a_killed_listener_is_replaced_and_sockets_keep_receiving() {
    let gw = Server::gateway()
        .env("PGWS_CHECK_LISTENER_INTERVAL", "500")
        .start()
        .await;
    let chat = unique("chat");
    let mut ws = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"r"}))))).await;
    let db = db().await;
    let old = wait_backend(&db, &gw.listen_channel, None).await;
    db.execute("SELECT pg_terminate_backend($1)", &[&old])
        .await
        .expect("terminate");
    let new = wait_backend(&db, &gw.listen_channel, Some(old)).await;
    assert_ne!(old, new);
    gw.wait_metric("pgws_listener_reconnects_total", 1.0).await;
    let mut gw = gw;
    gw.wait_ready().await;
    let payload = format!(r#"{{"channel":"{chat}","payload":"after"}}"#);
    notify(&db, &gw.listen_channel, &payload).await;
    assert_eq!(
        next_text(&mut ws).await,
        payload,
        "the same socket receives again"
    );
}

#[tokio::test]
async fn without_self_healing_a_lost_listener_exits_non_zero() {
    let mut gw = Server::start().await;
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"r"}))))).await;
    let db = db().await;
    let pid = wait_backend(&db, &gw.listen_channel, None).await;
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate");
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        expect_close(&mut ws).await.0,
        1001,
        "sockets are closed, not dropped"
    );
}

#[tokio::test]
async fn retries_are_exhausted_then_the_process_exits() {
    // Nothing listens on port 1: every attempt is refused at once.
    let started = Instant::now();
    let mut gw = Server::gateway()
        .env("PGWS_DB_URI", "postgres://postgres@127.0.0.1:1/postgres")
        .env("PGWS_RETRIES", "2")
        .no_wait()
        .start()
        .await;
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(1));
    // Two retries: waits of 1 s and 2 s.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        gw.log_text().contains("could not LISTEN after 3 attempts"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn readyz_is_false_until_listening() {
    let gw = Server::gateway()
        .env("PGWS_DB_URI", "postgres://postgres@127.0.0.1:1/postgres")
        .env("PGWS_RETRIES", "10")
        .no_wait()
        .start()
        .await;
    let admin = gw.admin.expect("admin");
    let (status, body) = http_get(admin, "/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert_eq!(http_get(admin, "/healthz").await.expect("healthz").0, 200);
}
