//! The system under test for one run: a private PostgreSQL and a private
//! Redis (both restartable), a fault proxy on every link a pgws process
//! opens (coordinator → Redis, coordinator → PostgreSQL, gateway → Redis),
//! coordinators with `PGWS_STANDBY_LISTEN=true` and gateways. Owns
//! starting, killing, pausing and restarting them; every process is
//! stopped by pid when the topology is dropped (also on a panic).

use pgws_testkit::names::unique;
use pgws_testkit::pg_server::{PgServer, ServerTls};
use pgws_testkit::proxy::Proxy;
use pgws_testkit::{http_get, metric_value, RedisServer, Server};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The coordinators' lock ttl.
pub const TTL: Duration = Duration::from_millis(2000);

/// One coordinator's place: its links (kept across restarts) and process.
pub struct CoordinatorSlot {
    /// Its link to Redis.
    pub redis: Proxy,
    /// Its link to PostgreSQL.
    pub pg: Proxy,
    /// The running process (`None` while killed).
    pub server: Option<Server>,
    /// Whether it is stopped by SIGSTOP.
    pub paused: bool,
    /// Logs of its earlier (killed) processes.
    pub old_logs: Vec<String>,
}

/// One gateway and its link to Redis.
pub struct GatewaySlot {
    /// Its link to Redis.
    pub redis: Proxy,
    /// The process.
    pub server: Server,
}

/// Everything one run starts.
pub struct Topology {
    /// Redis key prefix of this run.
    pub prefix: String,
    /// The listen channel of this run.
    pub listen_channel: String,
    /// The private PostgreSQL.
    pub pg: PgServer,
    /// The private Redis (append-only file, fsync always: a restart keeps
    /// every acknowledged write).
    pub redis: RedisServer,
    /// Coordinators.
    pub coordinators: Vec<CoordinatorSlot>,
    /// Gateways.
    pub gateways: Vec<GatewaySlot>,
    _tls: ServerTls,
    /// Dropped last: removes the run's directory once every server stopped.
    _dir: DirGuard,
}

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
    /// gateways, each behind its own proxies, and wait for a leader.
    pub async fn start(coordinators: usize, gateways: usize) -> anyhow::Result<Topology> {
        let dir = std::env::temp_dir().join(unique("pgws-chaos"));
        std::fs::create_dir_all(&dir)?;
        let tls = ServerTls::new(&dir, &["localhost", "127.0.0.1"]);
        let pg = PgServer::start(&tls, &dir.join("pg")).await;
        let redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]).await;
        let mut topo = Topology {
            prefix: unique("chaos"),
            listen_channel: unique("chaos-listen"),
            pg,
            redis,
            coordinators: Vec::new(),
            gateways: Vec::new(),
            _tls: tls,
            _dir: DirGuard(dir),
        };
        for _ in 0..coordinators {
            let slot = CoordinatorSlot {
                redis: Proxy::start(loopback(topo.redis.port)).await?,
                pg: Proxy::start(loopback(topo.pg.port)).await?,
                server: None,
                paused: false,
                old_logs: Vec::new(),
            };
            topo.coordinators.push(slot);
            let i = topo.coordinators.len() - 1;
            topo.start_coordinator(i).await;
        }
        for _ in 0..gateways {
            let redis = Proxy::start(loopback(topo.redis.port)).await?;
            let server = Server::cluster_gateway(
                &format!("redis://{}", redis.addr()),
                &topo.prefix,
                &topo.listen_channel,
            )
            .env("PGWS_LOG_LEVEL", "info")
            .start()
            .await;
            topo.gateways.push(GatewaySlot { redis, server });
        }
        Ok(topo)
    }

    /// Start coordinator `i`'s process (again) behind its proxies.
    pub async fn start_coordinator(&mut self, i: usize) {
        let slot = &self.coordinators[i];
        let uri = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require connect_timeout=2",
            slot.pg.addr().port()
        );
        let server = Server::coordinator(
            &format!("redis://{}", slot.redis.addr()),
            &self.prefix,
            &self.listen_channel,
        )
        .env("PGWS_DB_URI", uri)
        .env("PGWS_STANDBY_LISTEN", "true")
        .env("PGWS_LEADER_TTL", TTL.as_millis().to_string())
        .env("PGWS_LOG_LEVEL", "info")
        .no_wait()
        .start()
        .await;
        self.coordinators[i].server = Some(server);
        self.coordinators[i].paused = false;
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
        for g in &self.gateways {
            g.redis.heal();
        }
        for i in 0..self.coordinators.len() {
            self.coordinators[i].redis.heal();
            self.coordinators[i].pg.heal();
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
