//! Graceful drain on SIGTERM.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_zero() {
    let mut gw = Server::start().await;
    let mut pg = listen_ready(&gw.listen_channel).await;
    let t = token(json!({"mode":"rw"}));
    let mut a = connect(&gw.url(&format!("a/{t}"))).await;
    let mut b = connect(&gw.url(&format!("b/{t}"))).await;
    // A message written just before the signal is still sent to PostgreSQL.
    send(&mut a, "last words").await;
    let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(v["payload"], "last words");

    gw.signal("TERM");
    assert_eq!(expect_close(&mut a).await.0, 1001);
    assert_eq!(expect_close(&mut b).await.0, 1001);
    let status = gw.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

#[tokio::test]
async fn a_draining_gateway_is_not_ready_and_refuses_new_sockets() {
    let mut gw = Server::gateway()
        .env("PGWS_SHUTDOWN_TIMEOUT", "3000")
        .start()
        .await;
    let t = token(json!({"mode":"r"}));
    // A client that never answers the close frame keeps the drain waiting
    // (up to PGWS_SHUTDOWN_TIMEOUT), which lets us look at the gateway
    // mid-drain.
    use tokio::io::AsyncWriteExt;
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    let request = format!(
        "GET /chat/{t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.expect("write");
    gw.wait_metric("pgws_connections_accepted_total", 1.0).await;
    gw.signal("TERM");
    let admin = gw.admin.expect("admin");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match http_get(admin, "/readyz").await {
            Ok((503, _)) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => panic!("readyz never turned 503: {other:?}"),
        }
    }
    // The public port no longer accepts.
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err()
            || refused(&gw.url(&format!("chat/{t}"))).await.0 == 503
    );
    assert_eq!(gw.wait_exit(WAIT).await.code(), Some(0));
    drop(raw);
}
