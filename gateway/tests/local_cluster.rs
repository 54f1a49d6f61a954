//! `deploy/local-cluster.sh`: 2 coordinators, 3 gateways and HAProxy on
//! loopback. A socket through HAProxy reaches readers on every gateway, and
//! stopping one gateway leaves the others serving.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct LocalCluster {
    child: Child,
    run_dir: PathBuf,
    lb_port: u16,
    base: u16,
}

impl LocalCluster {
    async fn start(prefix: &str, listen_channel: &str) -> LocalCluster {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_pgws-gateway"))
            .parent()
            .expect("bin dir")
            .to_path_buf();
        let run_dir = std::env::temp_dir().join(unique("pgws-local-cluster"));
        // The script needs BASE+1..BASE+22.
        let base = free_port_block(23);
        let lb_port = free_port();
        let child = Command::new("bash")
            .arg(root.join("deploy/local-cluster.sh"))
            .current_dir(&root)
            .env("LOCAL_CLUSTER_BIN_DIR", &bin_dir)
            .env("LOCAL_CLUSTER_LB_PORT", lb_port.to_string())
            .env("LOCAL_CLUSTER_BASE_PORT", base.to_string())
            .env("PGWS_REDIS_PREFIX", prefix)
            .env("PGWS_LISTEN_CHANNEL", listen_channel)
            .env("LOCAL_CLUSTER_RUN_DIR", &run_dir)
            .env("PGWS_DB_URI", db_uri())
            .env("PGWS_REDIS_URL", redis_url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run deploy/local-cluster.sh");
        let mut cluster = LocalCluster {
            child,
            run_dir,
            lb_port,
            base,
        };
        let deadline = Instant::now() + WAIT * 2;
        while !cluster.run_dir.join("ready").exists() {
            if let Ok(Some(status)) = cluster.child.try_wait() {
                panic!(
                    "local-cluster.sh exited early ({status}): {}",
                    cluster.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the local cluster never became ready: {}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
    }

    fn logs(&self) -> String {
        std::fs::read_dir(&self.run_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                    .map(|e| {
                        format!(
                            "--- {:?}\n{}",
                            e.path(),
                            std::fs::read_to_string(e.path()).unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}/{}", self.lb_port, path)
    }

    fn admin(&self, gateway: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.base + 10 + gateway))
    }

    fn pid(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.run_dir.join(format!("{name}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // SIGTERM: the script's trap stops every process it started.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

async fn accepted(addr: std::net::SocketAddr) -> f64 {
    metric_value(
        &http_get(addr, "/metrics").await.expect("metrics").1,
        "pgws_connections_accepted_total",
    )
}

#[tokio::test]
async fn through_haproxy_a_message_reaches_readers_on_every_gateway_and_survives_losing_one() {
    let listen_channel = unique("pgws-lc");
    let lc = LocalCluster::start(&unique("pgws-lc"), &listen_channel).await;
    let chat = unique("chat");
    let t = token(json!({"mode":"rw"}));
    // Round robin puts three sockets on three gateways; note which is where.
    let mut sockets = Vec::new();
    let mut gateway_of = Vec::new();
    for _ in 0..3 {
        let before: Vec<f64> =
            futures_util::future::join_all((1..=3).map(|g| accepted(lc.admin(g)))).await;
        sockets.push(connect(&lc.url(&format!("{chat}/{t}"))).await);
        let after: Vec<f64> =
            futures_util::future::join_all((1..=3).map(|g| accepted(lc.admin(g)))).await;
        let g = (0..3)
            .find(|&i| after[i] > before[i])
            .expect("some gateway accepted it") as u16
            + 1;
        gateway_of.push(g);
    }
    let mut distinct = gateway_of.clone();
    distinct.sort_unstable();
    assert_eq!(distinct, vec![1, 2, 3], "one socket per gateway");
    for g in 1..=3 {
        let deadline = Instant::now() + WAIT;
        while metric_value(
            &http_get(lc.admin(g), "/metrics").await.expect("metrics").1,
            "pgws_redis_subscriptions",
        ) < 1.0
        {
            assert!(Instant::now() < deadline, "gateway {g} never subscribed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    send(&mut sockets[0], "hello everyone").await;
    for s in sockets.iter_mut() {
        let v: serde_json::Value = serde_json::from_str(&next_text(s).await).expect("json");
        assert_eq!(v["payload"], "hello everyone");
    }

    // Stop the gateway holding sockets[0]: that socket is closed with 1001
    // (through HAProxy), the others keep serving.
    let stopped = format!("gateway-{}", gateway_of[0]);
    let status = Command::new("kill")
        .args(["-TERM", &lc.pid(&stopped).to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(expect_close(&mut sockets[0]).await.0, 1001);
    let db = db().await;
    notify(
        &db,
        &listen_channel,
        &json!({"channel": chat, "payload": "still here"}).to_string(),
    )
    .await;
    for s in sockets.iter_mut().skip(1) {
        let v: serde_json::Value = serde_json::from_str(&next_text(s).await).expect("json");
        assert_eq!(v["payload"], "still here");
    }
    // New sockets through HAProxy land on the remaining gateways.
    for _ in 0..4 {
        connect(&lc.url(&format!("{chat}/{t}"))).await;
    }
}
