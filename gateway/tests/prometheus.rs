//! Metrics as Prometheus sees them: `promtool check metrics` accepts every
//! node's output, and a real Prometheus server scraping two coordinators and
//! two gateways reads the series back.

mod common;

use common::cluster::*;
use common::*;
use serde_json::json;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[tokio::test]
async fn promtool_accepts_every_node_s_metrics() {
    // Standalone gateway, after some traffic.
    let gw = Server::start().await;
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"rw"}))))).await;
    send(&mut ws, "hi").await;
    next_text(&mut ws).await;
    let (ok, report) = promtool_check(&gw.metrics().await);
    assert!(ok, "standalone gateway: {report}");

    // Cluster gateway and coordinator.
    let c = Cluster::start(&redis_url(), 1, 1).await;
    for node in [&c.gateways[0], &c.coordinators[0]] {
        let (ok, report) = promtool_check(&node.metrics().await);
        assert!(ok, "{report}");
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(gateways: &[String], coordinators: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("pgws-prometheus"));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: pgws-gateway\n    static_configs: [{{targets: {gateways:?}}}]\n  - job_name: pgws-coordinator\n    static_configs: [{{targets: {coordinators:?}}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)");
        Prometheus { child, port, dir }
    }

    async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        match http_get(addr, &path).await {
            Ok((200, body)) => {
                // The body may be chunked; the JSON object is what matters.
                let start = body.find('{').unwrap_or(0);
                let end = body.rfind('}').map(|e| e + 1).unwrap_or(body.len());
                serde_json::from_str::<serde_json::Value>(&body[start..end])
                    .ok()
                    .and_then(|v| v["data"]["result"].as_array().cloned())
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_two_coordinators_and_two_gateways() {
    let c = Cluster::start(&redis_url(), 2, 2).await;
    let admin = |g: &Server| g.admin.expect("admin").to_string();
    let prometheus = Prometheus::start(
        &c.gateways.iter().map(admin).collect::<Vec<_>>(),
        &c.coordinators.iter().map(admin).collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let up = prometheus.query("sum(up)").await;
        let value = up
            .first()
            .and_then(|r| r["value"][1].as_str())
            .unwrap_or("0")
            .to_string();
        if value == "4" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw 4 healthy targets (sum(up) = {value})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info = prometheus.query("pgws_build_info").await;
    let mut roles: Vec<String> = info
        .iter()
        .map(|r| r["metric"]["role"].as_str().unwrap_or("").to_string())
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        vec!["coordinator", "coordinator", "gateway", "gateway"]
    );
    let leaders = prometheus.query("sum(pgws_coordinator_leader)").await;
    assert_eq!(
        leaders.first().and_then(|r| r["value"][1].as_str()),
        Some("1"),
        "one leader"
    );
    let redis = prometheus.query("min(pgws_redis_up)").await;
    assert_eq!(
        redis.first().and_then(|r| r["value"][1].as_str()),
        Some("1")
    );
}
