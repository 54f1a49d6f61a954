//! The same binaries against a Redis Cluster (sharded pub/sub, hash-tagged
//! coordination keys): the core cluster behaviours again.

mod common;

use common::cluster::*;
use common::*;

#[tokio::test]
async fn on_a_redis_cluster_notifications_and_writes_flow_once() {
    let servers = RedisClusterServers::start().await;
    let c = Cluster::start_with(&servers.urls(), true, 2, 2).await;
    // Channels hash to different shards: use several.
    assert_core_flow(&c, 4).await;
}

#[tokio::test]
async fn on_a_redis_cluster_sigterm_hands_over_within_a_second() {
    let servers = RedisClusterServers::start().await;
    let mut c = Cluster::start_with(&servers.urls(), true, 2, 1).await;
    assert_sigterm_handover(&mut c).await;
}

#[tokio::test]
async fn on_a_redis_cluster_history_hashes_with_its_channel_and_recovers() {
    let servers = RedisClusterServers::start().await;
    let c = Cluster::start_with(&servers.urls(), true, 1, 2).await;
    let db = db().await;
    let t = token(serde_json::json!({"mode": "r"}));
    // Plain names, names with a hash tag, and names with braces but no tag
    // (their keys need a computed tag to share the channel's slot).
    let leader = c.leader().await;
    for (i, channel) in [
        unique("room"),
        format!("{}{{7}}", unique("tagged")),
        format!("{}x{{}}y", unique("odd")),
    ]
    .into_iter()
    .enumerate()
    {
        let mut reader = V2::connect(&c.url(0, &t)).await;
        let start = Pos::of(&reader.subscribe(&channel, None).await);
        c.notify(&db, &channel, "1").await;
        let first = Pos::of(&reader.next_message().await);
        assert_eq!(
            (first.epoch.clone(), first.offset),
            (start.epoch.clone(), 1)
        );
        drop(reader);
        for n in 2..=4 {
            c.notify(&db, &channel, &n.to_string()).await;
        }
        // Every notification so far is published (and in history).
        c.coordinators[leader]
            .wait_metric("pgws_notifications_published_total", 4.0 * (i + 1) as f64)
            .await;
        let mut back = V2::connect(&c.url(1, &t)).await;
        let reply = back.subscribe(&channel, Some(&first)).await;
        assert_eq!(reply["recovered"], true, "{channel}: {reply}");
        assert_eq!(reply["replayed"], 3, "{channel}: {reply}");
        for n in 2..=4u64 {
            let m = back.next_message().await;
            assert_eq!(m["offset"], n, "{channel}");
            assert_eq!(payload_of(m["data"].as_str().expect("data")), n.to_string());
        }
    }
}
