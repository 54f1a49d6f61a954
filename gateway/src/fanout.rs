//! Fan-out: one notification to every local reader of its channel.
//!
//! A plain function call on the listener's (or bus's) task: look the channel
//! up, `try_send` the same `Arc<Delivery>` (a reference count, no copy) to each
//! socket's bounded queue. A full queue never blocks anyone: that socket is
//! cut off as a slow consumer (close 3008) and counted.

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::Delivery;
use pgws_postgres::listener::{Notification, NotificationSink};
use pgws_protocol::close::CloseReason;
use pgws_protocol::routing;
use std::sync::Arc;
use tokio::sync::mpsc::error::TrySendError;

/// Delivers notifications to this node's sockets.
pub struct Fanout {
    registry: Arc<Registry>,
    metrics: Metrics,
    listen_channel: String,
}

impl Fanout {
    /// A fan-out over `registry`; payloads that name no channel go to the
    /// channel called like `listen_channel`.
    pub fn new(registry: Arc<Registry>, metrics: Metrics, listen_channel: String) -> Fanout {
        Fanout {
            registry,
            metrics,
            listen_channel,
        }
    }

    /// Deliver `delivery` to every reader of `channel`. No lock is held
    /// while sending: the registry hands out a snapshot of the readers.
    pub fn deliver_to(&self, channel: &str, delivery: &Arc<Delivery>) {
        let readers = self.registry.readers(channel);
        for subscriber in readers.iter() {
            match subscriber.queue.try_send(delivery.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.metrics.queue_drops.inc();
                    if subscriber.control.close(CloseReason::SlowConsumer) {
                        self.metrics.slow_consumers.inc();
                        tracing::info!(
                            session = subscriber.id.0,
                            "send queue full: closing a slow consumer"
                        );
                    }
                }
                Err(TrySendError::Closed(_)) => {} // the session is ending
            }
        }
        if readers.is_empty() {
            self.metrics.unrouted.inc();
        }
    }
}

impl NotificationSink for Fanout {
    fn deliver(&self, notification: Notification) {
        let delivery = Arc::new(Delivery {
            payload: notification.payload,
            received_at: notification.received_at,
        });
        // NOTIFY payloads are text in the database encoding, which the
        // connection converts to UTF-8.
        let text = std::str::from_utf8(&delivery.payload).unwrap_or("");
        let channel = routing::target_channel(text, &self.listen_channel);
        if pgws_service::telemetry::enabled() {
            tracing::info_span!("pgws.fanout", channel = %channel)
                .in_scope(|| self.deliver_to(&channel, &delivery));
        } else {
            self.deliver_to(&channel, &delivery);
        }
    }
}
