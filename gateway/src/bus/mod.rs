//! The bus: how notifications reach this node and how writers' messages
//! leave it. The lowest layer of the gateway — it knows nothing of sockets.
//!
//! * **In:** a bus hands every notification, already routed to its
//!   websocket channel, to an [`Inbox`] (the hub, which fans it out).
//! * **Out:** [`Bus::publish`] queues a writer's envelope for NOTIFY.
//! * [`Bus::subscribe`] / [`Bus::unsubscribe`] are called on a channel's
//!   first and after its last local reader, so a cross-node bus subscribes
//!   only to what this node reads. A subscribe may be refused (the cluster
//!   bus bounds what waits for Redis), and [`Bus::confirm`] tells a new
//!   reader when its subscription is in effect: a reader is live only
//!   after both.
//! * **Positions:** every notification arrives with its place in its
//!   channel's sequence (`pgws_protocol::position`), assigned where
//!   notifications enter the system — this process in standalone mode,
//!   the leader in cluster mode — and [`Bus::recover`] answers where a
//!   channel stands and what a client missed, from the same place's
//!   history.
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
use pgws_protocol::position::{ChannelState, Epoch, Position, Recovery, Since};
pub use pgws_service::admin::Readiness;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// One notification on its way to sockets: its channel, the NOTIFY
/// payload, its position and when it arrived (for the latency histogram).
/// Every reader's queue holds the same `Arc` — a reference count per
/// socket, no copy, and one pointer per queue slot — and the v2 frame is
/// encoded once, by the first v2 reader, for all of them.
#[derive(Debug)]
pub struct Delivery {
    /// The websocket channel.
    pub channel: Arc<str>,
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
    /// Its place in the channel's sequence (`None` only from a coordinator
    /// older than v2).
    pub position: Option<Position>,
    /// When the notification reached this process (or, in cluster mode,
    /// the leader).
    pub received_at: Instant,
    /// A notification, or a presence event (whose payload is the member's
    /// entry and which has no position).
    pub presence: Option<pgws_protocol::presence::Change>,
    v2_frame: OnceLock<Bytes>,
    origin: OnceLock<u64>,
}

impl Delivery {
    /// A delivery for `channel`.
    pub fn new(
        channel: Arc<str>,
        payload: Bytes,
        position: Option<Position>,
        received_at: Instant,
    ) -> Delivery {
        Delivery {
            channel,
            payload,
            position,
            received_at,
            presence: None,
            v2_frame: OnceLock::new(),
            origin: OnceLock::new(),
        }
    }

    /// A presence event: `change` of the member whose entry is `entry`.
    pub fn presence(
        channel: Arc<str>,
        change: pgws_protocol::presence::Change,
        entry: Bytes,
    ) -> Delivery {
        let mut delivery = Delivery::new(channel, entry, None, Instant::now());
        delivery.presence = Some(change);
        delivery
    }

    /// The payload's [`fingerprint`], computed on first use, for echo
    /// suppression (`crate::hub::echo`).
    pub fn origin(&self) -> u64 {
        *self.origin.get_or_init(|| fingerprint(&self.payload))
    }

    /// The protocol v2 `message` frame's text, encoded on first use.
    pub fn v2_frame(&self) -> &Bytes {
        self.v2_frame.get_or_init(|| {
            if let Some(change) = self.presence {
                let entry = String::from_utf8_lossy(&self.payload);
                return Bytes::from(pgws_protocol::presence::frame(
                    change,
                    &self.channel,
                    &entry,
                ));
            }
            let data = String::from_utf8_lossy(&self.payload);
            Bytes::from(pgws_protocol::v2::message(
                &self.channel,
                self.position.as_ref(),
                &data,
            ))
        })
    }
}

/// A payload's fingerprint: a 64-bit SipHash with a per-process random
/// key (so a client cannot craft a collision), for echo suppression.
pub fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(payload)
}

/// A message replayed from history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Its offset (in the channel's current epoch).
    pub offset: u64,
    /// The NOTIFY payload.
    pub payload: Bytes,
}

/// Where a channel stands for a new subscription, and what it missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The channel's newest position: the subscription receives every
    /// message after it.
    pub position: Position,
    /// With `since`: the messages after it, complete and in order, when
    /// history has all of them; `None` when it cannot (another epoch, an
    /// offset out of range, history trimmed or off). Always `None` without
    /// `since`.
    pub replay: Option<Vec<Replayed>>,
}

impl Recovered {
    /// Decide a recovery from a channel's state (already taken as of the
    /// current continuity) and the history entries read after `since`
    /// (oldest first): replayed only when exactly complete.
    pub fn decide(
        state: &ChannelState,
        since: Option<&Since>,
        entries: Vec<Replayed>,
    ) -> Recovered {
        let replay = since.and_then(|since| {
            let recovery = state.recovery(since);
            if let Recovery::Impossible = recovery {
                return None;
            }
            recovery
                .complete(entries.iter().map(|e| e.offset))
                .then_some(entries)
        });
        Recovered {
            position: Recovered::newest_known(state.position(), since),
            replay,
        }
    }

    /// The position a subscription starts after: the channel's newest —
    /// or, on a durable (outbox) channel, the client's own when it is
    /// *ahead* in the very same epoch. That happens only when Redis lost
    /// what it had (a restart or a failover to a replica that lacked the
    /// last writes): PostgreSQL numbered those messages, so the leader
    /// publishes exactly them again at exactly those offsets, and this
    /// client already has them — starting from the channel's position
    /// would hand them to it twice after its `recovered:false`. Not on a
    /// NOTIFY channel: there a leader that kept its continuity over the
    /// lost writes gives those offsets to *new* messages, which a client
    /// started from its own offset would skip without seeing a gap (the
    /// outside review's F3).
    fn newest_known(channel: Position, since: Option<&Since>) -> Position {
        match since {
            Some(since)
                if channel.epoch.continuity.is_durable()
                    && Epoch::parse(&since.epoch) == Some(channel.epoch)
                    && since.offset > channel.offset =>
            {
                tracing::warn!(
                    epoch = %since.epoch,
                    client = since.offset,
                    redis = channel.offset,
                    "a client is ahead of the channel's state in Redis (Redis lost writes): it starts from its own offset"
                );
                Position {
                    offset: since.offset,
                    ..channel
                }
            }
            _ => channel,
        }
    }
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
    /// Too many subscription changes already wait for Redis
    /// (`PGWS_REDIS_SUBSCRIPTION_QUEUE`): the reader is refused.
    #[error("too many subscriptions wait for Redis (PGWS_REDIS_SUBSCRIPTION_QUEUE)")]
    SubscriptionQueueFull,
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
    /// `Err(SubscriptionQueueFull)`: refused, the reader must not be added.
    fn subscribe(&self, channel: &str) -> Result<(), BusError>;

    /// `channel` lost its last local reader. Must not block.
    fn unsubscribe(&self, channel: &str);

    /// Resolves once every subscription asked for so far is in effect (in
    /// cluster mode: confirmed by Redis); `Err(Unavailable)` when that
    /// does not happen within [`redis::RECOVER_TIMEOUT`]. A v1 reader waits
    /// for this before its socket is opened.
    fn confirm(&self) -> BusFuture<'_, Result<(), BusError>>;

    /// Where `channel` stands, and — with `since` — what a reader missed.
    /// Call after the reader is in the registry: once this resolves, every
    /// message after the returned position reaches it (in cluster mode,
    /// this waits until this node's Redis subscription is confirmed).
    fn recover<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Since>,
    ) -> BusFuture<'a, Result<Recovered, BusError>>;

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
    /// Where HTTP publishes' idempotency keys are shared between gateways
    /// (cluster mode); `None`: this process only.
    pub idempotency: Option<Arc<dyn crate::idempotency::IdempotencyStore>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_protocol::position::Continuity;

    #[test]
    fn a_client_ahead_of_redis_in_its_durable_epoch_starts_from_its_own_offset() {
        // On a NOTIFY channel the channel's position, always: offsets Redis
        // lost may be given to new messages in the same continuity.
        let mut notify = ChannelState::new(
            5,
            Continuity {
                term: 3,
                session: 1,
            },
        );
        notify.offset = 10;
        let notify_since = Since {
            epoch: notify.position().epoch.to_string(),
            offset: 14,
        };
        assert_eq!(
            Recovered::decide(&notify, Some(&notify_since), Vec::new())
                .position
                .offset,
            10
        );
        let continuity = Continuity::durable(0);
        let mut state = ChannelState::new(5, continuity);
        state.offset = 10;
        let epoch = state.position().epoch.to_string();
        let since = |offset| Since {
            epoch: epoch.clone(),
            offset,
        };
        // Ahead (Redis lost 11..=14): no replay, and the subscription
        // starts after 14, so 11..=14 published again are not resent.
        let ahead = Recovered::decide(&state, Some(&since(14)), Vec::new());
        assert_eq!(ahead.replay, None);
        assert_eq!(ahead.position.offset, 14);
        // Behind: the channel's position, as always.
        let behind = Recovered::decide(&state, Some(&since(10)), Vec::new());
        assert_eq!(behind.position.offset, 10);
        // Another epoch: the channel's position.
        let other = Since {
            epoch: "1.2.3".into(),
            offset: 99,
        };
        assert_eq!(
            Recovered::decide(&state, Some(&other), Vec::new())
                .position
                .offset,
            10
        );
    }
}

/// An inbox that records what it is given, for the buses' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::bus::{Delivery, Inbox};
    use std::sync::{Arc, Mutex};

    /// Records `(channel, payload)` pairs.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<(String, String)>>);

    impl Inbox for Recorder {
        fn deliver(&self, channel: &str, delivery: Arc<Delivery>) {
            assert_eq!(&*delivery.channel, channel);
            let payload = String::from_utf8_lossy(&delivery.payload).into_owned();
            self.0
                .lock()
                .expect("lock")
                .push((channel.to_string(), payload));
        }
    }
}
