//! Shared harness for the integration tests: start the real `pgws-gateway`
//! binary against the real PostgreSQL, open real websockets.
//!
//! Every test gets its own ports (the gateway binds port 0 and logs the
//! address), its own listen channel, and stops its process by pid on drop.
//! Every wait polls with a deadline; nothing sleeps a fixed time to "let
//! things settle".

#![allow(dead_code)] // each test binary uses a different subset

pub mod certs;
pub mod cluster;
pub mod pg_server;
pub mod raw;
pub mod redis_server;

#[allow(unused_imports)]
pub use redis_server::{RedisClusterServers, RedisServer};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "reallyreallyreallyreallyverysafe";
pub const WAIT: Duration = Duration::from_secs(15);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The database the tests use (shared; isolation is by channel name).
pub fn db_uri() -> String {
    std::env::var("PGWS_TEST_DB_URI")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A name no other test (or concurrent test run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HS256 token over `claims`, signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    token_with(claims, SECRET.as_bytes())
}

pub fn token_with(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub listen_channel: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// Environment for a gateway under test.
pub struct GatewayBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    wait_ready: bool,
    bin: std::path::PathBuf,
    public: bool,
}

impl GatewayBuilder {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Do not wait for `/readyz` (for gateways expected to fail).
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn command(&self) -> Command {
        assert!(
            self.bin.exists(),
            "{} is missing: build the workspace first (cargo test --workspace does)",
            self.bin.display()
        );
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start and wait until both addresses are logged (and, by default,
    /// `/readyz` answers 200).
    pub async fn start(self) -> Gateway {
        let listen_channel = self
            .env
            .iter()
            .find(|(k, _)| k == "PGWS_LISTEN_CHANNEL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let admin_off = self
            .env
            .iter()
            .any(|(k, v)| k == "PGWS_ADMIN_PORT" && v == "off");
        let public_expected = self.public;
        let mut child = self.command().spawn().expect("spawn pgws-gateway");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("PGWS_TEST_ECHO").is_some() {
                    eprintln!("[gateway] {line}");
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut gateway = Gateway {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: None,
            listen_channel,
            log,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let public = if public_expected {
                gateway.logged_addr("public")
            } else {
                Some(gateway.addr)
            };
            let admin = gateway.logged_addr("admin");
            if let Some(public) = public {
                if admin.is_some() || admin_off {
                    gateway.addr = public;
                    gateway.admin = admin;
                    break;
                }
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gateway exited early ({status}):\n{}", gateway.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.wait_ready {
            gateway.wait_ready().await;
        }
        gateway
    }
}

impl Gateway {
    /// Defaults for a test: loopback, ephemeral ports, a unique channel.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            env: vec![
                ("PGWS_DB_URI".into(), db_uri()),
                ("PGWS_JWT_SECRET".into(), SECRET.into()),
                ("PGWS_HOST".into(), "127.0.0.1".into()),
                ("PGWS_PORT".into(), "0".into()),
                ("PGWS_ADMIN_HOST".into(), "127.0.0.1".into()),
                ("PGWS_ADMIN_PORT".into(), "0".into()),
                ("PGWS_LISTEN_CHANNEL".into(), unique("pgws-t")),
                ("PGWS_SHUTDOWN_TIMEOUT".into(), "5000".into()),
                ("PGWS_LOG_LEVEL".into(), "info,pgws_gateway=debug".into()),
            ],
            args: Vec::new(),
            wait_ready: true,
            bin: std::path::PathBuf::from(env!("CARGO_BIN_EXE_pgws-gateway")),
            public: true,
        }
    }

    /// A gateway in cluster mode (no database settings).
    pub fn cluster_gateway(redis_url: &str, prefix: &str, listen_channel: &str) -> GatewayBuilder {
        Gateway::builder()
            .unset("PGWS_DB_URI")
            .env("PGWS_REDIS_URL", redis_url)
            .env("PGWS_REDIS_PREFIX", prefix)
            .env("PGWS_LISTEN_CHANNEL", listen_channel)
    }

    /// A `pgws-coordinator` (built beside `pgws-gateway`).
    pub fn coordinator(redis_url: &str, prefix: &str, listen_channel: &str) -> GatewayBuilder {
        let gateway = std::path::PathBuf::from(env!("CARGO_BIN_EXE_pgws-gateway"));
        let bin =
            gateway.with_file_name(format!("pgws-coordinator{}", std::env::consts::EXE_SUFFIX));
        GatewayBuilder {
            env: vec![
                ("PGWS_DB_URI".into(), db_uri()),
                ("PGWS_REDIS_URL".into(), redis_url.into()),
                ("PGWS_REDIS_PREFIX".into(), prefix.into()),
                ("PGWS_LISTEN_CHANNEL".into(), listen_channel.into()),
                ("PGWS_NODE_ID".into(), unique("coord")),
                ("PGWS_LEADER_TTL".into(), "2000".into()),
                ("PGWS_ADMIN_HOST".into(), "127.0.0.1".into()),
                ("PGWS_ADMIN_PORT".into(), "0".into()),
                ("PGWS_SHUTDOWN_TIMEOUT".into(), "5000".into()),
                (
                    "PGWS_LOG_LEVEL".into(),
                    "info,pgws_coordinator=debug".into(),
                ),
            ],
            args: Vec::new(),
            wait_ready: true,
            bin,
            public: false,
        }
    }

    pub async fn start() -> Gateway {
        Gateway::builder().start().await
    }

    fn logged_addr(&self, kind: &str) -> Option<SocketAddr> {
        let needle = format!("kind=\"{kind}\"");
        let log = self.log.lock().expect("log lock");
        log.iter()
            .find(|l| l.contains(" listening") && l.contains(&needle))
            .and_then(|l| {
                let rest = &l[l.find("addr=")? + 5..];
                rest.split_whitespace().next()?.parse().ok()
            })
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Poll `/readyz` until 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(admin) = self.admin {
                if let Ok((200, _)) = http_get(admin, "/readyz").await {
                    return;
                }
            } else if self.log_text().contains("listening for notifications") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gateway exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("admin listener");
        http_get(admin, "/metrics").await.expect("metrics").1
    }

    /// The value of a metric line (exact series text before the value).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Poll until `series` reaches at least `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {v}, wanted {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Wait for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway still running:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET over a raw socket (paths are sent verbatim, so
/// traversal attempts reach the server unnormalised). Returns status, body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}

pub async fn http_raw(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await??;
    Ok(parse_response(&raw))
}

pub fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Open a websocket, panicking on refusal.
pub async fn connect(url: &str) -> Ws {
    match try_connect(url.into_client_request().expect("request")).await {
        Ok(ws) => ws,
        Err(e) => panic!("connect {url}: {e:?}"),
    }
}

/// Open a websocket; a refusal comes back as status and body.
pub async fn try_connect(
    request: tungstenite::handshake::client::Request,
) -> Result<Ws, (u16, String)> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err((0, "timeout".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Ok(Err(e)) => Err((0, e.to_string())),
    }
}

pub async fn refused(url: &str) -> (u16, String) {
    match try_connect(url.into_client_request().expect("request")).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(e) => e,
    }
}

/// The next text message (answering nothing else), within [`WAIT`].
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("no message within {WAIT:?}"),
            Ok(None) => panic!("socket ended"),
            Ok(Some(Err(e))) => panic!("socket error: {e}"),
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Close(c)))) => panic!("closed: {c:?}"),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Read until the close frame; returns its code and reason. Data frames
/// before it are skipped.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(None) => panic!("socket ended without a close frame"),
            Ok(Some(Err(e))) => panic!("socket error before close: {e}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (u16::from(frame.code), frame.reason.to_string())
            }
            Ok(Some(Ok(Message::Close(None)))) => {
                return (u16::from(CloseCode::Status), String::new())
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
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

/// The shared Redis the machine runs (isolation is by key prefix).
pub fn redis_url() -> String {
    std::env::var("PGWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A free TCP port on loopback (bound and released; the kernel does not
/// hand it out again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The first of `n` consecutive free ports, for scripts that need a fixed
/// layout (`deploy/local-cluster.sh`). Taken below Linux's ephemeral range
/// (32768 and up), where no outgoing connection nor any `free_port()` of a
/// parallel test can be holding one, and checked by binding each.
pub fn free_port_block(n: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    let span = 32_000 - 20_000 - n as u64;
    for attempt in 0..200u64 {
        let base =
            20_000 + ((seed.wrapping_mul(6364136223846793005) + attempt * 7919) % span) as u16;
        let all_free =
            (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no block of {n} free ports between 20000 and 32000");
}
