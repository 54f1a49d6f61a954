//! The scenarios. Each returns a [`Report`]: named numbers, printed as a
//! table or one JSON line.

use crate::client::{self, now_ns, ReaderStats, Ws};
use crate::options::Common;
use crate::proc;
use crate::send::Sender;
use fastwebsockets::{Frame, OpCode, Payload};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Sockets connecting at once.
const CONNECT_CONCURRENCY: usize = 256;

/// A scenario's results.
pub struct Report {
    scenario: &'static str,
    fields: Map<String, Value>,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, c: &Common) -> Report {
        let mut fields = Map::new();
        fields.insert("label".into(), json!(c.label));
        fields.insert("send".into(), json!(c.send));
        Report { scenario, fields }
    }

    pub(crate) fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.into(), value.into());
    }

    /// Print as a table, or one JSON line.
    pub fn print(&self, as_json: bool) {
        if as_json {
            let mut all = self.fields.clone();
            all.insert("scenario".into(), json!(self.scenario));
            println!("{}", Value::Object(all));
            return;
        }
        println!("scenario: {}", self.scenario);
        for (k, v) in &self.fields {
            println!("  {k:<28} {v}");
        }
    }
}

pub(crate) fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

fn progress(what: &str, done: usize, total: usize) {
    if std::io::stderr().is_terminal() && (done % 100 == 0 || done == total) {
        eprint!("\r{what}: {done}/{total}   ");
        if done == total {
            eprintln!();
        }
    }
}

/// Open `n` sockets; socket i reads `channel_of(i)` through `urls[i % len]`
/// — named in the URL (v1), or subscribed to before it counts as open (v2).
pub(crate) async fn open_sockets(
    c: &Common,
    n: usize,
    mode: &str,
    channel_of: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Ws>> {
    let t = token(&c.secret, json!({"mode": mode}));
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    let v2 = c.v2();
    for i in 0..n {
        let addr = c.urls[i % c.urls.len()];
        let channel = channel_of(i);
        let path = if v2 {
            format!("/{t}")
        } else {
            format!("/{channel}/{t}")
        };
        let limit = limit.clone();
        let subscribe = v2 && mode.contains('r');
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let opened = async {
                let mut ws = client::connect_with(addr, &path, v2).await?;
                if subscribe {
                    let command = json!({"type": "subscribe", "id": 1, "channel": channel});
                    client::command(&mut ws, command).await?;
                }
                anyhow::Ok(ws)
            };
            (i, opened.await)
        });
    }
    let mut sockets: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, ws) = joined?;
        sockets[i] = Some(ws?);
        done += 1;
        progress("connecting", done, n);
    }
    Ok(sockets.into_iter().flatten().collect())
}

pub(crate) async fn db(c: &Common) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&c.db, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub(crate) struct CpuMark {
    pub(crate) at: Instant,
    server: Duration,
    postgres: Duration,
    client: Duration,
    pg_pids: Vec<String>,
    server_pids: Vec<String>,
    per_server: Vec<Duration>,
}

impl CpuMark {
    pub(crate) fn now(c: &Common) -> CpuMark {
        let pg_pids = proc::postgres_pids();
        let server_pids: Vec<String> = c.pids.iter().map(u32::to_string).collect();
        CpuMark {
            at: Instant::now(),
            server: proc::total_cpu(&server_pids),
            postgres: proc::total_cpu(&pg_pids),
            client: proc::cpu_time("self").unwrap_or_default(),
            per_server: server_pids
                .iter()
                .map(|p| proc::cpu_time(p).unwrap_or_default())
                .collect(),
            pg_pids,
            server_pids,
        }
    }

    /// CPU seconds each `--pid` used since the mark, by pid.
    pub(crate) fn per_server_since(&self) -> Map<String, Value> {
        self.server_pids
            .iter()
            .zip(&self.per_server)
            .map(|(pid, then)| {
                let now = proc::cpu_time(pid).unwrap_or_default();
                (pid.clone(), json!(now.saturating_sub(*then).as_secs_f64()))
            })
            .collect()
    }

    /// CPU seconds used since the mark: (server, postgres, client).
    pub(crate) fn since(&self) -> (f64, f64, f64) {
        let pg_now = proc::total_cpu(&self.pg_pids);
        (
            (proc::total_cpu(&self.server_pids).saturating_sub(self.server)).as_secs_f64(),
            pg_now.saturating_sub(self.postgres).as_secs_f64(),
            proc::cpu_time("self")
                .unwrap_or_default()
                .saturating_sub(self.client)
                .as_secs_f64(),
        )
    }
}

pub(crate) fn latency_fields(report: &mut Report, h: &Histogram<u64>) {
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        report.set(
            &format!("latency_{name}_ms"),
            h.value_at_quantile(q) as f64 / 1000.0,
        );
    }
    report.set("latency_max_ms", h.max() as f64 / 1000.0);
}

/// Notify `channel_of(seq)` `rate` times a second for `seconds`, with
/// payloads of about `size` bytes carrying the sequence and send time;
/// one autocommitted transaction each, `pg_notify` or (`--send outbox`)
/// `pgws.send`.
pub(crate) async fn publish(
    c: &Common,
    rate: u64,
    seconds: u64,
    size: usize,
    channel_of: impl Fn(u64) -> String,
) -> anyhow::Result<u64> {
    Ok(publish_timed(c, rate, seconds, size, channel_of).await?.0)
}

/// As [`publish`], also returning how long each autocommitted statement
/// took the publisher (microseconds): the transaction's own cost, commit
/// and WAL flush included.
pub(crate) async fn publish_timed(
    c: &Common,
    rate: u64,
    seconds: u64,
    size: usize,
    channel_of: impl Fn(u64) -> String,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut took = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let client = db(c).await?;
    let sender = Sender::prepare(c, &client).await?;
    let total = rate * seconds;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 1..=total {
        tick.tick().await;
        let channel = channel_of(seq);
        let mut payload =
            json!({"channel": channel, "payload": format!("{seq} {}", now_ns())}).to_string();
        if payload.len() < size {
            payload.insert_str(
                payload.len() - 1,
                &format!(
                    ",\"pad\":\"{}\"",
                    "x".repeat(size.saturating_sub(payload.len() + 9))
                ),
            );
        }
        let at = Instant::now();
        sender.one(&client, &payload).await?;
        let _ = took.record(at.elapsed().as_micros() as u64);
        progress("notifying", seq as usize, total as usize);
    }
    Ok((total, took))
}

pub(crate) struct Readers {
    stop: watch::Sender<bool>,
    tasks: JoinSet<ReaderStats>,
    total: Arc<AtomicU64>,
}

pub(crate) fn start_readers(sockets: Vec<Ws>) -> Readers {
    let (stop, stop_rx) = watch::channel(false);
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for ws in sockets {
        tasks.spawn(client::read_until(ws, stop_rx.clone(), total.clone()));
    }
    Readers { stop, tasks, total }
}

impl Readers {
    /// Wait until `expected` messages arrived, or nothing arrived for 3 s
    /// (bounded by 60 s): late messages are not lost ones.
    pub(crate) async fn drain(&self, expected: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = self.total.load(Ordering::Relaxed);
        let mut last_change = Instant::now();
        while Instant::now() < deadline {
            let now = self.total.load(Ordering::Relaxed);
            if now >= expected || last_change.elapsed() > Duration::from_secs(3) {
                return;
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn finish(self) -> (u64, u64, Histogram<u64>) {
        let (received, reordered, latency, _) = self.finish_counting_closes().await;
        (received, reordered, latency)
    }

    /// As `finish`, also counting sockets the server ended before the stop.
    pub(crate) async fn finish_counting_closes(mut self) -> (u64, u64, Histogram<u64>, u64) {
        let _ = self.stop.send(true);
        let mut received = 0;
        let mut reordered = 0;
        let mut ended = 0;
        let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        while let Some(Ok(stats)) = self.tasks.join_next().await {
            received += stats.received;
            reordered += stats.reordered;
            ended += u64::from(stats.ended_by_server);
            let _ = latency.add(&stats.latency_us);
        }
        (received, reordered, latency, ended)
    }
}

/// Server RSS of the `--pid`s, summed.
pub(crate) fn server_rss(c: &Common) -> u64 {
    c.pids.iter().filter_map(|p| proc::rss_bytes(*p)).sum()
}

pub async fn idle(
    c: &Common,
    sockets: usize,
    channels: usize,
    nofile: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::new("idle", c);
    let rss_before = server_rss(c);
    let started = Instant::now();
    let open = open_sockets(c, sockets, "r", |i| format!("idle-{}", i % channels.max(1))).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let the server settle its allocations (bounded, then measure).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server_rss(c);
    report.set("sockets", open.len() as u64);
    report.set("channels", channels as u64);
    report.set("connect_per_s", (open.len() as f64 / connect_secs).round());
    report.set("server_rss_before_mib", rss_before as f64 / 1048576.0);
    report.set("server_rss_after_mib", rss_after as f64 / 1048576.0);
    report.set(
        "server_rss_per_socket_kib",
        (rss_after.saturating_sub(rss_before)) as f64 / open.len().max(1) as f64 / 1024.0,
    );
    report.set("client_nofile_limit", nofile);
    drop(open);
    Ok(report)
}

async fn notify_scenario(
    c: &Common,
    name: &'static str,
    readers: usize,
    channels: usize,
    rate: u64,
    seconds: u64,
    size: usize,
) -> anyhow::Result<Report> {
    let mut report = Report::new(name, c);
    let tag = format!("{name}-{}", std::process::id());
    let sockets = open_sockets(c, readers, "r", |i| format!("{tag}-{}", i % channels)).await?;
    // Subscriptions (cluster mode) are made right after each upgrade;
    // give them a bounded moment before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readers_per_channel = readers / channels;
    let group = start_readers(sockets);
    let mark = CpuMark::now(c);
    let (sent, took) = publish_timed(c, rate, seconds, size, |seq| {
        format!("{tag}-{}", seq as usize % channels)
    })
    .await?;
    let expected = sent * readers_per_channel as u64;
    let published_in = mark.at.elapsed().as_secs_f64();
    group.drain(expected).await;
    let (server_cpu, pg_cpu, client_cpu) = mark.since();
    let by_pid = mark.per_server_since();
    let elapsed = mark.at.elapsed().as_secs_f64();
    let (received, reordered, latency) = group.finish().await;
    report.set("readers", readers as u64);
    report.set("channels", channels as u64);
    report.set("notify_per_s", rate);
    report.set("seconds", seconds);
    report.set("payload_bytes", size as u64);
    report.set("expected_deliveries", expected);
    report.set("delivered", received);
    report.set("lost", expected.saturating_sub(received));
    report.set("reordered", reordered);
    report.set("deliveries_per_s", (received as f64 / elapsed).round());
    report.set("publish_seconds", (published_in * 10.0).round() / 10.0);
    report.set(
        "drain_seconds",
        ((elapsed - published_in) * 10.0).round() / 10.0,
    );
    latency_fields(&mut report, &latency);
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        report.set(
            &format!("send_statement_{name}_ms"),
            took.value_at_quantile(q) as f64 / 1000.0,
        );
    }
    let per = |cpu: f64| (cpu * 1e6 / received.max(1) as f64 * 100.0).round() / 100.0;
    report.set("server_cpu_us_per_delivery", per(server_cpu));
    report.set("postgres_cpu_us_per_delivery", per(pg_cpu));
    report.set(
        "server_plus_pg_cpu_us_per_delivery",
        per(server_cpu + pg_cpu),
    );
    report.set("client_cpu_us_per_delivery", per(client_cpu));
    let by_pid: Map<String, Value> = by_pid
        .into_iter()
        .map(|(pid, cpu)| (pid, json!(per(cpu.as_f64().unwrap_or(0.0)))))
        .collect();
    report.set("server_cpu_us_per_delivery_by_pid", Value::Object(by_pid));
    Ok(report)
}

pub async fn fanout(
    c: &Common,
    readers: usize,
    rate: u64,
    seconds: u64,
    size: usize,
) -> anyhow::Result<Report> {
    notify_scenario(c, "fanout", readers, 1, rate, seconds, size).await
}

pub async fn spread(
    c: &Common,
    readers: usize,
    channels: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Report> {
    notify_scenario(c, "spread", readers, channels.max(1), rate, seconds, 64).await
}

/// Count notifications on the listen channel whose payload contains `tag`.
/// Count the notifications carrying `tag` on the listen channel, and when
/// the first and the last one came (microseconds after `since`).
pub(crate) async fn count_notifies(
    c: &Common,
    tag: String,
    since: Instant,
) -> anyhow::Result<(
    Arc<AtomicU64>,
    (Arc<AtomicU64>, Arc<AtomicU64>),
    tokio::task::JoinHandle<()>,
)> {
    let (client, mut connection) = tokio_postgres::connect(&c.db, tokio_postgres::NoTls).await?;
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let first_at = Arc::new(AtomicU64::new(0));
    let last_at = Arc::new(AtomicU64::new(0));
    let (first, last) = (first_at.clone(), last_at.clone());
    let sql = format!("LISTEN \"{}\"", c.listen_channel.replace('"', "\"\""));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let listen = client.batch_execute(&sql);
        tokio::pin!(listen);
        let mut ready = Some(ready_tx);
        loop {
            tokio::select! {
                r = &mut listen, if ready.is_some() => {
                    if r.is_ok() {
                        if let Some(tx) = ready.take() { let _ = tx.send(()); }
                    } else { return; }
                }
                m = next_message(&mut connection) => match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if n.payload().contains(&tag) {
                            let at = since.elapsed().as_micros() as u64;
                            if counter.fetch_add(1, Ordering::Relaxed) == 0 {
                                first.store(at, Ordering::Relaxed);
                            }
                            last.store(at, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
            }
        }
    });
    let _ = ready_rx.await;
    Ok((count, (first_at, last_at), task))
}

/// The next message of a PostgreSQL connection (notifications included).
async fn next_message<S, T>(
    connection: &mut tokio_postgres::Connection<S, T>,
) -> Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    std::future::poll_fn(|cx| connection.poll_message(cx)).await
}

/// Writers send for `seconds`, as fast as they can (`rate` 0) or at `rate`
/// messages per second in all. Counts what reaches a LISTENing connection;
/// the rate is taken over the time the NOTIFYs took to arrive.
pub async fn writers(
    c: &Common,
    writers: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::new("writers", c);
    let tag = format!("w{}", std::process::id());
    let started = Instant::now();
    let (count, (first_at, last_at), listener) = count_notifies(c, tag.clone(), started).await?;
    let sockets = open_sockets(c, writers, "w", |i| format!("{tag}-{i}")).await?;
    let mark = CpuMark::now(c);
    let writing_from = Instant::now();
    let deadline = writing_from + Duration::from_secs(seconds);
    let per_writer = rate as f64 / writers.max(1) as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (sent, refused, tag) = (sent.clone(), refused.clone(), tag.clone());
        tasks.spawn(async move {
            let mut seq = 0u64;
            let mut write_failed = false;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if rate > 0 {
                    let due = (now - writing_from).as_secs_f64() * per_writer;
                    if seq as f64 >= due {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                }
                seq += 1;
                let text = format!("{tag} {i} {seq}");
                if ws
                    .write_frame(Frame::text(Payload::Borrowed(text.as_bytes())))
                    .await
                    .is_err()
                {
                    write_failed = true;
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // A socket the gateway closed (1013: stream full) may still have
            // taken our writes into its buffers: look for the close frame,
            // or for the reset that follows it.
            let closed = tokio::time::timeout(Duration::from_millis(200), ws.read_frame()).await;
            if write_failed || matches!(closed, Ok(Ok(ref f)) if f.opcode == OpCode::Close) {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
            ws
        });
    }
    let mut open = Vec::new();
    while let Some(Ok(ws)) = tasks.join_next().await {
        open.push(ws);
    }
    let sent = sent.load(Ordering::Relaxed);
    // Wait (bounded) for the NOTIFYs to drain, or for them to stop coming:
    // frames a refused socket still wrote will never arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = (count.load(Ordering::Relaxed), Instant::now());
    while count.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count.load(Ordering::Relaxed);
        if now != seen.0 {
            seen = (now, Instant::now());
        } else if seen.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let (server_cpu, pg_cpu, _) = mark.since();
    let received = count.load(Ordering::Relaxed);
    let last = Duration::from_micros(last_at.load(Ordering::Relaxed));
    let first = Duration::from_micros(first_at.load(Ordering::Relaxed));
    let arrived_over = last.saturating_sub(first).as_secs_f64().max(1e-3);
    listener.abort();
    drop(open);
    report.set("writers", writers as u64);
    report.set("offered_per_s", rate);
    report.set("seconds", seconds);
    report.set("sent", sent);
    report.set("refused_sockets", refused.load(Ordering::Relaxed));
    report.set("notifies_received", received);
    report.set("lost", sent.saturating_sub(received));
    report.set("notifies_per_s", (received as f64 / arrived_over).round());
    report.set("server_cpu_s", (server_cpu * 100.0).round() / 100.0);
    report.set("postgres_cpu_s", (pg_cpu * 100.0).round() / 100.0);
    Ok(report)
}

pub async fn churn(c: &Common, concurrency: usize, seconds: u64) -> anyhow::Result<Report> {
    let mut report = Report::new("churn", c);
    let valid = token(&c.secret, json!({"mode": "r"}));
    let invalid = token("not-the-secret", json!({"mode": "r"}));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let mark = CpuMark::now(c);
    for w in 0..concurrency {
        let addr = c.urls[w % c.urls.len()];
        let (valid, invalid) = (valid.clone(), invalid.clone());
        let (accepted, refused, failed) = (accepted.clone(), refused.clone(), failed.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let good = n % 2 == 0;
                let path = format!("/churn/{}", if good { &valid } else { &invalid });
                match client::connect(addr, &path).await {
                    Ok(mut ws) => {
                        let _ = ws.write_frame(Frame::close(1000, b"")).await;
                        if good {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed); // an invalid token got in
                        }
                    }
                    Err(_) if !good => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = mark.at.elapsed().as_secs_f64();
    let (server_cpu, _, _) = mark.since();
    let (a, r, f) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    report.set("concurrency", concurrency as u64);
    report.set("accepted_per_s", (a as f64 / elapsed).round());
    report.set("refused_per_s", (r as f64 / elapsed).round());
    report.set("unexpected", f);
    report.set(
        "server_cpu_us_per_attempt",
        (server_cpu * 1e6 / (a + r).max(1) as f64).round(),
    );
    Ok(report)
}

pub async fn failover(
    c: &Common,
    leader: u32,
    signal: &str,
    readers: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Report> {
    let mut report = Report::new("failover", c);
    let channel = format!("failover-{}", std::process::id());
    let sockets = open_sockets(c, readers, "r", |_| channel.clone()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reader 0 records when each sequence number arrived.
    let mut sockets = sockets.into_iter();
    let first = sockets.next().ok_or_else(|| anyhow::anyhow!("no reader"))?;
    let group = start_readers(sockets.collect());
    let (stop, mut stop_rx) = watch::channel(false);
    let arrivals = tokio::spawn(async move {
        let mut ws = first;
        let mut seen: Vec<(u64, Instant)> = Vec::new();
        loop {
            let frame = tokio::select! { _ = stop_rx.changed() => break, f = ws.read_frame() => f };
            let Ok(frame) = frame else { break };
            if frame.opcode == OpCode::Text {
                let text = String::from_utf8_lossy(&frame.payload).to_string();
                if let Some(seq) = text
                    .rsplit("\"payload\":\"")
                    .next()
                    .and_then(|t| t.split(' ').next())
                    .and_then(|s| s.parse().ok())
                {
                    seen.push((seq, Instant::now()));
                }
            }
        }
        seen
    });
    let kill_after = Duration::from_secs(seconds / 2);
    let signal_arg = format!("-{signal}");
    let killer = tokio::spawn(async move {
        tokio::time::sleep(kill_after).await;
        let at = Instant::now();
        let _ = std::process::Command::new("kill")
            .args([signal_arg, leader.to_string()])
            .status();
        at
    });
    let sent = publish(c, rate, seconds, 64, |_| channel.clone()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    let killed_at = killer.await?;
    let seen = arrivals.await?;
    let (_, _, _) = group.finish().await;
    let received: std::collections::BTreeSet<u64> = seen.iter().map(|(s, _)| *s).collect();
    let lost = sent - received.len() as u64;
    let duplicates = seen.len() as u64 - received.len() as u64;
    let reordered = seen.windows(2).filter(|w| w[1].0 < w[0].0).count() as u64;
    let gap = seen
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default();
    let first_after = seen
        .iter()
        .find(|(_, at)| *at > killed_at)
        .map(|(_, at)| at.duration_since(killed_at));
    report.set("signal", signal);
    report.set("readers", readers as u64);
    report.set("notify_per_s", rate);
    report.set("sent", sent);
    report.set("lost_at_reader", lost);
    report.set("duplicates", duplicates);
    report.set("reordered", reordered);
    report.set("longest_gap_ms", gap.as_millis() as u64);
    report.set(
        "first_delivery_after_kill_ms",
        first_after.map(|d| d.as_millis() as u64).unwrap_or(0),
    );
    Ok(report)
}
