//! Presence costs (`docs/benchmarks.md`, "Presence").
//!
//! * `presence`: N v2 clients subscribe through real gateways (cluster
//!   mode, `PGWS_PRESENCE=true`) to K channels and leave again. Measures
//!   the gateways' CPU and Redis's commands, CPU and memory per join, per
//!   leave and per `presence` / `presence_stats` query, and checks that no
//!   presence key is left.
//! * `presence-keys`: the Redis side alone, at a scale one machine's
//!   sockets do not reach: N members joined with the gateway's own scripts
//!   (`pgws_protocol::presence`) as G simulated gateways, half of them
//!   leaving, the other half's gateways declared dead and swept — key count
//!   and memory before, at the peak and after.

use crate::client::{self, Ws};
use crate::options::Common;
use crate::scenarios::{token, Report};
use pgws_protocol::keys::KeySpace;
use pgws_protocol::presence::{self, Change, Member};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const CONNECT_CONCURRENCY: usize = 256;

/// What Redis has done so far.
#[derive(Debug, Clone, Copy, Default)]
struct RedisMark {
    calls: u64,
    cpu_us: u64,
    memory: u64,
}

async fn redis_mark(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<RedisMark> {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let calls = stats
        .lines()
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum();
    let info: String = redis::cmd("INFO").arg("all").query_async(conn).await?;
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(RedisMark {
        calls,
        cpu_us: ((field("used_cpu_user") + field("used_cpu_sys")) * 1e6) as u64,
        memory: field("used_memory") as u64,
    })
}

fn gateway_cpu_us(c: &Common) -> u64 {
    c.pids
        .iter()
        .filter_map(|p| crate::proc::cpu_time(&p.to_string()))
        .map(|d| d.as_micros() as u64)
        .sum()
}

/// Keys under `prefix`.
async fn keys_under(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    let mut cursor = 0u64;
    for pattern in [
        format!("*{{{prefix}:msg:*"),
        format!("{{{prefix}}}:presence*"),
    ] {
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(conn)
                .await?;
            n += keys.len() as u64;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(n)
}

async fn members_in_redis(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    channels: &[String],
) -> anyhow::Result<u64> {
    let mut pipe = redis::pipe();
    for ch in channels {
        pipe.cmd("HLEN").arg(keys.presence_clients(ch));
    }
    let lens: Vec<u64> = pipe.query_async(conn).await?;
    Ok(lens.iter().sum())
}

async fn wait_members(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    channels: &[String],
    want: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if members_in_redis(conn, keys, channels).await? == want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "presence never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Per-operation costs between two marks.
fn costs(report: &mut Report, what: &str, ops: u64, cpu: (u64, u64), r: (RedisMark, RedisMark)) {
    let ops = ops.max(1) as f64;
    report.set(
        &format!("{what}_gateway_cpu_us"),
        ((cpu.1 - cpu.0) as f64 / ops * 10.0).round() / 10.0,
    );
    report.set(
        &format!("{what}_redis_calls"),
        ((r.1.calls - r.0.calls) as f64 / ops * 100.0).round() / 100.0,
    );
    report.set(
        &format!("{what}_redis_cpu_us"),
        ((r.1.cpu_us.saturating_sub(r.0.cpu_us)) as f64 / ops * 10.0).round() / 10.0,
    );
}

pub async fn presence(
    c: &Common,
    clients: usize,
    channels: usize,
    queries: usize,
    redis_url: &str,
    prefix: &str,
) -> anyhow::Result<Report> {
    let mut report = Report::new("presence", c);
    report.set("clients", clients as u64);
    report.set("channels", channels as u64);
    let keys = KeySpace::new(prefix);
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let run = std::process::id();
    let names: Vec<String> = (0..channels).map(|i| format!("pres-{run}-{i}")).collect();
    let keys_before = keys_under(&mut conn, prefix).await?;

    // Joins.
    let (cpu0, r0) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let (c2, gate, channel) = (c.clone(), gate.clone(), names[i % channels].clone());
        let t = token(
            &c.secret,
            json!({"mode": "r", "sub": format!("u{i}"), "presence": true}),
        );
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let addr = c2.urls[i % c2.urls.len()];
            let mut ws = client::connect_with(addr, &format!("/{t}"), true).await?;
            client::command(
                &mut ws,
                json!({"type":"subscribe","id":1,"channel":channel}),
            )
            .await?;
            anyhow::Ok(ws)
        });
    }
    let mut sockets: Vec<Ws> = Vec::with_capacity(clients);
    while let Some(joined) = tasks.join_next().await {
        sockets.push(joined??);
    }
    let applied = wait_members(&mut conn, &keys, &names, clients as u64).await?;
    report.set(
        "join_seconds",
        (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    );
    report.set(
        "join_applied_after_last_reply_ms",
        applied.as_millis() as u64,
    );
    let (cpu1, r1) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
    costs(&mut report, "join", clients as u64, (cpu0, cpu1), (r0, r1));
    report.set(
        "redis_bytes_per_member",
        (r1.memory.saturating_sub(r0.memory)) / clients.max(1) as u64,
    );
    report.set(
        "keys_at_peak",
        keys_under(&mut conn, prefix).await? - keys_before,
    );

    // Queries, from one socket, one at a time.
    let asker = &mut sockets[0];
    let mut id = 10u64;
    for (kind, n) in [
        ("presence_stats", queries),
        ("presence", queries.div_ceil(10)),
    ] {
        let (cpu_a, r_a) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
        let t0 = Instant::now();
        for q in 0..n {
            id += 1;
            let channel = &names[q % channels];
            client::command(asker, json!({"type": kind, "id": id, "channel": channel})).await?;
        }
        let per_query_ms = t0.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64;
        let (cpu_b, r_b) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
        // Each mark itself is 2 INFO calls.
        let r_b = RedisMark {
            calls: r_b.calls - 2,
            ..r_b
        };
        costs(&mut report, kind, n as u64, (cpu_a, cpu_b), (r_a, r_b));
        report.set(
            &format!("{kind}_ms"),
            (per_query_ms * 100.0).round() / 100.0,
        );
    }

    // Leaves.
    let (cpu2, r2) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
    drop(sockets);
    let drained = wait_members(&mut conn, &keys, &names, 0).await?;
    report.set("leave_applied_ms", drained.as_millis() as u64);
    let (cpu3, r3) = (gateway_cpu_us(c), redis_mark(&mut conn).await?);
    costs(&mut report, "leave", clients as u64, (cpu2, cpu3), (r2, r3));
    report.set(
        "keys_left",
        keys_under(&mut conn, prefix).await? as i64 - keys_before as i64,
    );
    Ok(report)
}

async fn load_script(
    conn: &mut redis::aio::MultiplexedConnection,
    script: &str,
) -> anyhow::Result<String> {
    Ok(redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query_async(conn)
        .await?)
}

/// Run one presence script for `member`.
fn script_call(
    pipe: &mut redis::Pipeline,
    sha: &str,
    keys: &KeySpace,
    channel: &str,
    member: &Member,
    change: Change,
) {
    pipe.cmd("EVALSHA")
        .arg(sha)
        .arg(3)
        .arg(keys.presence_clients(channel))
        .arg(keys.presence_users(channel))
        .arg(keys.presence_occupied(channel))
        .arg(&member.client)
        .arg(member.stored())
        .arg(&member.user)
        .arg("PUBLISH")
        .arg(keys.channel(channel))
        .arg(member.event(change))
        .arg(match change {
            Change::Join => "0", // occupancy events off
            Change::Leave => "",
        })
        .ignore();
}

pub async fn presence_keys(
    c: &Common,
    clients: usize,
    channels: usize,
    gateways: usize,
    redis_url: &str,
) -> anyhow::Result<Report> {
    let mut report = Report::new("presence-keys", c);
    let prefix = format!("pgws-load-pk-{}", std::process::id());
    let keys = KeySpace::new(&prefix);
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let join_sha = load_script(&mut conn, presence::JOIN_SCRIPT).await?;
    let leave_sha = load_script(&mut conn, presence::LEAVE_SCRIPT).await?;
    let sweep_sha = load_script(&mut conn, presence::SWEEP_SCRIPT).await?;
    let gw: Vec<String> = (0..gateways)
        .map(|g| format!("{:016x}", 0xfeed_0000 + g))
        .collect();
    let member = |i: usize| {
        let sub = json!(format!("user{}", i / 2));
        let info = r#"{"name":"Some Body","avatar":"https://example.com/a/123.png"}"#;
        Member::new(
            format!("{}.{i:x}", gw[i % gateways]),
            Some(&sub),
            Some(info),
        )
    };
    let channel = |i: usize| format!("room-{}", i % channels);
    report.set("clients", clients as u64);
    report.set("channels", channels as u64);
    report.set("gateways", gateways as u64);
    let before = redis_mark(&mut conn).await?;
    report.set("keys_before", keys_under(&mut conn, &prefix).await?);

    // Every simulated gateway listed, alive, with its channel set.
    let mut pipe = redis::pipe();
    for g in &gw {
        pipe.cmd("ZADD")
            .arg(keys.presence_gateways())
            .arg(i64::MAX / 2)
            .arg(g)
            .ignore();
    }
    for i in 0..channels.min(clients) {
        for g in &gw {
            pipe.cmd("SADD")
                .arg(keys.presence_gateway_channels(g))
                .arg(channel(i))
                .ignore();
        }
    }
    pipe.query_async::<()>(&mut conn).await?;
    let t0 = Instant::now();
    for chunk in (0..clients).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            script_call(
                &mut pipe,
                &join_sha,
                &keys,
                &channel(i),
                &member(i),
                Change::Join,
            );
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let join_s = t0.elapsed().as_secs_f64();
    let peak = redis_mark(&mut conn).await?;
    report.set("joins_per_second", (clients as f64 / join_s) as u64);
    report.set("keys_at_peak", keys_under(&mut conn, &prefix).await?);
    report.set(
        "memory_at_peak_mib",
        ((peak.memory.saturating_sub(before.memory)) as f64 / 1048576.0 * 10.0).round() / 10.0,
    );
    report.set(
        "bytes_per_member",
        peak.memory.saturating_sub(before.memory) / clients.max(1) as u64,
    );
    report.set(
        "redis_cpu_us_per_join",
        (peak.cpu_us - before.cpu_us) / clients.max(1) as u64,
    );

    // The first gateway's members leave one by one; the others "die".
    let t1 = Instant::now();
    let leaving: Vec<usize> = (0..clients).filter(|i| i % gateways == 0).collect();
    for chunk in leaving.chunks(1000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            script_call(
                &mut pipe,
                &leave_sha,
                &keys,
                &channel(i),
                &member(i),
                Change::Leave,
            );
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    report.set("leaves", leaving.len() as u64);
    report.set(
        "leaves_per_second",
        (leaving.len() as f64 / t1.elapsed().as_secs_f64()) as u64,
    );
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(keys.presence_gateways())
        .arg(&gw[0])
        .ignore();
    pipe.cmd("DEL")
        .arg(keys.presence_gateway_channels(&gw[0]))
        .ignore();
    pipe.query_async::<()>(&mut conn).await?;
    let t2 = Instant::now();
    let mut swept = 0u64;
    for g in &gw[1..] {
        let set = keys.presence_gateway_channels(g);
        let chans: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut conn)
            .await?;
        for ch in chans {
            let (n, _empty): (u64, u64) = redis::cmd("EVALSHA")
                .arg(&sweep_sha)
                .arg(3)
                .arg(keys.presence_clients(&ch))
                .arg(keys.presence_users(&ch))
                .arg(keys.presence_occupied(&ch))
                .arg(format!("{g}."))
                .arg("PUBLISH")
                .arg(keys.channel(&ch))
                .arg("")
                .query_async(&mut conn)
                .await?;
            swept += n;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&set).ignore();
        pipe.cmd("ZREM")
            .arg(keys.presence_gateways())
            .arg(g)
            .ignore();
        pipe.query_async::<()>(&mut conn).await?;
    }
    report.set("swept", swept);
    report.set(
        "sweep_ms_per_1000",
        ((t2.elapsed().as_secs_f64() * 1e3 / (swept.max(1) as f64 / 1000.0)) * 10.0).round() / 10.0,
    );
    let after = redis_mark(&mut conn).await?;
    report.set("keys_after", keys_under(&mut conn, &prefix).await?);
    report.set(
        "memory_after_kib",
        (after.memory as i64 - before.memory as i64) / 1024,
    );
    Ok(report)
}
