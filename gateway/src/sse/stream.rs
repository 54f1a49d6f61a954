//! One open event stream: the response body itself. There is no task per
//! stream — the connection polls the body (hyper, or for an HTTP/1
//! connection's first request the gateway's own writer, `http::direct`),
//! and the body polls the stream's send queue (the hub's member, as a
//! websocket's), its catching-up subscriptions, its keep-alive timer and
//! what ends it (shutdown, a slow consumer, the token's `exp`). A poll
//! writes what is ready, up to a flush's worth, as one frame; the
//! connection writes and flushes it before it polls again, so every event
//! leaves at once (no proxy buffering beyond that: `X-Accel-Buffering:
//! no`).
//!
//! Dropped — the client went away, or the stream ended — it leaves its
//! channels, frees its connection slot and sends the meta channel's
//! `ConnectionClose`.

use super::event::{self, CLOSE_EVENT, KEEP_ALIVE};
use crate::bus::Delivery;
use crate::metrics::SseMetrics;
use crate::session::subscriptions::{Owed, Subscriptions, Verdict};
use crate::session::{Joined, SessionContext, Slot};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use pgws_protocol::close::CloseReason;
use pgws_protocol::envelope::{ClaimsJson, Event};
use pgws_protocol::position::Position;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;
use tokio_util::task::TaskTracker;

/// Bytes written per poll before hyper is given the frame.
const FLUSH_AT: usize = 64 * 1024;

/// What ends a stream from the server's side.
type Ending = Pin<Box<dyn Future<Output = CloseReason> + Send + Sync>>;

/// One open event stream.
pub struct SseStream {
    pub(super) joined: Joined,
    pub(super) subs: Subscriptions,
    /// The stream's channels, in claim order (the order of the `id`).
    pub(super) channels: Vec<Arc<str>>,
    /// The last position sent on each channel.
    pub(super) positions: Vec<Position>,
    /// What the first poll writes: `retry:`, the starting `id:`, resets.
    pub(super) preamble: Vec<u8>,
    pub(super) keep_alive: Duration,
    pub(super) tick: Pin<Box<Sleep>>,
    pub(super) ending: Ending,
    pub(super) ended: bool,
    pub(super) end: &'static str,
    pub(super) closing: Closing,
}

/// What the stream owes the rest of the gateway when it is gone.
pub(super) struct Closing {
    pub ctx: Arc<SessionContext>,
    pub tracker: TaskTracker,
    pub metrics: SseMetrics,
    pub meta_channels: Vec<String>,
    pub claims: ClaimsJson,
    pub slot: Option<Slot>,
}

/// The future that resolves when the server ends the stream.
pub(super) fn ending(ctx: &SessionContext, joined: &Joined, expires_at: Option<Instant>) -> Ending {
    let shutdown = ctx.shutdown.clone().cancelled_owned();
    let control = joined.control().clone();
    Box::pin(async move {
        let expiry = async {
            match expires_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown => CloseReason::GoingAway,
            _ = control.closed() => control.reason().unwrap_or(CloseReason::SlowConsumer),
            _ = expiry => CloseReason::JwtExpired,
        }
    })
}

impl SseStream {
    /// Write one event for a message at `position` on `channel`.
    fn message(
        &mut self,
        out: &mut Vec<u8>,
        channel: &str,
        position: Option<Position>,
        data: &[u8],
    ) {
        if let (Some(p), Some(i)) = (position, self.channels.iter().position(|c| &**c == channel)) {
            self.positions[i] = p;
        }
        let id = event::id_of(&self.positions);
        event::write(out, None, Some(&id), data);
        self.closing.metrics.events.inc();
        self.closing.ctx.metrics.delivered.inc();
        self.closing
            .ctx
            .metrics
            .delivered_bytes
            .inc_by(data.len() as u64);
    }

    /// What catching-up subscriptions owe: replays, then held deliveries.
    fn owed(&mut self, out: &mut Vec<u8>) {
        while out.len() < FLUSH_AT {
            match self.subs.next_owed() {
                Some(Owed::Replayed {
                    channel,
                    position,
                    payload,
                }) => {
                    self.closing.metrics.replayed.inc();
                    self.message(out, &channel, Some(position), &payload);
                }
                Some(Owed::Delivery(delivery)) => self.delivery(out, &delivery),
                None => break,
            }
        }
    }

    fn delivery(&mut self, out: &mut Vec<u8>, delivery: &Delivery) {
        self.message(out, &delivery.channel, delivery.position, &delivery.payload);
        self.closing
            .ctx
            .metrics
            .latency
            .observe(delivery.received_at.elapsed().as_secs_f64());
    }

    /// Live deliveries from the send queue; `Err` when the stream must end.
    fn live(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Result<(), CloseReason> {
        while out.len() < FLUSH_AT {
            let delivery = match self.joined.queue().poll_recv(cx) {
                Poll::Ready(Some(delivery)) => delivery,
                Poll::Ready(None) => return Err(CloseReason::GoingAway),
                Poll::Pending => break,
            };
            match self.subs.on_delivery(&delivery) {
                Verdict::Send => self.delivery(out, &delivery),
                Verdict::Skip | Verdict::Held => {}
                Verdict::Overflow => return Err(CloseReason::SlowConsumer),
            }
        }
        Ok(())
    }

    /// The last event, naming why the server ends the stream.
    fn finish(&mut self, out: &mut Vec<u8>, reason: CloseReason) {
        let data = serde_json::json!({"code": reason.code(), "reason": reason.text()}).to_string();
        event::write(out, Some(CLOSE_EVENT), None, data.as_bytes());
        self.ended = true;
        self.end = reason.label();
    }
}

impl SseStream {
    /// Append what is ready to `out` — up to a flush's worth: the
    /// preamble, owed and live events, the closing event, or a keep-alive
    /// comment when the stream has been silent. `Ready(false)` once the
    /// stream has ended (nothing appended); `Ready(true)` when `out` grew.
    pub fn poll_events(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<bool> {
        if self.ended {
            return Poll::Ready(false);
        }
        let start = out.len();
        // Taken, not drained: its allocation is not kept for the stream's life.
        let preamble = std::mem::take(&mut self.preamble);
        if out.is_empty() {
            *out = preamble;
        } else {
            out.extend_from_slice(&preamble);
        }
        if let Poll::Ready(reason) = self.ending.as_mut().poll(cx) {
            self.finish(out, reason);
        } else {
            self.owed(out);
            if let Err(reason) = self.live(cx, out) {
                self.finish(out, reason);
            }
        }
        if out.len() == start && self.tick.as_mut().poll(cx).is_ready() {
            out.extend_from_slice(KEEP_ALIVE);
        }
        if out.len() == start {
            return Poll::Pending;
        }
        let next = tokio::time::Instant::now() + self.keep_alive;
        self.tick.as_mut().reset(next);
        Poll::Ready(true)
    }
}

impl SseStream {
    /// The connection could not write to the client within
    /// `PGWS_SEND_TIMEOUT`: the stream ends as a slow consumer (or for
    /// what already ended it), counted as such when it is dropped.
    pub fn stalled(&mut self) {
        if !self.ended {
            let reason = self
                .joined
                .control()
                .reason()
                .unwrap_or(CloseReason::SlowConsumer);
            self.ended = true;
            self.end = reason.label();
        }
    }
}

impl Body for SseStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut out = Vec::new();
        match self.get_mut().poll_events(cx, &mut out) {
            Poll::Ready(true) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        let c = &mut self.closing;
        c.metrics.streams.dec();
        let end = if self.ended {
            self.end
        } else {
            "client_closed"
        };
        c.ctx.metrics.closed(end);
        tracing::debug!(session = self.joined.id().0, end, "event stream closed");
        let ctx = c.ctx.clone();
        let channels = std::mem::take(&mut c.meta_channels);
        let claims = c.claims.clone();
        let slot = c.slot.take();
        // The meta event goes out after the stream left its channels (the
        // `Joined` is dropped right after this), as a websocket's does.
        c.tracker.spawn(async move {
            crate::session::meta::event(&ctx, Event::ConnectionClose, &channels, &claims).await;
            drop(slot);
        });
    }
}
