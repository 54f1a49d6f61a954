//! The server processes under test, started from the workspace's own
//! binaries, stopped by pid when dropped. Every test gets its own ports
//! (the server binds port 0 and logs the address) and listen channel;
//! every wait polls with a deadline.

use crate::db::db_uri;
use crate::http::{http_get, metric_value};
use crate::names::{unique, SECRET, WAIT};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A binary of this workspace: in `PGWS_BIN_DIR` when set, else next to
/// the executable (a binary such as `pgws-chaos` in `target/<profile>/`),
/// else next to the test executable (`target/<profile>/deps/<test>` →
/// `target/<profile>/<name>`).
pub fn binary(name: &str) -> std::path::PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = std::env::var_os("PGWS_BIN_DIR") {
        return std::path::PathBuf::from(dir).join(file);
    }
    let exe = std::env::current_exe().expect("the test executable");
    let here = exe.parent().expect("the executable's directory");
    if here.join(&file).exists() {
        return here.join(file);
    }
    here.parent().expect("target/<profile>").join(file)
}

/// A running `pgws-gateway` or `pgws-coordinator` process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub listen_channel: String,
    log: Arc<Mutex<Vec<String>>>,
    /// The log reader reached the end of the process's stderr.
    log_done: Arc<std::sync::atomic::AtomicBool>,
}

/// Environment for a server under test.
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    args: Vec<String>,
    wait_ready: bool,
    bin: std::path::PathBuf,
    public: bool,
    /// A program and arguments the binary runs under (e.g. `ip netns exec
    /// <ns>`, which execs it: the pid stays the binary's).
    wrapper: Vec<String>,
}

impl ServerBuilder {
    /// Run the binary under `wrapper` (absolute program path first), which
    /// must exec it so that the pid is the server's (`ip netns exec <ns>`).
    pub fn wrapped(mut self, wrapper: Vec<String>) -> Self {
        self.wrapper = wrapper;
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Do not wait for `/readyz` (for gateways expected to fail).
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn command(&self) -> Command {
        assert!(
            self.bin.exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
            self.bin.display()
        );
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    /// Start and wait until both addresses are logged (and, by default,
    /// `/readyz` answers 200).
    pub async fn start(self) -> Server {
        let listen_channel = self
            .env
            .iter()
            .find(|(k, _)| k == "PGWS_LISTEN_CHANNEL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let admin_off = self
            .env
            .iter()
            .any(|(k, v)| k == "PGWS_ADMIN_PORT" && v == "off");
        let public_expected = self.public;
        let mut child = self.command().spawn().expect("spawn pgws-gateway");
        let echo = format!(
            "[{} {}]",
            self.bin.file_name().unwrap_or_default().to_string_lossy(),
            child.id()
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = log_done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("PGWS_TEST_ECHO").is_some() {
                    eprintln!("{echo} {line}");
                }
                sink.lock().expect("log lock").push(line);
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        let mut gateway = Server {
            child,
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: None,
            listen_channel,
            log,
            log_done,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let public = if public_expected {
                gateway.logged_addr("public")
            } else {
                Some(gateway.addr)
            };
            let admin = gateway.logged_addr("admin");
            if let Some(public) = public {
                if admin.is_some() || admin_off {
                    gateway.addr = public;
                    gateway.admin = admin;
                    break;
                }
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!("gateway exited early ({status}):\n{}", gateway.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gateway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.wait_ready {
            gateway.wait_ready().await;
        }
        gateway
    }
}

impl Server {
    /// A standalone gateway with a test's defaults: loopback, ephemeral
    /// ports, a unique channel.
    pub fn gateway() -> ServerBuilder {
        ServerBuilder {
            env: vec![
                ("PGWS_DB_URI".into(), db_uri()),
                ("PGWS_JWT_SECRET".into(), SECRET.into()),
                ("PGWS_HOST".into(), "127.0.0.1".into()),
                ("PGWS_PORT".into(), "0".into()),
                ("PGWS_ADMIN_HOST".into(), "127.0.0.1".into()),
                ("PGWS_ADMIN_PORT".into(), "0".into()),
                ("PGWS_LISTEN_CHANNEL".into(), unique("pgws-t")),
                ("PGWS_SHUTDOWN_TIMEOUT".into(), "5000".into()),
                ("PGWS_LOG_LEVEL".into(), "info,pgws_gateway=debug".into()),
            ],
            args: Vec::new(),
            wait_ready: true,
            bin: binary("pgws-gateway"),
            public: true,
            wrapper: Vec::new(),
        }
    }

    /// A gateway in cluster mode (no database settings).
    pub fn cluster_gateway(redis_url: &str, prefix: &str, listen_channel: &str) -> ServerBuilder {
        Server::gateway()
            .unset("PGWS_DB_URI")
            .env("PGWS_REDIS_URL", redis_url)
            .env("PGWS_REDIS_PREFIX", prefix)
            .env("PGWS_LISTEN_CHANNEL", listen_channel)
    }

    /// A `pgws-coordinator`.
    pub fn coordinator(redis_url: &str, prefix: &str, listen_channel: &str) -> ServerBuilder {
        let bin = binary("pgws-coordinator");
        ServerBuilder {
            env: vec![
                ("PGWS_DB_URI".into(), db_uri()),
                ("PGWS_REDIS_URL".into(), redis_url.into()),
                ("PGWS_REDIS_PREFIX".into(), prefix.into()),
                ("PGWS_LISTEN_CHANNEL".into(), listen_channel.into()),
                ("PGWS_NODE_ID".into(), unique("coord")),
                ("PGWS_LEADER_TTL".into(), "2000".into()),
                ("PGWS_ADMIN_HOST".into(), "127.0.0.1".into()),
                ("PGWS_ADMIN_PORT".into(), "0".into()),
                ("PGWS_SHUTDOWN_TIMEOUT".into(), "5000".into()),
                (
                    "PGWS_LOG_LEVEL".into(),
                    "info,pgws_coordinator=debug".into(),
                ),
            ],
            args: Vec::new(),
            wait_ready: true,
            bin,
            public: false,
            wrapper: Vec::new(),
        }
    }

    /// A standalone gateway with a test's defaults, started.
    pub async fn start() -> Server {
        Server::gateway().start().await
    }

    fn logged_addr(&self, kind: &str) -> Option<SocketAddr> {
        let needle = format!("kind=\"{kind}\"");
        let log = self.log.lock().expect("log lock");
        log.iter()
            .find(|l| l.contains(" listening") && l.contains(&needle))
            .and_then(|l| {
                let rest = &l[l.find("addr=")? + 5..];
                rest.split_whitespace().next()?.parse().ok()
            })
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Poll `/readyz` until 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(admin) = self.admin {
                if let Ok((200, _)) = http_get(admin, "/readyz").await {
                    return;
                }
            } else if self.log_text().contains("listening for notifications") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gateway exited ({status}) before ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("admin listener");
        http_get(admin, "/metrics").await.expect("metrics").1
    }

    /// The value of a metric line (exact series text before the value).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Poll until `series` reaches at least `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {v}, wanted {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// After `signal("STOP")`: wait until every thread of the process is
    /// stopped (`kill` returns before a busy thread has taken the signal).
    pub async fn wait_stopped(&self) {
        let deadline = Instant::now() + WAIT;
        let tasks = format!("/proc/{}/task", self.pid());
        loop {
            let states: Vec<char> = std::fs::read_dir(&tasks)
                .map(|dir| {
                    dir.filter_map(|t| {
                        let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                        stat.rsplit_once(") ")?.1.chars().next()
                    })
                    .collect()
                })
                .unwrap_or_default();
            if !states.is_empty() && states.iter().all(|s| *s == 'T') {
                return;
            }
            assert!(Instant::now() < deadline, "not stopped: {states:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Wait for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Its last lines: read to the end of its stderr.
                while !self.log_done.load(std::sync::atomic::Ordering::Acquire)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway still running:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
