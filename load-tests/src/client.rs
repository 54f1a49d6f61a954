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
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
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
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
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

/// The `"payload":"<seq> <ns>"` of a load-test message.
fn seq_and_sent(text: &[u8]) -> Option<(u64, u64)> {
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
                if let Some((seq, sent)) = seq_and_sent(&frame.payload) {
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
    }
}
