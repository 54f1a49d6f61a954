//! The system under test for one run: a private PostgreSQL and a private
//! Redis (both restartable), coordinators with `PGWS_STANDBY_LISTEN=true`
//! and gateways, and a way to cut each link a pgws process opens
//! (coordinator → Redis, coordinator → PostgreSQL, gateway → Redis): in
//! [`Mode::Netns`] every pgws process runs in its own network namespace
//! and a cut is a blackhole route ([`crate::netns`]); in [`Mode::Proxy`]
//! every link goes through its own fault proxy and a cut resets it. Owns
//! starting, killing, pausing and restarting processes; every process is
//! stopped by pid and every namespace deleted when the topology is dropped
//! (also on a panic or an interrupted run).

use crate::netns::{Host, Net};
use crate::sentinel::Sentinel;
use pgws_testkit::names::unique;
use pgws_testkit::pg_server::{PgServer, ServerTls};
use pgws_testkit::proxy::Proxy;
use pgws_testkit::{http_get, metric_value, RedisServer, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The coordinators' lock ttl.
pub const TTL: Duration = Duration::from_millis(2000);

/// How links are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A network namespace per pgws process; cuts are blackhole routes.
    Netns,
    /// A fault proxy per link; cuts reset connections.
    Proxy,
}

/// A link a pgws process opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Coordinator `i` → Redis.
    CoordinatorRedis(usize),
    /// Coordinator `i` → PostgreSQL.
    CoordinatorPg(usize),
    /// Gateway `g` → Redis.
    GatewayRedis(usize),
}

/// One coordinator's place: its links (kept across restarts) and process.
pub struct CoordinatorSlot {
    /// Its proxy to Redis (proxy mode).
    pub redis: Option<Proxy>,
    /// Its proxy to PostgreSQL (proxy mode).
    pub pg: Option<Proxy>,
    /// Its namespace (namespace mode).
    pub host: Option<Host>,
    /// The running process (`None` while killed).
    pub server: Option<Server>,
    /// Whether it is stopped by SIGSTOP.
    pub paused: bool,
    /// Logs of its earlier (killed) processes.
    pub old_logs: Vec<String>,
}

/// One gateway and its link to Redis.
pub struct GatewaySlot {
    /// Its proxy to Redis (proxy mode).
    pub redis: Option<Proxy>,
    /// Its namespace (namespace mode).
    pub host: Option<Host>,
    /// The process.
    pub server: Server,
}

/// History per channel with `--outbox`: the outbox promises connected
/// readers everything "as long as history holds the outage's backlog"
/// (docs/architecture.md), and an outage of the nemesis (at most 5 s held,
/// then the time to reconnect) at 100 sends/s is far below it.
pub const OUTBOX_HISTORY: usize = 10_000;

/// Everything one run starts.
pub struct Topology {
    /// Redis key prefix of this run.
    pub prefix: String,
    /// The listen channel of this run.
    pub listen_channel: String,
    /// The private PostgreSQL.
    pub pg: PgServer,
    /// The private Redis (append-only file, fsync always: a restart keeps
    /// every acknowledged write); `None` behind Sentinel.
    pub redis: Option<RedisServer>,
    /// `--sentinel`: a master, a replica and three sentinels, each in its
    /// own namespace; every pgws process reaches Redis through them.
    pub sentinel: Option<Sentinel>,
    /// `--clock`: coordinators whose clock the nemesis steps (libfaketime),
    /// each with its timestamp file and whether its monotonic clock is
    /// faked too.
    pub clocks: Vec<FakeClock>,
    /// Hosts cut from each other by a Sentinel split (healed by
    /// [`Topology::split`] with `cut = false`).
    split: Vec<(usize, usize)>,
    /// Coordinators.
    pub coordinators: Vec<CoordinatorSlot>,
    /// Gateways.
    pub gateways: Vec<GatewaySlot>,
    /// `--outbox`: coordinators read the durable outbox (`PGWS_OUTBOX=true`)
    /// and every process keeps [`OUTBOX_HISTORY`] messages per channel.
    pub outbox: bool,
    /// The namespaces (namespace mode), deleted after every process stopped.
    net: Option<Net>,
    /// libfaketime's library (`--clock`).
    faketime: Option<PathBuf>,
    _tls: ServerTls,
    /// Dropped last: removes the run's directory once every server stopped.
    _dir: DirGuard,
}

/// A coordinator run under libfaketime.
#[derive(Debug, Clone)]
pub struct FakeClock {
    /// The coordinator.
    pub coordinator: usize,
    /// Its `FAKETIME_TIMESTAMP_FILE` (an offset such as `+30` or `-90`).
    pub file: PathBuf,
    /// Whether `CLOCK_MONOTONIC` steps too (a broken VM); otherwise only
    /// the real-time clock does (`FAKETIME_DONT_FAKE_MONOTONIC=1`).
    pub monotonic: bool,
}

/// What to run besides the plain cluster.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The durable outbox.
    pub outbox: bool,
    /// Redis behind Sentinel (namespace mode only).
    pub sentinel: bool,
    /// libfaketime's library: coordinators 1 (real-time clock) and 2 (both
    /// clocks) run under it.
    pub faketime: Option<PathBuf>,
}

/// The data nodes behind Sentinel: a master and one replica.
pub const SENTINEL_DATA: usize = 2;
/// Sentinels.
pub const SENTINELS: usize = 3;

/// Removes a directory when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Topology {
    /// Start PostgreSQL, Redis, `coordinators` coordinators and `gateways`
    /// gateways, with links cut as `mode` says; `run` numbers this
    /// process's runs (for namespace names).
    pub async fn start(
        mode: Mode,
        run: u32,
        coordinators: usize,
        gateways: usize,
        options: &Options,
    ) -> anyhow::Result<Topology> {
        let outbox = options.outbox;
        let dir = std::env::temp_dir().join(unique("pgws-chaos"));
        std::fs::create_dir_all(&dir)?;
        let guard = DirGuard(dir.clone());
        anyhow::ensure!(
            !options.sentinel || mode == Mode::Netns,
            "--sentinel needs network namespaces (root, --mode netns)"
        );
        let redis_hosts = if options.sentinel {
            SENTINEL_DATA + SENTINELS
        } else {
            0
        };
        let net = match mode {
            Mode::Netns => Some(Net::create(run, coordinators + gateways + redis_hosts)?),
            Mode::Proxy => None,
        };
        let tls = ServerTls::new(&dir, &["localhost", "127.0.0.1"]);
        let also: Vec<std::net::IpAddr> = net.iter().map(|n| n.pg.into()).collect();
        let pg = PgServer::start_on(&tls, &dir.join("pg"), &also).await;
        let mut redis_args = vec![
            "--appendonly".to_string(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
        ];
        if let Some(n) = &net {
            redis_args.extend([
                "--bind".into(),
                "127.0.0.1".into(),
                n.redis.to_string(),
                "--protected-mode".into(),
                "no".into(),
            ]);
        }
        let redis_args: Vec<&str> = redis_args.iter().map(String::as_str).collect();
        let (redis, sentinel) = match (&net, options.sentinel) {
            (Some(n), true) => {
                let first = coordinators + gateways;
                let data: Vec<Host> = (first..first + SENTINEL_DATA)
                    .map(|i| n.host(i).clone())
                    .collect();
                let sentinels: Vec<Host> = (first + SENTINEL_DATA..first + redis_hosts)
                    .map(|i| n.host(i).clone())
                    .collect();
                (None, Some(Sentinel::start(&dir, &data, &sentinels).await?))
            }
            _ => (Some(RedisServer::start(&redis_args).await), None),
        };
        let mut clocks = Vec::new();
        if let Some(_lib) = &options.faketime {
            for (coordinator, monotonic) in [(1, false), (2, true)] {
                let file = dir.join(format!("faketime-coordinator{coordinator}"));
                std::fs::write(&file, "+0\n")?;
                clocks.push(FakeClock {
                    coordinator,
                    file,
                    monotonic,
                });
            }
        }
        let mut topo = Topology {
            prefix: unique("chaos"),
            listen_channel: unique("chaos-listen"),
            pg,
            redis,
            sentinel,
            clocks,
            split: Vec::new(),
            faketime: options.faketime.clone(),
            coordinators: Vec::new(),
            gateways: Vec::new(),
            outbox,
            net,
            _tls: tls,
            _dir: guard,
        };
        for i in 0..coordinators {
            let (redis, pg, host) = match &topo.net {
                Some(n) => (None, None, Some(n.host(i).clone())),
                None => (
                    Some(Proxy::start(loopback(topo.redis_port())).await?),
                    Some(Proxy::start(loopback(topo.pg.port)).await?),
                    None,
                ),
            };
            topo.coordinators.push(CoordinatorSlot {
                redis,
                pg,
                host,
                server: None,
                paused: false,
                old_logs: Vec::new(),
            });
            topo.start_coordinator(i).await;
        }
        for g in 0..gateways {
            let (proxy, host) = match &topo.net {
                Some(n) => (None, Some(n.host(coordinators + g).clone())),
                None => (Some(Proxy::start(loopback(topo.redis_port())).await?), None),
            };
            let redis_url = match &proxy {
                Some(p) => format!("redis://{}", p.addr()),
                None => topo.redis_url(),
            };
            let mut b = Server::cluster_gateway(&redis_url, &topo.prefix, &topo.listen_channel)
                .env("PGWS_LOG_LEVEL", "info");
            if outbox {
                b = b.env("PGWS_HISTORY_SIZE", OUTBOX_HISTORY.to_string());
            }
            if let Some(h) = &host {
                b = b
                    .env("PGWS_HOST", h.addr.to_string())
                    .env("PGWS_ADMIN_HOST", h.addr.to_string())
                    .wrapped(h.wrapper());
            }
            let server = b.start().await;
            topo.gateways.push(GatewaySlot {
                redis: proxy,
                server,
                host,
            });
        }
        Ok(topo)
    }

    /// The plain Redis's port (0 behind Sentinel, which has no proxies).
    fn redis_port(&self) -> u16 {
        self.redis.as_ref().map_or(0, |r| r.port)
    }

    /// Redis as the pgws processes reach it without a proxy.
    fn redis_url(&self) -> String {
        match (&self.sentinel, &self.net) {
            (Some(s), _) => s.url(),
            (None, Some(n)) => format!("redis://{}:{}", n.redis, self.redis_port()),
            (None, None) => format!("redis://127.0.0.1:{}", self.redis_port()),
        }
    }

    /// `redis-cli` against the plain Redis or Sentinel's current master.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        match (&self.sentinel, &self.redis) {
            (Some(s), _) => s.cli_master(args),
            (None, Some(r)) => r.cli(args),
            (None, None) => String::new(),
        }
    }

    /// The addresses a Redis link reaches (namespace mode): the plain
    /// Redis, or every data node and sentinel.
    fn redis_addrs(&self) -> Vec<std::net::Ipv4Addr> {
        match (&self.sentinel, &self.net) {
            (Some(s), _) => s
                .data
                .iter()
                .chain(&s.sentinels)
                .map(|n| n.host.addr)
                .collect(),
            (None, Some(n)) => vec![n.redis],
            (None, None) => Vec::new(),
        }
    }

    /// Cut (or heal) a Sentinel split: the current master, the first
    /// sentinel and `coordinators` on one side, every other data node,
    /// sentinel, coordinator and gateway on the other. Returns the master
    /// split off (`None`: no master named, nothing cut).
    pub fn split(&mut self, coordinators: &[usize], cut: bool) -> Option<usize> {
        let (Some(net), Some(s)) = (&self.net, &self.sentinel) else {
            return None;
        };
        if !cut {
            for &(a, b) in &self.split {
                for (x, y) in [(a, b), (b, a)] {
                    if let Err(e) = net.cut(x, net.host_addr(y), false) {
                        eprintln!("pgws-chaos: {e}");
                    }
                }
            }
            self.split.clear();
            return None;
        }
        let master = s.master()?;
        let mut minority = vec![
            net.index_of(&s.data[master].host.ns),
            net.index_of(&s.sentinels[0].host.ns),
        ];
        minority.extend(coordinators);
        let majority: Vec<usize> = (0..net.len()).filter(|i| !minority.contains(i)).collect();
        for &a in &minority {
            for &b in &majority {
                for (x, y) in [(a, b), (b, a)] {
                    if let Err(e) = net.cut(x, net.host_addr(y), true) {
                        eprintln!("pgws-chaos: {e}");
                    }
                }
                self.split.push((a, b));
            }
        }
        Some(master)
    }

    /// Step coordinator clock `k`'s offset to `secs` seconds (0: back to
    /// the real time).
    pub fn step_clock(&self, k: usize, secs: i64) {
        if let Some(c) = self.clocks.get(k) {
            if let Err(e) = std::fs::write(&c.file, format!("{secs:+}\n")) {
                eprintln!("pgws-chaos: {}: {e}", c.file.display());
            }
        }
    }

    /// Start coordinator `i`'s process (again).
    pub async fn start_coordinator(&mut self, i: usize) {
        let slot = &self.coordinators[i];
        let (pg_host, pg_port) = match (&slot.pg, &self.net) {
            (Some(p), _) => ("127.0.0.1".to_string(), p.addr().port()),
            (None, Some(n)) => (n.pg.to_string(), self.pg.port),
            (None, None) => ("127.0.0.1".to_string(), self.pg.port),
        };
        let uri = format!(
            "host={pg_host} port={pg_port} user=postgres dbname=postgres sslmode=require connect_timeout=2"
        );
        let redis_url = match &slot.redis {
            Some(p) => format!("redis://{}", p.addr()),
            None => self.redis_url(),
        };
        let mut b = Server::coordinator(&redis_url, &self.prefix, &self.listen_channel)
            .env("PGWS_DB_URI", uri)
            .env("PGWS_STANDBY_LISTEN", "true")
            .env("PGWS_LEADER_TTL", TTL.as_millis().to_string())
            .env("PGWS_LOG_LEVEL", "info")
            .no_wait();
        if self.outbox {
            b = b
                .env("PGWS_OUTBOX", "true")
                .env("PGWS_HISTORY_SIZE", OUTBOX_HISTORY.to_string());
        }
        if let Some(h) = &slot.host {
            b = b
                .env("PGWS_ADMIN_HOST", h.addr.to_string())
                .wrapped(h.wrapper());
        }
        if let (Some(lib), Some(c)) = (
            &self.faketime,
            self.clocks.iter().find(|c| c.coordinator == i),
        ) {
            b = b
                .env("LD_PRELOAD", lib.display().to_string())
                .env("FAKETIME_TIMESTAMP_FILE", c.file.display().to_string())
                .env("FAKETIME_NO_CACHE", "1")
                .env(
                    "FAKETIME_DONT_FAKE_MONOTONIC",
                    if c.monotonic { "0" } else { "1" },
                );
        }
        let server = b.start().await;
        self.coordinators[i].server = Some(server);
        self.coordinators[i].paused = false;
    }

    /// Cut (`cut`) or heal one link.
    pub fn cut(&self, link: Link, cut: bool) {
        let (proxy, host, servers) = match link {
            Link::CoordinatorRedis(i) => (
                &self.coordinators[i].redis,
                &self.coordinators[i].host,
                self.redis_addrs(),
            ),
            Link::CoordinatorPg(i) => (
                &self.coordinators[i].pg,
                &self.coordinators[i].host,
                self.net.iter().map(|n| n.pg).collect(),
            ),
            Link::GatewayRedis(g) => (
                &self.gateways[g].redis,
                &self.gateways[g].host,
                self.redis_addrs(),
            ),
        };
        if let Some(p) = proxy {
            if cut {
                p.partition()
            } else {
                p.heal()
            }
        }
        if let (Some(net), Some(h)) = (&self.net, host) {
            let i = net.index_of(&h.ns);
            for server in servers {
                if let Err(e) = net.cut(i, server, cut) {
                    eprintln!("pgws-chaos: {e}");
                }
            }
        }
    }

    /// The namespaces, for the report (`None` in proxy mode).
    pub fn net_description(&self) -> Option<String> {
        let net = self.net.as_ref().map(Net::describe)?;
        Some(match &self.sentinel {
            Some(s) => format!("{net}; {}", s.describe()),
            None => net,
        })
    }

    /// `kill -9` coordinator `i` (its log is kept).
    pub fn kill_coordinator(&mut self, i: usize) {
        let slot = &mut self.coordinators[i];
        if let Some(server) = slot.server.take() {
            slot.old_logs.push(server.log_text());
            drop(server);
        }
        slot.paused = false;
    }

    /// SIGSTOP or SIGCONT coordinator `i`.
    pub async fn pause_coordinator(&mut self, i: usize, pause: bool) {
        let slot = &mut self.coordinators[i];
        let Some(server) = &slot.server else { return };
        if pause {
            server.signal("STOP");
            server.wait_stopped().await;
        } else {
            server.signal("CONT");
        }
        slot.paused = pause;
    }

    /// Coordinators reporting leadership with their listener up (paused or
    /// killed ones are not asked).
    pub async fn leaders(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, slot) in self.coordinators.iter().enumerate() {
            if slot.paused {
                continue;
            }
            let Some(admin) = slot.server.as_ref().and_then(|s| s.admin) else {
                continue;
            };
            let Ok(Ok((200, text))) =
                tokio::time::timeout(Duration::from_secs(1), http_get(admin, "/metrics")).await
            else {
                continue;
            };
            if metric_value(&text, "pgws_coordinator_leader") == 1.0
                && metric_value(&text, "pgws_listener_up") == 1.0
            {
                out.push(i);
            }
        }
        out
    }

    /// Wait (up to `within`) for exactly one ready leader.
    pub async fn wait_leader(&self, within: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let [one] = self.leaders().await.as_slice() {
                return Some(*one);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every log line of coordinator `i`'s processes, oldest first.
    pub fn coordinator_logs(&self, i: usize) -> String {
        let slot = &self.coordinators[i];
        let mut all = slot.old_logs.join("\n");
        if let Some(server) = &slot.server {
            all.push('\n');
            all.push_str(&server.log_text());
        }
        all
    }

    /// Every proxy healed, every paused process continued, every killed
    /// coordinator started again.
    pub async fn heal_all(&mut self) {
        self.split(&[], false);
        for k in 0..self.clocks.len() {
            self.step_clock(k, 0);
        }
        if let Some(s) = &mut self.sentinel {
            for node in &mut s.data {
                if node.paused {
                    node.pause(false);
                }
                if !node.running() {
                    if let Err(e) = node.restart() {
                        eprintln!("pgws-chaos: restart a Redis node: {e}");
                    }
                }
            }
        }
        for g in 0..self.gateways.len() {
            self.cut(Link::GatewayRedis(g), false);
        }
        for i in 0..self.coordinators.len() {
            self.cut(Link::CoordinatorRedis(i), false);
            self.cut(Link::CoordinatorPg(i), false);
            if self.coordinators[i].paused {
                self.pause_coordinator(i, false).await;
            }
            if self.coordinators[i].server.is_none() {
                self.start_coordinator(i).await;
            }
        }
    }

    /// A superuser connection string over the Unix socket (the workload's
    /// own connections: they bypass the proxies).
    pub fn direct_conninfo(&self) -> String {
        self.pg.socket_conninfo()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for slot in &mut self.coordinators {
            if let Some(s) = &slot.server {
                if slot.paused {
                    s.signal("CONT");
                }
            }
            slot.server = None;
        }
        self.gateways.clear();
    }
}
