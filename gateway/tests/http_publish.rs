//! Publishing over HTTP on a standalone gateway: `POST /<channel>` makes
//! exactly the NOTIFY envelope a websocket write makes; every refusal is
//! a 4xx/5xx with the reason; an `Idempotency-Key` retried within the
//! window is published once. (Across gateways: `sse_cluster.rs`.)

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

fn writer() -> String {
    token(json!({"mode": "rw", "sub": "alice"}))
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn post(
    gw: &Server,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    http_post(gw.addr, path, extra, body).await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The envelopes NOTIFYed on the listen channel, up to and including the
/// one whose payload is `sentinel`.
async fn until_sentinel(pg: &mut UnboundedReceiver<String>, sentinel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v: Value = serde_json::from_str(&recv_within(pg).await).expect("json");
        let done = v["payload"] == sentinel;
        out.push(v);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn a_post_becomes_the_envelope_a_websocket_write_makes() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let mut pg = listen_ready(&gw.listen_channel).await;
    let t = writer();
    let (status, headers, body) = post(
        &gw,
        &format!("/{chat}"),
        &[("Authorization", &bearer(&t))],
        "hello\nworld ü".as_bytes(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let reply: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(reply, json!({"accepted": true, "replayed": false}));
    let envelope: Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(envelope["event"], "WebsocketMessage");
    assert_eq!(envelope["channel"], chat.as_str());
    assert_eq!(envelope["payload"], "hello\nworld ü");
    assert_eq!(envelope["claims"]["mode"], "rw");
    assert_eq!(envelope["claims"]["sub"], "alice");
    assert!(envelope["claims"]["message_delivered_at"].is_number());

    // The path and query forms of a websocket URL work too.
    let (status, _, body) = post(&gw, &format!("/{chat}/{t}"), &[], b"two").await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = post(&gw, &format!("/{chat}?token={t}"), &[], b"three").await;
    assert_eq!(status, 202, "{body}");
    let got = until_sentinel(&mut pg, "three").await;
    assert_eq!(got.len(), 2);
    gw.wait_metric("pgws_http_publish_total{outcome=\"accepted\"}", 3.0)
        .await;
}

/// A refused request: path, headers, body, status, part of the reason.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16, &'a str);

#[tokio::test]
async fn refusals_say_why() {
    let gw = Server::gateway()
        .env("PGWS_MAX_MESSAGE_SIZE", "100")
        .env("PGWS_META_CHANNEL", "meta")
        .start()
        .await;
    let chat = unique("chat");
    let rw = bearer(&writer());
    let r = bearer(&token(json!({"mode": "r"})));
    let other = bearer(&token(json!({"mode": "rw", "channel": "other"})));
    let expired = bearer(&token(json!({"mode": "rw", "exp": now() - 60})));
    let big = vec![b'x'; 101];
    let path = format!("/{chat}");
    let cases: Vec<Case> = vec![
        (&path, vec![], b"x", 401, "Missing token"),
        (
            &path,
            vec![("Authorization", "Bearer a.b.c")],
            b"x",
            401,
            "",
        ),
        (
            &path,
            vec![("Authorization", &expired)],
            b"x",
            401,
            "Token expired",
        ),
        (
            &path,
            vec![("Authorization", &r)],
            b"x",
            403,
            "Token mode does not allow writing",
        ),
        (
            &path,
            vec![("Authorization", &other)],
            b"x",
            403,
            "No allowed channels",
        ),
        (
            "/meta",
            vec![("Authorization", &rw)],
            b"x",
            403,
            "No allowed channels",
        ),
        (
            &path,
            vec![("Authorization", &rw)],
            &big,
            413,
            "PGWS_MAX_MESSAGE_SIZE",
        ),
        (
            &path,
            vec![("Authorization", &rw)],
            b"\xff\xfe",
            415,
            "UTF-8",
        ),
        (
            &path,
            vec![("Authorization", &rw), ("Idempotency-Key", "")],
            b"x",
            400,
            "Idempotency-Key",
        ),
        (
            "/a/b/c",
            vec![("Authorization", &rw)],
            b"x",
            404,
            "Not found",
        ),
    ];
    for (path, headers, body, status, reason) in cases {
        let (got, _, text) = post(&gw, path, &headers, body).await;
        assert_eq!(got, status, "{path} {headers:?}: {text}");
        assert!(text.contains(reason), "{path}: {text}");
    }
    // An envelope over the NOTIFY limit, the body within the size limit.
    let gw = Server::gateway()
        .env("PGWS_MAX_MESSAGE_SIZE", "10000")
        .start()
        .await;
    let huge = "y".repeat(8000);
    let (status, _, text) = post(&gw, &path, &[("Authorization", &rw)], huge.as_bytes()).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("NOTIFY"), "{text}");
    let refused = gw
        .metric("pgws_http_publish_total{outcome=\"bad_request\"}")
        .await;
    assert_eq!(refused, 1.0);
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_is_published_once() {
    let gw = Server::gateway()
        .env("PGWS_IDEMPOTENCY_TTL", "2")
        .start()
        .await;
    let chat = unique("chat");
    let mut pg = listen_ready(&gw.listen_channel).await;
    let auth = bearer(&writer());
    let key = unique("key");
    let keyed = [
        ("Authorization", auth.as_str()),
        ("Idempotency-Key", key.as_str()),
    ];
    let path = format!("/{chat}");
    let (status, headers, body) = post(&gw, &path, &keyed, b"once").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(header(&headers, "idempotent-replayed"), Some("false"));
    for _ in 0..2 {
        let (status, headers, body) = post(&gw, &path, &keyed, b"once").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(header(&headers, "idempotent-replayed"), Some("true"));
        let reply: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(reply["replayed"], true);
    }
    // Another subject's same key is another key.
    let bob = bearer(&token(json!({"mode": "rw", "sub": "bob"})));
    let (status, headers, _) = post(
        &gw,
        &path,
        &[("Authorization", &bob), ("Idempotency-Key", &key)],
        b"bob",
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(header(&headers, "idempotent-replayed"), Some("false"));
    let (status, _, _) = post(&gw, &path, &[("Authorization", &auth)], b"sentinel").await;
    assert_eq!(status, 202);
    let got: Vec<Value> = until_sentinel(&mut pg, "sentinel")
        .await
        .into_iter()
        .map(|v| v["payload"].clone())
        .collect();
    assert_eq!(got, vec![json!("once"), json!("bob"), json!("sentinel")]);
    assert_eq!(
        gw.metric("pgws_http_publish_total{outcome=\"replayed\"}")
            .await,
        2.0
    );
    assert_eq!(gw.metric("pgws_idempotency_keys").await, 2.0);

    // After PGWS_IDEMPOTENCY_TTL the key is forgotten: published again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, headers, _) = post(&gw, &path, &keyed, b"again").await;
        assert_eq!(status, 202);
        if header(&headers, "idempotent-replayed") == Some("false") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = until_sentinel(&mut pg, "again").await;
    assert_eq!(got.len(), 1);
}
