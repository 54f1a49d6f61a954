//! The same binaries against a Redis Cluster (sharded pub/sub, hash-tagged
//! coordination keys): the core cluster behaviours again.

mod common;

use common::cluster::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn on_a_redis_cluster_notifications_and_writes_flow_once() {
    let servers = RedisClusterServers::start().await;
    let c = Cluster::start_with(&servers.urls(), true, 2, 2).await;
    // Channels hash to different shards: use several.
    let channels: Vec<String> = (0..4).map(|i| unique(&format!("room{i}"))).collect();
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
        &format!("{}/{}", channels[0], token(json!({"mode":"w"}))),
    ))
    .await;
    send(&mut w, "via the cluster").await;
    let v: serde_json::Value = serde_json::from_str(&recv_within(&mut pg).await).expect("json");
    assert_eq!(v["payload"], "via the cluster");
    notify(&db, &c.listen_channel, "after").await;
    assert_eq!(recv_within(&mut pg).await, "after");
}

#[tokio::test]
async fn on_a_redis_cluster_sigterm_hands_over_within_a_second() {
    let servers = RedisClusterServers::start().await;
    let mut c = Cluster::start_with(&servers.urls(), true, 2, 1).await;
    assert_sigterm_handover(&mut c).await;
}
