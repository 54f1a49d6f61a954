//! Leader election through a Redis lock, with a fencing epoch and a local
//! lease.
//!
//! * **Acquire:** one script does `SET {p}:leader <node id> NX PX <ttl>` and,
//!   only if that succeeded, advances `{p}:epoch` to
//!   `max(previous + 1, Redis time in ms)`: every term gets a new, larger
//!   epoch, atomically with the lock — an `INCR` that also survives Redis
//!   losing its data.
//! * **Readiness** (`PGWS_STANDBY_LISTEN`): with every attempt a candidate
//!   says whether its standby buffer reaches back to the leader's last
//!   publish (`{p}:progress`). Capable candidates are kept in
//!   `{p}:standbys` for one ttl; a candidate that is not capable leaves a
//!   free lock alone while a capable one is alive — for at most
//!   [`DEFER_TTLS`] ttls, then it takes it anyway (a gap honestly reported
//!   beats no leader).
//! * **Renew:** every ttl/3, a compare-and-extend script (`PEXPIRE` only if
//!   the lock still holds our id).
//! * **Release:** compare-and-delete on shutdown, so a standby takes over at
//!   once instead of waiting for the ttl.
//!
//! The [`Lease`] is the holder's own view of how long the lock is surely
//! its own: measured on the local monotonic clock from the moment *before*
//! each successful acquire/renew was sent, minus a margin. Everything a
//! leader does (publish, NOTIFY) checks the lease first; a leader that
//! cannot renew — paused, partitioned — stops the instant its lease runs
//! out, before the lock can have passed to anyone else. Gateways also drop
//! messages stamped with an older epoch than the newest they have seen, so
//! even a leader whose clock misbehaves cannot interleave with its
//! successor.

use pgws_protocol::keys::KeySpace;
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, IntGauge, Registry};
use redis::{RedisResult, Script};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many lock ttls a candidate whose buffer does not reach back leaves
/// a free lock to a capable one before it takes the lock anyway.
pub const DEFER_TTLS: u32 = 3;

// The epoch is max(previous + 1, Redis time in ms): strictly increasing
// like INCR while Redis keeps its data, and still larger than every earlier
// epoch after Redis restarts empty (gateways remember the newest epoch they
// saw and would otherwise drop every message of a reset counter).
//
// With standby listening (ARGV[3] not 'none') a candidate first says
// whether its buffer reaches back to the leader's last publish: 'capable'
// enters it in KEYS[3] until now + ttl, anything else takes it out; a
// 'waiting' candidate then does not take a free lock while a capable one
// is alive (-1: deferred); 'forcing' is a waiting one past its bound.
const ACQUIRE: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local mode = ARGV[3]
if mode ~= 'none' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ms)
  if mode == 'capable' then
    redis.call('ZADD', KEYS[3], ms + tonumber(ARGV[2]), ARGV[1])
  else
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
  if mode == 'waiting' and redis.call('EXISTS', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[3]) > 0 then
    return -1
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
if mode ~= 'none' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local epoch = math.max(previous + 1, ms)
redis.call('SET', KEYS[2], string.format('%d', epoch))
return epoch";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// What a candidate says about itself with each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No standby listening: every candidate is as good as another.
    Plain,
    /// Its standby buffer reaches back to the leader's last publish: it
    /// would take over without a gap.
    Capable,
    /// Its buffer does not reach back: it leaves a free lock to a capable
    /// candidate while one is alive.
    Waiting,
    /// It has waited its bound: it takes a free lock anyway.
    Forcing,
}

impl Readiness {
    fn as_arg(self) -> &'static str {
        match self {
            Readiness::Plain => "none",
            Readiness::Capable => "capable",
            Readiness::Waiting => "waiting",
            Readiness::Forcing => "forcing",
        }
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The lock is ours, with this epoch.
    Won(u64),
    /// Someone holds it.
    Held,
    /// It is free, but a capable candidate is alive: left to it.
    Deferred,
}

/// The holder's view of how long the lock is surely its own.
#[derive(Debug)]
pub struct Lease {
    origin: Instant,
    /// Milliseconds after `origin` at which the lease ends; 0 = none.
    until_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// Whether the lease still holds now.
    pub fn valid(&self) -> bool {
        (self.origin.elapsed().as_millis() as u64) < self.until_ms.load(Ordering::Acquire)
    }

    /// When the lease ends (for sleeping until then).
    pub fn deadline(&self) -> Instant {
        self.origin + Duration::from_millis(self.until_ms.load(Ordering::Acquire))
    }

    /// Extend to `sent + ttl - margin`, `sent` being when the successful
    /// acquire/renew was sent.
    pub fn extend(&self, sent: Instant, ttl: Duration) {
        let margin = ttl / 20 + Duration::from_millis(5);
        let until = sent.saturating_duration_since(self.origin) + ttl.saturating_sub(margin);
        self.until_ms
            .store(until.as_millis() as u64, Ordering::Release);
    }

    /// End the lease now.
    pub fn revoke(&self) {
        self.until_ms.store(0, Ordering::Release);
    }
}

/// Election metrics.
#[derive(Clone)]
pub struct ElectionMetrics {
    /// 1 while this node leads.
    pub leader: IntGauge,
    /// The epoch of this node's current (or last) term.
    pub epoch: IntGauge,
    /// Acquisition attempts.
    pub attempts: IntCounter,
    /// Terms started.
    pub terms: IntCounter,
    /// 1 while Redis answers.
    pub redis_up: IntGauge,
    /// Times this candidate left a free lock to a capable standby.
    pub deferred: IntCounter,
    /// Times it stopped deferring after `DEFER_TTLS` ttls.
    pub deferral_expired: IntCounter,
    /// 1 while this standby's buffer reaches back to the last publish.
    pub capable: IntGauge,
}

impl ElectionMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<ElectionMetrics> {
        let m = ElectionMetrics {
            leader: IntGauge::new(
                "pgws_coordinator_leader",
                "1 while this coordinator holds the leader lock",
            )?,
            epoch: IntGauge::new(
                "pgws_coordinator_epoch",
                "Fencing epoch of this coordinator's current or last term",
            )?,
            attempts: IntCounter::new(
                "pgws_election_attempts_total",
                "Attempts to acquire the leader lock",
            )?,
            terms: IntCounter::new(
                "pgws_election_terms_total",
                "Times this coordinator became leader",
            )?,
            redis_up: IntGauge::new("pgws_redis_up", "1 while Redis answers")?,
            deferred: IntCounter::new(
                "pgws_election_deferred_total",
                "Times this coordinator left a free leader lock to a standby whose buffer reaches back to the last publish (its own does not)",
            )?,
            deferral_expired: IntCounter::new(
                "pgws_election_deferral_expired_total",
                "Times this coordinator stopped deferring after PGWS_LEADER_TTL x 3 and took the lock anyway (the takeover then reports its gap)",
            )?,
            capable: IntGauge::new(
                "pgws_standby_capable",
                "1 while this standby's buffer reaches back to the leader's last publish (it would take over without a gap; PGWS_STANDBY_LISTEN)",
            )?,
        };
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.capable.clone()))?;
        registry.register(Box::new(m.epoch.clone()))?;
        registry.register(Box::new(m.attempts.clone()))?;
        registry.register(Box::new(m.terms.clone()))?;
        registry.register(Box::new(m.redis_up.clone()))?;
        registry.register(Box::new(m.deferred.clone()))?;
        registry.register(Box::new(m.deferral_expired.clone()))?;
        Ok(m)
    }
}

/// One candidate in the election.
pub struct Election {
    redis: RedisClient,
    keys: KeySpace,
    node_id: String,
    ttl: Duration,
    acquire: Script,
    renew: Script,
    release: Script,
}

impl Election {
    /// A candidate named `node_id` with lock time-to-live `ttl`.
    pub fn new(redis: RedisClient, keys: KeySpace, node_id: String, ttl: Duration) -> Election {
        Election {
            redis,
            keys,
            node_id,
            ttl,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        }
    }

    /// The lock's time-to-live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Try to take the lock, saying how ready this candidate is.
    pub async fn try_acquire(&mut self, readiness: Readiness) -> RedisResult<Attempt> {
        let epoch: i64 = self
            .acquire
            .key(self.keys.leader())
            .key(self.keys.epoch())
            .key(self.keys.standbys())
            .arg(&self.node_id)
            .arg(self.ttl.as_millis() as u64)
            .arg(readiness.as_arg())
            .invoke_async(&mut self.redis)
            .await?;
        Ok(match epoch {
            e if e > 0 => Attempt::Won(e as u64),
            -1 => Attempt::Deferred,
            _ => Attempt::Held,
        })
    }

    /// Extend the lock if it is still ours.
    pub async fn renew(&mut self) -> RedisResult<bool> {
        let extended: i64 = self
            .renew
            .key(self.keys.leader())
            .arg(&self.node_id)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis)
            .await?;
        Ok(extended == 1)
    }

    /// Delete the lock if it is still ours.
    pub async fn release(&mut self) -> RedisResult<bool> {
        let deleted: i64 = self
            .release
            .key(self.keys.leader())
            .arg(&self.node_id)
            .invoke_async(&mut self.redis)
            .await?;
        Ok(deleted == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ends_before_the_lock_could() {
        let lease = Lease::default();
        assert!(!lease.valid(), "no lease before the first acquisition");
        let sent = Instant::now();
        lease.extend(sent, Duration::from_secs(10));
        assert!(lease.valid());
        assert!(lease.deadline() < sent + Duration::from_secs(10));
        lease.revoke();
        assert!(!lease.valid());
    }

    #[test]
    fn a_ttl_inside_the_margin_gives_no_lease() {
        let lease = Lease::default();
        lease.extend(Instant::now(), Duration::from_millis(1));
        assert!(!lease.valid());
    }
}
