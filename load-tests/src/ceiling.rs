//! `notify-ceiling`: PostgreSQL's own NOTIFY throughput, no gateway. `P`
//! connections each run `SELECT pg_notify(channel, payload)` as fast as
//! they can, one transaction per notification (as applications usually
//! notify from triggers), for `seconds`; a LISTEN connection counts what
//! arrives. With `--batch B` each transaction notifies B distinct
//! payloads at once (as the gateway's relay does with writers' messages).
//!
//! With `--send outbox` the connections call `pgws.send(payload)` instead
//! (the durable outbox; each publisher on a channel of its own, so the
//! publishers spread over the outbox's shards), and what arrives is counted
//! by the reading gateway's `pgws_outbox_messages_total` at
//! `--outbox-metrics`. Both modes record the WAL written
//! (`pg_current_wal_lsn()` before and after: the whole cluster's, so other
//! databases' writes in the same seconds count too) and the database's
//! committed transactions (`pg_stat_database.xact_commit`). With
//! `--with-write` each transaction also inserts a row (`crate::send`).

use crate::options::Common;
use crate::scenarios::{count_notifies, db, CpuMark, Report};
use crate::send::Sender;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long arrivals may trail the last commit.
const ARRIVAL_WAIT: Duration = Duration::from_secs(30);

pub async fn ceiling(
    c: &Common,
    publishers: usize,
    batch: usize,
    seconds: u64,
    outbox_metrics: Option<SocketAddr>,
) -> anyhow::Result<Report> {
    let mut report = Report::new("notify_ceiling", c);
    let tag = format!("ceil{}", std::process::id());
    let started = Instant::now();
    let arrivals = Arrivals::start(c, &tag, started, outbox_metrics).await?;
    let stats = db(c).await?;
    let before = DbMark::now(&stats).await?;
    let committed = Arc::new(AtomicU64::new(0));
    let mark = CpuMark::now(c);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..publishers.max(1) {
        let (c, tag, committed) = (c.clone(), tag.clone(), committed.clone());
        tasks.spawn(async move { publisher(&c, &tag, p, batch, deadline, &committed).await });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = mark.at.elapsed().as_secs_f64();
    let wal_after = DbMark::now(&stats).await?.wal;
    let sent = committed.load(Ordering::Relaxed);
    let wait_until = Instant::now() + ARRIVAL_WAIT;
    let mut got = arrivals.count().await;
    while got < sent && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = arrivals.count().await;
    }
    let caught_up_in = mark.at.elapsed().as_secs_f64() - elapsed;
    let (_, pg_cpu, _) = mark.since();
    arrivals.stop();
    // Backends report their commits at most once a second (and at exit).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let commits = DbMark::now(&stats).await?.commits - before.commits;
    let per = |x: f64| (x / sent.max(1) as f64 * 100.0).round() / 100.0;
    report.set("publishers", publishers as u64);
    report.set("per_transaction", batch.max(1) as u64);
    report.set("seconds", seconds);
    report.set("notified", sent);
    report.set("notifies_per_s", (sent as f64 / elapsed).round());
    report.set("received_by_listener", got);
    report.set("caught_up_after_s", (caught_up_in * 100.0).round() / 100.0);
    report.set("postgres_cpu_us_per_notify", per(pg_cpu * 1e6));
    report.set("wal_bytes", wal_after - before.wal);
    report.set("wal_bytes_per_notify", per(wal_after - before.wal));
    report.set("xact_commits_in_database", commits);
    Ok(report)
}

/// One publisher: transactions of `batch` notifications until `deadline`.
async fn publisher(
    c: &Common,
    tag: &str,
    p: usize,
    batch: usize,
    deadline: Instant,
    committed: &AtomicU64,
) -> anyhow::Result<()> {
    let client = db(c).await?;
    let sender = Sender::prepare(c, &client).await?;
    let payload = |n: u64| format!("{{\"channel\":\"{tag}-{p}\",\"payload\":\"{tag} {p} {n}\"}}");
    let mut n = 0u64;
    while Instant::now() < deadline {
        let count = batch.max(1) as u64;
        if count == 1 {
            sender.one(&client, &payload(n)).await?;
        } else {
            let payloads: Vec<String> = (n..n + count).map(payload).collect();
            sender.many(&client, &payloads).await?;
        }
        n += count;
        committed.fetch_add(count, Ordering::Relaxed);
    }
    Ok(())
}

/// The cluster's WAL position and this database's committed transactions.
struct DbMark {
    wal: f64,
    commits: f64,
}

impl DbMark {
    async fn now(client: &tokio_postgres::Client) -> anyhow::Result<DbMark> {
        // Statistics are flushed by each backend at most once a second:
        // ask for a snapshot taken now.
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await?;
        let row = client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8, \
                        xact_commit::float8 \
                   FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await?;
        Ok(DbMark {
            wal: row.get(0),
            commits: row.get(1),
        })
    }
}

/// What counts arrivals: a LISTEN connection (NOTIFY), or the reading
/// gateway's outbox counter (its value now, less its value at the start).
enum Arrivals {
    Listen(Arc<AtomicU64>, tokio::task::JoinHandle<()>),
    Metric(SocketAddr, u64),
}

impl Arrivals {
    async fn start(
        c: &Common,
        tag: &str,
        started: Instant,
        metrics: Option<SocketAddr>,
    ) -> anyhow::Result<Arrivals> {
        if c.outbox() {
            let admin = metrics.ok_or_else(|| {
                anyhow::anyhow!("--send outbox needs --outbox-metrics <gateway admin address>")
            })?;
            return Ok(Arrivals::Metric(admin, outbox_messages(admin).await?));
        }
        let (received, _, listener) = count_notifies(c, tag.to_string(), started).await?;
        Ok(Arrivals::Listen(received, listener))
    }

    async fn count(&self) -> u64 {
        match self {
            Arrivals::Listen(received, _) => received.load(Ordering::Relaxed),
            Arrivals::Metric(admin, base) => outbox_messages(*admin)
                .await
                .map(|now| now.saturating_sub(*base))
                .unwrap_or(0),
        }
    }

    fn stop(self) {
        if let Arrivals::Listen(_, listener) = self {
            listener.abort();
        }
    }
}

/// `pgws_outbox_messages_total` of the gateway whose admin port is `admin`.
pub(crate) async fn outbox_messages(admin: SocketAddr) -> anyhow::Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix("pgws_outbox_messages_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("no pgws_outbox_messages_total at {admin}"))
}
