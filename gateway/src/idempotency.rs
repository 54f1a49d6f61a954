//! `Idempotency-Key`s of HTTP publishes: a key is claimed by the first
//! request that carries it and held for `PGWS_IDEMPOTENCY_TTL`; a retry
//! within that window finds it taken and is not published again.
//!
//! One interface, two places: [`Memory`] (standalone: a bounded map in
//! this process) and, in cluster mode, Redis (`SET NX PX` under the
//! cluster's prefix, `bus::redis`), so a retry that reaches another
//! gateway is recognised too. A publish that fails for certain releases
//! its key, so the client's retry can go through.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A future a store returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store could not answer (Redis unreachable): the publish is refused
/// with 503 rather than risk a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the idempotency store is unavailable")]
pub struct Unavailable;

/// Where keys are held.
pub trait IdempotencyStore: Send + Sync {
    /// Claim `key` for `ttl`: `Ok(true)` when this request is the first,
    /// `Ok(false)` when the key is already held (a retry).
    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, Unavailable>>;

    /// Release `key`: its publish failed, a retry may publish.
    fn release<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// Standalone: at most `max` keys, each until its expiry; when full, the
/// oldest key is forgotten early and `evicted` counted.
pub struct Memory {
    inner: Mutex<Keys>,
    max: usize,
    held: prometheus::IntGauge,
    evicted: prometheus::IntCounter,
}

#[derive(Default)]
struct Keys {
    expiry: HashMap<String, Instant>,
    /// Keys in claim order (= expiry order: one ttl for all); an entry
    /// whose key was released or claimed again later is stale.
    order: VecDeque<(Instant, String)>,
}

impl Memory {
    /// An empty store of at most `max` keys.
    pub fn new(max: usize, held: prometheus::IntGauge, evicted: prometheus::IntCounter) -> Memory {
        Memory {
            inner: Mutex::new(Keys::default()),
            max,
            held,
            evicted,
        }
    }

    fn claim_at(&self, key: &str, ttl: Duration, now: Instant) -> bool {
        // A std mutex: nothing awaits while it is held.
        let mut keys = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        keys.expire(now);
        if keys.expiry.contains_key(key) {
            return false;
        }
        while keys.expiry.len() >= self.max && !keys.order.is_empty() {
            if keys.pop_oldest() {
                self.evicted.inc();
                tracing::info!(
                    "PGWS_IDEMPOTENCY_MAX_KEYS reached: an idempotency key forgotten early"
                );
            }
        }
        let until = now + ttl;
        keys.expiry.insert(key.to_string(), until);
        keys.order.push_back((until, key.to_string()));
        self.held.set(keys.expiry.len() as i64);
        true
    }
}

impl Keys {
    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, _)| *until <= now) {
            self.pop_oldest();
        }
    }

    /// Drop the oldest entry; whether it was a held key (not stale).
    fn pop_oldest(&mut self) -> bool {
        let Some((until, key)) = self.order.pop_front() else {
            return false;
        };
        if self.expiry.get(&key) == Some(&until) {
            self.expiry.remove(&key);
            return true;
        }
        false
    }
}

impl IdempotencyStore for Memory {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, Unavailable>> {
        let first = self.claim_at(key, ttl, Instant::now());
        Box::pin(std::future::ready(Ok(first)))
    }

    fn release<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let mut keys = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        keys.expiry.remove(key);
        self.held.set(keys.expiry.len() as i64);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> Memory {
        Memory::new(
            max,
            prometheus::IntGauge::new("g", "g").expect("gauge"),
            prometheus::IntCounter::new("c", "c").expect("counter"),
        )
    }

    #[test]
    fn a_key_is_claimed_once_until_it_expires_or_is_released() {
        let s = store(10);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        assert!(s.claim_at("a", ttl, t0));
        assert!(!s.claim_at("a", ttl, t0 + Duration::from_secs(59)));
        assert!(
            s.claim_at("a", ttl, t0 + Duration::from_secs(60)),
            "expired"
        );
        let mut keys = s.inner.lock().expect("lock");
        keys.expiry.remove("a");
        drop(keys);
        assert!(
            s.claim_at("a", ttl, t0 + Duration::from_secs(61)),
            "released"
        );
    }

    #[test]
    fn a_full_store_forgets_its_oldest_key_and_counts_it() {
        let s = store(2);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        assert!(s.claim_at("a", ttl, t0));
        assert!(s.claim_at("b", ttl, t0));
        assert!(s.claim_at("c", ttl, t0));
        assert_eq!(s.evicted.get(), 1);
        assert!(s.claim_at("a", ttl, t0), "the oldest was forgotten");
        assert!(!s.claim_at("c", ttl, t0));
        assert_eq!(s.held.get(), 2);
    }
}
