//! The durable outbox, standalone: `pgws.send` in the application's
//! transaction reaches every reader exactly once in commit order, a
//! rolled-back send never does, a transaction that commits after later ones
//! is not skipped, and nothing is lost across a gateway restart, a
//! terminated reader backend or a PostgreSQL restart. Every test has a
//! database of its own; the checker is `pgws_testkit::outbox`.

mod common;

use common::*;
use pgws_testkit::outbox::{Ledger, Outcome, TestDb};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn outbox_gateway(db: &TestDb) -> ServerBuilder {
    Server::gateway()
        .env("PGWS_DB_URI", db.uri.clone())
        .env("PGWS_OUTBOX", "true")
        .env("PGWS_HISTORY_SIZE", "100000")
        .env("PGWS_HISTORY_TTL", "600")
        .env("PGWS_CHECK_LISTENER_INTERVAL", "1000")
}

fn payload(channel: &str, tag: &str) -> String {
    format!(r#"{{"channel":"{channel}","payload":"{tag}"}}"#)
}

/// How a sender's transactions begin.
const READ_COMMITTED: &str = "BEGIN";
const REPEATABLE_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ";
const SERIALIZABLE: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// One transaction of `pgws.send`s, begun with `begin`; recorded in the
/// ledger with how it ended. Errors before COMMIT roll back, and so does a
/// serialization failure at COMMIT; any other error at COMMIT is "maybe".
async fn send_txn(
    client: &tokio_postgres::Client,
    ledger: &Ledger,
    messages: &[(String, String)],
    rollback: bool,
    begin: &str,
) -> bool {
    if client.batch_execute(begin).await.is_err() {
        return false;
    }
    for (_, p) in messages {
        if client.execute("SELECT pgws.send($1)", &[p]).await.is_err() {
            let _ = client.batch_execute("ROLLBACK").await;
            for (c, p) in messages {
                ledger.record(c, p, Outcome::RolledBack);
            }
            return false;
        }
    }
    if rollback {
        let _ = client.batch_execute("ROLLBACK").await;
        for (c, p) in messages {
            ledger.record(c, p, Outcome::RolledBack);
        }
        return true;
    }
    let issued = Instant::now();
    let outcome = match client.batch_execute("COMMIT").await {
        Ok(()) => Outcome::Committed {
            issued,
            returned: Instant::now(),
        },
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) => {
            Outcome::RolledBack
        }
        Err(_) => Outcome::Maybe,
    };
    for (c, p) in messages {
        ledger.record(c, p, outcome);
    }
    matches!(outcome, Outcome::Committed { .. })
}

/// A sender: transactions of 1–4 sends over `channels` until `stop` (or
/// `count` transactions), every seventh rolled back; reconnects when its
/// connection breaks (the database restarting).
async fn sender(
    uri: String,
    ledger: Ledger,
    name: String,
    channels: Vec<String>,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
) -> usize {
    sender_at(uri, ledger, name, channels, count, stop, READ_COMMITTED).await
}

/// [`sender`], its transactions begun with `begin`.
async fn sender_at(
    uri: String,
    ledger: Ledger,
    name: String,
    channels: Vec<String>,
    count: Option<usize>,
    stop: Arc<AtomicBool>,
    begin: &'static str,
) -> usize {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut txns = 0usize;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| txns < c) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                match tokio_postgres::connect(&uri, tokio_postgres::NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        client = Some(c);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                continue;
            }
        };
        let size = 1 + (txns % 4);
        let messages: Vec<(String, String)> = (0..size)
            .map(|i| {
                n += 1;
                let ch = &channels[(txns + i) % channels.len()];
                (ch.clone(), payload(ch, &format!("{name}-{n}")))
            })
            .collect();
        send_txn(c, &ledger, &messages, txns % 7 == 6, begin).await;
        txns += 1;
    }
    txns
}

/// Read v1 frames from `ws` until `done` says so.
async fn collect_v1(ws: &mut Ws, want: impl Fn(usize) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !want(got.len()) {
        assert!(
            Instant::now() < deadline,
            "only {} frames in time",
            got.len()
        );
        got.push(next_text(ws).await);
    }
    got
}

/// A database, a gateway reading its outbox, two channels `a` and `b`, a
/// v1 reader of each and a v2 reader subscribed to `a`.
struct Readers {
    db: TestDb,
    gw: Server,
    a: String,
    b: String,
    ra: Ws,
    rb: Ws,
    v2: V2,
}

impl Readers {
    async fn start(tag: &str) -> Readers {
        let db = TestDb::create().await;
        let gw = outbox_gateway(&db).start().await;
        let (a, b) = (unique(&format!("{tag}-a")), unique(&format!("{tag}-b")));
        let ra = connect(&read_url(&gw, &a)).await;
        let rb = connect(&read_url(&gw, &b)).await;
        let mut v2 = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
        assert_eq!(v2.subscribe(&a, None).await["type"], "reply");
        Readers {
            db,
            gw,
            a,
            b,
            ra,
            rb,
            v2,
        }
    }
}

/// Everything committed on `a` and `b` arrived at their v1 readers, and on
/// `a` at the v2 reader, once and in commit order, with offsets counting
/// from 1; then a marker sent last is the next thing `a`'s reader gets:
/// nothing rolled back arrived. Returns what `a`'s v1 reader got.
async fn check_both(
    db: &TestDb,
    ledger: &Ledger,
    (a, ra): (&str, &mut Ws),
    (b, rb): (&str, &mut Ws),
    v2: &mut V2,
) -> Vec<String> {
    let (na, nb) = (ledger.committed(a), ledger.committed(b));
    let got_a = collect_v1(ra, |n| n >= na).await;
    let got_b = collect_v1(rb, |n| n >= nb).await;
    let v2_a = v2.read_messages(na).await;
    for (what, report) in [
        ("v1 a", ledger.check(a, &got_a)),
        ("v1 b", ledger.check(b, &got_b)),
        (
            "v2 a",
            ledger.check(a, &v2_a.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()),
        ),
    ] {
        assert!(report.clean(), "{what}: {report}");
    }
    let offsets: Vec<u64> = v2_a.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=na as u64).collect::<Vec<_>>(),
        "offsets count the channel's commits from 1"
    );
    let marker = payload(a, "marker");
    db.client()
        .await
        .execute("SELECT pgws.send($1)", &[&marker])
        .await
        .expect("send marker");
    assert_eq!(next_text(ra).await, marker, "nothing rolled back arrived");
    got_a
}

fn read_url(gw: &Server, channel: &str) -> String {
    gw.url(&format!("{channel}/{}", token(json!({"mode": "r"}))))
}

#[tokio::test]
async fn every_committed_send_reaches_every_reader_once_in_commit_order() {
    let Readers {
        db,
        gw: _gw,
        a,
        b,
        mut ra,
        mut rb,
        mut v2,
    } = Readers::start("ob").await;
    let ledger = Ledger::default();

    // The classic outbox bug: a transaction that sends first and commits
    // last must still be delivered, after what committed before it.
    let long = db.client().await;
    long.batch_execute("BEGIN").await.expect("begin");
    let long_payload = payload(&a, "long-1");
    long.execute("SELECT pgws.send($1)", &[&long_payload])
        .await
        .expect("send");

    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(sender(
                db.uri.clone(),
                ledger.clone(),
                format!("s{i}"),
                vec![a.clone(), b.clone()],
                Some(60),
                stop.clone(),
            ))
        })
        .collect();
    // Commit the long transaction while the others are under way.
    while ledger.committed(&a) < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let issued = Instant::now();
    long.batch_execute("COMMIT").await.expect("commit");
    ledger.record(
        &a,
        &long_payload,
        Outcome::Committed {
            issued,
            returned: Instant::now(),
        },
    );
    for s in senders {
        s.await.expect("sender");
    }

    let got_a = check_both(&db, &ledger, (&a, &mut ra), (&b, &mut rb), &mut v2).await;
    assert!(got_a.contains(&long_payload), "the late commit arrived");
}

/// `pgws.send` from REPEATABLE READ and SERIALIZABLE transactions, beside
/// READ COMMITTED ones, on shared channels: every committed send arrives
/// once, in commit order, with offsets counting from 1; a transaction whose
/// channel moved on after its snapshot fails at COMMIT with SQLSTATE 40001
/// and says to retry — and what it sent never arrives.
#[tokio::test]
async fn every_isolation_level_sends_once_in_commit_order_and_a_conflict_says_retry() {
    let Readers {
        db,
        gw: _gw,
        a,
        b,
        mut ra,
        mut rb,
        mut v2,
    } = Readers::start("iso").await;
    let ledger = Ledger::default();

    // A snapshot older than another transaction's send on its channel.
    let late = db.client().await;
    late.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .expect("snapshot");
    let other = db.client().await;
    assert!(
        send_txn(
            &other,
            &ledger,
            &[(a.clone(), payload(&a, "first"))],
            false,
            READ_COMMITTED
        )
        .await
    );
    let conflicted = payload(&a, "conflicted");
    late.execute("SELECT pgws.send($1)", &[&conflicted])
        .await
        .expect("send");
    let error = late
        .batch_execute("COMMIT")
        .await
        .expect_err("the channel moved on after the snapshot");
    ledger.record(&a, &conflicted, Outcome::RolledBack);
    let db_error = error.as_db_error().expect("a database error");
    assert_eq!(
        db_error.code(),
        &tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    );
    assert!(
        db_error.message().contains("could not number its sends"),
        "{}",
        db_error.message()
    );
    assert!(
        db_error
            .hint()
            .is_some_and(|h| h.contains("Retry the transaction")),
        "{:?}",
        db_error.hint()
    );

    // Concurrent senders at all three levels on both channels.
    let stop = Arc::new(AtomicBool::new(false));
    let levels = [READ_COMMITTED, REPEATABLE_READ, SERIALIZABLE];
    let senders: Vec<_> = (0..6)
        .map(|i| {
            tokio::spawn(sender_at(
                db.uri.clone(),
                ledger.clone(),
                format!("s{i}"),
                vec![a.clone(), b.clone()],
                Some(40),
                stop.clone(),
                levels[i % 3],
            ))
        })
        .collect();
    for s in senders {
        s.await.expect("sender");
    }

    // SERIALIZABLE senders on channels of their own do not conflict: the
    // commit does not read the outbox back (which conflicted with every
    // concurrent sender's insert: ~80 % failed).
    let serializable: Vec<_> = (0..4)
        .map(|i| {
            let (db_uri, ledger, channel) = (db.uri.clone(), ledger.clone(), unique("iso-own"));
            tokio::spawn(async move {
                let (client, conn) = tokio_postgres::connect(&db_uri, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(conn);
                let mut failed = 0;
                for n in 0..30 {
                    let m = [(channel.clone(), payload(&channel, &format!("own{i}-{n}")))];
                    if !send_txn(&client, &ledger, &m, false, SERIALIZABLE).await {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for s in serializable {
        failed += s.await.expect("serializable sender");
    }
    assert!(
        failed * 5 < 120,
        "{failed} of 120 SERIALIZABLE transactions failed"
    );

    check_both(&db, &ledger, (&a, &mut ra), (&b, &mut rb), &mut v2).await;
}

#[tokio::test]
async fn a_restarted_gateway_keeps_the_epoch_and_recovers_what_was_sent_meanwhile() {
    let db = TestDb::create().await;
    let mut gw = outbox_gateway(&db).start().await;
    let ch = unique("ob-restart");
    let mut v2 = V2::connect(&gw.url(&token(json!({"mode": "r"})))).await;
    v2.subscribe(&ch, None).await;
    let client = db.client().await;
    for i in 1..=5 {
        client
            .execute(
                "SELECT pgws.send($1)",
                &[&payload(&ch, &format!("before-{i}"))],
            )
            .await
            .expect("send");
    }
    let mut last = None;
    for _ in 0..5 {
        last = Some(v2.next_message().await);
    }
    let last = Pos::of(&last.expect("a message"));
    assert_eq!(last.offset, 5);

    // Stopped while senders go on.
    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(sender(
        db.uri.clone(),
        ledger.clone(),
        "down".into(),
        vec![ch.clone()],
        None,
        stop.clone(),
    ));
    gw.signal("TERM");
    assert!(gw.wait_exit(WAIT).await.success());
    let down = Instant::now();
    while ledger.committed(&ch) < 50 || down.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gw2 = outbox_gateway(&db)
        .env("PGWS_LISTEN_CHANNEL", gw.listen_channel.clone())
        .start()
        .await;
    stop.store(true, Ordering::Relaxed);
    sending.await.expect("sender");

    let mut back = V2::connect(&gw2.url(&token(json!({"mode": "r"})))).await;
    let reply = back.subscribe(&ch, Some(&last)).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["epoch"], last.epoch.as_str(), "the same epoch");
    let missed = ledger.committed(&ch);
    let replayed = back.read_messages(missed).await;
    let data: Vec<String> = replayed.iter().map(|(_, d)| d.clone()).collect();
    let report = ledger.check(&ch, &data);
    assert!(report.clean(), "{report}");
    assert_eq!(
        replayed.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (6..6 + missed as u64).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_terminated_reader_backend_loses_nothing() {
    let db = TestDb::create().await;
    let gw = outbox_gateway(&db).start().await;
    let ch = unique("ob-term");
    let mut reader = connect(&read_url(&gw, &ch)).await;
    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(sender(
        db.uri.clone(),
        ledger.clone(),
        "t".into(),
        vec![ch.clone()],
        None,
        stop.clone(),
    ));
    let admin = db.client().await;
    for _ in 0..3 {
        let before = ledger.committed(&ch);
        while ledger.committed(&ch) < before + 30 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name IN ('pgws outbox', 'pgws listener')",
                &[],
            )
            .await
            .expect("terminate");
    }
    stop.store(true, Ordering::Relaxed);
    sending.await.expect("sender");
    let n = ledger.committed(&ch);
    let got = collect_v1(&mut reader, |k| k >= n).await;
    let report = ledger.check(&ch, &got);
    assert!(report.clean(), "{report}");
    assert!(gw.metric("pgws_outbox_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn without_migrating_a_missing_schema_stops_the_gateway_naming_the_sql_file() {
    let db = TestDb::create().await;
    let mut gw = outbox_gateway(&db)
        .env("PGWS_OUTBOX_MIGRATE", "false")
        .no_wait()
        .start()
        .await;
    let status = gw.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = gw.log_text();
    assert!(log.contains("postgres/sql/outbox.sql"), "{log}");
    assert!(log.contains("PGWS_OUTBOX_MIGRATE=false"), "{log}");
}

#[tokio::test]
async fn several_gateways_migrating_at_once_all_start() {
    let db = TestDb::create().await;
    let starting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(outbox_gateway(&db).start()))
        .collect();
    let mut gateways = Vec::new();
    for s in starting {
        gateways.push(s.await.expect("started"));
    }
    // And each one delivers.
    let ch = unique("ob-many");
    let mut readers = Vec::new();
    for gw in &gateways {
        readers.push(connect(&read_url(gw, &ch)).await);
    }
    let p = payload(&ch, "hello");
    db.client()
        .await
        .execute("SELECT pgws.send($1)", &[&p])
        .await
        .expect("send");
    for r in &mut readers {
        assert_eq!(next_text(r).await, p);
    }
}

#[tokio::test]
async fn a_payload_without_a_channel_goes_to_the_listen_channels_namesake() {
    let db = TestDb::create().await;
    let gw = outbox_gateway(&db).start().await;
    let mut reader = connect(&read_url(&gw, &gw.listen_channel)).await;
    let client = db.client().await;
    for p in ["plain text", "{not json", r#"{"channel": 5}"#] {
        client
            .execute("SELECT pgws.send($1)", &[&p])
            .await
            .expect("send");
        assert_eq!(next_text(&mut reader).await, p);
    }
}

#[tokio::test]
async fn delivered_rows_older_than_the_retention_are_pruned() {
    let db = TestDb::create().await;
    let gw = outbox_gateway(&db)
        .env("PGWS_OUTBOX_RETENTION", "1")
        .start()
        .await;
    let ch = unique("ob-prune");
    let mut reader = connect(&read_url(&gw, &ch)).await;
    let client = db.client().await;
    client
        .execute(
            "SELECT pgws.send(format('{\"channel\":\"%s\",\"payload\":%s}', $1::text, i)) \
             FROM generate_series(1, 200) AS i",
            &[&ch],
        )
        .await
        .expect("send");
    collect_v1(&mut reader, |n| n >= 200).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let left: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM pgws.outbox) + (SELECT count(*) FROM pgws.commits)",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gw.metric("pgws_outbox_pruned_total{table=\"outbox\"}")
            .await
            >= 200.0
    );
}

/// PostgreSQL restarted under load, fast and then immediately (a crash):
/// the reader that stayed connected gets every committed send once, in
/// commit order; sends whose COMMIT broke with the connection may or may
/// not have committed, and arrive at most once.
#[tokio::test]
async fn postgres_restarts_fast_and_immediate_under_load_lose_nothing() {
    use pgws_testkit::pg_server::{PgServer, ServerTls};
    let base = std::env::temp_dir().join(unique("pgws-obpg"));
    let tls = ServerTls::new(&base.join("pki"), &["localhost"]);
    let mut pg = PgServer::start(&tls, &base).await;
    let gw = Server::gateway()
        .env("PGWS_DB_URI", pg.conninfo("user=postgres sslmode=require"))
        .env("PGWS_OUTBOX", "true")
        .env("PGWS_OUTBOX_POLL_INTERVAL", "200")
        .env("PGWS_CHECK_LISTENER_INTERVAL", "500")
        .env("PGWS_RETRIES", "20")
        .start()
        .await;
    let ch = unique("ob-pg");
    let mut reader = connect(&read_url(&gw, &ch)).await;
    let ledger = Ledger::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sending = tokio::spawn(sender(
        pg.socket_conninfo(),
        ledger.clone(),
        "r".into(),
        vec![ch.clone()],
        None,
        stop.clone(),
    ));
    for immediate in [false, true] {
        let before = ledger.committed(&ch);
        while ledger.committed(&ch) < before + 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pg.restart(immediate).await;
    }
    let before = ledger.committed(&ch);
    while ledger.committed(&ch) < before + 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    sending.await.expect("sender");
    // Everything surely committed, and a marker sent last: read up to it.
    let marker = payload(&ch, "last");
    let (client, conn) = tokio_postgres::connect(&pg.socket_conninfo(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .execute("SELECT pgws.send($1)", &[&marker])
        .await
        .expect("marker");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "{} frames, no marker", got.len());
        let frame = next_text(&mut reader).await;
        if frame == marker {
            break;
        }
        got.push(frame);
    }
    let report = ledger.check(&ch, &got);
    assert!(report.clean(), "{report}");
    assert!(ledger.committed(&ch) >= 150);
}

/// The outside review's findings, each a regression test.
mod review {
    use super::*;

    /// A gateway whose doorbell matters: without one, a send would wait
    /// for the 10 s poll.
    fn slow_poll(db: &TestDb) -> ServerBuilder {
        outbox_gateway(db).env("PGWS_OUTBOX_POLL_INTERVAL", "10000")
    }

    async fn within(ws: &mut Ws, want: &str, limit: Duration) {
        let started = Instant::now();
        let got = tokio::time::timeout(limit, next_text(ws))
            .await
            .unwrap_or_else(|_| panic!("{want} not delivered within {limit:?}"));
        assert_eq!(got, want, "after {:?}", started.elapsed());
    }

    /// A database, a gateway reading its outbox (a slow poll), a channel
    /// named after `name`, and a v1 reader of it.
    async fn reading(name: &str) -> (TestDb, Server, String, Ws) {
        let db = TestDb::create().await;
        let gw = slow_poll(&db).start().await;
        let channel = unique(name);
        let ws = connect(&read_url(&gw, &channel)).await;
        (db, gw, channel, ws)
    }

    /// Until the reader is idle — its own doorbell key free, as a sender
    /// tries it, on three tries 10 ms apart (going idle, it frees the key
    /// a few milliseconds before its last poll): a send then rings.
    async fn wait_idle(client: &tokio_postgres::Client) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut free = 0;
        loop {
            let idle: bool = client
                .query_one(
                    "SELECT coalesce(bool_or(pg_try_advisory_lock_shared(1885828980, pid)), false) FROM pgws.readers",
                    &[],
                )
                .await
                .expect("try")
                .get(0);
            client
                .batch_execute("SELECT pg_advisory_unlock_all()")
                .await
                .expect("unlock");
            free = if idle { free + 1 } else { 0 };
            if free == 3 {
                return;
            }
            assert!(Instant::now() < deadline, "the reader never went idle");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An idle reader delivers from the doorbell's bell, without a poll;
    /// a bell any role can NOTIFY — here one that claims the shard's next
    /// commit, far ahead — is not signed with the outbox's key: it delivers
    /// nothing, moves no cursor (what is sent after it arrives), and is
    /// counted.
    #[tokio::test]
    async fn bells_deliver_without_a_poll_and_a_forged_one_delivers_and_skips_nothing() {
        let (db, gw, channel, mut ws) = reading("bell").await;
        let client = db.client().await;
        let first = payload(&channel, "first");
        client
            .execute("SELECT pgws.send($1)", &[&first])
            .await
            .expect("send");
        within(&mut ws, &first, Duration::from_secs(5)).await;
        for n in 0..5 {
            wait_idle(&client).await;
            let p = payload(&channel, &format!("rung-{n}"));
            client
                .execute("SELECT pgws.send($1)", &[&p])
                .await
                .expect("send");
            within(&mut ws, &p, Duration::from_secs(5)).await;
        }
        assert_eq!(
            gw.metric("pgws_outbox_rung_messages_total").await,
            5.0,
            "each send to an idle reader was delivered from its bell"
        );

        let row = client
            .query_one(
                "SELECT shard, max(seq) FROM pgws.commits WHERE shard = pgws.shard_of($1) GROUP BY shard",
                &[&channel],
            )
            .await
            .expect("cursor");
        let (shard, seq): (i32, i64) = (row.get(0), row.get(1));
        let forged_rows = format!(
            "1 {shard} {} {seq} 1 1000 1 1 {}\n{channel}7\nforged!",
            seq + 1_000_000,
            channel.len()
        );
        let forged = format!("{}\n{forged_rows}", "00".repeat(32));
        client
            .execute("SELECT pg_notify('pgws_outbox', $1)", &[&forged])
            .await
            .expect("notify");
        gw.wait_metric("pgws_outbox_forged_bells_total", 1.0).await;
        let after = payload(&channel, "after");
        client
            .execute("SELECT pgws.send($1)", &[&after])
            .await
            .expect("send");
        within(&mut ws, &after, Duration::from_secs(5)).await;
    }

    /// The commit trigger's state set for the whole session (as `SET`,
    /// `ALTER ROLE … SET` or a pooler's leftover would) is not the
    /// transaction's: the send is delivered, not silently swallowed.
    #[tokio::test]
    async fn a_session_level_trigger_setting_does_not_swallow_sends() {
        let (db, _gw, channel, mut ws) = reading("session-set").await;
        let client = db.client().await;
        client
            .batch_execute(
                "SET pgws.committed = '9223372036854775807'; SET pgws.rang = 'true'; SET pgws.shards = '0'",
            )
            .await
            .expect("set");
        let p = payload(&channel, "still-sent");
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pgws.send('{p}'); COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT pgws.send('{p}'); COMMIT"
            ))
            .await
            .expect("send");
        within(&mut ws, &p, Duration::from_secs(5)).await;
        within(&mut ws, &p, Duration::from_secs(5)).await;
    }

    /// A database at an older schema (no signing key) is migrated at start
    /// and its bells work; the key is the owner's alone — a role with
    /// `pg_read_all_data` (which could otherwise sign bells) reads no row.
    #[tokio::test]
    async fn an_older_schema_is_migrated_and_the_bell_key_is_the_owners_alone() {
        let db = TestDb::create().await;
        let client = db.client().await;
        client
            .batch_execute(pgws_postgres::outbox::schema::SQL)
            .await
            .expect("schema");
        client
            .batch_execute(
                "DROP TABLE pgws.bell_key; UPDATE pgws.meta SET value = '3' WHERE key = 'schema_version'",
            )
            .await
            .expect("make it older");
        let gw = slow_poll(&db).start().await;
        let channel = unique("migrated");
        let mut ws = connect(&read_url(&gw, &channel)).await;
        let version: String = client
            .query_one(
                "SELECT value FROM pgws.meta WHERE key = 'schema_version'",
                &[],
            )
            .await
            .expect("version")
            .get(0);
        assert_eq!(version, pgws_postgres::outbox::schema::VERSION);
        for n in 0..3 {
            wait_idle(&client).await;
            let p = payload(&channel, &format!("m{n}"));
            client
                .execute("SELECT pgws.send($1)", &[&p])
                .await
                .expect("send");
            within(&mut ws, &p, Duration::from_secs(5)).await;
        }
        assert!(gw.metric("pgws_outbox_rung_messages_total").await >= 1.0);

        let role = format!("pgws_reader_{}", std::process::id());
        client
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN IN ROLE pg_read_all_data"
            ))
            .await
            .expect("role");
        let mut config: tokio_postgres::Config = db.uri.parse().expect("uri");
        config.user(&role);
        let (other, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect as the reading role");
        tokio::spawn(conn);
        let keys = other.query("SELECT k FROM pgws.bell_key", &[]).await;
        let commits = other.query("SELECT 1 FROM pgws.commits LIMIT 1", &[]).await;
        drop(other);
        client
            .batch_execute(&format!("DROP ROLE {role}"))
            .await
            .expect("drop role");
        assert_eq!(keys.expect("readable table").len(), 0, "no key row");
        assert_eq!(commits.expect("the role reads everything else").len(), 1);
    }

    /// `SET CONSTRAINTS ALL IMMEDIATE` runs the commit trigger at the
    /// statement: an open transaction then holds its shard and the
    /// doorbell's shared key. Other channels must not wait for it.
    #[tokio::test]
    async fn an_open_immediate_transaction_does_not_hold_up_other_channels() {
        let db = TestDb::create().await;
        let gw = slow_poll(&db).start().await;
        let client = db.client().await;
        // Another *shard* (`hashtext(channel) & 15`): two transactions on
        // one shard do serialize their commits, by design; with random
        // names 1 run in 16 picked the same shard and the send waited for
        // the open transaction forever.
        let shard = |ch: String| {
            let client = &client;
            async move {
                let row = client
                    .query_one("SELECT hashtext($1) & 15", &[&ch])
                    .await
                    .expect("shard");
                row.get::<_, i32>(0)
            }
        };
        let open_ch = unique("ob-open");
        let mut other = unique("ob-other");
        while shard(other.clone()).await == shard(open_ch.clone()).await {
            other = unique("ob-other");
        }
        let mut reader = connect(&read_url(&gw, &other)).await;
        let mut open_reader = connect(&read_url(&gw, &open_ch)).await;
        let open = db.client().await;
        open.batch_execute("BEGIN; SET CONSTRAINTS ALL IMMEDIATE")
            .await
            .expect("begin");
        let held = payload(&open_ch, "held");
        open.execute("SELECT pgws.send($1)", &[&held])
            .await
            .expect("send");
        for i in 0..3 {
            let p = payload(&other, &format!("free-{i}"));
            client
                .execute("SELECT pgws.send($1)", &[&p])
                .await
                .expect("send");
            within(&mut reader, &p, Duration::from_secs(3)).await;
        }
        open.batch_execute("COMMIT").await.expect("commit");
        within(&mut open_reader, &held, Duration::from_secs(3)).await;
    }

    /// Advisory locks need no privilege: a role holding the doorbell's
    /// keys may cost doorbells, never delivery or a sender's commit.
    #[tokio::test]
    async fn a_role_holding_the_doorbell_keys_cannot_stop_delivery() {
        let db = TestDb::create().await;
        let gw = slow_poll(&db).start().await;
        let ch = unique("ob-hostile");
        let mut reader = connect(&read_url(&gw, &ch)).await;
        let hostile = db.client().await;
        hostile
            .batch_execute(
                "SELECT pg_advisory_lock(1885828980, 0); \
                 SELECT pg_advisory_lock_shared(1885828980, pid) FROM pg_stat_activity \
                  WHERE application_name = 'pgws outbox' AND datname = current_database()",
            )
            .await
            .expect("take the keys");
        let client = db.client().await;
        for i in 0..3 {
            let p = payload(&ch, &format!("through-{i}"));
            tokio::time::timeout(
                Duration::from_secs(3),
                client.execute("SELECT pgws.send($1)", &[&p]),
            )
            .await
            .expect("the send's commit is not held")
            .expect("send");
            within(&mut reader, &p, Duration::from_secs(3)).await;
        }
    }

    /// Two readers on one database: one's pruning never deletes what the
    /// other (paused) has not read.
    #[tokio::test]
    async fn pruning_never_passes_another_readers_unread_rows() {
        let db = TestDb::create().await;
        let a = outbox_gateway(&db)
            .env("PGWS_OUTBOX_RETENTION", "1")
            .start()
            .await;
        let b = outbox_gateway(&db).start().await;
        let ch = unique("ob-two");
        let mut ra = connect(&read_url(&a, &ch)).await;
        let mut rb = connect(&read_url(&b, &ch)).await;
        b.signal("STOP");
        b.wait_stopped().await;
        let client = db.client().await;
        let sent: Vec<String> = (0..5).map(|i| payload(&ch, &format!("p-{i}"))).collect();
        for p in &sent {
            client
                .execute("SELECT pgws.send($1)", &[p])
                .await
                .expect("send");
        }
        for p in &sent {
            assert_eq!(&next_text(&mut ra).await, p);
        }
        // Two whole pruning passes of A after the rows aged past its
        // retention.
        let runs = a.metric("pgws_outbox_prune_runs_total").await;
        a.wait_metric("pgws_outbox_prune_runs_total", runs + 3.0)
            .await;
        b.signal("CONT");
        for p in &sent {
            assert_eq!(&next_text(&mut rb).await, p, "B still gets it");
        }
    }

    /// A start re-running the schema would queue behind an open sending
    /// transaction, and every new send behind it.
    #[tokio::test]
    async fn a_start_does_not_wait_for_an_open_sending_transaction() {
        let db = TestDb::create().await;
        let first = outbox_gateway(&db).start().await;
        let open = db.client().await;
        open.batch_execute("BEGIN").await.expect("begin");
        open.execute("SELECT pgws.send('{\"channel\":\"x\"}')", &[])
            .await
            .expect("send");
        let second = tokio::time::timeout(
            Duration::from_secs(10),
            outbox_gateway(&db)
                .env("PGWS_LISTEN_CHANNEL", first.listen_channel.clone())
                .start(),
        )
        .await
        .expect("started while the transaction is open");
        let ch = unique("ob-late");
        let mut reader = connect(&read_url(&second, &ch)).await;
        let p = payload(&ch, "meanwhile");
        db.client()
            .await
            .execute("SELECT pgws.send($1)", &[&p])
            .await
            .expect("send");
        within(&mut reader, &p, Duration::from_secs(3)).await;
        open.batch_execute("ROLLBACK").await.expect("rollback");
    }

    /// Routing as for a NOTIFY: `\u0000` elsewhere in the payload keeps the
    /// channel; a repeated "channel" goes to the fallback.
    #[tokio::test]
    async fn routing_matches_notify_for_odd_json() {
        let db = TestDb::create().await;
        let gw = outbox_gateway(&db).start().await;
        let ch = unique("ob-odd");
        let mut reader = connect(&read_url(&gw, &ch)).await;
        let mut fallback = connect(&read_url(&gw, &gw.listen_channel)).await;
        let client = db.client().await;
        let nul = format!(r#"{{"channel":"{ch}","s":"x\u0000y"}}"#);
        let twice = format!(r#"{{"channel":"{ch}","channel":"{ch}"}}"#);
        for p in [&nul, &twice] {
            client
                .execute("SELECT pgws.send($1)", &[p])
                .await
                .expect("send");
        }
        assert_eq!(next_text(&mut reader).await, nul);
        assert_eq!(next_text(&mut fallback).await, twice);
        let long = format!(r#"{{"channel":"{}"}}"#, "c".repeat(1100));
        let refused = client.execute("SELECT pgws.send($1)", &[&long]).await;
        assert!(
            refused.is_err(),
            "a channel over 1024 bytes is refused at the send"
        );
    }
}
