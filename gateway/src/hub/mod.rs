//! The hub: this node's sockets by channel, and fan-out to them.
//!
//! It owns what the layers below (the bus) need not know about sockets —
//! their ids, their kill switches, their send queues — and implements the
//! bus's one inbound interface, [`Inbox`]: a notification for a channel is
//! handed, as one shared `Arc`, to the bounded queue of every local reader
//! of that channel. A full queue never blocks anyone: that socket is cut
//! off as a slow consumer (close 3008) and counted.
//!
//! * [`registry`] — readers by channel, sharded, with lock-free snapshots
//!   for fan-out and ordered first/last callbacks for the bus.
//! * [`member`] — a reading socket as the hub sees it.
//! * [`control`] — a socket's kill switch.
//! * [`echo`] — what a socket published, so it is not sent back to it.
//!
//! Fan-out of one channel is serialised (a lock per channel shard, held
//! while its queues are filled): a presence event delivered from a
//! session's task and a notification from the bus's task land in every
//! reader's queue in the same order.

pub mod control;
pub mod echo;
pub mod member;
pub mod registry;

pub use control::SessionControl;
pub use member::{SessionId, Subscriber};
pub use registry::Registry;

use crate::bus::{Delivery, Inbox};
use crate::metrics::Metrics;
use pgws_protocol::close::CloseReason;
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

const ORDER_SHARDS: usize = 64;

/// This node's readers, and fan-out to them.
pub struct Hub {
    /// Readers by channel.
    pub registry: Registry,
    metrics: Metrics,
    order: Box<[std::sync::Mutex<()>]>,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Metrics) -> Hub {
        Hub {
            registry: Registry::default(),
            metrics,
            order: (0..ORDER_SHARDS)
                .map(|_| std::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn order(&self, channel: &str) -> &std::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(channel);
        &self.order[(h as usize) % self.order.len()]
    }
}

impl Inbox for Hub {
    /// Fan-out: the same `Arc` to every reader's queue, no lock held while
    /// sending (the registry hands out a snapshot).
    fn deliver(&self, channel: &str, delivery: Arc<Delivery>) {
        let _order = self
            .order(channel)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let readers = self.registry.readers(channel);
        if readers.is_empty() {
            if delivery.presence.is_none() {
                self.metrics.unrouted.inc();
            }
            return;
        }
        for subscriber in readers.iter() {
            if !subscriber.wants(&delivery) {
                if delivery.presence.is_none() {
                    self.metrics.echo_suppressed.inc();
                }
                continue;
            }
            match subscriber.queue.try_send(delivery.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    let first = subscriber.control.close(CloseReason::SlowConsumer);
                    self.metrics.queue_full(subscriber.id.0, first);
                }
                Err(TrySendError::Closed(_)) => {} // the session is ending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::sync::mpsc;

    fn delivery(text: &'static str) -> Arc<Delivery> {
        Arc::new(Delivery::new(
            Arc::from("chat"),
            bytes::Bytes::from_static(text.as_bytes()),
            None,
            Instant::now(),
        ))
    }

    #[test]
    fn a_full_queue_cuts_off_that_reader_only() {
        let hub = Hub::new(Metrics::new().expect("metrics"));
        let (fast_tx, mut fast) = mpsc::channel(8);
        let (slow_tx, _slow) = mpsc::channel(1);
        let slow_control = Arc::new(SessionControl::default());
        hub.registry.insert(
            "chat",
            Subscriber::new(SessionId(1), fast_tx, Arc::default()),
            || {},
        );
        hub.registry.insert(
            "chat",
            Subscriber::new(SessionId(2), slow_tx, slow_control.clone()),
            || {},
        );
        for text in ["one", "two", "three"] {
            hub.deliver("chat", delivery(text));
        }
        hub.deliver("nobody", delivery("lost"));
        let got: Vec<_> = std::iter::from_fn(|| fast.try_recv().ok())
            .map(|d| String::from_utf8_lossy(&d.payload).into_owned())
            .collect();
        assert_eq!(got, vec!["one", "two", "three"]);
        assert_eq!(slow_control.reason(), Some(CloseReason::SlowConsumer));
    }
}
