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
//!   bounded send queue.
//!
//! This module registers the socket's channels with the hub (telling the
//! bus on a channel's first and after its last reader), runs the socket,
//! and emits the meta channel's `ConnectionOpen` / `ConnectionClose`
//! events.

mod assemble;
mod context;
mod inbound;
mod outbound;
mod publish;
mod socket;

pub use context::{SessionContext, SessionEnd, Slot};

/// The frame decoder and message assembler, for the fuzz targets in
/// `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::session::assemble::{AssembleError, Assembler};
    pub use crate::session::inbound::{
        close_frame_error, CloseProblem, FrameError, FrameReader, InFrame,
    };
}

use crate::auth::Grant;
use crate::bus::Delivery;
use crate::hub::{SessionControl, SessionId, Subscriber};
use pgws_protocol::clock;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

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
            ctx.hub.registry.insert(channel, subscriber, || {
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
            ctx.hub.registry.remove(channel, id, || {
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
