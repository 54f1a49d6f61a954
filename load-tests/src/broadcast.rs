//! `broadcast`: one channel read by very many sockets, spread over several
//! generator processes (a process may hold at most ~20,000 open files
//! here), with one publisher. `load-tests/sockets-100k.sh` runs it.
//!
//! A reader process (`--sockets N`) opens its sockets, creates
//! `--ready-file` (its connect time in it), reads until every socket has
//! `--messages` messages or nothing arrives for 5 s, creates the ready
//! file's name with `.done`, closes its sockets and reports what
//! arrived, what was lost, and its latency histogram as buckets the script
//! merges across processes. The publisher (`--sockets 0`) waits until every
//! `--wait-for` file exists, then notifies `--messages` times, one every
//! `--interval-ms`, each payload carrying its send time.

use crate::client::{self, now_ns, Ws};
use crate::options::Common;
use crate::scenarios::{open_sockets, publish, Report};
use fastwebsockets::OpCode;
use hdrhistogram::Histogram;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// What one run of `broadcast` is told.
#[derive(clap::Args)]
pub struct Plan {
    /// Reader sockets to open; 0 makes this process the publisher.
    #[arg(long, default_value_t = 0)]
    pub sockets: usize,
    /// The websocket channel every socket reads.
    #[arg(long)]
    pub channel: String,
    /// Broadcasts (the publisher sends them; readers expect them).
    #[arg(long, default_value_t = 10)]
    pub messages: u64,
    /// Time between broadcasts.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Created once this reader's sockets are open (`.done` once it has
    /// every message).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// The publisher waits for these files.
    #[arg(long)]
    pub wait_for: Vec<PathBuf>,
}

pub async fn broadcast(c: &Common, plan: Plan) -> anyhow::Result<Report> {
    if plan.sockets == 0 {
        publisher(c, &plan).await
    } else {
        readers(c, &plan).await
    }
}

async fn publisher(c: &Common, plan: &Plan) -> anyhow::Result<Report> {
    let mut report = Report::new("broadcast_publisher", c);
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(600);
    while !plan.wait_for.iter().all(|f| f.exists()) {
        anyhow::ensure!(Instant::now() < deadline, "readers not ready after 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.set("waited_s", round1(waiting.elapsed().as_secs_f64()));
    // Let the last subscriptions settle (cluster mode subscribes right
    // after each upgrade) before the first message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = (1000 / plan.interval_ms.max(1)).max(1);
    let seconds = plan.messages.div_ceil(rate);
    let channel = plan.channel.clone();
    let sent = publish(c, rate, seconds, 64, move |_| channel.clone()).await?;
    report.set("sent", sent);
    Ok(report)
}

async fn readers(c: &Common, plan: &Plan) -> anyhow::Result<Report> {
    let mut report = Report::new("broadcast", c);
    let started = Instant::now();
    let channel = plan.channel.clone();
    let sockets = open_sockets(c, plan.sockets, "r", move |_| channel.clone()).await?;
    let connect_s = started.elapsed().as_secs_f64();
    report.set("sockets", sockets.len() as u64);
    report.set("connect_s", round1(connect_s));
    report.set(
        "connects_per_s",
        (sockets.len() as f64 / connect_s.max(1e-9)).round(),
    );
    if let Some(ready) = &plan.ready_file {
        std::fs::write(ready, format!("{connect_s}\n"))?;
    }
    let total = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    let opened = sockets.len() as u64;
    for ws in sockets {
        tasks.spawn(read(ws, plan.messages, stop_rx.clone(), total.clone()));
    }
    let expected = opened * plan.messages;
    wait_for_messages(&total, expected).await;
    if let Some(ready) = &plan.ready_file {
        // "Done" (sockets still open): the script takes the servers' CPU
        // here, before the sockets close.
        std::fs::write(ready.with_extension("done"), "")?;
    }
    let _ = stop.send(true);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut received, mut reordered, mut closed) = (0u64, 0u64, 0u64);
    while let Some(Ok(seen)) = tasks.join_next().await {
        received += seen.latencies_us.len() as u64;
        reordered += seen.reordered;
        closed += u64::from(seen.closed);
        for us in seen.latencies_us {
            let _ = latency.record(u64::from(us).max(1));
        }
    }
    report.set("expected", expected);
    report.set("received", received);
    report.set("lost", expected.saturating_sub(received));
    report.set("reordered", reordered);
    report.set("closed_by_server", closed);
    let buckets: Vec<[u64; 2]> = latency
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    report.set("latency_us_buckets", json!(buckets));
    Ok(report)
}

/// Until `expected` messages arrived in all, or (once the first one came)
/// nothing arrived for 5 s; at most 10 minutes.
async fn wait_for_messages(total: &AtomicU64, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut last, mut last_change) = (0, Instant::now());
    while Instant::now() < deadline {
        let now = total.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        if now >= expected || (now > 0 && last_change.elapsed() > Duration::from_secs(5)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one socket saw: a latency per message (a few per socket, so a
/// vector rather than a histogram each: 100,000 histograms would take
/// gigabytes).
struct Seen {
    latencies_us: Vec<u32>,
    reordered: u64,
    closed: bool,
}

async fn read(
    mut ws: Ws,
    messages: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
    total: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen {
        latencies_us: Vec::with_capacity(messages as usize),
        reordered: 0,
        closed: false,
    };
    let mut last_seq = 0;
    while (seen.latencies_us.len() as u64) < messages {
        let frame = tokio::select! {
            _ = stop.changed() => break,
            f = ws.read_frame() => f,
        };
        match frame {
            Ok(f) if f.opcode == OpCode::Text => {
                let Some((seq, sent)) = client::seq_and_sent(&f.payload) else {
                    continue;
                };
                let us = now_ns().saturating_sub(sent) / 1000;
                seen.latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                if seq < last_seq {
                    seen.reordered += 1;
                }
                last_seq = seq;
                total.fetch_add(1, Ordering::Relaxed);
            }
            Ok(f) if f.opcode == OpCode::Close => {
                seen.closed = true;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                seen.closed = true;
                break;
            }
        }
    }
    // Keep the socket open until every reader is done, so the gateways'
    // memory is measured with all sockets connected.
    if !*stop.borrow() {
        let _ = stop.changed().await;
    }
    drop(ws);
    seen
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
