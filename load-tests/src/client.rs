//! Websocket clients: connect (fastwebsockets' client handshake), and read
//! until told to stop, measuring latency from the timestamp embedded in
//! each payload.

use anyhow::Context;
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, OpCode};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::Request;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The socket type.
pub type Ws = FragmentCollector<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

/// Open a websocket to `addr` at `path`.
pub async fn connect(addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    connect_with(addr, path, false).await
}

/// The TLS client every connection uses, once `--tls-ca` set it.
static TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();

/// Connect with TLS from now on, trusting the CA certificates in `ca`.
pub fn use_tls(ca: &std::path::Path) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let _ = TLS.set(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )));
    Ok(())
}

/// The source address every connection binds, once `--bind` set it.
static SOURCE: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Connect from `source` from now on.
pub fn bind_to(source: std::net::IpAddr) {
    let _ = SOURCE.set(source);
}

/// The next source port to try with `--bind`.
static NEXT_PORT: AtomicU64 = AtomicU64::new(0);
const FIRST_PORT: u64 = 10_000;
const LAST_PORT: u64 = 65_000;

/// Connect from `source`, choosing the source port ourselves (the next
/// free one, in turn): the kernel's own ephemeral-port search scans its
/// range on every connect, which dominated the generator's CPU with tens
/// of thousands of sockets open (`perf`: 82 % in `__inet_check_established`).
async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut last_error = None;
    for _ in 0..1_000 {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % (LAST_PORT - FIRST_PORT);
        let port = (FIRST_PORT + n) as u16;
        let socket = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(SocketAddr::new(source, port)) {
            last_error = Some(e);
            continue;
        }
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free source port")))
}

/// Open a websocket, offering protocol v2 when `v2`.
pub async fn connect_with(addr: SocketAddr, path: &str, v2: bool) -> anyhow::Result<Ws> {
    let stream = match SOURCE.get() {
        None => TcpStream::connect(addr).await,
        Some(source) => connect_from(*source, addr).await,
    }
    .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    match TLS.get() {
        None => handshake(addr, path, v2, stream).await,
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tls
                .connect(name, stream)
                .await
                .with_context(|| format!("TLS handshake with {addr}"))?;
            handshake(addr, path, v2, stream).await
        }
    }
}

async fn handshake<S>(addr: SocketAddr, path: &str, v2: bool, stream: S) -> anyhow::Result<Ws>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    let request = if v2 {
        request.header("Sec-WebSocket-Protocol", "pgws.v2")
    } else {
        request
    };
    let request = request.body(Empty::<Bytes>::new())?;
    let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, request, stream)
        .await
        .map_err(|e| anyhow::anyhow!("upgrade {addr}{path}: {e}"))?;
    Ok(FragmentCollector::new(ws))
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What one reader saw.
pub struct ReaderStats {
    /// Messages received.
    pub received: u64,
    /// Latency in microseconds (send timestamp → received).
    pub latency_us: Histogram<u64>,
    /// Messages received out of order (sequence went backwards).
    pub reordered: u64,
    /// The server closed the socket (or it broke) before the stop.
    pub ended_by_server: bool,
}

/// Send one v2 command and read until its reply (`id`); the reply, parsed.
/// Message frames before it are returned too, in order.
pub async fn command(
    ws: &mut Ws,
    command: serde_json::Value,
) -> anyhow::Result<(serde_json::Value, Vec<serde_json::Value>)> {
    let id = command["id"].as_u64().unwrap_or(0);
    let text = command.to_string();
    ws.write_frame(fastwebsockets::Frame::text(
        fastwebsockets::Payload::Borrowed(text.as_bytes()),
    ))
    .await?;
    let mut before = Vec::new();
    loop {
        let frame = ws.read_frame().await?;
        if frame.opcode != OpCode::Text {
            anyhow::ensure!(
                frame.opcode != OpCode::Close,
                "closed while waiting for reply {id}"
            );
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&frame.payload)?;
        if value["type"] == "reply" && value["id"] == id {
            anyhow::ensure!(value.get("error").is_none(), "command {id}: {value}");
            return Ok((value, before));
        }
        before.push(value);
    }
}

/// The payload of a message frame: the frame itself (v1) or its `data`
/// (a v2 `message` frame).
fn payload_of(text: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if text.starts_with(br#"{"type":"message""#) {
        let frame: serde_json::Value = serde_json::from_slice(text).ok()?;
        let data = frame.get("data")?.as_str()?;
        return Some(std::borrow::Cow::Owned(data.as_bytes().to_vec()));
    }
    Some(std::borrow::Cow::Borrowed(text))
}

/// The `"payload":"<seq> <ns>"` of a load-test message.
pub(crate) fn seq_and_sent(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let start = text.rfind("\"payload\":\"")? + 11;
    let end = start + text[start..].find('"')?;
    let mut parts = text[start..end].split(' ');
    let seq = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((seq, sent))
}

/// Read until `stop` turns true or the socket ends; `total` counts every
/// message received by all readers (for progress).
pub async fn read_until(
    mut ws: Ws,
    mut stop: watch::Receiver<bool>,
    total: Arc<AtomicU64>,
) -> ReaderStats {
    let mut stats = ReaderStats {
        received: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        reordered: 0,
        ended_by_server: false,
    };
    let mut last_seq = 0u64;
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            f = ws.read_frame() => f,
        };
        let Ok(frame) = frame else {
            stats.ended_by_server = true;
            break;
        };
        match frame.opcode {
            OpCode::Text => {
                stats.received += 1;
                total.fetch_add(1, Ordering::Relaxed);
                let payload = payload_of(&frame.payload);
                if let Some((seq, sent)) = payload.as_deref().and_then(seq_and_sent) {
                    let us = now_ns().saturating_sub(sent) / 1000;
                    let _ = stats.latency_us.record(us.max(1));
                    if seq < last_seq {
                        stats.reordered += 1;
                    }
                    last_seq = seq;
                }
            }
            OpCode::Close => {
                stats.ended_by_server = true;
                break;
            }
            _ => {}
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sequence_and_timestamp_are_found() {
        let text = br#"{"channel":"c","payload":"42 1700000000000000000"}"#;
        assert_eq!(seq_and_sent(text), Some((42, 1_700_000_000_000_000_000)));
        assert_eq!(seq_and_sent(b"{\"payload\":\"x\"}"), None);
        let v2 = br#"{"type":"message","channel":"c","epoch":"1.2.3","offset":7,"data":"{\"channel\":\"c\",\"payload\":\"42 17\"}"}"#;
        let payload = payload_of(v2).expect("data");
        assert_eq!(seq_and_sent(&payload), Some((42, 17)));
    }
}
