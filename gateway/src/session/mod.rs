//! One websocket, from accepted upgrade to close.
//!
//! Each socket runs two tasks, because fastwebsockets' `read_frame` is not
//! cancel-safe and so cannot sit in a `select!` beside the writes:
//!
//! * [`reader`] reads frames, reassembles messages (bounded by
//!   `PGWS_MAX_MESSAGE_SIZE`), turns a writer's messages into envelopes on
//!   the bus, and reports pings, closes and failures to the writer;
//! * [`writer`] owns the write half: it drains the socket's bounded send
//!   queue, answers pings, sends keep-alive pings, and decides when and with
//!   which close code the socket ends (shutdown, slow consumer, JWT expiry,
//!   ping timeout, or the reader's report).
//!
//! This module wires them, registers the socket's channels, and emits the
//! meta channel's `ConnectionOpen` / `ConnectionClose` events.

mod assemble;
mod control;
mod reader;
mod writer;

pub use control::SessionControl;

use crate::auth::Grant;
use crate::bus::Bus;
use crate::config::SessionLimits;
use crate::metrics::Metrics;
use crate::registry::{Registry, Subscriber};
use bytes::Bytes;
use fastwebsockets::WebSocket;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A socket's process-unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// One message on its way to a socket: the NOTIFY payload, shared by every
/// reader, and when it arrived (for the latency histogram).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
    /// When the notification reached this process.
    pub received_at: Instant,
}

/// What every session shares.
pub struct SessionContext {
    /// Sockets by channel.
    pub registry: Arc<Registry>,
    /// Where writers' messages go.
    pub bus: Bus,
    /// Metrics.
    pub metrics: Metrics,
    /// Per-socket limits.
    pub limits: SessionLimits,
    /// `PGWS_META_CHANNEL`.
    pub meta_channel: Option<String>,
    /// Cancelled when the gateway drains: every socket closes with 1001.
    pub shutdown: CancellationToken,
    /// Open sockets, for `PGWS_MAX_CONNECTIONS`.
    pub open: AtomicUsize,
    next_id: AtomicU64,
}

impl SessionContext {
    /// Shared state for all sessions.
    pub fn new(
        registry: Arc<Registry>,
        bus: Bus,
        metrics: Metrics,
        limits: SessionLimits,
        meta_channel: Option<String>,
        shutdown: CancellationToken,
    ) -> SessionContext {
        SessionContext {
            registry,
            bus,
            metrics,
            limits,
            meta_channel,
            shutdown,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        }
    }
}

/// A reserved connection slot; released when dropped, even if the upgrade
/// never completes.
pub struct Slot(Arc<SessionContext>);

impl Slot {
    /// Reserve a slot, unless `max` (non-zero) sockets are already open.
    pub fn acquire(ctx: &Arc<SessionContext>, max: usize) -> Option<Slot> {
        let previous = ctx.open.fetch_add(1, Ordering::AcqRel);
        if max != 0 && previous >= max {
            ctx.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(ctx.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a session ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// We closed it with this reason.
    Closed(pgws_protocol::close::CloseReason),
    /// The client sent a close frame.
    ClientClosed,
    /// The connection broke without a close handshake.
    ConnectionLost,
}

impl SessionEnd {
    fn label(self) -> &'static str {
        match self {
            SessionEnd::Closed(reason) => reason.label(),
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::ConnectionLost => "connection_lost",
        }
    }
}

/// Milliseconds since `epoch`, for the lock-free "last heard from" stamp.
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Run one upgraded websocket to its end.
pub async fn run<S>(ws: WebSocket<S>, grant: Grant, ctx: Arc<SessionContext>, slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = SessionId(ctx.next_id.fetch_add(1, Ordering::Relaxed));
    let claims = ClaimsJson::new(&grant.claims);
    let open_gauge = ctx.metrics.open(grant.mode.as_str());
    open_gauge.inc();
    let control = Arc::new(SessionControl::default());
    let (queue_tx, queue_rx) = mpsc::channel(ctx.limits.send_queue);
    if grant.mode.can_read() {
        for channel in &grant.channels {
            let subscriber = Subscriber {
                id,
                queue: queue_tx.clone(),
                control: control.clone(),
            };
            if ctx.registry.insert(channel, subscriber) {
                ctx.metrics.channels.inc();
                ctx.bus.subscribe(channel);
            }
        }
    }
    drop(queue_tx); // the registry holds the only senders now
    tracing::debug!(session = id.0, mode = grant.mode.as_str(), channels = ?grant.channels, "websocket open");
    meta_event(&ctx, Event::ConnectionOpen, &grant, &claims).await;

    let epoch = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let (read, write) = ws.split(tokio::io::split);
    let (events_tx, events_rx) = mpsc::channel(8);
    let mut reader = tokio::spawn(reader::run(
        read,
        reader::ReaderContext {
            session: id,
            grant: grant.clone(),
            claims: claims.clone(),
            ctx: ctx.clone(),
            epoch,
            last_seen: last_seen.clone(),
        },
        events_tx,
    ));
    let end = writer::run(
        write,
        writer::WriterContext {
            queue: queue_rx,
            events: events_rx,
            control,
            shutdown: ctx.shutdown.clone(),
            expires_at: grant.expires_at.map(instant_of_unix),
            ping_interval: ctx.limits.ping_interval,
            send_timeout: ctx.limits.send_timeout,
            epoch,
            last_seen,
            metrics: ctx.metrics.clone(),
        },
    )
    .await;
    // Give the client a moment to answer our close frame, then cut it.
    if tokio::time::timeout(Duration::from_secs(2), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }

    if grant.mode.can_read() {
        for channel in &grant.channels {
            if ctx.registry.remove(channel, id) {
                ctx.metrics.channels.dec();
                ctx.bus.unsubscribe(channel);
            }
        }
    }
    open_gauge.dec();
    ctx.metrics.closed(end.label());
    tracing::debug!(session = id.0, end = end.label(), "websocket closed");
    meta_event(&ctx, Event::ConnectionClose, &grant, &claims).await;
    drop(slot);
}

/// Send a meta event when `PGWS_META_CHANNEL` is set. Best effort with the
/// normal write timeout; a failure is logged and counted by the relay.
async fn meta_event(ctx: &SessionContext, event: Event, grant: &Grant, claims: &ClaimsJson) {
    let Some(meta) = &ctx.meta_channel else {
        return;
    };
    let payload = grant.channels.join(",");
    let text = envelope::build(event, meta, &payload, claims, envelope::unix_now());
    if text.len() > pgws_protocol::limits::NOTIFY_PAYLOAD_MAX {
        tracing::warn!(
            event = event.as_str(),
            "meta event larger than the NOTIFY limit: not sent"
        );
        return;
    }
    if let Err(e) = ctx
        .bus
        .publish(meta, text, None, ctx.limits.write_timeout)
        .await
    {
        tracing::warn!(event = event.as_str(), error = %e, "meta event not sent");
    }
}

/// The `Instant` at which Unix time `unix` (seconds) is reached.
fn instant_of_unix(unix: f64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let ahead = (unix - now).clamp(0.0, 10.0 * 365.0 * 86_400.0);
    Instant::now() + Duration::from_secs_f64(ahead)
}
