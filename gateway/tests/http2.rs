//! HTTP/2 on the TLS listener: one connection that negotiated `h2`
//! carries several event streams at once and a publish, and every stream
//! receives; a websocket asked for over HTTP/2 is refused with a reason;
//! `PGWS_HTTP2_MAX_STREAMS` bounds the streams of one connection; a
//! client that offers only `http/1.1` still gets its event stream (served
//! by the gateway's own HTTP/1 writer over TLS).

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::tls::TlsGateway;

impl TlsGateway {
    /// An HTTP/2 connection (ALPN `h2`).
    async fn h2(&self) -> SendRequest<Full<Bytes>> {
        let tls = self.connect(&[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender
    }
}

fn get_events(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://127.0.0.1{path}"))
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Response<Incoming> {
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("a response in time")
        .expect("a response");
    assert_eq!(response.version(), Version::HTTP_2);
    response
}

/// A whole answer: its status and body.
async fn answer(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let response = send(sender, req).await;
    let status = response.status();
    let body = response.into_body().collect().await.expect("body");
    (status, body.to_bytes())
}

/// Bytes read from `conn` into `seen` until they contain `needle`.
async fn read_raw_until<S: tokio::io::AsyncRead + Unpin>(
    conn: &mut S,
    seen: &mut Vec<u8>,
    needle: &str,
) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{needle:?} within {WAIT:?}"))
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Body text until it contains `needle` (or the wait runs out).
async fn read_until(body: &mut Incoming, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} within {WAIT:?}; got {text:?}"))
            .expect("the stream ended")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

#[tokio::test]
async fn one_h2_connection_carries_several_event_streams_and_a_publish() {
    let tls = TlsGateway::start("h2", &[]).await;
    let mut h2 = tls.h2().await;
    let chat = unique("chat");
    let reader = token(json!({"mode": "r"}));
    let mut streams = Vec::new();
    for path in [
        format!("/{chat}/{reader}"),
        format!("/{chat}?token={reader}"),
        format!("/{chat}/{reader}"),
    ] {
        let response = send(&mut h2, get_events(&path)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-accel-buffering"], "no");
        let mut body = response.into_body();
        read_until(&mut body, "retry:").await;
        streams.push(body);
    }
    // Every stream counts as a connection, as on HTTP/1.
    tls.gw.wait_metric("pgws_sse_streams", 3.0).await;
    assert_eq!(tls.gw.metric("pgws_http2_connections").await, 1.0);

    let writer = token(json!({"mode": "w"}));
    let post = Request::post(format!("https://127.0.0.1/{chat}"))
        .header("authorization", format!("Bearer {writer}"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .expect("request");
    let (status, reply) = answer(&mut h2, post).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply:?}");
    for body in &mut streams {
        let text = read_until(body, "over h2").await;
        assert!(text.contains("\ndata: ") && text.contains("id: "), "{text}");
    }

    // Static answers on the same connection.
    let banner = send(
        &mut h2,
        Request::get("https://127.0.0.1/")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(banner.status(), StatusCode::OK);

    // Streams ended by the client leave the gauge.
    drop(streams);
    let deadline = std::time::Instant::now() + WAIT;
    while tls.gw.metric("pgws_sse_streams").await > 0.0 {
        assert!(std::time::Instant::now() < deadline, "streams still open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_websocket_over_h2_is_refused_with_a_reason() {
    let tls = TlsGateway::start("h2", &[]).await;
    let mut h2 = tls.h2().await;
    let reader = token(json!({"mode": "r"}));
    let req = Request::get(format!("https://127.0.0.1/chat/{reader}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let (status, body) = answer(&mut h2, req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("Websockets need HTTP/1.1"),
        "{body:?}"
    );
    tls.gw
        .wait_metric(
            "pgws_connections_refused_total{reason=\"websocket_over_http2\"}",
            1.0,
        )
        .await;
}

#[tokio::test]
async fn the_streams_of_one_connection_are_bounded() {
    let tls = TlsGateway::start("h2", &[("PGWS_HTTP2_MAX_STREAMS", "2")]).await;
    let mut h2 = tls.h2().await;
    let reader = token(json!({"mode": "r"}));
    let path = format!("/{}/{reader}", unique("chat"));
    let first = send(&mut h2, get_events(&path)).await;
    let _second = send(&mut h2, get_events(&path)).await;
    // The server said 2 in its SETTINGS: the client holds a third back
    // until a stream ends.
    let mut third = Box::pin(h2.clone().send_request(get_events(&path)));
    tls.gw.wait_metric("pgws_sse_streams", 2.0).await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third stream opened beyond PGWS_HTTP2_MAX_STREAMS=2"
    );
    drop(first);
    let third = tokio::time::timeout(WAIT, third)
        .await
        .expect("the third stream once one ended")
        .expect("a response");
    assert_eq!(third.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_http1_client_on_the_tls_listener_still_gets_its_stream() {
    let tls = TlsGateway::start("h2", &[]).await;
    let mut conn = tls.connect(&[b"http/1.1"]).await;
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let chat = unique("chat");
    let reader = token(json!({"mode": "r"}));
    conn.write_all(
        format!("GET /{chat}/{reader} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut seen = Vec::new();
    read_raw_until(&mut conn, &mut seen, "retry:").await;
    let head = String::from_utf8_lossy(&seen).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let db = db().await;
    let payload = format!(r#"{{"channel":"{chat}","n":1}}"#);
    notify(&db, &tls.gw.listen_channel, &payload).await;
    read_raw_until(&mut conn, &mut seen, &format!("data: {payload}")).await;
    // A plain request over TLS HTTP/1.1 is hyper's, as before.
    let (status, _) = {
        let mut plain = tls.connect(&[b"http/1.1"]).await;
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let _ = plain.read_to_end(&mut raw).await;
        parse_response(&raw)
    };
    assert_eq!(status, 200);
}
