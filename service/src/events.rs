//! Events that log and count in one call.
//!
//! Each component's metrics struct has one method per event — it bumps
//! the counter and writes the log line together, so the two cannot drift
//! (vector's `emit!` habit). Events that can fire once per message (a
//! dropped notification, a full queue) log through a [`RateLimit`]: the
//! counter sees every occurrence, the log at most one line per period,
//! with the running total.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Allows one log line per period.
#[derive(Debug)]
pub struct RateLimit {
    origin: Instant,
    period_ms: u64,
    /// Milliseconds after `origin` of the last line allowed, plus one (0:
    /// never).
    last: AtomicU64,
}

impl RateLimit {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            origin: Instant::now(),
            period_ms: period.as_millis() as u64,
            last: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now (and if so, the period restarts).
    pub fn allow(&self) -> bool {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= self.period_ms)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for RateLimit {
    /// One line a second.
    fn default() -> RateLimit {
        RateLimit::new(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period() {
        let limit = RateLimit::new(Duration::from_secs(3600));
        assert!(limit.allow(), "the first is allowed");
        assert!(!limit.allow(), "then silence for the period");
        let always = RateLimit::new(Duration::ZERO);
        assert!(always.allow() && always.allow());
    }
}
