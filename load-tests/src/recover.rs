//! `recover`: N protocol v2 clients of one channel lose their sockets at
//! the same moment, H messages are published while they are away, and all
//! of them reconnect at once with `since` — a gateway rolled under them.
//! Measures the time until every client has the H messages it missed, and
//! the server CPU per replayed message.

use crate::client::{self, Ws};
use crate::options::Common;
use crate::scenarios::{publish, token, CpuMark, Report};
use anyhow::Context;
use fastwebsockets::OpCode;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Sockets connecting at once.
const CONNECT_CONCURRENCY: usize = 256;

/// Connect client `i` and subscribe to `channel` (from `since`); the
/// socket and the reply.
async fn subscribe(
    c: &Common,
    i: usize,
    t: &str,
    channel: &str,
    since: Option<&Value>,
) -> anyhow::Result<(Ws, Value)> {
    let addr = c.urls[i % c.urls.len()];
    let mut ws = client::connect_with(addr, &format!("/{t}"), true).await?;
    let mut command = json!({"type": "subscribe", "id": 1, "channel": channel});
    if let Some(since) = since {
        command["since"] = since.clone();
    }
    let (reply, _) = client::command(&mut ws, command).await?;
    Ok((ws, reply))
}

/// Read `n` message frames; their offsets.
async fn read_messages(ws: &mut Ws, n: u64) -> anyhow::Result<Vec<u64>> {
    let mut offsets = Vec::with_capacity(n as usize);
    while (offsets.len() as u64) < n {
        let frame = ws.read_frame().await?;
        anyhow::ensure!(frame.opcode != OpCode::Close, "closed during the replay");
        if frame.opcode == OpCode::Text {
            let v: Value = serde_json::from_slice(&frame.payload)?;
            if v["type"] == "message" {
                offsets.push(v["offset"].as_u64().unwrap_or(0));
            }
        }
    }
    Ok(offsets)
}

pub async fn recover(c: &Common, clients: usize, history: u64) -> anyhow::Result<Report> {
    let mut report = Report::new("recover", c);
    let channel = format!("recover-{}", std::process::id());
    let t = token(&c.secret, json!({"mode": "r"}));

    // Everyone subscribes and learns where the channel stands.
    let (first, reply) = subscribe(c, 0, &t, &channel, None).await?;
    let since = json!({"epoch": reply["epoch"], "offset": reply["offset"]});
    let start_offset = reply["offset"].as_u64().context("offset")?;
    drop(first);

    // H messages while they are away; then wait until the gateways have
    // them all (a fresh subscription reports the newest offset).
    publish(c, history.max(1), 1, 64, |_| channel.clone()).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, probe) = subscribe(c, 0, &t, &channel, None).await?;
        if probe["offset"].as_u64().unwrap_or(0) >= start_offset + history {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway never saw all {history} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // All of them reconnect at once, recover, and read the replay.
    let mark = CpuMark::now(c);
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let (c, t, channel, since, limit) = (
            c.clone(),
            t.clone(),
            channel.clone(),
            since.clone(),
            limit.clone(),
        );
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let (mut ws, reply) = subscribe(&c, i, &t, &channel, Some(&since)).await?;
            let recovered = reply["recovered"] == true;
            let replayed = reply["replayed"].as_u64().unwrap_or(0);
            let offsets = read_messages(&mut ws, replayed).await?;
            let in_order = offsets
                .iter()
                .copied()
                .eq(start_offset + 1..=start_offset + replayed);
            anyhow::Ok((recovered, replayed, in_order, started.elapsed()))
        });
    }
    let mut per_client = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut recovered, mut replayed, mut out_of_order) = (0u64, 0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let (ok, n, in_order, took) = done??;
        recovered += u64::from(ok);
        replayed += n;
        out_of_order += u64::from(!in_order);
        let _ = per_client.record((took.as_micros() as u64).max(1));
    }
    let all_done = started.elapsed().as_secs_f64();
    let (server_cpu, _, client_cpu) = mark.since();
    report.set("clients", clients as u64);
    report.set("history", history);
    report.set("recovered", recovered);
    report.set("not_recovered", clients as u64 - recovered);
    report.set("replayed", replayed);
    report.set("out_of_order", out_of_order);
    report.set("recover_seconds", (all_done * 1000.0).round() / 1000.0);
    report.set(
        "per_client_p50_ms",
        per_client.value_at_quantile(0.5) as f64 / 1000.0,
    );
    report.set(
        "per_client_p99_ms",
        per_client.value_at_quantile(0.99) as f64 / 1000.0,
    );
    let per = |cpu: f64| (cpu * 1e6 / replayed.max(1) as f64 * 100.0).round() / 100.0;
    report.set("server_cpu_us_per_replayed", per(server_cpu));
    report.set("client_cpu_us_per_replayed", per(client_cpu));
    Ok(report)
}
