//! Several coordinators and gateways sharing one Redis prefix and one
//! listen channel, for the cluster tests.

use crate::db::{db, listen_ready, notify, recv_within};
use crate::http::{http_get, metric_value};
use crate::names::{token, unique, WAIT};
use crate::process::{Server, ServerBuilder};
use crate::ws::{connect, next_text, send, Ws};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub const TTL: Duration = Duration::from_millis(2000);

pub struct Cluster {
    pub redis_url: String,
    pub prefix: String,
    pub listen_channel: String,
    pub coordinators: Vec<Server>,
    pub gateways: Vec<Server>,
    pub cluster_mode: bool,
    /// Extra environment for every node (e.g. OTEL_*).
    pub env: Vec<(String, String)>,
}

impl Cluster {
    pub async fn start(redis_url: &str, coordinators: usize, gateways: usize) -> Cluster {
        Cluster::start_with(redis_url, false, coordinators, gateways).await
    }

    pub async fn start_with(
        redis_url: &str,
        cluster_mode: bool,
        coordinators: usize,
        gateways: usize,
    ) -> Cluster {
        Cluster::start_full(redis_url, cluster_mode, Vec::new(), coordinators, gateways).await
    }

    pub async fn start_full(
        redis_url: &str,
        cluster_mode: bool,
        env: Vec<(String, String)>,
        coordinators: usize,
        gateways: usize,
    ) -> Cluster {
        let mut c = Cluster {
            env,
            redis_url: redis_url.to_string(),
            prefix: unique("pgws-test"),
            listen_channel: unique("pgws-cl"),
            coordinators: Vec::new(),
            gateways: Vec::new(),
            cluster_mode,
        };
        for _ in 0..coordinators {
            c.add_coordinator().await;
        }
        for _ in 0..gateways {
            let g = c.gateway_builder().start().await;
            c.gateways.push(g);
        }
        if coordinators > 0 {
            c.leader().await;
        }
        c
    }

    pub fn coordinator_builder(&self) -> ServerBuilder {
        let b = Server::coordinator(&self.redis_url, &self.prefix, &self.listen_channel)
            .env("PGWS_LEADER_TTL", TTL.as_millis().to_string())
            .env("PGWS_REDIS_CLUSTER", self.cluster_mode.to_string());
        self.env.iter().fold(b, |b, (k, v)| b.env(k, v.clone()))
    }

    pub fn gateway_builder(&self) -> ServerBuilder {
        let b = Server::cluster_gateway(&self.redis_url, &self.prefix, &self.listen_channel)
            .env("PGWS_REDIS_CLUSTER", self.cluster_mode.to_string());
        self.env.iter().fold(b, |b, (k, v)| b.env(k, v.clone()))
    }

    pub async fn add_coordinator(&mut self) {
        let c = self.coordinator_builder().start().await;
        self.coordinators.push(c);
    }

    /// Index of the one coordinator reporting leadership, once it is ready
    /// (LISTENing). Coordinators in `skip` (stopped processes) are not asked.
    pub async fn leader_except(&self, skip: &[usize]) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leaders = Vec::new();
            for (i, c) in self.coordinators.iter().enumerate() {
                if skip.contains(&i) {
                    continue;
                }
                let Some(admin) = c.admin else { continue };
                let Ok(Ok((200, text))) =
                    tokio::time::timeout(Duration::from_secs(2), http_get(admin, "/metrics")).await
                else {
                    continue;
                };
                if metric_value(&text, "pgws_coordinator_leader") == 1.0
                    && metric_value(&text, "pgws_listener_up") == 1.0
                {
                    leaders.push(i);
                }
            }
            if let [one] = leaders.as_slice() {
                return *one;
            }
            assert!(
                Instant::now() < deadline,
                "no single ready leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn leader(&self) -> usize {
        self.leader_except(&[]).await
    }

    pub fn url(&self, gateway: usize, path: &str) -> String {
        self.gateways[gateway].url(path)
    }

    /// A reader of `channel` on every gateway, subscribed in Redis.
    pub async fn readers(&self, channel: &str) -> Vec<Ws> {
        let t = token(serde_json::json!({"mode":"r"}));
        let mut out = Vec::new();
        for i in 0..self.gateways.len() {
            out.push(connect(&self.url(i, &format!("{channel}/{t}"))).await);
        }
        for g in &self.gateways {
            g.wait_metric("pgws_redis_subscriptions", 1.0).await;
        }
        out
    }

    pub async fn notify(&self, db: &tokio_postgres::Client, channel: &str, payload: &str) {
        let text = serde_json::json!({"channel": channel, "payload": payload}).to_string();
        notify(db, &self.listen_channel, &text).await;
    }
}

/// The `payload` field of a delivered notification.
pub fn payload_of(text: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(text).expect("json");
    v["payload"].as_str().expect("payload").to_string()
}

/// Backends currently running exactly `LISTEN "<channel>"`.
pub async fn listen_backends(db: &tokio_postgres::Client, channel: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE query = $1",
        &[&format!("LISTEN \"{channel}\"")],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

pub async fn wait_listen_backends(db: &tokio_postgres::Client, channel: &str, want: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = listen_backends(db, channel).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} LISTEN backends, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Notify `channel` every 50 ms until `reader` receives one of those
/// notifications; returns the time it took and every payload received.
pub async fn pump_until_delivered(
    cluster: &Cluster,
    db: &tokio_postgres::Client,
    channel: &str,
    reader: &mut Ws,
    tag: &str,
) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        cluster.notify(db, channel, &format!("{tag}-{n}")).await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(50), reader.next()).await
        {
            received.push(payload_of(&t));
            return (started.elapsed(), received);
        }
        assert!(started.elapsed() < WAIT * 2, "delivery never resumed");
    }
}

/// SIGTERM the leader under a steady trickle of notifications: the standby
/// delivers within a second, the old leader exits 0, and one backend
/// LISTENs again.
pub async fn assert_sigterm_handover(c: &mut Cluster) {
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    let leader = c.leader().await;
    c.coordinators[leader].signal("TERM");
    let (took, _) = pump_until_delivered(c, &db, &chat, &mut readers[0], "after-term").await;
    assert!(took <= Duration::from_secs(1), "handover took {took:?}");
    assert_eq!(c.coordinators[leader].wait_exit(WAIT).await.code(), Some(0));
    wait_listen_backends(&db, &c.listen_channel, 1).await;
}

/// The core behaviours of a cluster: on `channels` channels (spread over
/// shards on a Redis Cluster), every gateway's reader gets each
/// notification exactly once, and a writer's message becomes exactly one
/// NOTIFY.
pub async fn assert_core_flow(c: &Cluster, channels: usize) {
    let channels: Vec<String> = (0..channels).map(|i| unique(&format!("room{i}"))).collect();
    let mut readers = Vec::new();
    for ch in &channels {
        readers.push(c.readers(ch).await);
    }
    for g in &c.gateways {
        g.wait_metric("pgws_redis_subscriptions", channels.len() as f64)
            .await;
    }
    let db = db().await;
    for ch in &channels {
        c.notify(&db, ch, &format!("hello {ch}")).await;
        c.notify(&db, ch, "marker").await;
    }
    for (ch, rs) in channels.iter().zip(readers.iter_mut()) {
        for r in rs.iter_mut() {
            assert_eq!(payload_of(&next_text(r).await), format!("hello {ch}"));
            assert_eq!(payload_of(&next_text(r).await), "marker", "exactly once");
        }
    }

    let mut pg = listen_ready(&c.listen_channel).await;
    let mut w = connect(&c.url(
        0,
        &format!("{}/{}", channels[0], token(serde_json::json!({"mode":"w"}))),
    ))
    .await;
    send(&mut w, "via the cluster").await;
    let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(v["payload"], "via the cluster");
    notify(&db, &c.listen_channel, "after").await;
    assert_eq!(
        recv_within(&mut pg).await,
        "after",
        "exactly one NOTIFY per write"
    );
}
