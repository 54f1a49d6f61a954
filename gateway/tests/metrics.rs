//! The admin endpoint's metrics reflect what happened.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn the_process_memory_and_descriptors_are_exported_with_ten_second_buckets() {
    let gw = Server::start().await;
    let text = gw.metrics().await;
    assert!(
        metric_value(&text, "process_resident_memory_bytes") > 0.0,
        "{text}"
    );
    let open = metric_value(&text, "process_open_fds");
    assert!(open >= 3.0, "{text}");
    assert!(metric_value(&text, "process_max_fds") >= open, "{text}");
    assert!(
        text.contains("pgws_delivery_latency_seconds_bucket{le=\"10\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_count_connections_messages_and_bytes() {
    let gw = Server::start().await;
    let chat = unique("chat");
    let mut ws = connect(&gw.url(&format!("{chat}/{}", token(json!({"mode":"rw"}))))).await;
    gw.wait_metric("pgws_connections{mode=\"rw\"}", 1.0).await;
    send(&mut ws, "ping-pong").await;
    next_text(&mut ws).await; // loop-back
                              // The relay counts its NOTIFY after the commit returns, which can be
                              // after the notification has already come back through the listener.
    gw.wait_metric("pgws_notify_sent_total", 1.0).await;
    gw.wait_metric("pgws_messages_delivered_total", 1.0).await;
    gw.wait_metric("pgws_delivery_latency_seconds_count", 1.0)
        .await;
    let text = gw.metrics().await;
    assert_eq!(metric_value(&text, "pgws_connections_accepted_total"), 1.0);
    assert_eq!(metric_value(&text, "pgws_messages_received_total"), 1.0);
    assert_eq!(metric_value(&text, "pgws_bytes_received_total"), 9.0);
    assert_eq!(metric_value(&text, "pgws_messages_delivered_total"), 1.0);
    assert!(metric_value(&text, "pgws_bytes_delivered_total") > 9.0);
    assert_eq!(metric_value(&text, "pgws_listener_up"), 1.0);
    assert_eq!(
        metric_value(&text, "pgws_delivery_latency_seconds_count"),
        1.0
    );
    assert!(text.contains("pgws_build_info{"), "{text}");
    ws.close(None).await.expect("close");
    gw.wait_metric(
        "pgws_connections_closed_total{reason=\"client_closed\"}",
        1.0,
    )
    .await;
    assert_eq!(gw.metric("pgws_connections{mode=\"rw\"}").await, 0.0);
}
