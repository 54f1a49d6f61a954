//! One websocket, from accepted upgrade to close.
//!
//! Each socket is one task ([`socket`]) that reads, writes and keeps time:
//!
//! * [`inbound`] decodes client frames, cancel-safely and with a buffer
//!   that starts small, so reading can share a `select!` with the rest;
//! * [`assemble`] joins fragments into messages bounded by
//!   `PGWS_MAX_MESSAGE_SIZE`, and [`publish`] turns a writer's messages into
//!   envelopes on the bus;
//! * [`outbound`] encodes frames into one buffer per burst of the socket's
//!   bounded send queue;
//! * [`control`] is the kill switch fan-out raises for a slow consumer.
//!
//! This module registers the socket's channels, runs the socket, and emits
//! the meta channel's `ConnectionOpen` / `ConnectionClose` events.

mod assemble;
mod control;
mod inbound;
mod outbound;
mod publish;
mod socket;

pub use control::SessionControl;

/// The frame decoder and message assembler, for the fuzz targets in
/// `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use super::assemble::{AssembleError, Assembler};
    pub use super::inbound::{close_frame_error, CloseProblem, FrameError, FrameReader, InFrame};
}

use crate::auth::{Grant, MetaChannel};
use crate::bus::Bus;
use crate::config::SessionLimits;
use crate::metrics::Metrics;
use crate::registry::{Registry, Subscriber};
use bytes::Bytes;
use pgws_protocol::clock;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A socket's process-unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// One message on its way to sockets: the NOTIFY payload and when it
/// arrived (for the latency histogram). Every reader's queue holds the same
/// `Arc` — a reference count per socket, no copy, and one pointer per queue
/// slot.
#[derive(Debug)]
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
    /// `PGWS_META_CHANNEL` and who may use it.
    pub meta: MetaChannel,
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
        meta: MetaChannel,
        shutdown: CancellationToken,
    ) -> SessionContext {
        SessionContext {
            registry,
            bus,
            metrics,
            limits,
            meta,
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

/// Run one upgraded websocket to its end.
pub async fn run<S>(io: S, mut grant: Grant, ctx: Arc<SessionContext>, slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = SessionId(ctx.next_id.fetch_add(1, Ordering::Relaxed));
    // Envelopes need the claims only as JSON text: keep that, free the map.
    let claims = ClaimsJson::new(&std::mem::take(&mut grant.claims));
    let open_gauge = ctx.metrics.open(grant.mode.as_str());
    open_gauge.inc();
    let control = Arc::new(SessionControl::default());
    let queue = subscribe(&ctx, &grant, id, &control);
    tracing::debug!(session = id.0, mode = grant.mode.as_str(), channels = ?grant.channels, "websocket open");
    meta_event(&ctx, Event::ConnectionOpen, &grant, &claims).await;

    let expires_at = grant.expires_at.map(clock::instant_of_unix_seconds);
    let writer = Arc::new(publish::Writer {
        session: id,
        grant,
        claims,
        ctx: ctx.clone(),
    });
    let end = socket::run(
        io,
        socket::SocketContext {
            queue,
            control,
            expires_at,
            writer: writer.clone(),
        },
    )
    .await;
    let (grant, claims) = (&writer.grant, &writer.claims);

    unsubscribe(&ctx, grant, id);
    open_gauge.dec();
    ctx.metrics.closed(end.label());
    tracing::debug!(session = id.0, end = end.label(), "websocket closed");
    meta_event(&ctx, Event::ConnectionClose, grant, claims).await;
    drop(slot);
}

/// Put a reader on its channels; returns its send queue (empty and closed
/// for a write-only socket: the registry holds the only senders).
fn subscribe(
    ctx: &SessionContext,
    grant: &Grant,
    id: SessionId,
    control: &Arc<SessionControl>,
) -> mpsc::Receiver<Arc<Delivery>> {
    let (queue_tx, queue_rx) = mpsc::channel(ctx.limits.send_queue);
    if grant.mode.can_read() {
        for channel in &grant.channels {
            let subscriber = Subscriber {
                id,
                queue: queue_tx.clone(),
                control: control.clone(),
            };
            // Under the registry's lock: the bus sees first/last in order.
            ctx.registry.insert(channel, subscriber, || {
                ctx.metrics.channels.inc();
                ctx.bus.subscribe(channel);
            });
        }
    }
    queue_rx
}

fn unsubscribe(ctx: &SessionContext, grant: &Grant, id: SessionId) {
    if grant.mode.can_read() {
        for channel in &grant.channels {
            ctx.registry.remove(channel, id, || {
                ctx.metrics.channels.dec();
                ctx.bus.unsubscribe(channel);
            });
        }
    }
}

/// Send a meta event when `PGWS_META_CHANNEL` is set. Best effort with the
/// normal write timeout; a failure is logged and counted by the relay.
async fn meta_event(ctx: &SessionContext, event: Event, grant: &Grant, claims: &ClaimsJson) {
    let Some(meta) = &ctx.meta.name else {
        return;
    };
    let text = envelope::build_meta(event, meta, &grant.channels, claims, clock::unix_seconds());
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
