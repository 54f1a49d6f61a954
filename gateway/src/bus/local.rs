//! Standalone mode's bus: the database side runs in this process.
//!
//! * **In:** the supervised `LISTEN` connection (`pgws_postgres::listener`)
//!   hands every notification to a [`Router`], which finds its websocket
//!   channel (the payload's `"channel"`, else the one named like the listen
//!   channel) and delivers it to the inbox.
//! * **Out:** writers' envelopes go to the NOTIFY relay
//!   (`pgws_postgres::relay`): `PGWS_POOL_SIZE` connections, each with its
//!   own bounded queue, a channel always on the same one.
//!
//! * **Positions and history** ([`history`]): the router gives each
//!   notification its channel's next offset and keeps it in memory, and
//!   [`Bus::recover`] reads from there.
//! * **The durable outbox** (`PGWS_OUTBOX=true`, `pgws_postgres::outbox`):
//!   a second source beside the listener. Its messages arrive with offsets
//!   PostgreSQL assigned at commit; the router keeps them at those offsets
//!   ([`History::record_at`]), and at start the newest of each channel are
//!   loaded back, so a restart keeps every outbox channel's epoch and
//!   history ([`prepare_outbox`]).
//!
//! Every notification already reaches this process, so subscribing is a
//! no-op. Without `PGWS_CHECK_LISTENER_INTERVAL`, a lost listener is this
//! bus's failure: the gateway then exits non-zero, as the original does.

pub mod history;

use super::{Bus, BusError, BusFuture, Delivery, Inbox, Lifecycle, Readiness, Recovered, Started};
use history::{History, HistoryMetrics, SWEEP_EVERY};
use pgws_postgres::listener::{
    self, ListenerConfig, ListenerMetrics, ListenerState, Notification, NotificationSink,
};
use pgws_postgres::outbox::reader::{self, Initial, Start};
use pgws_postgres::outbox::{
    prune, OutboxConfig, OutboxError, OutboxMessage, OutboxMetrics, OutboxSink, Reader, ReaderState,
};
use pgws_postgres::pg::PgConfig;
use pgws_postgres::relay::{Relay, RelayConfig, RelayError, RelayMetrics};
use pgws_protocol::position::{Continuity, Epoch, Position, Since};
use pgws_protocol::routing;
use pgws_service::history::HistoryConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Most notifications sent per NOTIFY transaction.
const MAX_NOTIFY_BATCH: usize = 256;

/// The standalone bus's settings.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The database.
    pub db: PgConfig,
    /// `PGWS_LISTEN_CHANNEL`.
    pub listen_channel: String,
    /// NOTIFY connections.
    pub pool_size: usize,
    /// Messages queued per NOTIFY connection.
    pub write_queue_size: usize,
    /// Listener connection retries.
    pub retries: u32,
    /// Listener probe and self-heal period; `None`: a loss is fatal.
    pub check_listener_interval: Option<Duration>,
    /// History per channel.
    pub history: HistoryConfig,
    /// `PGWS_HISTORY_MAX_CHANNELS`.
    pub history_max_channels: usize,
    /// `PGWS_OUTBOX*`: `Some` reads the durable outbox too.
    pub outbox: Option<OutboxConfig>,
}

/// The outbox as [`prepare_outbox`] found it: where reading starts, and
/// the history to load.
pub struct PreparedOutbox(Initial);

/// With `PGWS_OUTBOX=true`: apply (or check) the schema and read where
/// the outbox stands — before the gateway serves, so the first
/// subscription already finds each channel's history and epoch.
pub async fn prepare_outbox(
    config: &LocalConfig,
    shutdown: &CancellationToken,
) -> Result<Option<PreparedOutbox>, OutboxError> {
    let Some(outbox) = &config.outbox else {
        return Ok(None);
    };
    let start = Start::History {
        per_channel: config.history.size.max(1) as i64,
        within: config.history.ttl,
    };
    let initial = reader::prepare(outbox, &start, config.retries, shutdown).await?;
    tracing::info!(
        messages = initial.history.len(),
        "outbox ready: its recent messages are history again"
    );
    Ok(Some(PreparedOutbox(initial)))
}

/// The handle sessions use.
pub struct LocalBus {
    relay: Relay,
    listening: watch::Receiver<ListenerState>,
    outbox: Option<watch::Receiver<ReaderState>>,
    history: Arc<History>,
}

/// Start the listener and the relay; metrics go to `registry`.
pub fn start(
    config: LocalConfig,
    outbox: Option<PreparedOutbox>,
    inbox: Arc<dyn Inbox>,
    registry: &prometheus::Registry,
) -> prometheus::Result<Started> {
    let abort = CancellationToken::new();
    let (relay, workers) = Relay::start(
        RelayConfig {
            db: config.db.clone(),
            listen_channel: config.listen_channel.clone(),
            pool_size: config.pool_size,
            queue_capacity: config.write_queue_size,
            max_batch: MAX_NOTIFY_BATCH,
        },
        RelayMetrics::register(registry)?,
        abort.clone(),
    );
    let (state_tx, state_rx) = watch::channel(ListenerState::Connecting);
    let stop = CancellationToken::new();
    let history = Arc::new(History::new(
        config.history,
        config.history_max_channels,
        HistoryMetrics::register(registry)?,
    ));
    let sweeping = tokio::spawn(sweep(history.clone(), stop.clone()));
    let router = Arc::new(Router {
        inbox,
        listen_channel: config.listen_channel.clone(),
        history: history.clone(),
    });
    let mut background = Vec::new();
    let outbox_state = match (config.outbox.clone(), outbox) {
        (Some(outbox_config), Some(PreparedOutbox(initial))) => {
            let (state, tasks) = start_outbox(
                outbox_config,
                initial,
                router.clone(),
                OutboxMetrics::register(registry)?,
                stop.clone(),
            );
            background.extend(tasks);
            Some(state)
        }
        _ => None,
    };
    let listening = tokio::spawn(listener::run(
        ListenerConfig {
            db: config.db,
            channel: config.listen_channel,
            also: Vec::new(),
            retries: config.retries,
            check_interval: config.check_listener_interval,
        },
        router,
        state_tx,
        ListenerMetrics::register(registry)?,
        stop.clone(),
    ));
    // The listener's outcome is the bus's failure, if any.
    let (failure_tx, failure_rx) = oneshot::channel();
    let watcher = tokio::spawn(async move {
        let outcome = match listening.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("listener task failed: {e}")),
        };
        if let Err(reason) = outcome {
            let _ = failure_tx.send(reason);
        }
    });
    background.extend([watcher, sweeping]);
    Ok(Started {
        bus: Arc::new(LocalBus {
            relay,
            listening: state_rx,
            outbox: outbox_state,
            history,
        }),
        lifecycle: Lifecycle {
            failure: Some(failure_rx),
            workers,
            abort,
            stop,
            background,
        },
        idempotency: None,
    })
}

/// Load the outbox's recent messages into history, then follow it and
/// prune it until `stop`.
fn start_outbox(
    config: OutboxConfig,
    initial: Initial,
    router: Arc<Router>,
    metrics: OutboxMetrics,
    stop: CancellationToken,
) -> (
    watch::Receiver<ReaderState>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    for message in &initial.history {
        router.record_outbox(message);
    }
    let (reader, state) = Reader::new(
        config.clone(),
        initial.cursors,
        router,
        metrics.clone(),
        None,
        stop.clone(),
    );
    let cursors = reader.cursors();
    let reading = tokio::spawn(async move {
        if let Err(e) = reader.run().await {
            tracing::error!(error = %e, "the outbox reader stopped");
        }
    });
    let pruning = tokio::spawn(prune::run(config, cursors, metrics, stop));
    (state, vec![reading, pruning])
}

impl Bus for LocalBus {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        envelope: String,
        _traceparent: Option<&'a str>,
        wait: Duration,
    ) -> BusFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.relay
                .enqueue(channel, envelope, wait)
                .await
                .map_err(|e| match e {
                    RelayError::Full => BusError::Full,
                    RelayError::Closed => BusError::Closed,
                })
        })
    }

    // Every notification already reaches this process.
    fn subscribe(&self, _channel: &str) -> Result<(), BusError> {
        Ok(())
    }

    fn unsubscribe(&self, _channel: &str) {}

    fn confirm(&self) -> BusFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }

    /// Read under the lock the router records under: nothing to wait for.
    fn recover<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Since>,
    ) -> BusFuture<'a, Result<Recovered, BusError>> {
        let recovered = self.history.read(channel, since);
        Box::pin(async move { Ok(recovered) })
    }

    fn readiness(&self) -> Readiness {
        let listening = self.listening.clone();
        let outbox = self.outbox.clone();
        Box::new(move || {
            match *listening.borrow() {
                ListenerState::Listening => {}
                other => return Err(format!("listener {other:?}").to_lowercase()),
            }
            match outbox.as_ref().map(|o| *o.borrow()) {
                None | Some(ReaderState::Reading) => Ok(()),
                Some(other) => Err(format!("outbox reader {other:?}").to_lowercase()),
            }
        })
    }
}

/// Expire history until `stop`.
async fn sweep(history: Arc<History>, stop: CancellationToken) {
    let mut every = pgws_service::time::every(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => history.sweep(),
        }
    }
}

/// The listener's sink: gives each notification its position and routes
/// it to its channel.
struct Router {
    inbox: Arc<dyn Inbox>,
    listen_channel: String,
    history: Arc<History>,
}

impl Router {
    /// The websocket channel of an outbox message: its `"channel"`, or the
    /// one named like the listen channel.
    fn outbox_channel(&self, message: &OutboxMessage) -> Arc<str> {
        if message.channel.is_empty() {
            Arc::from(self.listen_channel.as_str())
        } else {
            Arc::from(message.channel.as_str())
        }
    }

    /// Keep an outbox message in history at its own offset; its position,
    /// or `None` when history already had it.
    fn record_outbox(&self, message: &OutboxMessage) -> Option<(Arc<str>, Position)> {
        let channel = self.outbox_channel(message);
        let position = Position {
            epoch: Epoch {
                base: message.base,
                continuity: Continuity::durable(message.generation),
            },
            offset: message.offset,
        };
        let position = self
            .history
            .record_at(&channel, position, &message.payload)?;
        Some((channel, position))
    }
}

impl OutboxSink for Router {
    fn deliver<'a>(&'a self, batch: &'a [OutboxMessage]) -> reader::SinkFuture<'a> {
        let received_at = std::time::Instant::now();
        for message in batch {
            let Some((channel, position)) = self.record_outbox(message) else {
                continue; // handed over again after a failure: already delivered
            };
            let delivery = Arc::new(Delivery::new(
                channel.clone(),
                message.payload.clone(),
                Some(position),
                received_at,
            ));
            self.inbox.deliver(&channel, delivery);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

impl NotificationSink for Router {
    fn deliver(&self, notification: Notification) {
        // NOTIFY payloads are text in the database encoding, which the
        // connection converts to UTF-8.
        let text = std::str::from_utf8(&notification.payload).unwrap_or("");
        let channel: Arc<str> = Arc::from(routing::target_channel(text, &self.listen_channel));
        let position = self.history.record(&channel, &notification.payload);
        let delivery = Arc::new(Delivery::new(
            channel.clone(),
            notification.payload,
            position,
            notification.received_at,
        ));
        if pgws_service::telemetry::enabled() {
            tracing::info_span!("pgws.fanout", channel = %channel)
                .in_scope(|| self.inbox.deliver(&channel, delivery));
        } else {
            self.inbox.deliver(&channel, delivery);
        }
    }

    fn session_lost(&self) {
        self.history.session_lost();
    }

    fn session_started(&self) {
        self.history.session_started();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::testing::Recorder;
    use std::time::Instant;

    #[test]
    fn notifications_are_routed_by_their_channel_field() {
        let recorder = Arc::new(Recorder::default());
        let router = Router {
            inbox: recorder.clone(),
            listen_channel: "listen".into(),
            history: Arc::new(History::new(
                HistoryConfig {
                    size: 10,
                    ttl: Duration::from_secs(60),
                    state_ttl: Duration::from_secs(60),
                },
                100,
                HistoryMetrics::register(&prometheus::Registry::new()).expect("metrics"),
            )),
        };
        for payload in [r#"{"channel":"chat","payload":"hi"}"#, "plain text"] {
            NotificationSink::deliver(
                &router,
                Notification {
                    payload: bytes::Bytes::from(payload),
                    received_at: Instant::now(),
                    source: 0,
                },
            );
        }
        let seen = recorder.0.lock().expect("lock").clone();
        assert_eq!(seen[0].0, "chat");
        assert_eq!(seen[1], ("listen".to_string(), "plain text".to_string()));
    }
}
