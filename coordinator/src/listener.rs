//! The supervised `LISTEN` connection.
//!
//! One connection runs nothing but `LISTEN "<channel>"`, so that is what
//! operators see in `pg_stat_activity`. Its lifecycle is an explicit loop:
//!
//! * connect: up to `1 + retries` attempts, waiting 1, 2, 4 … 32 s between;
//! * listen: forward every notification to the [`NotificationSink`]; with a
//!   check interval, re-issue the (idempotent) `LISTEN` every interval as a
//!   liveness probe, which also catches a half-open TCP connection;
//! * on loss: with a check interval (self-healing), reconnect at once and
//!   keep trying with backoff; without one, return [`ListenerError::Lost`] so
//!   the process can exit non-zero for an external supervisor, as the
//!   original does.
//!
//! The current [`ListenerState`] is published on a `watch` channel; `/readyz`
//! reads it.

use crate::backoff::Backoff;
use crate::db;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use prometheus::{IntCounter, IntGauge, Registry};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// A notification received on the listen channel.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
    /// When the listener received it: the start of the delivery latency.
    pub received_at: Instant,
}

/// Where notifications go: the in-process fan-out in standalone mode, the
/// Redis publisher in cluster mode. Called on the listener's task, so it must
/// not block.
pub trait NotificationSink: Send + Sync + 'static {
    /// Hand one notification over.
    fn deliver(&self, notification: Notification);
}

/// What the listener is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// Establishing the first connection.
    Connecting,
    /// `LISTEN` is in effect: notifications flow.
    Listening,
    /// The connection was lost and is being re-established.
    Reconnecting,
    /// The listener has stopped (shutdown, or lost without self-healing).
    Stopped,
}

/// The listener's settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Where to connect.
    pub db: tokio_postgres::Config,
    /// The database channel to `LISTEN` on.
    pub channel: String,
    /// Retries after the first failed connection attempt (`PGWS_RETRIES`).
    pub retries: u32,
    /// `PGWS_CHECK_LISTENER_INTERVAL`: `Some` enables self-healing and the
    /// liveness probe; `None` makes a lost connection fatal.
    pub check_interval: Option<Duration>,
}

/// Why the listener stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Every connection attempt failed.
    #[error("could not LISTEN after {attempts} attempts: {source}")]
    ConnectFailed {
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        source: tokio_postgres::Error,
    },
    /// The connection died and self-healing is off.
    #[error("the LISTEN connection was lost: {0}")]
    Lost(String),
}

/// The listener's metrics.
#[derive(Clone)]
pub struct ListenerMetrics {
    up: IntGauge,
    reconnects: IntCounter,
    notifications: IntCounter,
}

impl ListenerMetrics {
    /// Create and register the listener's metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<ListenerMetrics> {
        let up = IntGauge::new(
            "pgws_listener_up",
            "1 while the LISTEN connection is established and listening",
        )?;
        let reconnects = IntCounter::new(
            "pgws_listener_reconnects_total",
            "Times the LISTEN connection was lost and re-established",
        )?;
        let notifications = IntCounter::new(
            "pgws_notifications_received_total",
            "Notifications received on the listen channel",
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(notifications.clone()))?;
        Ok(ListenerMetrics {
            up,
            reconnects,
            notifications,
        })
    }
}

/// How one connected session of the listener ended.
enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The connection died or stopped answering.
    Disconnected(String),
}

/// Run the listener until shutdown (Ok) or until it gives up (Err).
pub async fn run(
    config: ListenerConfig,
    sink: Arc<dyn NotificationSink>,
    state: watch::Sender<ListenerState>,
    metrics: ListenerMetrics,
    shutdown: CancellationToken,
) -> Result<(), ListenerError> {
    let listener = Listener {
        listen_sql: format!("LISTEN {}", db::quote_ident(&config.channel)),
        config,
        sink,
        state,
        metrics,
        shutdown,
    };
    let result = listener.supervise().await;
    listener.set_state(ListenerState::Stopped);
    result
}

struct Listener {
    config: ListenerConfig,
    listen_sql: String,
    sink: Arc<dyn NotificationSink>,
    state: watch::Sender<ListenerState>,
    metrics: ListenerMetrics,
    shutdown: CancellationToken,
}

impl Listener {
    async fn supervise(&self) -> Result<(), ListenerError> {
        let mut first = true;
        loop {
            let connected = match self.connect_with_retries(first).await {
                Some(result) => result?,
                None => return Ok(()), // shutdown while connecting
            };
            first = false;
            match self.listen(connected).await {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Disconnected(reason) => {
                    self.metrics.up.set(0);
                    if self.config.check_interval.is_none() {
                        tracing::error!(%reason, "LISTEN connection lost and PGWS_CHECK_LISTENER_INTERVAL is unset: giving up");
                        return Err(ListenerError::Lost(reason));
                    }
                    tracing::warn!(%reason, "LISTEN connection lost: reconnecting");
                    self.metrics.reconnects.inc();
                    self.set_state(ListenerState::Reconnecting);
                }
            }
        }
    }

    /// Connect and issue `LISTEN`. The first connection gives up after the
    /// configured retries; a self-healing reconnect never gives up.
    /// `None` means shutdown was requested.
    async fn connect_with_retries(
        &self,
        first: bool,
    ) -> Option<Result<(tokio_postgres::Client, db::Connection), ListenerError>> {
        let mut backoff = Backoff::new();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                r = db::connect(&self.config.db, db::LISTENER_APP_NAME) => r,
            };
            match attempt {
                Ok(connected) => return Some(Ok(connected)),
                Err(source) => {
                    let exhausted = first && attempts > self.config.retries;
                    if exhausted {
                        return Some(Err(ListenerError::ConnectFailed { attempts, source }));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(attempt = attempts, error = %source, retry_in_s = delay.as_secs(), "cannot connect the listener to PostgreSQL");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn listen(
        &self,
        (client, mut connection): (tokio_postgres::Client, db::Connection),
    ) -> SessionEnd {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let probe_timeout = self
            .config
            .check_interval
            .unwrap_or(Duration::from_secs(10));
        if let Err(end) = self
            .drive(
                client.batch_execute(&self.listen_sql),
                &mut messages,
                probe_timeout,
            )
            .await
        {
            return end;
        }
        tracing::info!(channel = %self.config.channel, "listening for notifications");
        self.metrics.up.set(1);
        self.set_state(ListenerState::Listening);

        let mut probe = self.config.check_interval.map(|every| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                message = messages.next() => {
                    if let Err(end) = self.handle(message) {
                        return end;
                    }
                }
                _ = tick(&mut probe) => {
                    // Re-issuing LISTEN is idempotent and keeps
                    // pg_stat_activity showing exactly what this connection is for.
                    if let Err(end) = self.drive(client.batch_execute(&self.listen_sql), &mut messages, probe_timeout).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Await `query` while still pumping the connection's messages (the
    /// query only progresses while the connection is polled).
    async fn drive<F, S>(
        &self,
        query: F,
        messages: &mut S,
        timeout: Duration,
    ) -> Result<(), SessionEnd>
    where
        F: Future<Output = Result<(), tokio_postgres::Error>>,
        S: Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Unpin,
    {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(query, deadline);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                _ = &mut deadline => return Err(SessionEnd::Disconnected(format!("no answer to LISTEN within {timeout:?}"))),
                result = &mut query => return result.map_err(|e| SessionEnd::Disconnected(e.to_string())),
                message = messages.next() => self.handle(message)?,
            }
        }
    }

    fn handle(
        &self,
        message: Option<Result<AsyncMessage, tokio_postgres::Error>>,
    ) -> Result<(), SessionEnd> {
        match message {
            Some(Ok(AsyncMessage::Notification(n))) => {
                self.metrics.notifications.inc();
                self.sink.deliver(Notification {
                    payload: Bytes::copy_from_slice(n.payload().as_bytes()),
                    received_at: Instant::now(),
                });
                Ok(())
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::info!(message = %notice.message(), "notice on the LISTEN connection");
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(SessionEnd::Disconnected(e.to_string())),
            None => Err(SessionEnd::Disconnected("connection closed".into())),
        }
    }

    fn set_state(&self, state: ListenerState) {
        self.state.send_replace(state);
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
