//! Private Redis servers for one test: plain or TLS-only, a 3-master Redis
//! Cluster, and a Sentinel deployment (master, replica, three sentinels).
//! Each runs in its own temporary directory on free ports and is stopped
//! by pid when dropped.

use crate::certs::{Identity, Pki};
use crate::names::{unique, WAIT};
use crate::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared Redis the machine runs (isolation is by key prefix).
pub fn redis_url() -> String {
    std::env::var("PGWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The shared Redis's address, for a fault proxy in front of it (it must
/// be a plain `redis://host:port` URL).
pub fn redis_addr() -> std::net::SocketAddr {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("this test needs a plain redis://host:port URL, not {url}"))
}

/// TLS material for a server and its clients.
#[derive(Clone)]
pub struct RedisTls {
    pub ca: PathBuf,
    pub server: Identity,
    pub client: Identity,
}

impl RedisTls {
    /// A CA, a server certificate for loopback and a client certificate.
    pub fn new(dir: &Path) -> RedisTls {
        let pki = Pki::new(dir, "redis");
        RedisTls {
            server: pki.issue("redis-server", "redis", &["localhost", "127.0.0.1"]),
            client: pki.issue("redis-client", "pgws", &[]),
            ca: pki.ca.clone(),
        }
    }

    /// `redis-cli` arguments to talk TLS to such a server.
    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.client.cert.display().to_string(),
            "--key".into(),
            self.client.key.display().to_string(),
        ]
    }

    /// The gateway/coordinator environment for these files.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGWS_REDIS_CA_FILE".into(), self.ca.display().to_string()),
            (
                "PGWS_REDIS_CERT_FILE".into(),
                self.client.cert.display().to_string(),
            ),
            (
                "PGWS_REDIS_KEY_FILE".into(),
                self.client.key.display().to_string(),
            ),
        ]
    }
}

/// A private `redis-server` this test can stop and restart.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    tls: Option<RedisTls>,
    /// `--user`/`--pass` for redis-cli when the default user is off.
    auth: Option<(String, String)>,
}

impl RedisServer {
    /// A plain server with `extra` arguments.
    pub async fn start(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut args: Vec<String> = vec!["--port".into(), port.to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisServer::launch(port, args, None, None).await
    }

    /// A TLS-only server that requires client certificates, and where only
    /// the ACL user `user`/`password` may log in.
    pub async fn start_tls(
        tls: &RedisTls,
        user: &str,
        password: &str,
        extra: &[&str],
    ) -> RedisServer {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            tls.server.cert.display().to_string(),
            "--tls-key-file".into(),
            tls.server.key.display().to_string(),
            "--tls-ca-cert-file".into(),
            tls.ca.display().to_string(),
            "--tls-auth-clients".into(),
            "yes".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            user.into(),
            "on".into(),
            format!(">{password}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        RedisServer::launch(
            port,
            args,
            Some(tls.clone()),
            Some((user.into(), password.into())),
        )
        .await
    }

    async fn launch(
        port: u16,
        args: Vec<String>,
        tls: Option<RedisTls>,
        auth: Option<(String, String)>,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(unique("pgws-redis"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = RedisServer::spawn(&dir, &args);
        let server = RedisServer {
            child,
            port,
            dir,
            args,
            tls,
            auth,
        };
        server.wait_up().await;
        server
    }

    fn spawn(dir: &Path, args: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install the redis-server package)")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self
            .auth
            .as_ref()
            .map(|(u, p)| format!("{u}:{p}@"))
            .unwrap_or_default();
        format!("{scheme}://{auth}127.0.0.1:{}", self.port)
    }

    /// Run `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.args(tls.cli_args());
        }
        if let Some((user, password)) = &self.auth {
            cmd.args(["--user", user, "--pass", password, "--no-auth-warning"]);
        }
        cmd.args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    pub async fn wait_up(&self) {
        let deadline = Instant::now() + WAIT;
        while self.cli(&["ping"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.child = RedisServer::spawn(&self.dir, &self.args);
        self.wait_up().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private 3-master Redis Cluster on loopback, plain or TLS-only.
pub struct RedisClusterServers {
    pub nodes: Vec<RedisServer>,
}

impl RedisClusterServers {
    pub async fn start() -> RedisClusterServers {
        RedisClusterServers::start_with(None).await
    }

    /// A cluster whose nodes speak TLS only (`--tls-cluster yes`).
    pub async fn start_tls(tls: &RedisTls) -> RedisClusterServers {
        RedisClusterServers::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<&RedisTls>) -> RedisClusterServers {
        let cluster_args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(match tls {
                None => RedisServer::start(&cluster_args).await,
                Some(tls) => {
                    let mut args = cluster_args.to_vec();
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                    RedisServer::start_tls(tls, "app", "app-password", &args).await
                }
            });
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = tls {
            create.args(tls.cli_args());
            create.args([
                "--user",
                "app",
                "--pass",
                "app-password",
                "--no-auth-warning",
            ]);
        }
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + WAIT;
        for n in &nodes {
            loop {
                let info = n.cli(&["cluster", "info"]);
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok: {info}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        RedisClusterServers { nodes }
    }

    /// Seed URLs, comma-separated, as PGWS_REDIS_URL takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A Sentinel deployment: a master, one replica, three sentinels
/// watching it as `mymaster` (down after 1 s).
pub struct SentinelDeployment {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

/// One `redis-server --sentinel`.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Sentinel {
    /// A sentinel watching `127.0.0.1:master_port` as `mymaster` (not
    /// waited for: see [`Sentinel::wait_named`]).
    pub fn start(master_port: u16) -> Sentinel {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("pgws-sentinel"));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 4000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.display()
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        Sentinel { child, port, dir }
    }

    /// Wait until this sentinel answers and names `127.0.0.1:port` as
    /// `mymaster`.
    pub async fn wait_named(&self, port: u16) {
        let deadline = Instant::now() + WAIT;
        while self.master_info().get("port").map(String::as_str) != Some(port.to_string().as_str())
        {
            assert!(
                Instant::now() < deadline,
                "the sentinel on {} never answered",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `SENTINEL MASTER mymaster` as field → value.
    pub fn master_info(&self) -> std::collections::HashMap<String, String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["sentinel", "master", "mymaster"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        field_pairs(&out)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SentinelDeployment {
    /// Start everything and wait until every sentinel knows the replica
    /// and the other sentinels (so that a failover can happen).
    pub async fn start() -> SentinelDeployment {
        let master = RedisServer::start(&[]).await;
        let port = master.port.to_string();
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]).await;
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let ready = sentinels.iter().all(|s| {
                let info = s.master_info();
                info.get("num-slaves").map(String::as_str) == Some("1")
                    && info.get("num-other-sentinels").map(String::as_str) == Some("2")
                    && info.get("flags").map(String::as_str) == Some("master")
            });
            if ready
                && replica
                    .cli(&["info", "replication"])
                    .contains("master_link_status:up")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the sentinels never agreed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        SentinelDeployment {
            master,
            replica,
            sentinels,
        }
    }

    /// `redis+sentinel://…/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/mymaster", hosts.join(","))
    }

    /// Wait until the sentinels name `port` as the master.
    pub async fn wait_master(&self, port: u16) {
        let deadline = Instant::now() + WAIT * 2;
        loop {
            let named = self.sentinels.iter().all(|s| {
                s.master_info().get("port").map(String::as_str) == Some(port.to_string().as_str())
            });
            if named {
                return;
            }
            assert!(Instant::now() < deadline, "the failover did not happen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `redis-cli`'s alternating field/value lines (`SENTINEL MASTER`, …) as
/// field → value.
pub fn field_pairs(out: &str) -> std::collections::HashMap<String, String> {
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.to_string(), v.to_string())),
            _ => None,
        })
        .collect()
}
