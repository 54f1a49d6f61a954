//! Cluster mode's idempotency keys: `SET <prefix>:idem:<scope> 1 NX PX
//! <ttl>` on the bus's Redis connection, so every gateway of the cluster
//! sees the same keys.

use crate::idempotency::{IdempotencyStore, StoreFuture, Unavailable};
use pgws_protocol::keys::KeySpace;
use pgws_service::redis_client::RedisClient;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a claim may wait for Redis before the publish is refused.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Keys in Redis, through the link's client.
pub struct RedisKeys {
    pub(super) slot: Arc<RwLock<Option<RedisClient>>>,
    pub(super) keys: KeySpace,
}

impl RedisKeys {
    fn client(&self) -> Result<RedisClient, Unavailable> {
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        client.ok_or(Unavailable)
    }
}

impl IdempotencyStore for RedisKeys {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut client = self.client()?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.keys.idempotency(key))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64);
            let set = cmd.query_async::<Option<String>>(&mut client);
            match tokio::time::timeout(TIMEOUT, set).await {
                Ok(Ok(reply)) => Ok(reply.is_some()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "claiming an idempotency key in Redis failed");
                    Err(Unavailable)
                }
                Err(_) => {
                    tracing::warn!("claiming an idempotency key in Redis timed out");
                    Err(Unavailable)
                }
            }
        })
    }

    fn release<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Ok(mut client) = self.client() else {
                return;
            };
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.keys.idempotency(key));
            let del = cmd.query_async::<i64>(&mut client);
            if !matches!(tokio::time::timeout(TIMEOUT, del).await, Ok(Ok(_))) {
                tracing::warn!("releasing an idempotency key in Redis failed: a retry within PGWS_IDEMPOTENCY_TTL will be taken for a replay");
            }
        })
    }
}
