//! Timers shared by the loops.

/// The next tick of an optional interval; never, when there is none (a
/// probe or keep-alive that is switched off).
pub async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// An interval whose first tick is one period from now, and that delays
/// (rather than bursts) after a late tick.
pub fn every(period: std::time::Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}
