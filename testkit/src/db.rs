//! The shared PostgreSQL: clients, NOTIFY, and LISTEN connections the
//! tests read notifications from.

use crate::names::WAIT;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

/// The database the tests use (shared; isolation is by channel name).
pub fn db_uri() -> String {
    std::env::var("PGWS_TEST_DB_URI")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A PostgreSQL client (connection driven in the background).
pub async fn db() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db_uri(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

pub async fn notify(client: &tokio_postgres::Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("pg_notify");
}

/// LISTEN on `channel` with a separate connection; payloads arrive on the
/// returned receiver.
pub async fn listen(channel: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (client, mut connection) = tokio_postgres::connect(&db_uri(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sql = format!("LISTEN \"{channel}\"");
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                r = &mut listen, if !listening => { r.expect("LISTEN"); listening = true; }
                m = messages.next() => match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_string()).is_err() { return; }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
    });
    rx
}

/// LISTEN and wait until it is in effect (a probe notification arrives).
pub async fn listen_ready(channel: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut rx = listen(channel).await;
    let client = db().await;
    let deadline = Instant::now() + WAIT;
    loop {
        notify(&client, channel, "__probe__").await;
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(p)) if p == "__probe__" => break,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("listener ended"),
        }
        assert!(Instant::now() < deadline, "LISTEN never took effect");
    }
    rx
}

/// The next notification that is not a readiness probe.
pub async fn recv_within(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    loop {
        let payload = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no notification in time")
            .expect("listener ended");
        if payload != "__probe__" {
            return payload;
        }
    }
}
