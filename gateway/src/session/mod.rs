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
//! * [`v2`] is protocol v2: commands, subscriptions, recovery.
//!
//! This module starts a socket of either protocol: for v1, [`join`]
//! registers the socket's channels with the hub (telling the bus on a
//! channel's first and after its last reader) and waits until the bus
//! confirms the subscriptions — before the upgrade is answered, so an open
//! v1 socket always has its subscription in effect, and a refused one is
//! told 503 — a v2 socket registers each channel as it subscribes; then it
//! runs the socket, and emits the meta channel's `ConnectionOpen` /
//! `ConnectionClose` events.

mod assemble;
mod context;
mod inbound;
pub mod meta;
mod outbound;
pub mod publish;
mod socket;
mod v2;

pub use context::{SessionContext, SessionEnd, Slot};
pub use v2::subscriptions;

/// The frame decoder and message assembler, for the fuzz targets in
/// `fuzz/` (built with `--cfg fuzzing` only).
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use crate::session::assemble::{AssembleError, Assembler};
    pub use crate::session::inbound::{
        close_frame_error, CloseProblem, FrameError, FrameReader, InFrame,
    };
}

use crate::auth::{Grant, Permissions};
use crate::bus::{BusError, Delivery};
use crate::hub::echo::Echoes;
use crate::hub::{SessionControl, SessionId, Subscriber};
use pgws_protocol::clock;
use pgws_protocol::envelope::{ClaimsJson, Event};
use socket::{Finished, Proto, SocketContext};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A v1 reader on its channels, its subscriptions confirmed by the bus.
/// Dropping it takes the reader off its channels again — also when the
/// upgrade is abandoned before the socket runs.
pub struct Joined {
    queue: mpsc::Receiver<Arc<Delivery>>,
    control: Arc<SessionControl>,
    membership: Membership,
    echo: Option<Arc<Echoes>>,
}

/// The channels a v1 socket is registered on.
struct Membership {
    ctx: Arc<SessionContext>,
    id: SessionId,
    channels: Vec<String>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        for channel in &self.channels {
            ctx.hub.registry.remove(channel, self.id, || {
                ctx.metrics.channels.dec();
                ctx.bus.unsubscribe(channel);
            });
        }
    }
}

impl Joined {
    /// The reader's id.
    pub fn id(&self) -> SessionId {
        self.membership.id
    }

    /// Its kill switch (fan-out raises it on a full queue).
    pub fn control(&self) -> &Arc<SessionControl> {
        &self.control
    }

    /// Its send queue.
    pub fn queue(&mut self) -> &mut mpsc::Receiver<Arc<Delivery>> {
        &mut self.queue
    }
}

/// Put a v1 socket's reader on its channels and wait until the bus has
/// them in effect. `Err`: the bus refused a channel or did not confirm in
/// time, and the socket must not open (nothing stays registered).
/// `no_echo`: its own messages are not sent back to it (`?echo=false`).
pub async fn join(
    ctx: &Arc<SessionContext>,
    grant: &Grant,
    no_echo: bool,
) -> Result<Joined, BusError> {
    let id = ctx.next_session_id();
    let control = Arc::new(SessionControl::default());
    // Empty and closed for a write-only socket: the registry holds the
    // only senders.
    let (queue_tx, queue) = mpsc::channel(ctx.limits.send_queue);
    let mut membership = Membership {
        ctx: ctx.clone(),
        id,
        channels: Vec::new(),
    };
    let echo = (no_echo && grant.mode.can_write()).then(Arc::<Echoes>::default);
    if grant.mode.can_read() {
        for channel in &grant.channels {
            let mut subscriber = Subscriber::new(id, queue_tx.clone(), control.clone());
            subscriber.echo = echo.clone();
            // Under the registry's lock: the bus sees first/last in order.
            ctx.hub.registry.try_insert(channel, subscriber, || {
                ctx.bus.subscribe(channel)?;
                ctx.metrics.channels.inc();
                Ok(())
            })?;
            membership.channels.push(channel.clone());
        }
        ctx.bus.confirm().await?;
    }
    Ok(Joined {
        queue,
        control,
        membership,
        echo,
    })
}

/// Run one upgraded v1 websocket, [`join`]ed, to its end.
pub async fn run<S>(io: S, mut grant: Grant, joined: Joined, ctx: Arc<SessionContext>, slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Joined {
        queue,
        control,
        membership,
        echo,
    } = joined;
    let id = membership.id;
    // Envelopes need the claims only as JSON text: keep that, free the map.
    let claims = ClaimsJson::new(&std::mem::take(&mut grant.claims));
    let open_gauge = ctx.metrics.open(grant.mode.as_str());
    open_gauge.inc();
    tracing::debug!(session = id.0, mode = grant.mode.as_str(), channels = ?grant.channels, "websocket open");
    meta::event(&ctx, Event::ConnectionOpen, &grant.channels, &claims).await;

    let expires_at = grant.expires_at.map(clock::instant_of_unix_seconds);
    let writer = Arc::new(publish::Writer {
        session: id,
        grant,
        claims,
        ctx: ctx.clone(),
        echo,
    });
    let finished = socket::run(
        io,
        SocketContext {
            queue,
            control,
            expires_at,
            ctx: ctx.clone(),
            session: id,
            proto: Proto::V1(writer.clone()),
        },
    )
    .await;
    let (grant, claims) = (&writer.grant, &writer.claims);

    drop(membership);
    open_gauge.dec();
    ctx.metrics.closed(finished.end.label());
    tracing::debug!(
        session = id.0,
        end = finished.end.label(),
        "websocket closed"
    );
    meta::event(&ctx, Event::ConnectionClose, &grant.channels, claims).await;
    drop(slot);
}

/// Run one upgraded protocol v2 websocket to its end. Without
/// `permissions` (no token in the upgrade), its first frame must be
/// `connect`.
pub async fn run_v2<S>(
    io: S,
    permissions: Option<Permissions>,
    ctx: Arc<SessionContext>,
    slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = SessionId(ctx.next_id.fetch_add(1, Ordering::Relaxed));
    let control = Arc::new(SessionControl::default());
    let (queue_tx, queue) = mpsc::channel(ctx.limits.send_queue);
    ctx.metrics.v2.sockets.inc();
    let (proto, expires_at, open_gauge) = match permissions {
        Some(permissions) => {
            let v2 = v2::V2::new(permissions, queue_tx, control.clone(), id, ctx.clone());
            let gauge = ctx.metrics.open(v2.mode());
            gauge.inc();
            v2.meta_event(Event::ConnectionOpen).await;
            (Proto::V2(Box::new(v2)), None, Some(gauge))
        }
        None => (
            Proto::Connecting(queue_tx),
            Some(Instant::now() + ctx.limits.connect_timeout),
            None,
        ),
    };
    let expires_at = match &proto {
        Proto::V2(v2) => v2.expires_at(),
        _ => expires_at,
    };
    tracing::debug!(session = id.0, "v2 websocket open");
    let Finished {
        end,
        proto,
        opened,
        open_gauge: connected_gauge,
    } = socket::run(
        io,
        SocketContext {
            queue,
            control,
            expires_at,
            ctx: ctx.clone(),
            session: id,
            proto,
        },
    )
    .await;
    for gauge in open_gauge.iter().chain(connected_gauge.iter()) {
        gauge.dec();
    }
    ctx.metrics.v2.sockets.dec();
    ctx.metrics.closed(end.label());
    tracing::debug!(session = id.0, end = end.label(), "v2 websocket closed");
    if let Proto::V2(mut v2) = proto {
        v2.end();
        if let Some(opened) = opened {
            let _ = opened.await;
        }
        v2.meta_event(Event::ConnectionClose).await;
    }
    drop(slot);
}
