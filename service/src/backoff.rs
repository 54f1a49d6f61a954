//! The retry schedule shared by every reconnect loop: 1, 2, 4, … seconds,
//! capped at 32 s, exactly as the original's `PGWS_RETRIES` behaviour.
//!
//! The rule for starting over: a loop keeps one `Backoff` across
//! connecting, setting up and losing a connection, and calls
//! [`Backoff::reset`] only once the connection has proven healthy — the
//! `LISTEN` connection after it stayed up for
//! `pgws_postgres::listener::HEALTHY_AFTER` — so a server that accepts and
//! then drops connections keeps getting longer waits. Redis reconnects
//! (`pgws_service::redis_client::connect_with_backoff`) start a fresh
//! schedule per outage and cap it at 5 s.

use std::time::Duration;

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(32);

/// Exponential backoff state.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A fresh schedule: the first delay is 1 s.
    pub fn new() -> Backoff {
        Backoff::default()
    }

    /// How many delays have been handed out since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, advancing the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let delay = delay_for(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Back to a 1 s first delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The delay after `failures` failed attempts: 2^failures seconds, capped.
pub fn delay_for(failures: u32) -> Duration {
    let secs = 1u64.checked_shl(failures).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_and_caps_at_32() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(delay_for(200), MAX_DELAY);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new();
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
