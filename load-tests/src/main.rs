//! `pgws-load`: load scenarios against running pgws gateways, on loopback.
//!
//! Every scenario is bounded in time and count, prints a table, and with
//! `--json` one JSON line per run (for `load-tests/run.sh`, which turns them
//! into `docs/benchmarks.md`). It mints its own HS256 tokens, spreads
//! sockets round-robin over the `--url`s, publishes with `pg_notify`, and
//! embeds a sequence number and a send timestamp in every payload to
//! measure latency, loss and order. Server memory and CPU come from
//! `/proc/<pid>` of the `--pid`s it is given (PostgreSQL's CPU is added
//! from its processes). `--protocol v2` makes reader sockets speak protocol
//! v2; `recover` is v2's own scenario; `sse` measures Server-Sent Events
//! streams beside websockets.

mod broadcast;
mod ceiling;
mod client;
mod floor;
mod options;
mod presence;
mod proc;
mod recover;
mod scenarios;
mod send;
mod soak;
mod sse;

use clap::{Parser, Subcommand};
use options::Common;

/// Load scenarios for postgres-websockets.
#[derive(Parser)]
#[command(name = "pgws-load", version, about)]
pub struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    #[command(flatten)]
    common: Common,
}

/// `spread`'s notifications (also `floor`'s, which receives the same
/// without a gateway): `rate` a second over `channels`, for `seconds`.
#[derive(clap::Args)]
struct SpreadLoad {
    #[arg(long, default_value_t = 1_000)]
    channels: usize,
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// N sockets over K channels, no traffic: server memory per socket, connect rate.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 100)]
        channels: usize,
    },
    /// N websockets, then N Server-Sent Events streams on top: server memory
    /// per idle connection of each, then fan-out CPU to each in turn.
    Sse {
        #[arg(long, default_value_t = 2_000)]
        streams: usize,
        #[arg(long, default_value_t = 20)]
        channels: usize,
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One channel, many readers, NOTIFY at a fixed rate.
    Fanout {
        #[arg(long, default_value_t = 2_000)]
        readers: usize,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Many channels, few readers each, NOTIFY at a fixed rate over all channels.
    Spread {
        #[arg(long, default_value_t = 5_000)]
        readers: usize,
        #[command(flatten)]
        load: SpreadLoad,
    },
    /// The latency floor: `spread`'s publisher and rate, received by a bare
    /// LISTEN connection (no gateway).
    Floor {
        #[command(flatten)]
        load: SpreadLoad,
    },
    /// PostgreSQL's NOTIFY throughput alone: P connections notifying as
    /// fast as they can (one notification, or `batch`, per transaction).
    NotifyCeiling {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// With `--send outbox`: the reading gateway's admin address,
        /// whose `pgws_outbox_messages_total` counts what arrived.
        #[arg(long)]
        outbox_metrics: Option<std::net::SocketAddr>,
    },
    /// One channel read by many sockets across several generator
    /// processes (see `load-tests/sockets-100k.sh`): `--sockets N` reads,
    /// `--sockets 0` publishes once every `--wait-for` file exists.
    Broadcast {
        #[command(flatten)]
        plan: broadcast::Plan,
    },
    /// Many writer sockets sending as fast as they can: NOTIFYs/s reaching a LISTEN.
    Writers {
        #[arg(long, default_value_t = 200)]
        writers: usize,
        /// Messages per second offered in all; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Connect/disconnect with valid and invalid tokens.
    Churn {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Many sockets for a long time under steady reads and writes: memory trend, loss, closes.
    Soak {
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 1_000)]
        channels: usize,
        /// NOTIFYs per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 100)]
        writers: usize,
        /// Client messages per second, all writers together.
        #[arg(long, default_value_t = 100)]
        write_rate: u64,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// RSS sampling period, seconds.
        #[arg(long, default_value_t = 10)]
        sample: u64,
        /// Seconds of warm-up left out of the memory trend.
        #[arg(long, default_value_t = 60)]
        warmup: u64,
    },
    /// Protocol v2: N clients of one channel reconnect at once with `since`
    /// after H messages went by: time to recover, server CPU per replayed
    /// message.
    Recover {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        /// Messages missed (at most the gateways' PGWS_HISTORY_SIZE).
        #[arg(long, default_value_t = 100)]
        history: u64,
    },
    /// Cluster, `PGWS_PRESENCE=true`: N v2 clients join K channels and
    /// leave; gateway CPU and Redis calls, CPU and memory per join, leave
    /// and query.
    Presence {
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// `presence_stats` queries (and a tenth as many `presence`).
        #[arg(long, default_value_t = 200)]
        queries: usize,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// The gateways' PGWS_REDIS_PREFIX.
        #[arg(long, default_value = "pgws")]
        prefix: String,
    },
    /// Redis alone: N presence members joined by G simulated gateways with
    /// the gateway's scripts, a gateway's leaving, the others swept; keys
    /// and memory before, at the peak, after.
    PresenceKeys {
        #[arg(long, default_value_t = 100_000)]
        clients: usize,
        #[arg(long, default_value_t = 1_000)]
        channels: usize,
        #[arg(long, default_value_t = 5)]
        gateways: usize,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
    },
    /// Cluster: kill (or SIGTERM) the leader under steady load.
    Failover {
        /// The leader coordinator's pid.
        #[arg(long)]
        leader: u32,
        /// KILL or TERM.
        #[arg(long, default_value = "KILL")]
        signal: String,
        #[arg(long, default_value_t = 100)]
        readers: usize,
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 12)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let nofile = proc::raise_nofile();
    let c = cli.common;
    if let Some(source) = c.bind {
        client::bind_to(source);
    }
    if let Some(ca) = &c.tls_ca {
        client::use_tls(ca)?;
    }
    let report = match cli.scenario {
        Scenario::Idle { sockets, channels } => {
            scenarios::idle(&c, sockets, channels, nofile).await?
        }
        Scenario::Fanout {
            readers,
            rate,
            seconds,
            size,
        } => scenarios::fanout(&c, readers, rate, seconds, size).await?,
        Scenario::Spread { readers, load } => {
            scenarios::spread(&c, readers, load.channels, load.rate, load.seconds).await?
        }
        Scenario::Floor { load } => {
            floor::floor(&c, load.channels, load.rate, load.seconds).await?
        }
        Scenario::Broadcast { plan } => broadcast::broadcast(&c, plan).await?,
        Scenario::NotifyCeiling {
            publishers,
            batch,
            seconds,
            outbox_metrics,
        } => ceiling::ceiling(&c, publishers, batch, seconds, outbox_metrics).await?,
        Scenario::Writers {
            writers,
            rate,
            seconds,
        } => scenarios::writers(&c, writers, rate, seconds).await?,
        Scenario::Churn {
            concurrency,
            seconds,
        } => scenarios::churn(&c, concurrency, seconds).await?,
        Scenario::Soak {
            sockets,
            channels,
            rate,
            writers,
            write_rate,
            seconds,
            sample,
            warmup,
        } => {
            soak::soak(
                &c,
                soak::Soak {
                    sockets,
                    channels,
                    rate,
                    writers,
                    write_rate,
                    seconds,
                    sample,
                    warmup,
                },
            )
            .await?
        }
        Scenario::Sse {
            streams,
            channels,
            rate,
            seconds,
        } => sse::sse(&c, streams, channels, rate, seconds).await?,
        Scenario::Recover { clients, history } => recover::recover(&c, clients, history).await?,
        Scenario::Presence {
            clients,
            channels,
            queries,
            redis,
            prefix,
        } => presence::presence(&c, clients, channels, queries, &redis, &prefix).await?,
        Scenario::PresenceKeys {
            clients,
            channels,
            gateways,
            redis,
        } => presence::presence_keys(&c, clients, channels, gateways, &redis).await?,
        Scenario::Failover {
            leader,
            signal,
            readers,
            rate,
            seconds,
        } => scenarios::failover(&c, leader, &signal, readers, rate, seconds).await?,
    };
    report.print(c.json);
    Ok(())
}
