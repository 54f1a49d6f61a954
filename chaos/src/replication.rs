//! What a Redis failover can lose of acknowledged writes, measured
//! (`pgws-chaos --replication-window`): a master and a replica on
//! loopback, writers appending to a stream one entry at a time as fast as
//! the master acknowledges (as gateways append writers' messages), `kill -9`
//! of the master at a random moment, then the replica's stream against
//! what was acknowledged — the writes a promotion of that replica would
//! lose. And the price of acknowledging only after `WAIT 1` (a replica has
//! the entry): the time per append with and without it.

use crate::rng::Rng;
use pgws_testkit::RedisServer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent writers per round.
const WRITERS: usize = 4;

async fn connect(port: u16) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// A master and a replica of it, replicating.
async fn pair() -> anyhow::Result<(RedisServer, RedisServer)> {
    let master = RedisServer::start(&[]).await;
    let port = master.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        anyhow::ensure!(Instant::now() < deadline, "the replica never linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((master, replica))
}

/// One round: acknowledged, and of those, missing on the replica.
async fn round(rng: &mut Rng) -> anyhow::Result<(u64, u64)> {
    let (mut master, replica) = pair().await?;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut conn = connect(master.port).await?;
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let id = format!("{w}-{n}");
                let r: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg("s")
                    .arg("*")
                    .arg("m")
                    .arg(&id)
                    .query_async(&mut conn)
                    .await;
                if r.is_err() {
                    break;
                }
                acked.fetch_add(1, Ordering::AcqRel);
                mine.push(id);
            }
            mine
        }));
    }
    tokio::time::sleep(Duration::from_millis(rng.range(200, 800))).await;
    master.stop();
    stop.store(true, Ordering::Release);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await?);
    }
    let mut conn = connect(replica.port).await?;
    let entries: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg("s")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let on_replica: std::collections::HashSet<String> = entries
        .iter()
        .filter_map(|e| match e {
            redis::Value::Array(parts) => match parts.get(1) {
                Some(redis::Value::Array(fields)) => match fields.get(1) {
                    Some(redis::Value::BulkString(b)) => {
                        Some(String::from_utf8_lossy(b).into_owned())
                    }
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    let lost = acknowledged
        .iter()
        .filter(|id| !on_replica.contains(*id))
        .count() as u64;
    Ok((acknowledged.len() as u64, lost))
}

/// Median time per append, plain and followed by `WAIT 1 1000`.
async fn wait_cost(n: usize) -> anyhow::Result<(Duration, Duration)> {
    let (master, _replica) = pair().await?;
    let mut conn = connect(master.port).await?;
    let mut plain = Vec::with_capacity(n);
    let mut waited = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let _: String = redis::cmd("XADD")
            .arg("c")
            .arg("*")
            .arg("m")
            .arg(i)
            .query_async(&mut conn)
            .await?;
        plain.push(t.elapsed());
        let t = Instant::now();
        let _: String = redis::cmd("XADD")
            .arg("c")
            .arg("*")
            .arg("m")
            .arg(i)
            .query_async(&mut conn)
            .await?;
        let replicas: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        anyhow::ensure!(replicas >= 1, "WAIT timed out");
        waited.push(t.elapsed());
    }
    plain.sort_unstable();
    waited.sort_unstable();
    Ok((plain[n / 2], waited[n / 2]))
}

/// Run `rounds` rounds and the WAIT measurement; the report's text.
pub async fn measure(rounds: usize, seed: u64) -> anyhow::Result<String> {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    let (mut acked, mut lost, mut rounds_losing) = (0u64, 0u64, 0usize);
    let mut worst = 0u64;
    for r in 0..rounds {
        let (a, l) = round(&mut rng).await?;
        out.push_str(&format!(
            "round {r}: {a} acknowledged, {l} missing on the replica\n"
        ));
        acked += a;
        lost += l;
        worst = worst.max(l);
        if l > 0 {
            rounds_losing += 1;
        }
    }
    let (plain, waited) = wait_cost(2000).await?;
    out.push_str(&format!(
        "{rounds} kill -9 of the master under {WRITERS} writers: {acked} appends acknowledged, {lost} missing on the replica ({rounds_losing} rounds lost some, at most {worst} in one)\n\
         median append: {:.0} µs plain, {:.0} µs with WAIT 1 (a replica has it)\n",
        plain.as_secs_f64() * 1e6,
        waited.as_secs_f64() * 1e6
    ));
    Ok(out)
}
