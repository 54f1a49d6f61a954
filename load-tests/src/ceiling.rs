//! `notify-ceiling`: PostgreSQL's own NOTIFY throughput, no gateway. `P`
//! connections each run `SELECT pg_notify(channel, payload)` as fast as
//! they can, one transaction per notification (as applications usually
//! notify from triggers), for `seconds`; a LISTEN connection counts what
//! arrives. With `--batch B` each transaction notifies B distinct
//! payloads at once (as the gateway's relay does with writers' messages).

use crate::options::Common;
use crate::scenarios::{count_notifies, db, CpuMark, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn ceiling(
    c: &Common,
    publishers: usize,
    batch: usize,
    seconds: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::new("notify_ceiling", c);
    let tag = format!("ceil{}", std::process::id());
    let started = Instant::now();
    let (received, _, listener) = count_notifies(c, tag.clone(), started).await?;
    let committed = Arc::new(AtomicU64::new(0));
    let mark = CpuMark::now(c);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..publishers.max(1) {
        let (c, tag, committed) = (c.clone(), tag.clone(), committed.clone());
        tasks.spawn(async move {
            let client = db(&c).await?;
            let one = client.prepare("SELECT pg_notify($1, $2)").await?;
            let many = client
                .prepare("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)")
                .await?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                if batch <= 1 {
                    let payload = format!("{tag} {p} {n}");
                    client.execute(&one, &[&c.listen_channel, &payload]).await?;
                    n += 1;
                } else {
                    let payloads: Vec<String> = (0..batch)
                        .map(|i| format!("{tag} {p} {}", n + i as u64))
                        .collect();
                    client
                        .execute(&many, &[&c.listen_channel, &payloads])
                        .await?;
                    n += batch as u64;
                }
                committed.fetch_add(if batch <= 1 { 1 } else { batch as u64 }, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = mark.at.elapsed().as_secs_f64();
    let sent = committed.load(Ordering::Relaxed);
    let wait_until = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, pg_cpu, _) = mark.since();
    listener.abort();
    let got = received.load(Ordering::Relaxed);
    report.set("publishers", publishers as u64);
    report.set("per_transaction", batch.max(1) as u64);
    report.set("seconds", seconds);
    report.set("notified", sent);
    report.set("notifies_per_s", (sent as f64 / elapsed).round());
    report.set("received_by_listener", got);
    report.set(
        "postgres_cpu_us_per_notify",
        (pg_cpu * 1e6 / sent.max(1) as f64 * 100.0).round() / 100.0,
    );
    Ok(report)
}
