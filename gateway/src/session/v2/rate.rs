//! The command rate limit of one v2 socket: a token bucket holding up to
//! `rate` tokens, refilled at `rate` per second.

use std::time::Instant;

/// A token bucket.
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// Full, `rate` tokens per second.
    pub fn new(rate: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate.max(1)),
            tokens: f64::from(rate.max(1)),
            refilled: Instant::now(),
        }
    }

    /// Take a token at `now`; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_of_rate_then_rate_per_second() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10);
        assert!((0..10).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
        // Idle time refills up to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(later)).count(), 10);
    }
}
