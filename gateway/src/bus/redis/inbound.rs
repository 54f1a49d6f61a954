//! Notifications from Redis to this node's sockets.
//!
//! The Redis connection hands every push to [`Inbound::handler`] on its
//! own task. Messages go into a bounded queue ([`PUSH_QUEUE`]) served by
//! one delivery task, which checks the fencing epoch and calls fan-out;
//! so neither a slow fan-out nor the link's subscription round trips can
//! hold the other up. A full queue drops the message, counts it
//! (`pgws_bus_overflow_total`) and says so in the log, at most once a
//! second. A disconnection is not queued: it wakes the link at once, which
//! re-subscribes when Redis answers again.

use super::super::{Delivery, Inbox};
use super::gaps::{Gaps, Verdict};
use super::metrics::RedisBusMetrics;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::republish;
use pgws_service::events::RateLimit;
use pgws_service::redis_client::{message_of, PushHandler};
use redis::{PushInfo, PushKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Redis messages waiting for fan-out before new ones are dropped. Each
/// holds its payload (at most 8,000 bytes): 64 MiB at worst.
pub const PUSH_QUEUE: usize = 8_192;

/// What the Redis connection calls for each push.
pub struct Inbound {
    queue: mpsc::Sender<PushInfo>,
    /// Woken on a disconnection: the link re-subscribes.
    pub resync: Arc<Notify>,
    up: Arc<AtomicBool>,
    metrics: RedisBusMetrics,
    overflow_log: RateLimit,
}

impl Inbound {
    /// The handler and the task that delivers what it queues.
    pub fn start(
        keys: KeySpace,
        inbox: Arc<dyn Inbox>,
        metrics: RedisBusMetrics,
        up: Arc<AtomicBool>,
        gaps: Gaps,
    ) -> (Arc<Inbound>, tokio::task::JoinHandle<()>) {
        let (inbound, rx) = Inbound::new(PUSH_QUEUE, metrics.clone(), up);
        let delivery = Deliverer::new(keys, inbox, metrics, Some(gaps));
        (inbound, tokio::spawn(delivery.run(rx)))
    }

    /// The handler side alone, with a queue of `capacity`.
    fn new(
        capacity: usize,
        metrics: RedisBusMetrics,
        up: Arc<AtomicBool>,
    ) -> (Arc<Inbound>, mpsc::Receiver<PushInfo>) {
        let (queue, rx) = mpsc::channel(capacity);
        let inbound = Arc::new(Inbound {
            queue,
            resync: Arc::new(Notify::new()),
            up,
            metrics,
            overflow_log: RateLimit::default(),
        });
        (inbound, rx)
    }

    /// The push handler to give the Redis client.
    pub fn handler(self: &Arc<Self>) -> PushHandler {
        let inbound = self.clone();
        Arc::new(move |push| inbound.on_push(push))
    }

    fn on_push(&self, push: PushInfo) {
        if push.kind == PushKind::Disconnection {
            tracing::warn!("Redis connection lost");
            self.up.store(false, Ordering::Release);
            self.metrics.up.set(0);
            self.resync.notify_one();
            return;
        }
        if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            return; // subscribe/unsubscribe confirmations
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(push) {
            self.metrics.overflow.inc();
            if self.overflow_log.allow() {
                tracing::warn!(
                    queue = PUSH_QUEUE,
                    dropped_total = self.metrics.overflow.get(),
                    "delivery queue full: notifications from Redis dropped"
                );
            }
        }
    }
}

/// The delivery task's state.
struct Deliverer {
    keys: KeySpace,
    inbox: Arc<dyn Inbox>,
    metrics: RedisBusMetrics,
    malformed_log: RateLimit,
    newest_epoch: u64,
    /// Holes in offsets, filled from history (`None` in unit tests).
    gaps: Option<Gaps>,
}

impl Deliverer {
    fn new(
        keys: KeySpace,
        inbox: Arc<dyn Inbox>,
        metrics: RedisBusMetrics,
        gaps: Option<Gaps>,
    ) -> Deliverer {
        Deliverer {
            keys,
            inbox,
            metrics,
            malformed_log: RateLimit::default(),
            newest_epoch: 0,
            gaps,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<PushInfo>) {
        while let Some(push) = rx.recv().await {
            self.deliver(&push).await;
        }
    }

    async fn deliver(&mut self, push: &PushInfo) {
        let Some((channel, message)) = message_of(push) else {
            return;
        };
        let Some(channel) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.keys.channel_of(c))
        else {
            return;
        };
        if let Some((change, entry)) = pgws_protocol::presence::decode_event(message) {
            let delivery = Delivery::presence(
                Arc::from(channel),
                change,
                bytes::Bytes::copy_from_slice(entry),
            );
            return self.inbox.deliver(channel, Arc::new(delivery));
        }
        self.metrics.received.inc();
        let published = match republish::decode(bytes::Bytes::copy_from_slice(message)) {
            Ok(p) => p,
            Err(e) => {
                self.metrics.malformed.inc();
                if self.malformed_log.allow() {
                    tracing::warn!(error = %e, total = self.metrics.malformed.get(), "malformed message on Redis");
                }
                return;
            }
        };
        if published.epoch < self.newest_epoch {
            self.metrics.stale.inc();
            return;
        }
        self.newest_epoch = published.epoch;
        let channel_name: Arc<str> = Arc::from(channel);
        if let Some(gaps) = &mut self.gaps {
            match gaps.check(&channel_name, published.position).await {
                Verdict::Duplicate => return,
                Verdict::Deliver(hole) => {
                    let epoch = published.position.map(|p| p.epoch).unwrap_or_default();
                    for missed in hole {
                        let position = pgws_protocol::position::Position {
                            epoch,
                            offset: missed.offset,
                        };
                        let delivery = Arc::new(Delivery::new(
                            channel_name.clone(),
                            missed.payload,
                            Some(position),
                            std::time::Instant::now(),
                        ));
                        self.inbox.deliver(channel, delivery);
                    }
                }
            }
        }
        let delivery = Arc::new(Delivery::new(
            channel_name,
            published.payload,
            published.position,
            pgws_protocol::clock::instant_of_unix_micros(published.sent_at_us),
        ));
        match published
            .traceparent
            .filter(|_| pgws_service::telemetry::enabled())
        {
            Some(traceparent) => {
                let span =
                    tracing::info_span!("pgws.fanout", channel = %channel, epoch = published.epoch);
                pgws_service::telemetry::set_remote_parent(&span, &traceparent);
                span.in_scope(|| self.inbox.deliver(channel, delivery));
            }
            None => self.inbox.deliver(channel, delivery),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::testing::Recorder;
    use redis::Value;

    fn metrics() -> RedisBusMetrics {
        RedisBusMetrics::register(&prometheus::Registry::new()).expect("metrics")
    }

    fn message(keys: &KeySpace, channel: &str, epoch: u64, payload: &str) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                Value::BulkString(keys.channel(channel).into_bytes()),
                Value::BulkString(republish::encode(
                    &republish::Header {
                        epoch,
                        seq: 1,
                        sent_at_us: 0,
                        traceparent: None,
                    },
                    None,
                    payload.as_bytes(),
                )),
            ],
        }
    }

    #[test]
    fn the_handler_never_waits_and_counts_what_does_not_fit() {
        let m = metrics();
        let (inbound, mut rx) = Inbound::new(2, m.clone(), Arc::default());
        let handler = inbound.handler();
        let keys = KeySpace::new("p");
        for i in 0..5 {
            handler(message(&keys, "chat", 1, &format!("m{i}")));
        }
        assert_eq!(m.overflow.get(), 3);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_disconnection_wakes_the_link_and_is_not_queued() {
        let m = metrics();
        let up = Arc::new(AtomicBool::new(true));
        let (inbound, mut rx) = Inbound::new(8, m.clone(), up.clone());
        let resync = inbound.resync.clone();
        inbound.handler()(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), resync.notified())
            .await
            .expect("the link is woken");
        assert!(!up.load(Ordering::Acquire));
        assert!(rx.try_recv().is_err(), "nothing queued");
    }

    #[tokio::test]
    async fn deliveries_reach_the_inbox_and_older_epochs_are_fenced_off() {
        let recorder = Arc::new(Recorder::default());
        let keys = KeySpace::new("p");
        let m = metrics();
        let mut deliverer = Deliverer::new(keys.clone(), recorder.clone(), m.clone(), None);
        deliverer
            .deliver(&message(&keys, "chat", 5, "new leader"))
            .await;
        deliverer
            .deliver(&message(&keys, "chat", 4, "deposed leader"))
            .await;
        deliverer.deliver(&message(&keys, "chat", 5, "again")).await;
        let got: Vec<String> = recorder
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(got, vec!["new leader", "again"]);
        assert_eq!(m.stale.get(), 1);
    }
}
