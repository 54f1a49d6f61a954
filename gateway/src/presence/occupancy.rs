//! Occupancy events (`PGWS_OCCUPANCY_EVENTS`): `ChannelOccupied` and
//! `ChannelVacated` on the meta channel when a channel gets its first
//! presence member and when it lost its last one and stayed empty for
//! `PGWS_OCCUPANCY_GRACE`.
//!
//! This module owns the sending (one debug log and one counter per event)
//! and, standalone, the set of channels the database was told are
//! occupied. Who saw a transition is the caller's: the store standalone,
//! the Redis scripts in cluster mode (where the occupied flag lives in
//! Redis, so exactly one gateway sends each event).
//!
//! Events leave in the order they were decided, through one queue
//! ([`QUEUE`] long; beyond it they are dropped and counted) and one task
//! that publishes them one after the other.
//!
//! The rate limit is the grace period: a vacated is sent only when the
//! channel is still empty a grace after its last member left, and a join
//! within it cancels both events; so a channel sends at most one
//! occupied/vacated pair per grace period, however fast it flaps.

use crate::bus::Bus;
use pgws_protocol::clock;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Events waiting to be published before new ones are dropped.
pub const QUEUE: usize = 10_000;

/// One queued event: the channel it is about, and which.
type Queued = (Arc<str>, Event);

/// Where the events go: the meta channel, through the bus.
pub struct Sink {
    /// The bus the gateway publishes with.
    pub bus: Arc<dyn Bus>,
    /// `PGWS_META_CHANNEL`.
    pub meta: String,
    /// `PGWS_WRITE_TIMEOUT`: how long a publish may wait for room.
    pub wait: Duration,
}

/// Occupancy's counters.
#[derive(Clone)]
struct Metrics {
    /// `pgws_occupancy_events_total{event}`: events this gateway sent.
    events: IntCounterVec,
    /// `pgws_occupancy_suppressed_total`: vacancies a re-join within the
    /// grace cancelled (neither event sent).
    suppressed: IntCounter,
    /// `pgws_occupancy_dropped_total`: events not sent, the queue was full.
    dropped: IntCounter,
}

/// The occupancy events of one gateway.
pub struct Occupancy {
    /// `PGWS_OCCUPANCY_GRACE`.
    pub grace: Duration,
    queue: mpsc::Sender<Queued>,
    /// The queue's end, until [`Self::connect`] takes it.
    pending: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Standalone: the channels the database was told are occupied, each
    /// with the number of times it lost its last member (only the check
    /// of the latest may vacate it).
    occupied: Mutex<HashMap<Arc<str>, u64>>,
    metrics: Metrics,
}

impl Occupancy {
    /// Occupancy events with `grace`; they are sent once [`Self::connect`]
    /// gave them a sink.
    pub fn new(grace: Duration, registry: &Registry) -> prometheus::Result<Arc<Occupancy>> {
        let events = IntCounterVec::new(
            Opts::new(
                "pgws_occupancy_events_total",
                "ChannelOccupied and ChannelVacated events this gateway sent on the meta channel",
            ),
            &["event"],
        )?;
        let suppressed = IntCounter::new(
            "pgws_occupancy_suppressed_total",
            "Channel vacancies cancelled by a reader joining within PGWS_OCCUPANCY_GRACE (no event sent)",
        )?;
        let dropped = IntCounter::new(
            "pgws_occupancy_dropped_total",
            "Occupancy events not sent because the queue to the meta channel was full",
        )?;
        registry.register(Box::new(events.clone()))?;
        for c in [&suppressed, &dropped] {
            registry.register(Box::new(c.clone()))?;
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        Ok(Arc::new(Occupancy {
            grace,
            queue,
            pending: Mutex::new(Some(rx)),
            occupied: Mutex::default(),
            metrics: Metrics {
                events,
                suppressed,
                dropped,
            },
        }))
    }

    /// Publish the queued events to `sink`, in order, from now on (once).
    pub fn connect(&self, sink: Sink) {
        let rx = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            tracing::debug!(meta = %sink.meta, "occupancy events on the meta channel");
            tokio::spawn(publish(rx, sink));
        }
    }

    /// Standalone: `channel` got its first member. Sends `ChannelOccupied`
    /// unless the database still believes it occupied (a vacancy within
    /// the grace, which its check will find cancelled).
    pub fn local_first(&self, channel: &Arc<str>) {
        let mut occupied = self.lock();
        if !occupied.contains_key(channel) {
            occupied.insert(channel.clone(), 0);
            self.send(channel, Event::ChannelOccupied);
        }
    }

    /// Standalone: `channel` lost its last member; `empty` tells, a grace
    /// later, whether it still has none.
    pub fn local_last(
        self: &Arc<Self>,
        channel: Arc<str>,
        empty: impl FnOnce(&str) -> bool + Send + 'static,
    ) {
        let generation = match self.lock().get_mut(&channel) {
            Some(g) => {
                *g += 1;
                *g
            }
            None => return,
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.grace).await;
            // Decided under the lock `local_first` takes after the store's
            // join: a join before the check makes it non-empty, one after
            // finds the channel vacated and sends occupied.
            let mut occupied = me.lock();
            if occupied.get(&channel) != Some(&generation) {
                return; // a later last leave's check decides
            }
            if empty(&channel) {
                occupied.remove(&channel);
                me.send(&channel, Event::ChannelVacated);
            } else {
                me.suppressed();
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, u64>> {
        self.occupied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A vacancy was cancelled by a join within the grace.
    pub fn suppressed(&self) {
        self.metrics.suppressed.inc();
        tracing::debug!("occupancy: a vacancy was cancelled by a join within the grace");
    }

    /// Queue `event` about `channel` for the meta channel.
    pub fn send(&self, channel: &Arc<str>, event: Event) {
        self.metrics
            .events
            .with_label_values(&[event.as_str()])
            .inc();
        tracing::debug!(
            channel = &**channel,
            event = event.as_str(),
            "occupancy event"
        );
        if self.queue.try_send((channel.clone(), event)).is_err() {
            self.metrics.dropped.inc();
            tracing::warn!(
                event = event.as_str(),
                "occupancy queue full: an event was not sent"
            );
        }
    }
}

/// Publish each queued event on the meta channel, best effort with the
/// write timeout, like the connection events.
async fn publish(mut rx: mpsc::Receiver<Queued>, sink: Sink) {
    while let Some((channel, event)) = rx.recv().await {
        let text = envelope::build_meta(
            event,
            &sink.meta,
            &[channel.to_string()],
            &ClaimsJson::new(&serde_json::Map::new()),
            clock::unix_seconds(),
        );
        if text.len() > pgws_protocol::limits::NOTIFY_PAYLOAD_MAX {
            tracing::warn!(
                event = event.as_str(),
                "occupancy event larger than the NOTIFY limit: not sent"
            );
            continue;
        }
        if let Err(e) = sink.bus.publish(&sink.meta, text, None, sink.wait).await {
            tracing::warn!(event = event.as_str(), error = %e, "occupancy event not sent");
        }
    }
}
