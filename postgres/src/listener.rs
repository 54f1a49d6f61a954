//! The supervised `LISTEN` connection.
//!
//! One connection runs nothing but `LISTEN "<channel>"`, so that is what
//! operators see in `pg_stat_activity`. Its lifecycle is an explicit loop:
//!
//! * establish: connect (through [`crate::pg`]: every host, TLS, the role
//!   check) and issue `LISTEN`; both count as one attempt, so a server that
//!   accepts the connection but refuses `LISTEN` (a standby: "cannot
//!   execute LISTEN during recovery") is retried on the same schedule as
//!   one that refuses connections — never in a tight loop;
//! * the first establishment gives up after `1 + retries` attempts,
//!   waiting 1, 2, 4 … 32 s between;
//! * listen: forward every notification to the [`NotificationSink`]; with a
//!   check interval, re-issue the (idempotent) `LISTEN` every interval as a
//!   liveness probe, which also catches a half-open TCP connection;
//! * on loss: with a check interval (self-healing), re-establish and keep
//!   trying; without one, return [`ListenerError::Lost`] so the process can
//!   exit non-zero for an external supervisor, as the original does.
//!
//! One [`Backoff`] spans the listener's whole life. It is reset only after
//! a session stayed up for [`HEALTHY_AFTER`]: then the first reconnect is
//! immediate, and the next few come after 100, 200, 400, 800 ms (a
//! restarting server is back quickly, and notifications are lost until
//! `LISTEN` is) before the 1, 2, 4 … s schedule; a server that drops the
//! connection right after `LISTEN` keeps getting longer waits.
//!
//! The current [`ListenerState`] is published on a `watch` channel; `/readyz`
//! reads it.

use crate::pg::{self, PgConfig};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use pgws_service::backoff::Backoff;
use prometheus::{IntCounter, IntGauge, Registry};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// A notification received on the listen channel (or one of the others
/// the connection LISTENs on).
#[derive(Debug, Clone)]
pub struct Notification {
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
    /// When the listener received it: the start of the delivery latency.
    pub received_at: Instant,
    /// Which channel: 0 for [`ListenerConfig::channel`], `i` for
    /// `ListenerConfig::also[i - 1]`.
    pub source: usize,
}

/// Where notifications go: the in-process fan-out in standalone mode, the
/// Redis publisher in cluster mode. Called on the listener's task, so it must
/// not block.
pub trait NotificationSink: Send + Sync + 'static {
    /// Hand one notification over.
    fn deliver(&self, notification: Notification);

    /// The `LISTEN` session ended without a shutdown: notifications sent
    /// until the next one is established are lost. Called once per loss,
    /// before reconnecting (history starts a new epoch here).
    fn session_lost(&self) {}

    /// A `LISTEN` session is in effect, before its first notification is
    /// handed over. After a loss, history starts yet another epoch here:
    /// what was committed between the loss and now is lost, and a client
    /// that was given the epoch of the outage must see it change.
    fn session_started(&self) {}
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
    pub db: PgConfig,
    /// The database channel to `LISTEN` on.
    pub channel: String,
    /// More channels LISTENed on the same connection (the coordinator's
    /// stream markers): their notifications arrive in the same commit
    /// order as the main channel's.
    pub also: Vec<String>,
    /// Retries after the first failed connection attempt (`PGWS_RETRIES`).
    pub retries: u32,
    /// `PGWS_CHECK_LISTENER_INTERVAL`: `Some` enables self-healing and the
    /// liveness probe; `None` makes a lost connection fatal.
    pub check_interval: Option<Duration>,
}

/// Why the listener stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Every attempt to connect and LISTEN failed.
    #[error("could not LISTEN after {attempts} attempts: {last}")]
    ConnectFailed {
        /// How many attempts were made.
        attempts: u32,
        /// Why the last attempt failed.
        last: String,
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
        listen_sql: std::iter::once(&config.channel)
            .chain(&config.also)
            .map(|c| format!("LISTEN {}", pg::quote_ident(c)))
            .collect::<Vec<_>>()
            .join("; "),
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

/// A session that stayed up this long proves the server healthy: the
/// backoff starts over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// After losing a healthy session, the first retries come quickly —
/// 100, 200, 400, 800 ms — before the 1, 2, 4 … s schedule: a restarting
/// server is back within a fraction of a second, and what is committed
/// until LISTEN is re-issued is lost (a fast restart of PostgreSQL lost
/// 19 notifications over 0.84 s with the 1 s first wait, measured by
/// `load-tests/pg-restart.sh`).
const QUICK_RETRIES: u32 = 4;
const QUICK_FIRST: Duration = Duration::from_millis(100);

/// An established LISTEN session.
struct Session {
    client: tokio_postgres::Client,
    connection: pg::Connection,
}

impl Listener {
    async fn supervise(&self) -> Result<(), ListenerError> {
        tracing::info!(database = %self.config.db.describe(), "connecting the listener");
        let mut backoff = Backoff::new();
        let mut failures = 0u32;
        let mut listened = false;
        // After a healthy session was lost: quick retries first (every
        // notification committed until LISTEN is back is lost).
        let mut quick = 0u32;
        loop {
            let attempt = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                a = self.establish() => a,
            };
            let wait = match attempt {
                Ok(Some(session)) => {
                    listened = true;
                    failures = 0;
                    self.sink.session_started();
                    let started = Instant::now();
                    match self.listen(session).await {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::Disconnected(reason) => {
                            self.metrics.up.set(0);
                            self.sink.session_lost();
                            if self.config.check_interval.is_none() {
                                tracing::error!(%reason, "LISTEN connection lost and PGWS_CHECK_LISTENER_INTERVAL is unset: giving up");
                                return Err(ListenerError::Lost(reason));
                            }
                            self.metrics.reconnects.inc();
                            self.set_state(ListenerState::Reconnecting);
                            if started.elapsed() >= HEALTHY_AFTER {
                                backoff.reset();
                                quick = QUICK_RETRIES;
                                tracing::warn!(%reason, "LISTEN connection lost: reconnecting");
                                None
                            } else {
                                let delay = backoff.next_delay();
                                tracing::warn!(%reason, retry_in_s = delay.as_secs(), "LISTEN connection lost soon after it was made: reconnecting after a pause");
                                Some(delay)
                            }
                        }
                    }
                }
                Ok(None) => return Ok(()), // shutdown while establishing
                Err(why) => {
                    failures += 1;
                    if !listened && failures > self.config.retries {
                        return Err(ListenerError::ConnectFailed {
                            attempts: failures,
                            last: why,
                        });
                    }
                    let delay = if quick > 0 {
                        quick -= 1;
                        QUICK_FIRST * 2u32.pow(QUICK_RETRIES - 1 - quick)
                    } else {
                        backoff.next_delay()
                    };
                    tracing::warn!(attempt = failures, error = %why, retry_in_ms = delay.as_millis() as u64, "cannot LISTEN on PostgreSQL");
                    Some(delay)
                }
            };
            if let Some(delay) = wait {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// Connect and issue `LISTEN`: `Ok(None)` on shutdown, `Err` with the
    /// reason (every host's) when either step failed.
    async fn establish(&self) -> Result<Option<Session>, String> {
        let (client, mut connection) = pg::connect(&self.config.db, pg::LISTENER_APP_NAME)
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
        let listen = self
            .drive(
                client.batch_execute(&self.listen_sql),
                &mut messages,
                self.probe_timeout(),
            )
            .await;
        match listen {
            Ok(()) => Ok(Some(Session { client, connection })),
            Err(SessionEnd::Shutdown) => Ok(None),
            Err(SessionEnd::Disconnected(why)) => Err(format!("LISTEN failed: {why}")),
        }
    }

    fn probe_timeout(&self) -> Duration {
        self.config
            .check_interval
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_secs(1))
    }

    async fn listen(&self, session: Session) -> SessionEnd {
        let Session {
            client,
            mut connection,
        } = session;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let probe_timeout = self.probe_timeout();
        tracing::info!(channel = %self.config.channel, "listening for notifications");
        self.metrics.up.set(1);
        self.set_state(ListenerState::Listening);
        let mut probe = self.config.check_interval.map(pgws_service::time::every);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                message = messages.next() => {
                    if let Err(end) = self.handle(message) {
                        return end;
                    }
                }
                _ = pgws_service::time::tick(&mut probe) => {
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
                result = &mut query => return result.map_err(|e| SessionEnd::Disconnected(pg::error_chain(&e))),
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
                let source = if n.channel() == self.config.channel {
                    0
                } else {
                    self.config
                        .also
                        .iter()
                        .position(|c| c == n.channel())
                        .map_or(0, |i| i + 1)
                };
                if source == 0 {
                    self.metrics.notifications.inc();
                }
                self.sink.deliver(Notification {
                    payload: Bytes::copy_from_slice(n.payload().as_bytes()),
                    received_at: Instant::now(),
                    source,
                });
                Ok(())
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::info!(message = %notice.message(), "notice on the LISTEN connection");
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(SessionEnd::Disconnected(pg::error_chain(&e))),
            None => Err(SessionEnd::Disconnected("connection closed".into())),
        }
    }

    fn set_state(&self, state: ListenerState) {
        self.state.send_replace(state);
    }
}
