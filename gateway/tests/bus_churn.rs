//! The Redis bus under subscription churn, with Redis 2 ms away (a
//! delaying proxy between the gateway and the shared Redis): one channel's
//! subscribe/unsubscribe storm does not hold other subscriptions up, a v1
//! socket opened meanwhile receives what is published after it opened, and
//! the queue of subscription changes is bounded with a counted refusal.

mod common;

use common::cluster::*;
use common::proxy::{Direction, Proxy};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How far Redis is, one way.
const DISTANCE: Duration = Duration::from_millis(2);

/// Far under the 5 s after which a subscription is answered 503.
const PROMPT: Duration = Duration::from_secs(1);

/// The shared Redis's address, and its URL with that address replaced by
/// `proxy` (credentials and database kept).
fn through(redis: &str, proxy: Option<SocketAddr>) -> (SocketAddr, String) {
    let rest = redis.strip_prefix("redis://").expect("a redis:// URL");
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (format!("{auth}@"), rest),
        None => (String::new(), rest),
    };
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, format!("/{path}")),
        None => (rest, String::new()),
    };
    let target: SocketAddr = host
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("host:port");
    let addr = proxy.unwrap_or(target);
    (target, format!("redis://{auth}{addr}{path}"))
}

/// A coordinator on the shared Redis and a gateway reaching it through a
/// proxy `DISTANCE` away; `env` is added to the gateway's.
async fn distant_cluster(env: &[(&str, &str)]) -> (Cluster, Server, Proxy) {
    let redis = redis_url();
    let (target, _) = through(&redis, None);
    let proxy = Proxy::start(target).await.expect("proxy");
    proxy.set_delay(Direction::Both, DISTANCE);
    let (_, url) = through(&redis, Some(proxy.addr()));
    let c = Cluster::start(&redis, 1, 0).await;
    let builder = env.iter().fold(
        Server::cluster_gateway(&url, &c.prefix, &c.listen_channel),
        |b, (k, v)| b.env(k, *v),
    );
    let gateway = builder.start().await;
    (c, gateway, proxy)
}

fn reader_token() -> String {
    token(json!({"mode": "r"}))
}

/// A socket subscribing to `channel` and at once unsubscribing, 50 times a
/// second (the default command rate, 100/s) from `phase` on, until `stop`.
/// Replies are read and dropped; `sent` counts the commands.
async fn churn(
    url: String,
    channel: String,
    phase: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let ws = V2::connect(&url).await.ws;
    let (mut sink, mut stream) = ws.split();
    let draining = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let start = tokio::time::Instant::now() + phase;
    let mut tick = tokio::time::interval_at(start, Duration::from_millis(20));
    let mut id = 0u64;
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        // Both frames in one write: the gateway reads them together, so
        // the channel loses this reader as soon as it got it.
        for kind in ["subscribe", "unsubscribe"] {
            id += 1;
            let command = json!({"type": kind, "id": id, "channel": channel});
            if sink.feed(Message::text(command.to_string())).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        sent.fetch_add(2, Ordering::AcqRel);
    }
    let _ = sink.close().await;
    draining.abort();
}

/// The churn attack: 10 sockets on one long channel name.
struct Attack {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    sockets: Vec<tokio::task::JoinHandle<()>>,
}

impl Attack {
    fn start(gateway: &Server) -> Attack {
        let channel = format!("{}-{}", unique("churn"), "x".repeat(900));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        // Each socket 2 ms after the previous one: the channel keeps
        // losing its last reader and getting a first one again.
        let sockets = (0..10u32)
            .map(|i| {
                let url = gateway.url(&reader_token());
                let phase = Duration::from_millis(2) * i;
                tokio::spawn(churn(
                    url,
                    channel.clone(),
                    phase,
                    stop.clone(),
                    sent.clone(),
                ))
            })
            .collect();
        Attack {
            stop,
            sent,
            sockets,
        }
    }

    /// Wait until the attack has sent `n` commands.
    async fn under_way(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.sent.load(Ordering::Acquire) < n {
            assert!(Instant::now() < deadline, "the attack did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        for s in self.sockets {
            let _ = s.await;
        }
        self.sent.load(Ordering::Acquire)
    }
}

#[tokio::test]
async fn churn_on_one_channel_does_not_starve_other_subscriptions() {
    let (c, gateway, _proxy) = distant_cluster(&[]).await;
    let db = db().await;
    let rss_before = gateway.rss_kib();
    let attack = Attack::start(&gateway);
    // Two seconds of attack at the full rate: the old bus was seconds
    // behind by then, and every other subscribe timed out (503 after 5 s).
    attack.under_way(2_000).await;

    let mut client = V2::connect(&gateway.url(&reader_token())).await;
    let mut slowest = Duration::ZERO;
    let mut channels = Vec::new();
    for i in 0..5 {
        let channel = unique(&format!("calm{i}"));
        let started = Instant::now();
        let reply = client.subscribe(&channel, None).await;
        let took = started.elapsed();
        assert!(reply.get("error").is_none(), "{reply}");
        slowest = slowest.max(took);
        channels.push(channel);
    }
    assert!(
        slowest < PROMPT,
        "a subscribe took {slowest:?} during churn"
    );
    // And the subscription is live.
    c.notify(&db, &channels[4], "calm").await;
    let m = client.next_message().await;
    assert_eq!(payload_of(m["data"].as_str().expect("data")), "calm");

    let rss_during = gateway.rss_kib();
    let sent = attack.stop().await;
    eprintln!(
        "churn: {sent} commands; slowest other subscribe {slowest:?}; RSS {rss_before} -> {rss_during} KiB"
    );
}

#[tokio::test]
async fn a_v1_socket_opened_during_churn_receives_what_follows_its_opening() {
    let (c, gateway, _proxy) = distant_cluster(&[]).await;
    let db = db().await;
    let attack = Attack::start(&gateway);
    attack.under_way(2_000).await;

    // Open means subscribed: the first notification after it is delivered
    // (the old bus registered the socket and subscribed seconds later).
    let channel = unique("v1calm");
    let started = Instant::now();
    let mut v1 = connect(&gateway.url(&format!("{channel}/{}", reader_token()))).await;
    let opened_in = started.elapsed();
    assert!(opened_in < PROMPT, "the upgrade took {opened_in:?}");
    c.notify(&db, &channel, "first").await;
    let got = tokio::time::timeout(PROMPT * 3, next_text(&mut v1))
        .await
        .expect("the v1 socket missed the notification sent after it opened");
    assert_eq!(payload_of(&got), "first");

    let sent = attack.stop().await;
    eprintln!("churn: {sent} commands; v1 upgrade answered in {opened_in:?}");
}

#[tokio::test]
async fn the_queue_of_subscription_changes_is_bounded_and_refusals_are_counted() {
    let (_c, gateway, proxy) = distant_cluster(&[("PGWS_REDIS_SUBSCRIPTION_QUEUE", "3")]).await;
    // Redis unreachable: nothing leaves the queue.
    proxy.partition();
    let deadline = Instant::now() + WAIT;
    while gateway.metric("pgws_redis_up").await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not see Redis go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut client = V2::connect(&gateway.url(&reader_token())).await;
    // Three channels fill the queue; their replies come once Redis answers.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let channel = unique(&format!("queued{i}"));
        let command = json!({"type": "subscribe", "id": 100 + i, "channel": channel});
        client.send_text(&command.to_string()).await;
        waiting.push(100 + i);
    }
    // One more is refused at once, with its reason.
    let started = Instant::now();
    let reply = client.subscribe(&unique("over"), None).await;
    assert!(
        started.elapsed() < PROMPT,
        "the refusal took {:?}",
        started.elapsed()
    );
    assert_eq!(reply["error"]["code"], 503, "{reply}");
    let reason = reply["error"]["reason"].as_str().expect("reason");
    assert!(reason.contains("PGWS_REDIS_SUBSCRIPTION_QUEUE"), "{reason}");
    // A v1 reader of a new channel is refused before its upgrade.
    let (status, body) =
        refused(&gateway.url(&format!("{}/{}", unique("v1over"), reader_token()))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        gateway
            .metric(r#"pgws_bus_subscriptions_refused_total{reason="queue_full"}"#)
            .await,
        2.0
    );

    // Redis back: the queued subscriptions are answered (confirmed, or 503
    // if the reconnection took longer than their 5 s), and new ones work.
    proxy.heal();
    for id in waiting {
        let reply = client.reply_to(id).await;
        assert!(
            reply.get("error").is_none() || reply["error"]["code"] == 503,
            "{reply}"
        );
    }
    let reply = client.subscribe(&unique("after"), None).await;
    assert!(reply.get("error").is_none(), "{reply}");
}

/// Poll `series` on `gateway` until it equals `want`.
async fn wait_exactly(gateway: &Server, series: &str, want: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = gateway.metric(series).await;
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_v1_reader_whose_subscription_is_not_confirmed_is_refused_and_leaves_nothing() {
    let (c, gateway, proxy) = distant_cluster(&[]).await;
    let db = db().await;
    proxy.partition();
    wait_exactly(&gateway, "pgws_redis_up", 0.0).await;

    // Redis cannot confirm: after its 5 s the upgrade is refused, and the
    // reader is off its channel again (nothing registered, nothing queued).
    let channel = unique("unconfirmed");
    let url = gateway.url(&format!("{channel}/{}", reader_token()));
    let started = Instant::now();
    let (status, body) = refused(&url).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Subscription unavailable"), "{body}");
    assert!(took >= Duration::from_secs(4), "refused after {took:?}");
    assert_eq!(
        gateway
            .metric(r#"pgws_bus_subscriptions_refused_total{reason="unconfirmed"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"pgws_connections_refused_total{reason="subscription_unavailable"}"#)
            .await,
        1.0
    );
    assert_eq!(gateway.metric("pgws_channels").await, 0.0);
    assert_eq!(gateway.metric("pgws_redis_subscription_queue").await, 0.0);

    // Redis back: the same socket opens, subscribed.
    proxy.heal();
    wait_exactly(&gateway, "pgws_redis_up", 1.0).await;
    let mut v1 = connect(&url).await;
    c.notify(&db, &channel, "now").await;
    assert_eq!(payload_of(&next_text(&mut v1).await), "now");
}
