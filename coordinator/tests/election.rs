//! The election, observed from Redis and PostgreSQL: one leader, one LISTEN
//! connection, its epoch on every republished message, and hand-over when
//! it goes; and, at the script, the standby readiness that decides who
//! may take a free lock.

use pgws_coordinator::election::{Attempt, Election, Readiness};
use pgws_protocol::keys::KeySpace;
use pgws_service::redis_client::{RedisClient, RedisConfig, TlsFiles};
use pgws_testkit::cluster::{listen_backends, wait_listen_backends, Cluster, TTL};
use pgws_testkit::republished::{next, subscribe};
use pgws_testkit::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// Notify `channel` every 50 ms until a republished message arrives; how
/// long it took and the epoch it carried.
async fn republish_resumes(
    c: &Cluster,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<pgws_testkit::republished::Republished>,
    channel: &str,
    after_epoch: u64,
) -> (Duration, u64) {
    let db = db().await;
    let started = Instant::now();
    loop {
        c.notify(&db, channel, "tick").await;
        // The old leader may still publish the first ticks while it steps
        // down: wait for a later term's.
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            if m.epoch > after_epoch {
                return (started.elapsed(), m.epoch);
            }
        }
        assert!(started.elapsed() < WAIT * 2, "republishing never resumed");
    }
}

#[tokio::test]
async fn one_of_three_leads_and_holds_the_only_listen_connection() {
    let c = Cluster::start(&redis_url(), 3, 0).await;
    let db = db().await;
    wait_listen_backends(&db, &c.listen_channel, 1).await;
    // The standbys keep trying; still one listener after several attempts.
    let leader = c.leader().await;
    let standby = (leader + 1) % 3;
    let attempts = c.coordinators[standby]
        .metric("pgws_election_attempts_total")
        .await;
    c.coordinators[standby]
        .wait_metric("pgws_election_attempts_total", attempts + 5.0)
        .await;
    assert_eq!(listen_backends(&db, &c.listen_channel).await, 1);
}

#[tokio::test]
async fn every_notification_is_republished_with_the_leaders_epoch() {
    let c = Cluster::start(&redis_url(), 2, 0).await;
    let leader = c.leader().await;
    let epoch = c.coordinators[leader]
        .metric("pgws_coordinator_epoch")
        .await as u64;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let db = db().await;
    let payload = json!({"channel": "chat", "payload": "hello"}).to_string();
    notify(&db, &c.listen_channel, &payload).await;
    let m = next(&mut rx).await;
    assert_eq!((m.epoch, m.payload.as_str()), (epoch, payload.as_str()));
}

#[tokio::test]
async fn sigterm_releases_the_lock_and_the_standby_takes_over_within_a_second() {
    let mut c = Cluster::start(&redis_url(), 2, 0).await;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let leader = c.leader().await;
    let old_epoch = c.coordinators[leader]
        .metric("pgws_coordinator_epoch")
        .await as u64;
    c.coordinators[leader].signal("TERM");
    let (took, _) = republish_resumes(&c, &mut rx, "chat", old_epoch).await;
    assert!(took <= Duration::from_secs(1), "hand-over took {took:?}");
    assert_eq!(c.coordinators[leader].wait_exit(WAIT).await.code(), Some(0));
}

#[tokio::test]
async fn after_kill_9_the_standby_takes_over_within_the_ttl() {
    let c = Cluster::start(&redis_url(), 2, 0).await;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let leader = c.leader().await;
    let old_epoch = c.coordinators[leader]
        .metric("pgws_coordinator_epoch")
        .await as u64;
    c.coordinators[leader].signal("KILL");
    let (took, _) = republish_resumes(&c, &mut rx, "chat", old_epoch).await;
    assert!(took <= TTL + Duration::from_secs(1), "took {took:?}");
    assert_eq!(c.leader_except(&[leader]).await, 1 - leader);
    wait_listen_backends(&db().await, &c.listen_channel, 1).await;
}

/// Issue 20, hole 1, at the script: a candidate whose buffer cannot fill
/// the gap leaves a free lock to a capable one while that one is alive
/// (its entry lives one ttl after its last attempt), takes it once the
/// capable one is gone, and takes it at once when forcing (its deferral
/// bound ran out).
#[tokio::test]
async fn a_candidate_that_cannot_fill_the_gap_defers_to_a_capable_one_while_it_lives() {
    let keys = KeySpace::new(&unique("pgws-ready"));
    let config = RedisConfig::parse(&redis_url(), false, TlsFiles::default()).expect("url");
    let redis = RedisClient::connect(&config, None, Some(Duration::from_secs(5)))
        .await
        .expect("redis");
    let ttl = Duration::from_millis(1000);
    let candidate = |id: &str| Election::new(redis.clone(), keys.clone(), id.into(), ttl);
    let (mut holder, mut capable, mut late) =
        (candidate("holder"), candidate("capable"), candidate("late"));
    assert!(matches!(
        holder.try_acquire(Readiness::Plain).await,
        Ok(Attempt::Won(_))
    ));
    assert_eq!(
        capable.try_acquire(Readiness::Capable).await.ok(),
        Some(Attempt::Held)
    );
    let capable_seen = Instant::now();
    assert_eq!(
        late.try_acquire(Readiness::Waiting).await.ok(),
        Some(Attempt::Held),
        "a held lock is just held"
    );
    assert_eq!(holder.release().await.ok(), Some(true));
    assert_eq!(
        late.try_acquire(Readiness::Waiting).await.ok(),
        Some(Attempt::Deferred),
        "a free lock is left to the capable standby"
    );
    // The capable standby stops attempting (it died): one ttl after its
    // last attempt, the late candidate is no longer held back.
    let deadline = Instant::now() + WAIT;
    loop {
        match late.try_acquire(Readiness::Waiting).await.ok() {
            Some(Attempt::Won(_)) => break,
            Some(Attempt::Deferred) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "deferred forever");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        capable_seen.elapsed() >= ttl - Duration::from_millis(100),
        "took the lock {:?} after the capable one's last attempt",
        capable_seen.elapsed()
    );
    assert_eq!(late.release().await.ok(), Some(true));
    // Forcing: taken even while a capable standby is alive.
    assert!(matches!(
        holder.try_acquire(Readiness::Plain).await,
        Ok(Attempt::Won(_))
    ));
    assert_eq!(
        capable.try_acquire(Readiness::Capable).await.ok(),
        Some(Attempt::Held)
    );
    assert_eq!(holder.release().await.ok(), Some(true));
    assert!(matches!(
        late.try_acquire(Readiness::Forcing).await,
        Ok(Attempt::Won(_))
    ));
    let _: () = redis::cmd("DEL")
        .arg(keys.leader())
        .arg(keys.epoch())
        .arg(keys.standbys())
        .query_async(&mut redis.clone())
        .await
        .expect("DEL");
}

/// The deferral is bounded: with a capable standby that never takes the
/// lock (a phantom entry that does not expire), a replacement whose buffer
/// cannot fill the gap takes over after `3 × PGWS_LEADER_TTL` anyway, and
/// says so — a gap honestly reported beats no leader.
#[tokio::test]
async fn a_deferring_candidate_takes_the_lock_anyway_after_its_bound() {
    let env = vec![
        ("PGWS_STANDBY_LISTEN".to_string(), "true".to_string()),
        ("PGWS_MARKER_INTERVAL".to_string(), "50".to_string()),
    ];
    let mut c = Cluster::start_full(&redis_url(), false, env, 1, 0).await;
    c.coordinators[0]
        .wait_metric("pgws_stream_markers_heard_total", 2.0)
        .await;
    let mut rx = subscribe(&c.redis_url, &c.prefix, "chat").await;
    let db = db().await;
    c.notify(&db, "chat", "recorded").await;
    next(&mut rx).await;
    let keys = KeySpace::new(&c.prefix);
    let mut redis = redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("ZADD")
        .arg(keys.standbys())
        .arg(u64::MAX >> 12)
        .arg("phantom")
        .query_async(&mut redis)
        .await
        .expect("ZADD");
    c.coordinators[0].signal("KILL");
    c.coordinators[0].wait_exit(WAIT).await;
    let killed = Instant::now();
    c.add_coordinator().await;
    let next_leader = c.leader_except(&[0]).await;
    let took = killed.elapsed();
    let m = c.coordinators[next_leader].metrics().await;
    assert_eq!(metric_value(&m, "pgws_election_deferred_total"), 1.0);
    assert_eq!(
        metric_value(&m, "pgws_election_deferral_expired_total"),
        1.0
    );
    assert!(
        took >= TTL * 3,
        "took over after {took:?}, before the bound"
    );
    c.coordinators[next_leader]
        .wait_metric("pgws_takeovers_total{outcome=\"gap\"}", 1.0)
        .await;
    let _: () = redis::cmd("DEL")
        .arg(keys.standbys())
        .query_async(&mut redis)
        .await
        .expect("DEL");
}
