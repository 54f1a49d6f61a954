//! `floor`: the latency floor under the gateway. The same publisher,
//! payloads and rate as `spread`, received by a bare LISTEN connection
//! (no gateway): what PostgreSQL's NOTIFY path alone costs in latency and
//! CPU. `spread` minus `floor` is what the gateway adds (load-tests/run.sh
//! runs both and `report.py` prints the difference).

use crate::client::{now_ns, seq_and_sent};
use crate::options::Common;
use crate::scenarios::{latency_fields, publish, CpuMark, Report};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub async fn floor(c: &Common, channels: usize, rate: u64, seconds: u64) -> anyhow::Result<Report> {
    let mut report = Report::new("floor", c);
    let tag = format!("floor-{}", std::process::id());
    let (client, mut connection) = tokio_postgres::connect(&c.db, tokio_postgres::NoTls).await?;
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let listening = {
        let (latency, received, tag) = (latency.clone(), received.clone(), tag.clone());
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let at = now_ns();
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let payload = n.payload();
                    if !payload.contains(&tag) {
                        continue;
                    }
                    if let Some((_, sent)) = seq_and_sent(payload.as_bytes()) {
                        let us = at.saturating_sub(sent) / 1000;
                        if let Ok(mut h) = latency.lock() {
                            let _ = h.record(us.max(1));
                        }
                        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let sql = format!("LISTEN \"{}\"", c.listen_channel.replace('"', "\"\""));
    client.batch_execute(&sql).await?;
    // A first notification proves the LISTEN is in effect.
    client
        .execute("SELECT pg_notify($1, 'floor-ready')", &[&c.listen_channel])
        .await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    let mark = CpuMark::now(c);
    let sent = publish(c, rate, seconds, 64, |seq| {
        format!("{tag}-{}", seq as usize % channels.max(1))
    })
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::Relaxed) < sent
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, pg_cpu, _) = mark.since();
    listening.abort();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    report.set("channels", channels as u64);
    report.set("notify_per_s", rate);
    report.set("seconds", seconds);
    report.set("sent", sent);
    report.set("received", got);
    let h = latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    latency_fields(&mut report, &h);
    report.set(
        "postgres_cpu_us_per_notification",
        (pg_cpu * 1e6 / got.max(1) as f64 * 100.0).round() / 100.0,
    );
    Ok(report)
}
