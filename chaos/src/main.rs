//! pgws-chaos: a Jepsen-style campaign against a pgws cluster (issue 20).
//! For each seed: start a private PostgreSQL and Redis, coordinators with
//! standby listening and gateways, each behind fault proxies; run the
//! workload while the nemesis injects the seed's faults; heal everything,
//! check that delivery resumes, and judge the histories. Writes one report
//! per run and exits non-zero if any run found a violation.
//!
//! Modules: [`rng`] the seeded generator, [`topology`] the processes and
//! links, [`nemesis`] the faults, [`workload`] the clients and what they
//! saw, [`check`] the invariants, [`report`] the text.

mod check;
mod nemesis;
mod netns;
mod replication;
mod report;
mod rng;
mod sentinel;
mod topology;
mod workload;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use workload::Clock;

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Faults, a numbered workload and a checker against a pgws cluster")]
struct Args {
    /// Seeds to run, one run each (fixed seeds for CI). Without any, one
    /// run with a random seed.
    #[arg(long = "seed")]
    seeds: Vec<u64>,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Keep running random seeds until this many seconds have passed
    /// (the long campaign).
    #[arg(long)]
    campaign: Option<u64>,
    /// Directory for the reports.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Milliseconds between notifications (over all channels).
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Print each seed's schedule of faults and exit.
    #[arg(long)]
    plan: bool,
    /// How links are cut: `netns` (a network namespace per process,
    /// blackhole routes; needs root), `proxy` (a fault proxy per link), or
    /// `auto` (netns where possible).
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Only these fault kinds (comma-separated: coordinator-redis,
    /// coordinator-pg, all-coordinators-pg, gateway-redis, isolate-leader,
    /// pause-leader, kill-leader, kill-standby, restart-pg, restart-redis;
    /// with --sentinel sentinel-failover, kill-master, pause-master,
    /// sentinel-split; with --clock clock-step, clock-step-monotonic).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// The durable outbox: coordinators with `PGWS_OUTBOX=true`, the
    /// numbered messages sent with `SELECT pgws.send(…)` (autocommitted),
    /// and the checker's outbox rules (no loss, one epoch per channel).
    #[arg(long)]
    outbox: bool,
    /// Redis behind Sentinel: a master, a replica and three sentinels, each
    /// in its own namespace (needs --mode netns); adds the Sentinel faults
    /// (failover, master killed or paused, majority/minority split) in place
    /// of the Redis restart.
    #[arg(long)]
    sentinel: bool,
    /// Run coordinators 1 and 2 under libfaketime and step their clocks
    /// (coordinator 1: the real-time clock; 2: the monotonic one too).
    /// Without libfaketime the clock faults are skipped and the report says
    /// so.
    #[arg(long)]
    clock: bool,
    /// Instead of a campaign: measure what a Redis failover loses of
    /// acknowledged appends (this many `kill -9` rounds) and what `WAIT 1`
    /// costs per append.
    #[arg(long)]
    replication_window: Option<usize>,
}

impl Args {
    /// The fault kinds to draw from (the topology's whole pool when none is
    /// named).
    fn kinds(&self) -> anyhow::Result<Vec<nemesis::Kind>> {
        if self.kinds.is_empty() {
            return Ok(nemesis::Kind::pool(
                self.sentinel,
                self.clock && faketime().is_some(),
            ));
        }
        self.kinds
            .iter()
            .map(|k| {
                nemesis::Kind::by_name(k)
                    .ok_or_else(|| anyhow::anyhow!("--kinds: no fault kind {k:?}"))
            })
            .collect()
    }
}

/// libfaketime's library, where Debian's package puts it.
fn faketime() -> Option<PathBuf> {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketime.so.1")))
        .find(|p| p.exists())
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    rng::Rng::new(nanos ^ u64::from(std::process::id())).next_u64() % 1_000_000
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).context("the report directory")?;
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut runs: u32 = 0;
    let mut seeds = args.seeds.clone();
    if seeds.is_empty() {
        seeds.push(random_seed());
    }
    anyhow::ensure!(
        !(args.outbox && args.sentinel),
        "--outbox and --sentinel are separate variants"
    );
    if let Some(rounds) = args.replication_window {
        let text = replication::measure(rounds, seeds.first().copied().unwrap_or(1)).await?;
        print!("{text}");
        return Ok(());
    }
    if args.plan {
        for seed in seeds {
            let steps = nemesis::schedule(
                &mut rng::Rng::new(seed),
                Duration::from_secs(args.duration),
                &args.kinds()?,
            );
            let kinds: Vec<String> = steps
                .iter()
                .map(|s| {
                    s.kinds
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(" + ")
                })
                .collect();
            println!("seed {seed}: {}", kinds.join(" | "));
        }
        return Ok(());
    }
    let mut queue = seeds.into_iter();
    loop {
        let seed = match (queue.next(), args.campaign) {
            (Some(s), _) => s,
            (None, Some(secs))
                if started.elapsed() + Duration::from_secs(args.duration + 30)
                    < Duration::from_secs(secs) =>
            {
                random_seed()
            }
            _ => break,
        };
        runs += 1;
        // Ctrl-C or SIGTERM ends the run cleanly: dropping it stops every
        // process and deletes every namespace.
        let (ok, text) = tokio::select! {
            r = one_run(seed, runs - 1, &args) => r?,
            _ = interrupted() => anyhow::bail!("interrupted: the run's processes and namespaces were removed"),
        };
        let path = args.out.join(format!("chaos-{seed}.txt"));
        std::fs::write(&path, &text).context("write the report")?;
        eprintln!("{text}\nreport: {}", path.display());
        if !ok {
            failed.push(seed);
        }
    }
    eprintln!(
        "pgws-chaos: {runs} runs in {:.0} s, {} failed {failed:?}",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// One seed's run: its verdict and report.
async fn one_run(seed: u64, run: u32, args: &Args) -> anyhow::Result<(bool, String)> {
    let coordinators = 3;
    let gateways = 2;
    let mode = match args.mode.as_str() {
        "netns" => topology::Mode::Netns,
        "proxy" => topology::Mode::Proxy,
        "auto" if netns::available() => topology::Mode::Netns,
        "auto" => topology::Mode::Proxy,
        other => anyhow::bail!("--mode {other}: netns, proxy or auto"),
    };
    let faketime = if args.clock { faketime() } else { None };
    let options = topology::Options {
        outbox: args.outbox,
        sentinel: args.sentinel,
        faketime: faketime.clone(),
    };
    let mut topo = topology::Topology::start(mode, run, coordinators, gateways, &options).await?;
    let clock = Clock(Instant::now());
    let epoch_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let channels: Vec<String> = (0..args.channels)
        .map(|i| pgws_testkit::unique(&format!("chaos-ch{i}")))
        .collect();
    let (stop_tx, stop) = watch::channel(false);
    let (writers_stop_tx, writers_stop) = watch::channel(false);
    let mut rng = rng::Rng::new(seed);
    let steps = nemesis::schedule(&mut rng, Duration::from_secs(args.duration), &args.kinds()?);

    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    let mut writers = Vec::new();
    for (g, slot) in topo.gateways.iter().enumerate() {
        let base = format!("ws://{}", slot.server.addr);
        for (c, name) in channels.iter().enumerate() {
            v1.push(tokio::spawn(workload::v1_reader(
                base.clone(),
                g,
                (c, name.clone()),
                clock,
                stop.clone(),
            )));
            let reader_seed = seed.wrapping_mul(31).wrapping_add((g * 16 + c) as u64);
            v2.push(tokio::spawn(workload::v2_reader(
                base.clone(),
                g,
                (c, name.clone()),
                reader_seed,
                clock,
                stop.clone(),
            )));
        }
        let wchannel = pgws_testkit::unique("chaos-writes");
        writers.push(tokio::spawn(workload::writer(
            base,
            g,
            wchannel,
            Duration::from_millis(50),
            clock,
            writers_stop.clone(),
        )));
    }
    let recorder = tokio::spawn(workload::recorder(
        topo.direct_conninfo(),
        topo.listen_channel.clone(),
        clock,
        stop.clone(),
    ));
    // Readers subscribe before the first notification.
    for g in &topo.gateways {
        g.server
            .wait_metric("pgws_redis_subscriptions", args.channels as f64)
            .await;
    }
    topo.wait_leader(Duration::from_secs(30))
        .await
        .context("no leader at the start")?;
    let (notifier_stop_tx, notifier_stop) = watch::channel(false);
    let notifier = tokio::spawn(workload::notifier(
        topo.direct_conninfo(),
        topo.listen_channel.clone(),
        channels.clone(),
        Duration::from_millis(args.tick_ms),
        args.outbox,
        clock,
        notifier_stop,
    ));

    let faults = nemesis::run(&mut topo, &steps, &mut rng, clock).await;
    let nemesis_secs = clock.now();
    topo.heal_all().await;
    // The listener's backoff after sessions that kept failing is capped at
    // 32 s (pgws_service::backoff::MAX_DELAY): a leader may take that long
    // to LISTEN again.
    let leader = topo.wait_leader(Duration::from_secs(60)).await;
    // Let the last takeover finish before the tail starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tail_from = clock.now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = notifier_stop_tx.send(true);
    let sent = notifier.await.context("notifier")?;
    let _ = writers_stop_tx.send(true);
    let mut writer_logs = Vec::new();
    for h in writers {
        writer_logs.push(h.await.context("writer")?);
    }
    // Every acknowledged write is in the stream until NOTIFYed: wait (a
    // bounded time) for the leader to drain it, so that the recorder is
    // still listening when the last ones arrive.
    let stream = format!("{{{}}}:writes", topo.prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    while topo.redis_cli(&["XLEN", &stream]) != "0" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Drain: the last notifications reach every reader.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop_tx.send(true);
    let mut v1_logs = Vec::new();
    for h in v1 {
        v1_logs.push(h.await.context("v1 reader")?);
    }
    let mut v2_logs = Vec::new();
    for h in v2 {
        v2_logs.push(h.await.context("v2 reader")?);
    }
    let recorder = recorder.await.context("recorder")?;
    let logs: Vec<String> = (0..coordinators)
        .map(|i| topo.coordinator_logs(i))
        .collect();
    let mut stale = 0.0;
    for g in &topo.gateways {
        stale += g.server.metric("pgws_bus_stale_dropped_total").await;
    }
    let mut verdict = check::check(&check::Observed {
        sent: &sent,
        v1: &v1_logs,
        v2: &v2_logs,
        writers: &writer_logs,
        recorder: &recorder,
        faults: &faults,
        coordinator_logs: &logs,
        tail_from,
        outbox: args.outbox,
    });
    verdict.checked.insert(
        "gateway drops of a deposed leader's messages (pgws_bus_stale_dropped_total)",
        stale as u64,
    );
    if leader.is_none() {
        verdict_no_leader(&mut verdict);
    }
    let info = report::RunInfo {
        seed,
        mode: &match topo.net_description() {
            Some(net) => format!("network namespaces, a cut is a blackhole route (packets dropped silently): {net}"),
            None => "fault proxies (testkit::proxy) on every link, a cut resets connections; processes in the root network namespace".into(),
        },
        topology: format!(
            "private PostgreSQL {} and {} (appendfsync always), {coordinators} coordinators (PGWS_STANDBY_LISTEN=true, ttl {} ms{}), {gateways} gateways, {} channels at one {} per {} ms, a v1 and a v2 reader per channel per gateway, a writer per gateway{}",
            topo.pg.psql("SHOW server_version"),
            if args.sentinel {
                "Redis behind Sentinel (a master, a replica, three sentinels; every pgws process connects with redis+sentinel://)"
            } else {
                "Redis"
            },
            topology::TTL.as_millis(),
            if args.outbox {
                format!(", PGWS_OUTBOX=true, PGWS_HISTORY_SIZE={}", topology::OUTBOX_HISTORY)
            } else {
                String::new()
            },
            args.channels,
            if args.outbox { "pgws.send (autocommitted)" } else { "NOTIFY" },
            args.tick_ms,
            match (args.clock, &faketime) {
                (false, _) => String::new(),
                (true, Some(lib)) => format!("; clocks under libfaketime ({}): coordinator 1 real-time only, coordinator 2 real-time and monotonic", lib.display()),
                (true, None) => "; clock steps SKIPPED: libfaketime not found (apt-get install faketime libfaketime)".into(),
            }
        ),
        nemesis_secs,
        total_secs: clock.now(),
        faults: &faults,
        epoch_unix,
    };
    let text = report::render(&info, &verdict);
    if !verdict.ok() {
        for (i, log) in logs.iter().enumerate() {
            let path = args.out.join(format!("chaos-{seed}-coordinator{i}.log"));
            std::fs::write(&path, log).context("write a coordinator's log")?;
        }
        // Every v2 reader's events and the gateways' logs, for diagnosis.
        let mut events = String::new();
        for log in &v2_logs {
            for e in &log.events {
                events.push_str(&format!("g{} c{} {e:?}\n", log.gateway, log.channel));
            }
        }
        std::fs::write(args.out.join(format!("chaos-{seed}-v2.log")), events)
            .context("write the v2 events")?;
        for (g, slot) in topo.gateways.iter().enumerate() {
            let path = args.out.join(format!("chaos-{seed}-gateway{g}.log"));
            std::fs::write(&path, slot.server.log_text()).context("write a gateway's log")?;
        }
    }
    drop(topo);
    Ok((verdict.ok(), text))
}

fn verdict_no_leader(v: &mut check::Verdict) {
    v.violation_public(
        "no single listening leader 60 s after every fault healed",
        String::new(),
    );
}
