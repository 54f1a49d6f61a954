//! Unix time, and conversions between it and the monotonic clock.
//!
//! Timestamps that cross processes (when a notification was received, when
//! a token expires, when a message was delivered) are Unix times; timers
//! and latency measurements use `Instant`s. These are the only places the
//! two meet.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, as Unix time.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Now, in Unix seconds with a fraction (`message_delivered_at`).
pub fn unix_seconds() -> f64 {
    unix_now().as_secs_f64()
}

/// The Unix time, in microseconds, of `instant` (a moment in the recent
/// past).
pub fn unix_micros_at(instant: Instant) -> u64 {
    unix_now().saturating_sub(instant.elapsed()).as_micros() as u64
}

/// The `Instant` of Unix time `micros` (in the past): now minus how long
/// ago that was.
pub fn instant_of_unix_micros(micros: u64) -> Instant {
    let ago = Duration::from_micros((unix_now().as_micros() as u64).saturating_sub(micros));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// The `Instant` at which Unix time `seconds` will be reached (now, if it
/// has passed; at most ten years ahead).
pub fn instant_of_unix_seconds(seconds: f64) -> Instant {
    let ahead = (seconds - unix_seconds()).clamp(0.0, 10.0 * 365.0 * 86_400.0);
    Instant::now() + Duration::from_secs_f64(ahead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_within_a_millisecond() {
        let earlier = Instant::now() - Duration::from_millis(250);
        let back = instant_of_unix_micros(unix_micros_at(earlier));
        let diff = if back > earlier {
            back - earlier
        } else {
            earlier - back
        };
        assert!(diff < Duration::from_millis(1), "{diff:?}");
        let soon = instant_of_unix_seconds(unix_seconds() + 2.0);
        assert!(soon > Instant::now() + Duration::from_millis(1900));
        assert!(instant_of_unix_seconds(0.0) <= Instant::now());
    }
}
