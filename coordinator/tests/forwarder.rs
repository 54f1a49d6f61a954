//! The leader's forwarder, driven straight through Redis: entries in the
//! writes stream become NOTIFYs, in order, once a coordinator runs, and
//! leave the stream once committed.

use pgws_testkit::cluster::Cluster;
use pgws_testkit::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn stream_entries_become_notifies_in_order_and_are_trimmed() {
    let mut c = Cluster::start(&redis_url(), 0, 0).await;
    let client = redis::Client::open(c.redis_url.as_str()).expect("url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stream = format!("{{{}}}:writes", c.prefix);
    for i in 0..30 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("c")
            .arg("chat")
            .arg("m")
            .arg(format!("m{i}"))
            .query_async(&mut redis)
            .await
            .expect("XADD");
    }
    let mut pg = listen_ready(&c.listen_channel).await;
    c.add_coordinator().await;
    for i in 0..30 {
        assert_eq!(
            recv_within(&mut pg).await,
            format!("m{i}"),
            "in stream order"
        );
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let len: usize = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut redis)
            .await
            .expect("XLEN");
        if len == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{len} entries left in the stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut redis)
        .await
        .expect("DEL");
}
