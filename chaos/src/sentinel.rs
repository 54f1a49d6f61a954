//! Redis Sentinel for `--sentinel` (namespace mode): a master, a replica
//! and three sentinels, each `redis-server` in its own network namespace
//! on a spare port, with its files in the run's directory, stopped by pid
//! when dropped. Which node is the master is asked of the sentinels (a
//! majority of them must agree), so the nemesis can fail it over, kill or
//! pause it, and split it off with one sentinel.

use crate::netns::Host;
use pgws_testkit::free_port;
use pgws_testkit::redis_server::field_pairs as pairs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The master's name the sentinels watch.
pub const MASTER: &str = "mymaster";

/// Sentinels' `down-after-milliseconds`: a master silent this long is
/// subjectively down (objectively down once two agree), then failed over.
pub const DOWN_AFTER: Duration = Duration::from_millis(2000);

/// One `redis-server` (data node or sentinel) in a namespace.
pub struct Node {
    /// Its namespace.
    pub host: Host,
    /// Its port (on the namespace's address).
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    /// Stopped by SIGSTOP.
    pub paused: bool,
}

impl Node {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.host.wrapper()[0]);
        cmd.args(&self.host.wrapper()[1..])
            .arg("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn()?);
        self.paused = false;
        Ok(())
    }

    /// Its address as `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host.addr, self.port)
    }

    /// `redis-cli` against it (from the root namespace, over the bridge):
    /// its output, empty when it does not answer within a second.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("timeout")
            .args(["1", "redis-cli", "-h"])
            .arg(self.host.addr.to_string())
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Whether it is running (not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`, by pid.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// Start it again with the same arguments (and files).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// From its next start on: a replica of `master` (`ip`, `port`), or a
    /// master when `None`.
    fn replica_of(&mut self, master: Option<(String, u16)>) {
        if let Some(at) = self.args.iter().position(|a| a == "--replicaof") {
            self.args.drain(at..(at + 3).min(self.args.len()));
        }
        if let Some((ip, port)) = master {
            self.args
                .extend(["--replicaof".into(), ip, port.to_string()]);
        }
    }

    /// SIGSTOP (`true`) or SIGCONT.
    pub fn pause(&mut self, pause: bool) {
        if let Some(c) = &self.child {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
            self.paused = pause;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.paused {
            self.pause(false);
        }
        self.kill();
    }
}

/// The deployment.
pub struct Sentinel {
    /// Data nodes: the first started as the master.
    pub data: Vec<Node>,
    /// The three sentinels.
    pub sentinels: Vec<Node>,
}

impl Sentinel {
    /// Start a master on `data[0]`, replicas on the other data hosts and a
    /// sentinel on each sentinel host; wait until every sentinel knows
    /// every replica and the other sentinels.
    pub async fn start(dir: &Path, data: &[Host], sentinels: &[Host]) -> anyhow::Result<Sentinel> {
        let port = free_port();
        let master = format!("{}", data[0].addr);
        let mut out = Sentinel {
            data: Vec::new(),
            sentinels: Vec::new(),
        };
        for (i, host) in data.iter().enumerate() {
            let d = dir.join(format!("redis{i}"));
            std::fs::create_dir_all(&d)?;
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                &host.addr.to_string(),
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                // What operations.md asks of a Sentinel deployment: a
                // master with no replica in sync refuses writes. Without
                // it a master killed and started again before the
                // sentinels demote it takes writes — a second leader's
                // lock — for up to the watchers' interval (seeds 128106
                // and 297845, docs/architecture.md "What the nemesis found").
                "--min-replicas-to-write",
                "1",
                "--min-replicas-max-lag",
                "10",
                "--dir",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push(d.display().to_string());
            if i > 0 {
                args.extend(["--replicaof".into(), master.clone(), port.to_string()]);
            }
            let mut node = Node {
                host: host.clone(),
                port,
                args,
                child: None,
                paused: false,
            };
            node.spawn()?;
            out.data.push(node);
        }
        let sport = free_port();
        for (i, host) in sentinels.iter().enumerate() {
            let d = dir.join(format!("sentinel{i}"));
            std::fs::create_dir_all(&d)?;
            let conf = d.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {sport}\nbind {}\nprotected-mode no\ndir {}\n\
                     sentinel monitor {MASTER} {master} {port} 2\n\
                     sentinel down-after-milliseconds {MASTER} {}\n\
                     sentinel failover-timeout {MASTER} 6000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    host.addr,
                    d.display(),
                    DOWN_AFTER.as_millis()
                ),
            )?;
            let mut node = Node {
                host: host.clone(),
                port: sport,
                args: vec![conf.display().to_string(), "--sentinel".into()],
                child: None,
                paused: false,
            };
            node.spawn()?;
            out.sentinels.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let replicas = (data.len() - 1).to_string();
        loop {
            let ready = out.sentinels.iter().all(|s| {
                let info = pairs(&s.cli(&["SENTINEL", "MASTER", MASTER]));
                info.get("num-slaves") == Some(&replicas)
                    && info.get("num-other-sentinels").map(String::as_str)
                        == Some(&(sentinels.len() - 1).to_string())
                    && info.get("flags").map(String::as_str) == Some("master")
            }) && out.data[1..].iter().all(|r| {
                r.cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            });
            if ready {
                return Ok(out);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the sentinels never agreed on the master and its replicas"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis+sentinel://s1,s2,s3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The data node a majority of the sentinels name as the master.
    pub fn master(&self) -> Option<usize> {
        let mut votes = vec![0usize; self.data.len()];
        for s in &self.sentinels {
            let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
            let named: Vec<&str> = out.lines().collect();
            if let [ip, port] = named.as_slice() {
                if let Some(i) = self
                    .data
                    .iter()
                    .position(|d| d.host.addr.to_string() == *ip && d.port.to_string() == *port)
                {
                    votes[i] += 1;
                }
            }
        }
        votes.iter().position(|v| *v * 2 > self.sentinels.len())
    }

    /// Start data node `i` again after a `kill -9` the way a deployment's
    /// start script does (the Bitnami chart's asks the sentinels): as a
    /// replica of the master the sentinels name now, or as a master when
    /// they still name this node. Started with its first arguments
    /// instead, a node that had been promoted came back as a replica of
    /// the node that was by then *its* replica — two replicas, no master,
    /// and the sentinels, which still reach the master they named, never
    /// fail over (seed 517067's last three minutes).
    pub fn restart_data(&mut self, i: usize) -> anyhow::Result<()> {
        let named = self
            .master()
            .filter(|m| *m != i)
            .map(|m| (self.data[m].host.addr.to_string(), self.data[m].port));
        let node = &mut self.data[i];
        node.replica_of(named);
        node.restart()
    }

    /// `SENTINEL FAILOVER` through the first sentinel that accepts it.
    pub fn failover(&self) -> bool {
        self.sentinels
            .iter()
            .any(|s| s.cli(&["SENTINEL", "FAILOVER", MASTER]) == "OK")
    }

    /// Wait (up to `within`) until data node `i` is a replica; whether it
    /// became one.
    pub async fn wait_replica(&self, i: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.data[i].cli(&["ROLE"]).lines().next() == Some("slave") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Wait (up to `within`) until a majority of the sentinels name a
    /// master other than `old`; the new one.
    pub async fn wait_new_master(&self, old: usize, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.master() {
                Some(m) if m != old => return Some(m),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        None
    }

    /// Wait (up to `within`) until the sentinels are at rest: every one
    /// answers, names the same master, flags it plain `master` (no
    /// subjective or objective down, no failover in progress), and stays so
    /// for a second; the master then (`None`: never at rest).
    pub async fn wait_stable(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        let mut since: Option<(usize, Instant)> = None;
        while Instant::now() < deadline {
            let at_rest = self.sentinels.iter().all(|s| {
                pairs(&s.cli(&["SENTINEL", "MASTER", MASTER]))
                    .get("flags")
                    .is_some_and(|f| f == "master")
            });
            match (at_rest, self.master()) {
                (true, Some(m)) => match since {
                    Some((was, t)) if was == m => {
                        if t.elapsed() >= Duration::from_secs(1) {
                            return Some(m);
                        }
                    }
                    _ => since = Some((m, Instant::now())),
                },
                _ => since = None,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Wait (up to `within`) until every data node but the master is its
    /// replica with the link up and no sync in progress; whether they all
    /// are. A replica that has not finished its first sync with a new
    /// master still holds its old data set, and Sentinel promotes it all
    /// the same.
    pub async fn wait_synced(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(m) = self.master() {
                let want = format!("master_host:{}", self.data[m].host.addr);
                let synced = self.data.iter().enumerate().all(|(i, d)| {
                    if i == m {
                        return true;
                    }
                    let info = d.cli(&["INFO", "replication"]);
                    info.contains(&want)
                        && info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0")
                });
                if synced {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `redis-cli` against the current master (empty when none is named).
    pub fn cli_master(&self, args: &[&str]) -> String {
        self.master()
            .map(|m| self.data[m].cli(args))
            .unwrap_or_default()
    }

    /// Every node's namespace and address, for the report.
    pub fn describe(&self) -> String {
        let data: Vec<String> = self.data.iter().map(Node::addr).collect();
        let sentinels: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!(
            "Redis data nodes {} (the first the initial master), sentinels {} (quorum 2, down after {} ms)",
            data.join(", "),
            sentinels.join(", "),
            DOWN_AFTER.as_millis()
        )
    }
}
