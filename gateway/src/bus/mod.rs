//! The bus between sockets and the database side.
//!
//! Outbound (socket → database): [`Bus::publish`] queues an envelope for
//! NOTIFY. Inbound (database → sockets) needs no method here: in standalone
//! mode the in-process listener calls [`crate::fanout::Fanout`] directly.
//! [`Bus::subscribe`] / [`Bus::unsubscribe`] are called on a channel's first
//! and after its last local reader, so a cross-node bus can subscribe only
//! to channels this node needs.
//!
//! * standalone: the embedded relay from `pgws-coordinator`;
//! * cluster: [`redis::RedisBus`] — pub/sub in, a bounded stream out.

pub mod redis;

use pgws_postgres::relay::{Relay, RelayError};
use std::time::Duration;

/// Why a message could not be queued for NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The queue stayed full for the whole wait.
    #[error("the NOTIFY queue is full")]
    Full,
    /// The bus is shutting down.
    #[error("the bus is closed")]
    Closed,
    /// Redis was unreachable until the writer's deadline; the message was
    /// never sent (cluster mode).
    #[error("the bus is unavailable")]
    Unavailable,
    /// The message was sent to Redis and whether it went in could not be
    /// learnt in time (cluster mode).
    #[error("the outcome of the write is unknown")]
    Unknown,
}

/// The bus, by mode.
#[derive(Clone)]
pub enum Bus {
    /// Standalone: the relay runs in this process.
    Local(Relay),
    /// Cluster: Redis.
    Redis(redis::RedisBus),
    /// Shut down: nothing is accepted any more.
    Closed,
}

impl Bus {
    /// Queue `envelope` (addressed to websocket `channel`) for NOTIFY,
    /// waiting up to `wait` for room.
    /// `traceparent` links the relay's span to the writer's (cluster mode).
    pub async fn publish(
        &self,
        channel: &str,
        envelope: String,
        traceparent: Option<&str>,
        wait: Duration,
    ) -> Result<(), BusError> {
        match self {
            Bus::Local(relay) => {
                relay
                    .enqueue(channel, envelope, wait)
                    .await
                    .map_err(|e| match e {
                        RelayError::Full => BusError::Full,
                        RelayError::Closed => BusError::Closed,
                    })
            }
            Bus::Redis(bus) => bus.publish(channel, envelope, traceparent, wait).await,
            Bus::Closed => Err(BusError::Closed),
        }
    }

    /// `channel` got its first local reader.
    pub fn subscribe(&self, channel: &str) {
        match self {
            Bus::Local(_) => {} // every notification already reaches this process
            Bus::Redis(bus) => bus.subscribe(channel),
            Bus::Closed => {}
        }
    }

    /// `channel` lost its last local reader.
    pub fn unsubscribe(&self, channel: &str) {
        match self {
            Bus::Local(_) => {}
            Bus::Redis(bus) => bus.unsubscribe(channel),
            Bus::Closed => {}
        }
    }
}
