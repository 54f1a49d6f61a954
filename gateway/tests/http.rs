//! Plain HTTP: static files, the banner, and TLS.

mod common;

use common::*;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn site() -> std::path::PathBuf {
    let base = std::env::temp_dir().join(unique("pgws-site"));
    std::fs::create_dir_all(base.join("root/sub")).expect("dirs");
    std::fs::write(base.join("root/index.html"), "<h1>home</h1>").expect("write");
    std::fs::write(base.join("root/sub/app.js"), "console.log(1)").expect("write");
    std::fs::create_dir_all(base.join("root/nolisting")).expect("dirs");
    std::fs::write(base.join("secret.txt"), "top secret").expect("write");
    base
}

#[tokio::test]
async fn without_a_root_path_get_answers_a_short_text() {
    let gw = Gateway::start().await;
    let (status, body) = http_get(gw.addr, "/").await.expect("get");
    assert_eq!(status, 200);
    assert!(body.contains("postgres-websockets"), "{body}");
    let (status, _) = http_raw(
        gw.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("post");
    assert_eq!(status, 405);
}

#[tokio::test]
async fn static_files_are_served_without_listings_or_escape() {
    let base = site();
    let gw = Gateway::builder()
        .env("PGWS_ROOT_PATH", base.join("root").display().to_string())
        .start()
        .await;
    assert_eq!(
        http_get(gw.addr, "/").await.expect("get"),
        (200, "<h1>home</h1>".into())
    );
    assert_eq!(http_get(gw.addr, "/index.html").await.expect("get").0, 200);
    assert_eq!(
        http_get(gw.addr, "/sub/app.js").await.expect("get"),
        (200, "console.log(1)".into())
    );
    assert_eq!(http_get(gw.addr, "/nolisting/").await.expect("get").0, 404);
    assert_eq!(http_get(gw.addr, "/missing").await.expect("get").0, 404);
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/%2E%2E/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        &format!("/{}", base.join("secret.txt").display()),
        &format!("//{}", base.join("secret.txt").display()),
    ] {
        let (status, body) = http_get(gw.addr, path).await.expect("get");
        assert_eq!(status, 404, "{path}");
        assert!(!body.contains("top secret"), "{path} leaked the file");
    }
    // Websockets still work beside the files.
    connect(&gw.url(&format!("chat/{}", token(json!({"mode":"r"}))))).await;
    let _ = std::fs::remove_dir_all(base);
}

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl failed");
    (cert, key)
}

#[tokio::test]
async fn tls_serves_https_and_wss() {
    let dir = std::env::temp_dir().join(unique("pgws-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = certificate(&dir);
    let gw = Gateway::builder()
        .env("PGWS_CERTIFICATE_FILE", cert.display().to_string())
        .env("PGWS_KEY_FILE", key.display().to_string())
        .start()
        .await;

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");

    // https
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    let mut tls = connector
        .connect(name.clone(), tcp)
        .await
        .expect("tls handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    assert_eq!(parse_response(&raw).0, 200);

    // wss
    let chat = unique("chat");
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("tcp");
    let tls = connector.connect(name, tcp).await.expect("tls handshake");
    let url = format!(
        "wss://127.0.0.1:{}/{chat}/{}",
        gw.addr.port(),
        token(json!({"mode":"r"}))
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss");
    let db = db().await;
    let payload = format!(r#"{{"channel":"{chat}","payload":"secure"}}"#);
    notify(&db, &gw.listen_channel, &payload).await;
    let got = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
        .await
        .expect("in time");
    assert_eq!(
        got.expect("message")
            .expect("ok")
            .into_text()
            .expect("text")
            .as_str(),
        payload
    );
    let _ = std::fs::remove_dir_all(dir);
}
