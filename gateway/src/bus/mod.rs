//! The bus: how notifications reach this node and how writers' messages
//! leave it. The lowest layer of the gateway — it knows nothing of sockets.
//!
//! * **In:** a bus hands every notification, already routed to its
//!   websocket channel, to an [`Inbox`] (the hub, which fans it out).
//! * **Out:** [`Bus::publish`] queues a writer's envelope for NOTIFY.
//! * [`Bus::subscribe`] / [`Bus::unsubscribe`] are called on a channel's
//!   first and after its last local reader, so a cross-node bus subscribes
//!   only to what this node reads.
//!
//! Two implementations, one above-the-bus code path:
//!
//! * [`local`] — standalone: the `LISTEN` connection and the NOTIFY relay
//!   run in this process (`pgws-postgres`);
//! * [`redis`] — cluster: Redis pub/sub in, a bounded Redis stream out.
//!
//! Each returns a [`Started`]: the shared handle, and the [`Lifecycle`] the
//! server watches (a bus may fail for good) and stops (after the last
//! handle is gone, queued writes go out until the deadline).

pub mod local;
pub mod redis;

use bytes::Bytes;
pub use pgws_service::admin::Readiness;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// One notification on its way to sockets: the NOTIFY payload and when it
/// arrived (for the latency histogram). Every reader's queue holds the same
/// `Arc` — a reference count per socket, no copy, and one pointer per queue
/// slot.
#[derive(Debug)]
pub struct Delivery {
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
    /// When the notification reached this process (or, in cluster mode,
    /// the leader).
    pub received_at: Instant,
}

/// Where a bus delivers: the one narrow interface between the bus and the
/// layers above it.
pub trait Inbox: Send + Sync + 'static {
    /// A notification for websocket `channel`. Called on the bus's own
    /// task: must not block.
    fn deliver(&self, channel: &str, delivery: Arc<Delivery>);
}

/// Why a message could not be queued for NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The queue stayed full for the whole wait: not sent.
    #[error("the NOTIFY queue is full")]
    Full,
    /// The bus is shutting down: not sent.
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

/// A future a bus returns.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The bus as sessions see it.
pub trait Bus: Send + Sync {
    /// Queue `envelope` (addressed to websocket `channel`) for NOTIFY,
    /// waiting up to `wait` for room. `traceparent` links the relay's span
    /// to the writer's.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        envelope: String,
        traceparent: Option<&'a str>,
        wait: Duration,
    ) -> BusFuture<'a, Result<(), BusError>>;

    /// `channel` got its first local reader. Must not block (it is called
    /// under the registry's lock, to keep subscribe/unsubscribe in order).
    fn subscribe(&self, channel: &str);

    /// `channel` lost its last local reader. Must not block.
    fn unsubscribe(&self, channel: &str);

    /// A probe of whether notifications flow (for `/readyz`). It holds no
    /// handle to the bus, so it does not keep the bus from shutting down.
    fn readiness(&self) -> Readiness;
}

/// A started bus.
pub struct Started {
    /// The handle sessions share.
    pub bus: Arc<dyn Bus>,
    /// What the server watches and stops.
    pub lifecycle: Lifecycle,
}

/// A bus's tasks, as the server sees them.
pub struct Lifecycle {
    /// Says why, if the bus fails for good.
    failure: Option<oneshot::Receiver<String>>,
    /// Tasks that finish once every bus handle is dropped (queued writes).
    workers: JoinSet<()>,
    /// Abandons queued work (the end of the grace period).
    abort: CancellationToken,
    /// Stops the tasks that run for the bus's whole life.
    stop: CancellationToken,
    /// Those tasks.
    background: Vec<JoinHandle<()>>,
}

impl Lifecycle {
    /// Resolves with the reason if the bus fails for good; never for a bus
    /// that heals itself.
    pub async fn failed(&mut self) -> String {
        match self.failure.as_mut() {
            Some(rx) => match rx.await {
                Ok(reason) => reason,
                // The sender went away without a failure: never.
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Stop the bus. Call once every bus handle is dropped: queued writes
    /// go out until `deadline`, the rest are abandoned (and logged).
    pub async fn stop(mut self, deadline: Instant) {
        let workers = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline.into(), workers)
            .await
            .is_err()
        {
            tracing::warn!("queued writes not sent within PGWS_SHUTDOWN_TIMEOUT: dropping them");
            self.abort.cancel();
            while self.workers.join_next().await.is_some() {}
        }
        self.stop.cancel();
        for task in self.background {
            let _ = task.await;
        }
    }
}

/// An inbox that records what it is given, for the buses' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Delivery, Inbox};
    use std::sync::{Arc, Mutex};

    /// Records `(channel, payload)` pairs.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<(String, String)>>);

    impl Inbox for Recorder {
        fn deliver(&self, channel: &str, delivery: Arc<Delivery>) {
            let payload = String::from_utf8_lossy(&delivery.payload).into_owned();
            self.0
                .lock()
                .expect("lock")
                .push((channel.to_string(), payload));
        }
    }
}
