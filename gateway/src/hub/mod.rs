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

pub mod control;
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

/// This node's readers, and fan-out to them.
pub struct Hub {
    /// Readers by channel.
    pub registry: Registry,
    metrics: Metrics,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Metrics) -> Hub {
        Hub {
            registry: Registry::default(),
            metrics,
        }
    }
}

impl Inbox for Hub {
    /// Fan-out: the same `Arc` to every reader's queue, no lock held while
    /// sending (the registry hands out a snapshot).
    fn deliver(&self, channel: &str, delivery: Arc<Delivery>) {
        let readers = self.registry.readers(channel);
        if readers.is_empty() {
            self.metrics.unrouted.inc();
            return;
        }
        for subscriber in readers.iter() {
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
            Subscriber {
                id: SessionId(1),
                queue: fast_tx,
                control: Arc::default(),
            },
            || {},
        );
        hub.registry.insert(
            "chat",
            Subscriber {
                id: SessionId(2),
                queue: slow_tx,
                control: slow_control.clone(),
            },
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
