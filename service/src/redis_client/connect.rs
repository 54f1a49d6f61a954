//! Connecting to Redis until it works or the caller gives up: the one
//! reconnect loop every Redis user shares.

use super::client::{describe_error, RedisClient};
use super::config::RedisConfig;
use super::push::PushHandler;
use crate::backoff::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between two attempts: Redis is the cluster's bus, so
/// it is retried more eagerly than PostgreSQL.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Connect, retrying with backoff (1, 2, 4, 5, 5 … s) and logging each
/// failure, until connected (`Some`) or `cancel` (`None`). `up` is told
/// each outcome (for a readiness gauge).
pub async fn connect_with_backoff(
    config: &RedisConfig,
    pushes: Option<PushHandler>,
    response_timeout: Option<Duration>,
    cancel: &CancellationToken,
    up: impl Fn(bool),
) -> Option<RedisClient> {
    let mut backoff = Backoff::new();
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return None,
            r = RedisClient::connect(config, pushes.clone(), response_timeout) => r,
        };
        match attempt {
            Ok(client) => {
                up(true);
                return Some(client);
            }
            Err(e) => {
                up(false);
                let delay = backoff.next_delay().min(MAX_RETRY);
                tracing::warn!(
                    redis = %config.describe(),
                    error = %describe_error(&e),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot connect to Redis"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
