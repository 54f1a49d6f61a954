//! Who gets in: refusals before the upgrade, token sources, expiry.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn refusals_are_http_errors_with_the_reason() {
    let gw = Server::start().await;
    let cases = [
        (
            format!("chat/{}", token(json!({"mode":"r","exp": now() - 10}))),
            401,
            "Token expired",
        ),
        (
            format!("chat/{}", token(json!({"channel":"chat"}))),
            403,
            "Missing mode",
        ),
        (
            format!("chat/{}", token(json!({"mode":"x"}))),
            403,
            "Invalid mode",
        ),
        (
            format!("chat/{}", token(json!({"mode":"r","channels":["other"]}))),
            403,
            "No allowed channels",
        ),
        (token(json!({"mode":"r"})), 403, "No allowed channels"),
        ("chat".to_string(), 401, "Missing token"),
    ];
    for (path, status, body) in cases {
        assert_eq!(
            refused(&gw.url(&path)).await,
            (status, body.to_string()),
            "{path}"
        );
    }
    let (status, body) = refused(&gw.url(&format!(
        "chat/{}",
        token_with(json!({"mode":"r"}), b"wrong")
    )))
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("InvalidSignature"), "{body}");
    let (status, _) = refused(&gw.url("chat/not.a.token")).await;
    assert_eq!(status, 401);
    assert_eq!(
        gw.metric("pgws_connections_refused_total{reason=\"token_expired\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("pgws_connections_refused_total{reason=\"missing_mode\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn alg_none_and_not_yet_valid_tokens_are_refused() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let gw = Server::start().await;
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(r#"{"mode":"rw"}"#)
    );
    assert_eq!(refused(&gw.url(&format!("chat/{none}"))).await.0, 401);
    let early = token(json!({"mode":"r","nbf": now() + 3600}));
    assert_eq!(refused(&gw.url(&format!("chat/{early}"))).await.0, 401);
}

#[tokio::test]
async fn channel_claims_limit_the_path_channel() {
    let gw = Server::start().await;
    let t = token(json!({"mode":"r","channel":"a","channels":["b"]}));
    connect(&gw.url(&format!("a/{t}"))).await;
    connect(&gw.url(&format!("b/{t}"))).await;
    assert_eq!(refused(&gw.url(&format!("c/{t}"))).await.0, 403);
    // Without channel claims any channel may be opened.
    connect(&gw.url(&format!("anything/{}", token(json!({"mode":"r"}))))).await;
}

async fn reads_chat(gw: &Server, mut ws: Ws, chat: &str) {
    let db = db().await;
    let payload = format!(r#"{{"channel":"{chat}","payload":"x"}}"#);
    notify(&db, &gw.listen_channel, &payload).await;
    assert_eq!(next_text(&mut ws).await, payload);
}

#[tokio::test]
async fn token_from_query_authorization_or_subprotocol() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let t = token(json!({"mode":"r"}));

    let ws = connect(&gw.url(&format!("{chat}?token={t}"))).await;
    reads_chat(&gw, ws, &chat).await;

    let mut req = gw.url(&chat).into_client_request().expect("request");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {t}").parse().expect("header"),
    );
    let ws = try_connect(req).await.expect("bearer accepted");
    reads_chat(&gw, ws, &chat).await;

    // Browsers can only set Sec-WebSocket-Protocol; the server must echo an
    // offered protocol or the browser drops the connection.
    let mut req = gw.url(&chat).into_client_request().expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("pgws, {t}").parse().expect("header"),
    );
    let (ws, response) = tokio_tungstenite::connect_async(req)
        .await
        .expect("protocol accepted");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().ok()),
        Some(Some("pgws"))
    );
    reads_chat(&gw, ws, &chat).await;
}

#[tokio::test]
async fn an_open_socket_is_closed_with_3001_when_its_token_expires() {
    let gw = Server::start().await;
    let t = token(json!({"mode":"r","exp": now() + 2}));
    let mut ws = connect(&gw.url(&format!("chat/{t}"))).await;
    assert_eq!(
        expect_close(&mut ws).await,
        (3001, "JWT expired".to_string())
    );
    gw.wait_metric("pgws_connections_closed_total{reason=\"jwt_expired\"}", 1.0)
        .await;
}

#[tokio::test]
async fn base64_and_file_secrets() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let gw = Server::gateway()
        .env("PGWS_JWT_SECRET", b64)
        .env("PGWS_JWT_SECRET_BASE64", "True")
        .start()
        .await;
    connect(&gw.url(&format!("chat/{}", token(json!({"mode":"r"}))))).await;

    let dir = std::env::temp_dir().join(unique("pgws-secret"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    std::fs::write(
        &file,
        json!({"keys":[{"kty":"oct","kid":"k1","k":k}]}).to_string(),
    )
    .expect("write");
    let gw = Server::gateway()
        .env("PGWS_JWT_SECRET", format!("@{}", file.display()))
        .start()
        .await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384);
    header.kid = Some("k1".into());
    let t = jsonwebtoken::encode(
        &header,
        &json!({"mode":"r"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    connect(&gw.url(&format!("chat/{t}"))).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn origin_allow_list() {
    let gw = Server::gateway()
        .env(
            "PGWS_ALLOWED_ORIGINS",
            "https://good.example, http://localhost:3000",
        )
        .start()
        .await;
    let url = gw.url(&format!("chat/{}", token(json!({"mode":"r"}))));
    let with_origin = |origin: &str| {
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header"));
        req
    };
    assert!(try_connect(with_origin("https://good.example"))
        .await
        .is_ok());
    assert_eq!(
        try_connect(with_origin("https://evil.example")).await.err(),
        Some((403, "Origin not allowed".into()))
    );
    assert_eq!(refused(&url).await.0, 403, "no Origin at all");
}
