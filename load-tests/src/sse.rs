//! `sse`: Server-Sent Events streams beside websockets, in one run against
//! the same gateway — server memory per idle stream and per idle socket,
//! then the server's CPU to fan the same notifications out to each.
//!
//! 1. `n` v1 websockets (mode `r`) on `ws-<i % channels>`; settle; RSS.
//! 2. `n` event streams on `sse-<i % channels>` on top; settle; RSS.
//!    Each growth divided by `n` is that transport's memory per idle
//!    connection (both held open, so neither reuses the other's freed
//!    memory).
//! 3. `rate` notifications a second for `seconds` over the `ws-*`
//!    channels, then the same over the `sse-*` channels: server CPU per
//!    1,000 deliveries for each.

use crate::options::Common;
use crate::scenarios::{open_sockets, publish, server_rss, start_readers, token, CpuMark, Report};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Streams opening at once.
const CONNECT_CONCURRENCY: usize = 256;

/// Run the scenario.
pub async fn sse(
    c: &Common,
    n: usize,
    channels: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::new("sse", c);
    let channels = channels.max(1);
    let rss0 = server_rss(c);
    let sockets = open_sockets(c, n, "r", |i| format!("ws-{}", i % channels)).await?;
    settle().await;
    let rss1 = server_rss(c);
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = open_streams(c, n, channels, received.clone()).await?;
    settle().await;
    let rss2 = server_rss(c);
    let per = |bytes: u64| bytes as f64 / n.max(1) as f64 / 1024.0;
    let ws_kib = per(rss1.saturating_sub(rss0));
    let sse_kib = per(rss2.saturating_sub(rss1));
    report.set("connections_each", n as u64);
    report.set("channels", channels as u64);
    report.set("server_rss_start_mib", rss0 as f64 / 1048576.0);
    report.set("ws_rss_per_socket_kib", round2(ws_kib));
    report.set("sse_rss_per_stream_kib", round2(sse_kib));
    report.set("sse_over_ws_memory", round2(sse_kib / ws_kib.max(0.001)));

    // Fan-out: the same load to each transport in turn.
    let per_channel = (n / channels) as u64;
    let group = start_readers(sockets);
    let mark = CpuMark::now(c);
    let sent = publish(c, rate, seconds, 200, |seq| {
        format!("ws-{}", seq as usize % channels)
    })
    .await?;
    group.drain(sent * per_channel).await;
    let (ws_cpu, _, _) = mark.since();
    let (ws_received, _, _) = group.finish().await;

    let mark = CpuMark::now(c);
    let sent = publish(c, rate, seconds, 200, |seq| {
        format!("sse-{}", seq as usize % channels)
    })
    .await?;
    drain(&received, sent * per_channel).await;
    let (sse_cpu, _, _) = mark.since();
    let sse_received = received.load(Ordering::Relaxed);
    streams.abort_all();
    report.set("fanout_notify_per_s", rate);
    report.set("fanout_seconds", seconds);
    report.set("ws_delivered", ws_received);
    report.set("sse_delivered", sse_received);
    report.set("ws_server_cpu_s", round2(ws_cpu));
    report.set("sse_server_cpu_s", round2(sse_cpu));
    let per_k = |cpu: f64, count: u64| round2(cpu * 1000.0 * 1000.0 / count.max(1) as f64);
    report.set("ws_cpu_ms_per_1000_deliveries", per_k(ws_cpu, ws_received));
    report.set(
        "sse_cpu_ms_per_1000_deliveries",
        per_k(sse_cpu, sse_received),
    );
    Ok(report)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Let the server settle its allocations (bounded, then measure).
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Wait until `expected` events arrived, or none for 3 s (at most 60 s).
async fn drain(total: &AtomicU64, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut changed) = (total.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < deadline && changed.elapsed() < Duration::from_secs(3) {
        let now = total.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            (last, changed) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Open `n` streams round-robin over the `--url`s; each then counts the
/// events it reads into `received` until aborted.
async fn open_streams(
    c: &Common,
    n: usize,
    channels: usize,
    received: Arc<AtomicU64>,
) -> anyhow::Result<JoinSet<()>> {
    let t = token(&c.secret, json!({"mode": "r"}));
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut opening = JoinSet::new();
    for i in 0..n {
        let addr = c.urls[i % c.urls.len()];
        let path = format!("/sse-{}/{t}", i % channels);
        let limit = limit.clone();
        opening.spawn(async move {
            let _permit = limit.acquire_owned().await;
            open_stream(addr, &path).await
        });
    }
    let mut streams = JoinSet::new();
    while let Some(opened) = opening.join_next().await {
        let (stream, rest) = opened??;
        streams.spawn(count_events(stream, rest, received.clone()));
    }
    Ok(streams)
}

/// Send the request and read the head: the stream and what followed it.
async fn open_stream(addr: SocketAddr, path: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: load\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            anyhow::ensure!(
                raw.starts_with(b"HTTP/1.1 200"),
                "stream refused: {}",
                String::from_utf8_lossy(&raw[..end])
            );
            return Ok((stream, raw.split_off(end + 4)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the stream closed before its head");
        raw.extend_from_slice(&buf[..n]);
    }
}

/// Count `data: ` lines (one per event: the payloads are one line).
async fn count_events(mut stream: TcpStream, mut carry: Vec<u8>, received: Arc<AtomicU64>) {
    const NEEDLE: &[u8] = b"\ndata: ";
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let found = carry.windows(NEEDLE.len()).filter(|w| *w == NEEDLE).count();
        received.fetch_add(found as u64, Ordering::Relaxed);
        let keep = carry.len().saturating_sub(NEEDLE.len() - 1);
        carry.drain(..keep);
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => carry.extend_from_slice(&buf[..n]),
        }
    }
}
