//! Managed Redis: TLS (`rediss://` with a private CA, a client certificate
//! and an ACL user) for a single Redis and a Redis Cluster, a wrong CA, and
//! a Sentinel failover under traffic.

mod common;

use common::cluster::*;
use common::redis_server::{RedisTls, Sentinel, SentinelDeployment};
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn tls_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(unique("pgws-redis-pki"))
}

#[tokio::test]
async fn the_cluster_works_over_rediss_with_a_client_certificate_and_an_acl_user() {
    let tls = RedisTls::new(&tls_dir());
    let redis = RedisServer::start_tls(&tls, "app", "app-password", &[]).await;
    assert!(redis.url().starts_with("rediss://app:app-password@"));
    let c = Cluster::start_full(&redis.url(), false, tls.env(), 2, 2).await;
    assert_core_flow(&c, 2).await;
}

#[tokio::test]
async fn a_redis_cluster_works_over_tls() {
    let tls = RedisTls::new(&tls_dir());
    let servers = RedisClusterServers::start_tls(&tls).await;
    let c = Cluster::start_full(&servers.urls(), true, tls.env(), 2, 2).await;
    assert_core_flow(&c, 4).await;
}

#[tokio::test]
async fn a_wrong_ca_keeps_the_gateway_unready_and_says_why() {
    let tls = RedisTls::new(&tls_dir());
    let redis = RedisServer::start_tls(&tls, "app", "app-password", &[]).await;
    let other = common::certs::Pki::new(&tls_dir(), "other");
    let gw = Server::cluster_gateway(&redis.url(), &unique("pgws-test"), &unique("pgws-cl"))
        .env("PGWS_REDIS_CA_FILE", other.ca.display().to_string())
        .env(
            "PGWS_REDIS_CERT_FILE",
            tls.client.cert.display().to_string(),
        )
        .env("PGWS_REDIS_KEY_FILE", tls.client.key.display().to_string())
        .no_wait()
        .start()
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let log = gw.log_text();
        if log.contains("cannot connect to Redis") {
            assert!(
                log.contains("not signed by a CA in PGWS_REDIS_CA_FILE"),
                "the certificate problem is named:\n{log}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection error logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = http_get(gw.admin.expect("admin"), "/readyz")
        .await
        .expect("readyz");
    assert_eq!((status, body.trim()), (503, "redis unreachable"));
}

/// Read from `ws` until a text message arrives; none may be a close.
async fn next_payload(ws: &mut Ws) -> String {
    payload_of(&next_text(ws).await)
}

#[tokio::test]
async fn behind_sentinel_a_master_failover_closes_no_socket_and_everything_resumes() {
    let mut deployment = SentinelDeployment::start().await;
    // Writers may wait out a failover instead of being told to retry.
    let env = vec![("PGWS_WRITE_TIMEOUT".to_string(), "20000".to_string())];
    let c = Cluster::start_full(&deployment.url(), false, env, 2, 2).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    let db = db().await;
    c.notify(&db, &chat, "before").await;
    for r in readers.iter_mut() {
        assert_eq!(next_payload(r).await, "before");
    }
    let mut pg = listen_ready(&c.listen_channel).await;
    let writer_token = token(json!({"mode": "w"}));
    let mut writer = connect(&c.url(1, &format!("{chat}/{writer_token}"))).await;

    let killed = Instant::now();
    deployment.master.stop(); // kill -9
    send(&mut writer, "written during the failover").await;
    let mut resumed = Duration::ZERO;
    for r in readers.iter_mut() {
        pump_until_delivered(&c, &db, &chat, r, "after").await;
        resumed = resumed.max(killed.elapsed());
    }
    deployment.wait_master(deployment.replica.port).await;
    println!("sentinel failover: deliveries resumed {resumed:?} after the master was killed");

    // The write made during the failover arrives, once.
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let text = tokio::time::timeout(left, pg.recv())
            .await
            .expect("the write made during the failover never arrived")
            .expect("listener");
        if text.contains("written during the failover") {
            break;
        }
    }
    // Writes after the failover flow too.
    send(&mut writer, "written after the failover").await;
    loop {
        let text = recv_within(&mut pg).await;
        assert!(
            !text.contains("written during the failover"),
            "a write arrived twice"
        );
        if text.contains("written after the failover") {
            break;
        }
    }
    // No socket was closed: every reader still reads, and no gateway
    // closed anything.
    c.notify(&db, &chat, "still open").await;
    for r in readers.iter_mut() {
        loop {
            match tokio::time::timeout(WAIT, r.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if payload_of(&t) == "still open" => break,
                Ok(Some(Ok(Message::Close(frame)))) => panic!("a reader was closed: {frame:?}"),
                Ok(Some(Ok(_))) => continue,
                other => panic!("reader: {other:?}"),
            }
        }
    }
    for g in &c.gateways {
        let metrics = g.metrics().await;
        let closed: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("pgws_connections_closed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(closed, 0.0, "a gateway closed sockets:\n{metrics}");
    }
}

/// Sentinels named in `order`, each watching its own `mymaster`, all
/// answering; the `redis+sentinel://` URL naming them in that order.
async fn sentinels_naming(masters: &[u16]) -> (Vec<Sentinel>, String) {
    let sentinels: Vec<Sentinel> = masters.iter().map(|&port| Sentinel::start(port)).collect();
    for (sentinel, &port) in sentinels.iter().zip(masters) {
        sentinel.wait_named(port).await;
    }
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/mymaster", hosts.join(","));
    (sentinels, url)
}

/// The second review: the master was whatever the first answering
/// sentinel named. A lying sentinel — listed first, so the old code
/// followed it — is outvoted by the two that agree; when no master has a
/// majority of the answers, none is followed, counted and logged.
#[tokio::test]
async fn a_lying_sentinel_is_outvoted_and_sentinels_that_disagree_are_refused() {
    let honest = RedisServer::start(&[]).await;
    let liar = RedisServer::start(&[]).await;
    let other_liar = RedisServer::start(&[]).await;

    let (_outvoted, url) = sentinels_naming(&[liar.port, honest.port, honest.port]).await;
    let gw = Server::cluster_gateway(&url, &unique("pgws-test"), &unique("pgws-cl"))
        .no_wait()
        .start()
        .await;
    let connected = wait_log_line(&gw, "connected to the Redis master named by Sentinel").await;
    assert!(
        connected.contains(&format!("127.0.0.1:{}", honest.port)),
        "the majority's master (port {}), not the liar's ({}): {connected}",
        honest.port,
        liar.port
    );

    let (_split, url) = sentinels_naming(&[liar.port, other_liar.port, honest.port]).await;
    let gw = Server::cluster_gateway(&url, &unique("pgws-test"), &unique("pgws-cl"))
        .no_wait()
        .start()
        .await;
    gw.wait_metric(
        "pgws_redis_sentinel_refusals_total{reason=\"no_majority\"}",
        1.0,
    )
    .await;
    let refused = wait_log_line(&gw, "the sentinels do not agree on the master").await;
    assert!(
        refused.contains("answered=3") && refused.contains("votes=1"),
        "{refused}"
    );
    assert!(
        !gw.log_text()
            .contains("connected to the Redis master named by Sentinel"),
        "no master followed:\n{}",
        gw.log_text()
    );
    let (status, _) = http_get(gw.admin.expect("admin"), "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503);
}

/// The first log line of `gw` containing `text`, waiting for it.
async fn wait_log_line(gw: &Server, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = gw.log_text().lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line {text:?}:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader that keeps its lock across a Sentinel failover starts a new
/// epoch on every channel: the new master may lack the old one's last
/// appends, and offsets assigned again in the same epoch would carry other
/// messages than readers got — `pgws-chaos --sentinel --seed 6` (with
/// `--kinds sentinel-failover,…`) found offsets reused and a silent loss.
/// Before the fix the epoch stayed the same.
#[tokio::test]
async fn behind_sentinel_a_leader_that_follows_a_failover_starts_a_new_epoch() {
    let deployment = SentinelDeployment::start().await;
    // A long ttl: the leader keeps its lock across the failover.
    let env = vec![("PGWS_LEADER_TTL".to_string(), "30000".to_string())];
    let c = Cluster::start_full(&deployment.url(), false, env, 1, 1).await;
    let chat = unique("chat");
    let mut v2 = V2::connect(&c.url(0, &token(json!({"mode": "r"})))).await;
    let reply = v2.subscribe(&chat, None).await;
    assert!(reply.get("error").is_none(), "{reply}");
    c.gateways[0]
        .wait_metric("pgws_redis_subscriptions", 1.0)
        .await;
    let db = db().await;
    c.notify(&db, &chat, "before").await;
    let before = v2.next_message().await;
    let old_epoch = Pos::of(&before).epoch;

    let out = std::process::Command::new("redis-cli")
        .args(["-p", &deployment.sentinels[0].port.to_string()])
        .args(["SENTINEL", "FAILOVER", "mymaster"])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    deployment.wait_master(deployment.replica.port).await;
    let coordinator = &c.coordinators[0];
    // Deliveries resume (the gateway re-subscribes on the new master) in a
    // new epoch, from the same leader. Until the leader's and the
    // gateway's handles follow the failover (each asks the sentinels every
    // 500 ms) both may still use the old master, which takes writes until
    // the sentinels demote it: messages there keep the old epoch, with
    // offsets after the last one.
    let deadline = Instant::now() + WAIT * 2;
    let mut n = 0;
    let mut last_offset = Pos::of(&before).offset;
    loop {
        n += 1;
        c.notify(&db, &chat, &format!("after-{n}")).await;
        let got = tokio::time::timeout(Duration::from_millis(500), v2.next_message()).await;
        if let Ok(m) = got {
            let pos = Pos::of(&m);
            if pos.epoch != old_epoch {
                break;
            }
            assert!(
                pos.offset > last_offset,
                "an offset of the old epoch again after the failover: {m}"
            );
            last_offset = pos.offset;
        }
        assert!(
            Instant::now() < deadline,
            "no delivery in a new epoch after the failover"
        );
    }
    assert_eq!(
        c.coordinators.len(),
        1,
        "one coordinator: the epoch changed without a new leader"
    );
    assert!(
        coordinator
            .metric("pgws_publisher_master_moves_total")
            .await
            >= 1.0
    );
    assert!(coordinator
        .log_text()
        .contains("the Redis master moved while publishing"));
}
