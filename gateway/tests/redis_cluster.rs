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
