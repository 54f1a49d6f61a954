//! The durable outbox in cluster mode: the leader reads it and publishes
//! at the offsets PostgreSQL assigned. Through a `kill -9` of the leader
//! and a time with every coordinator down, readers that stayed connected
//! get every committed send exactly once in commit order, and a v2 client
//! that was away recovers with its epoch unchanged.

mod common;

use common::cluster::Cluster;
use common::redis_server::RedisServer;
use common::*;
use pgws_testkit::outbox::{Ledger, Outcome, TestDb};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn payload(channel: &str, tag: &str) -> String {
    format!(r#"{{"channel":"{channel}","payload":"{tag}"}}"#)
}

/// One send per transaction on `channel` until `stop`; reconnects.
async fn sender(uri: String, ledger: Ledger, channel: String, stop: Arc<AtomicBool>) {
    let (client, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let p = payload(&channel, &format!("c-{n}"));
        let issued = Instant::now();
        let outcome = match client.execute("SELECT pgws.send($1)", &[&p]).await {
            Ok(_) => Outcome::Committed {
                issued,
                returned: Instant::now(),
            },
            Err(_) => Outcome::Maybe,
        };
        ledger.record(&channel, &p, outcome);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn until_committed(ledger: &Ledger, channel: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.committed(channel) < n {
        assert!(Instant::now() < deadline, "senders stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn through_a_leader_kill_and_every_coordinator_down_nothing_is_lost() {
    let db = TestDb::create().await;
    let env = vec![
        ("PGWS_DB_URI".to_string(), db.uri.clone()),
        ("PGWS_OUTBOX".to_string(), "true".to_string()),
        ("PGWS_HISTORY_SIZE".to_string(), "100000".to_string()),
        ("PGWS_HISTORY_TTL".to_string(), "600".to_string()),
    ];
    let mut c = Cluster::start_full(&redis_url(), false, env, 2, 2).await;
    let ch = unique("obc");
    let mut readers = c.readers(&ch).await;
    let mut away = V2::connect(&c.url(0, &token(json!({"mode": "r"})))).await;
    away.subscribe(&ch, None).await;

    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(sender(
        db.uri.clone(),
        ledger.clone(),
        ch.clone(),
        stop.clone(),
    ));
    until_committed(&ledger, &ch, 20).await;
    // The v2 client leaves after its first message.
    let first = Pos::of(&away.next_message().await);
    drop(away);

    // kill -9 of the leader.
    until_committed(&ledger, &ch, 100).await;
    let leader = c.leader().await;
    c.coordinators[leader].signal("KILL");
    c.coordinators[leader].wait_exit(WAIT).await;
    let mut dead = vec![leader];
    c.leader_except(&dead).await;

    // Every coordinator down while senders go on, then back.
    until_committed(&ledger, &ch, 250).await;
    for i in 0..c.coordinators.len() {
        if !dead.contains(&i) {
            c.coordinators[i].signal("TERM");
            c.coordinators[i].wait_exit(WAIT).await;
            dead.push(i);
        }
    }
    let down = Instant::now();
    let before = ledger.committed(&ch);
    while ledger.committed(&ch) < before + 100 || down.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.add_coordinator().await;
    c.add_coordinator().await;
    c.leader_except(&dead).await;
    until_committed(&ledger, &ch, before + 200).await;
    stop.store(true, Ordering::Relaxed);
    sending.await.expect("sender");

    assert_readers_got_everything(&ledger, &ch, &mut readers).await;
    let total = ledger.committed(&ch);

    // The client that was away recovers everything since its first
    // message, in the same epoch.
    let mut back = V2::connect(&c.url(1, &token(json!({"mode": "r"})))).await;
    let reply = back.subscribe(&ch, Some(&first)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], first.epoch.as_str(), "the same epoch");
    let replayed = back.read_messages(total - 1).await;
    assert_eq!(
        replayed.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (first.offset + 1..=first.offset + total as u64 - 1).collect::<Vec<_>>()
    );
}
/// The first leader creates the outbox schema, then finds where to start.
/// What commits in between — while a reader is connected and subscribed —
/// is still published: a leader that found no schema starts from the
/// beginning, not from what is committed when it gets round to looking.
/// Deterministic: the test holds the migration's advisory lock, so the
/// leader waits inside its migration; meanwhile the schema appears (the
/// test applies the same file) and sends commit, as they did in the
/// milliseconds between the leader's own migration and its read of the
/// outbox's head (about 1 run in 20 of the test above, under load: the
/// first 1–2 sends never arrived, with no gap reported).
#[tokio::test]
async fn what_commits_while_the_first_leader_creates_the_schema_is_published() {
    use pgws_postgres::outbox::{schema, SHARD_LOCKS};
    let db = TestDb::create().await;
    let migration = db.client().await;
    migration
        .execute("SELECT pg_advisory_lock($1, -1)", &[&SHARD_LOCKS])
        .await
        .expect("the migration's lock");
    let env = vec![
        ("PGWS_DB_URI".to_string(), db.uri.clone()),
        ("PGWS_OUTBOX".to_string(), "true".to_string()),
    ];
    let c = Cluster::start_full(&redis_url(), false, env, 1, 1).await;
    let ch = unique("obs");
    let mut readers = c.readers(&ch).await;
    // The leader waits inside its migration.
    let deadline = Instant::now() + WAIT;
    loop {
        let waiting: i64 = migration
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                  WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = $1",
                &[&db.name],
            )
            .await
            .expect("pg_locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never migrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The schema appears and sends commit before the leader has looked.
    migration.batch_execute(schema::SQL).await.expect("migrate");
    let sender = db.client().await;
    let ledger = Ledger::default();
    let send = |n: usize| send_numbered(&sender, &ledger, &ch, n);
    for n in 1..=3 {
        send(n).await;
    }
    migration
        .execute("SELECT pg_advisory_unlock($1, -1)", &[&SHARD_LOCKS])
        .await
        .expect("unlock");
    // Sent once the leader reads: these arrive even without the fix (the
    // skipped ones before them leave no gap a gateway could see).
    c.coordinators[0].wait_metric("pgws_outbox_up", 1.0).await;
    for n in 4..=5 {
        send(n).await;
    }
    assert_readers_got_everything(&ledger, &ch, &mut readers).await;
}

/// Redis restarted (losing its data) while senders go on: readers that
/// stayed connected get every committed send once, in order — what the
/// leader published before their gateway had subscribed again is filled
/// from history, which must hold the outage's backlog.
#[tokio::test]
async fn a_redis_restart_loses_nothing_for_connected_readers() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start(&[]).await;
    let env = vec![
        ("PGWS_DB_URI".to_string(), db.uri.clone()),
        ("PGWS_OUTBOX".to_string(), "true".to_string()),
        ("PGWS_HISTORY_SIZE".to_string(), "10000".to_string()),
    ];
    let c = Cluster::start_full(&redis.url(), false, env, 1, 2).await;
    let ch = unique("obr");
    let mut readers = c.readers(&ch).await;
    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(sender(
        db.uri.clone(),
        ledger.clone(),
        ch.clone(),
        stop.clone(),
    ));
    until_committed(&ledger, &ch, 50).await;
    redis.stop();
    let down = Instant::now();
    let before = ledger.committed(&ch);
    while ledger.committed(&ch) < before + 50 || down.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.restart().await;
    let after = ledger.committed(&ch);
    until_committed(&ledger, &ch, after + 100).await;
    stop.store(true, Ordering::Relaxed);
    sending.await.expect("sender");
    assert_readers_got_everything(&ledger, &ch, &mut readers).await;
}

/// Redis took a batch whose pushes never reached a gateway, then lost its
/// data: the next term replays the tail before its saved cursor where the
/// channel has nothing, so the gateway fills its hole from history.
/// Deterministic: the gateway reaches Redis through a proxy that is
/// partitioned while the leader publishes `c-4`; Redis then restarts
/// empty. Without the replay the new term starts after `c-4`, history
/// never holds it, and the gateway logs a hole it cannot fill (what 3 in
/// 48 runs of the test above showed, for the batch just before the kill).
#[tokio::test]
async fn a_batch_redis_took_but_never_pushed_before_losing_its_data_is_replayed() {
    let db = TestDb::create().await;
    let mut redis = RedisServer::start(&[]).await;
    let (c, proxy, leader) = behind_a_proxy(&db, &redis).await;
    let ch = unique("obt");
    let mut readers = c.readers(&ch).await;
    let sender = db.client().await;
    let ledger = Ledger::default();
    let send = |n: usize| send_numbered(&sender, &ledger, &ch, n);
    for n in 1..=3 {
        send(n).await;
    }
    let mut got = read_for(&mut readers[0], 3).await;
    assert_eq!(got.len(), 3, "{got:?}");
    // Published while the gateway is cut off, then lost with Redis.
    proxy.partition();
    send(4).await;
    c.coordinators[leader]
        .wait_metric("pgws_notifications_published_total", 4.0)
        .await;
    redis.restart().await;
    proxy.heal();
    // Send until the gateway delivers again: a later message shows it the
    // hole before it.
    let mut n = 4;
    let deadline = Instant::now() + WAIT * 2;
    while !got.iter().any(|g| number(g) > 4) {
        assert!(Instant::now() < deadline, "delivery never resumed: {got:?}");
        n += 1;
        send(n).await;
        got.extend(read_for_within(&mut readers[0], Duration::from_millis(300)).await);
    }
    let total = ledger.committed(&ch);
    got.extend(read_for(&mut readers[0], total - got.len()).await);
    let report = ledger.check(&ch, &got);
    assert!(report.clean(), "{report}");
}

/// A new channel's first sends, published while the gateway is cut off
/// from Redis before it delivered anything on the channel, still reach
/// its readers: the gateway seeded the channel (nothing published yet)
/// before it subscribed, so the first message it receives after
/// re-subscribing shows the hole before it, and history fills it. Before
/// seeds the gateway delivered from that message on and its readers
/// silently missed `c-1..c-5` (the 30-minute outbox campaign, seeds
/// 417825 and 700155: a Redis restart in a run's first seconds).
#[tokio::test]
async fn a_new_channels_first_sends_published_while_the_gateway_is_cut_off_are_delivered() {
    let db = TestDb::create().await;
    let redis = RedisServer::start(&[]).await;
    let (c, proxy, leader) = behind_a_proxy(&db, &redis).await;
    let ch = unique("obf");
    let mut readers = c.readers(&ch).await;
    let sender = db.client().await;
    let ledger = Ledger::default();
    let send = |n: usize| send_numbered(&sender, &ledger, &ch, n);
    proxy.partition();
    c.gateways[0].wait_metric("pgws_redis_up", 0.0).await;
    for n in 1..=5 {
        send(n).await;
    }
    c.coordinators[leader]
        .wait_metric("pgws_notifications_published_total", 5.0)
        .await;
    proxy.heal();
    c.gateways[0].wait_metric("pgws_redis_up", 1.0).await;
    // Send until the gateway delivers again: its first message shows the
    // hole before it.
    let mut got = Vec::new();
    let mut n = 5;
    let deadline = Instant::now() + WAIT * 2;
    while got.is_empty() {
        assert!(Instant::now() < deadline, "delivery never resumed");
        n += 1;
        send(n).await;
        got.extend(read_for_within(&mut readers[0], Duration::from_millis(300)).await);
    }
    let total = ledger.committed(&ch);
    got.extend(read_for(&mut readers[0], total - got.len()).await);
    let report = ledger.check(&ch, &got);
    assert!(report.clean(), "{report}");
}

/// An outbox cluster of one coordinator and one gateway that reaches
/// `redis` through a fault proxy; the leader's index once its outbox
/// reader is up.
async fn behind_a_proxy(
    db: &TestDb,
    redis: &RedisServer,
) -> (Cluster, common::proxy::Proxy, usize) {
    let env = vec![
        ("PGWS_DB_URI".to_string(), db.uri.clone()),
        ("PGWS_OUTBOX".to_string(), "true".to_string()),
    ];
    let mut c = Cluster::start_full(&redis.url(), false, env, 1, 0).await;
    let target = redis
        .url()
        .trim_start_matches("redis://")
        .parse()
        .expect("addr");
    let proxy = common::proxy::Proxy::start(target).await.expect("proxy");
    let gateway = c
        .gateway_builder()
        .env("PGWS_REDIS_URL", format!("redis://{}", proxy.addr()))
        .start()
        .await;
    c.gateways.push(gateway);
    let leader = c.leader().await;
    c.coordinators[leader]
        .wait_metric("pgws_outbox_up", 1.0)
        .await;
    (c, proxy, leader)
}

/// Every reader got every committed send on `channel` once, in order.
async fn assert_readers_got_everything(ledger: &Ledger, channel: &str, readers: &mut [Ws]) {
    let total = ledger.committed(channel);
    for (i, r) in readers.iter_mut().enumerate() {
        let got = read_for(r, total).await;
        let report = ledger.check(channel, &got);
        assert!(report.clean(), "reader {i}: {report}");
    }
}

/// Up to `n` frames, or what came before three quiet seconds.
async fn read_for(ws: &mut Ws, n: usize) -> Vec<String> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                got.push(t.to_string())
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    got
}

/// What arrives within `quiet` of each frame (nothing more to wait for).
async fn read_for_within(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            got.push(t.to_string());
        }
    }
    got
}

/// `n` of a payload `c-<n>` (0 for anything else).
fn number(text: &str) -> usize {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v["payload"].as_str()?.strip_prefix("c-")?.parse().ok())
        .unwrap_or(0)
}

/// `pgws.send` of payload `c-<n>` on `ch`, recorded in the ledger as committed.
async fn send_numbered(sender: &tokio_postgres::Client, ledger: &Ledger, ch: &str, n: usize) {
    let p = payload(ch, &format!("c-{n}"));
    let issued = Instant::now();
    sender
        .execute("SELECT pgws.send($1)", &[&p])
        .await
        .expect("send");
    let returned = Instant::now();
    ledger.record(ch, &p, Outcome::Committed { issued, returned });
}
