//! A private PostgreSQL for one test: `initdb` in a temporary directory,
//! started on a free port, stopped by pid. When the tests run as root the
//! server runs as the `postgres` user (PostgreSQL refuses root).
//!
//! The server speaks TLS only (`hostssl` rules, no `host` rules) with a
//! certificate from the test's own CA, trusts `postgres`, authenticates
//! `certuser` by client certificate and `pwuser` by password, and can
//! have a streaming standby.

use crate::certs::{Identity, Pki};
use crate::names::{unique, WAIT};
use crate::ports::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `pwuser`'s password.
pub const PASSWORD: &str = "s3cret pass:word";

/// A running private server.
pub struct PgServer {
    pub port: u16,
    /// Unix socket directory (the tests' own superuser connections use it).
    pub socket_dir: PathBuf,
    base: PathBuf,
    data: PathBuf,
    child: Option<Child>,
    owner: Option<(u32, u32)>,
    settings: Vec<String>,
    /// Whether this is the base directory's owner (removes it on drop).
    owns_base: bool,
}

fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PGWS_TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let newest = versions.last().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

/// The uid/gid to run the server as: `postgres` when we are root.
fn owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user to run the private server as")
    };
    Some((id("-u"), id("-g")))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    }
}

fn command(owner: Option<(u32, u32)>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// The /24 around an IPv4 address (its network address), or the IPv6
/// address itself.
fn network_of(addr: &std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// Run a set-up tool to completion; panic with its stderr if it fails.
fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The server's TLS files, readable by the server's user.
pub struct ServerTls {
    pub pki: Pki,
    pub server: Identity,
}

impl ServerTls {
    /// A CA in `dir`, and a server certificate for `names`.
    pub fn new(dir: &Path, names: &[&str]) -> ServerTls {
        let pki = Pki::new(dir, "pg");
        let server = pki.issue("pg-server", "pgws test server", names);
        ServerTls { pki, server }
    }
}

impl PgServer {
    /// A new cluster with TLS from `tls`, started and ready.
    pub async fn start(tls: &ServerTls, base: &Path) -> PgServer {
        PgServer::start_on(tls, base, &[]).await
    }

    /// [`PgServer::start`], listening on `also` besides loopback and
    /// trusting `postgres` over TLS from each of them (a test's private
    /// network, e.g. an address on a bridge to network namespaces).
    pub async fn start_on(tls: &ServerTls, base: &Path, also: &[std::net::IpAddr]) -> PgServer {
        let owner = owner();
        std::fs::create_dir_all(base).expect("base dir");
        chown(base, owner);
        for file in [&tls.server.cert, &tls.server.key, &tls.pki.ca] {
            chown(file, owner);
        }
        let data = base.join(unique("data"));
        run_checked(
            command(owner, bindir().join("initdb"))
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
            "initdb",
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             local replication all trust\n\
             hostssl all certuser 127.0.0.1/32 cert\n\
             hostssl all pwuser 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl replication all 127.0.0.1/32 trust\n"
                .to_string()
                + &also
                    .iter()
                    .map(|a| format!("hostssl all postgres {} trust\n", network_of(a)))
                    .collect::<String>(),
        )
        .expect("pg_hba.conf");
        let listen: Vec<String> = std::iter::once("127.0.0.1".to_string())
            .chain(also.iter().map(|a| a.to_string()))
            .collect();
        let settings = vec![
            format!("listen_addresses={}", listen.join(",")),
            "fsync=off".into(),
            "full_page_writes=off".into(),
            "shared_buffers=8MB".into(),
            "max_connections=40".into(),
            "wal_level=replica".into(),
            "max_wal_senders=4".into(),
            "ssl=on".into(),
            format!("ssl_cert_file={}", tls.server.cert.display()),
            format!("ssl_key_file={}", tls.server.key.display()),
            format!("ssl_ca_file={}", tls.pki.ca.display()),
        ];
        let server = PgServer::launch(base, data, owner, settings, true).await;
        server.psql(&format!(
            "CREATE ROLE certuser LOGIN; CREATE ROLE pwuser LOGIN PASSWORD '{}';",
            PASSWORD.replace('\'', "''")
        ));
        server
    }

    async fn launch(
        base: &Path,
        data: PathBuf,
        owner: Option<(u32, u32)>,
        settings: Vec<String>,
        owns_base: bool,
    ) -> PgServer {
        let port = free_port();
        let socket_dir = base.join(unique("sock"));
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        chown(&socket_dir, owner);
        let mut server = PgServer {
            port,
            socket_dir,
            base: base.to_path_buf(),
            data,
            child: None,
            owner,
            settings,
            owns_base,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.data.with_extension("log")).expect("log file");
        let mut cmd = command(self.owner, bindir().join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-c", &format!("port={}", self.port)])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.socket_dir.display()),
            ]);
        for setting in &self.settings {
            cmd.args(["-c", setting]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = Command::new(bindir().join("pg_isready"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A streaming standby of this server (same TLS files, own port).
    pub async fn standby(&self) -> PgServer {
        let data = self.base.join(unique("standby"));
        run_checked(
            command(self.owner, bindir().join("pg_basebackup"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "-D"])
                .arg(&data),
            "pg_basebackup",
        );
        PgServer::launch(&self.base, data, self.owner, self.settings.clone(), false).await
    }

    /// Run SQL as the superuser over the Unix socket; the output, unaligned.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Promote a standby and wait until it accepts writes.
    pub fn promote(&self) {
        assert_eq!(self.psql("SELECT pg_promote(true, 30)"), "t");
    }

    /// `host=127.0.0.1 port=… dbname=postgres` plus `extra`.
    pub fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} dbname=postgres {extra}", self.port)
    }

    /// A superuser client over TLS (connection driven in the background).
    pub async fn client(&self) -> tokio_postgres::Client {
        let config = pgws_postgres::pg::PgConfig::parse(
            &self.conninfo("user=postgres sslmode=require"),
            &|_| None,
        )
        .expect("conninfo");
        let (client, connection) = pgws_postgres::pg::connect(&config, "pgws test")
            .await
            .expect("connect to the private server");
        tokio::spawn(connection);
        client
    }

    /// Restart the server on the same port and data: `immediate` is a
    /// crash (SIGQUIT: no checkpoint, recovery at start), else a fast
    /// shutdown (SIGINT). Returns once it accepts connections again.
    pub async fn restart(&mut self, immediate: bool) {
        self.stop_with(immediate).await;
        self.start_again().await;
    }

    /// Stop the server — `immediate`: a crash (SIGQUIT), else a fast
    /// shutdown (SIGINT) — and wait until it has exited.
    pub async fn stop_with(&mut self, immediate: bool) {
        if let Some(mut child) = self.child.take() {
            let signal = if immediate {
                libc::SIGQUIT
            } else {
                libc::SIGINT
            };
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
            let deadline = Instant::now() + WAIT;
            while !matches!(child.try_wait(), Ok(Some(_))) {
                assert!(Instant::now() < deadline, "postgres did not stop");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Start a stopped server again on the same port and data; returns
    /// once it accepts connections.
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
        self.wait_ready().await;
    }

    /// A key/value connection string over the Unix socket (no TLS), for
    /// clients that are not pgws.
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Stop the server (fast shutdown, then kill) and wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if self.owns_base {
            let _ = std::fs::remove_dir_all(&self.base);
        } else {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}
