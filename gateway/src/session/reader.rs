//! The reading half of a socket: frames in, envelopes onto the bus, and
//! reports to the writer.

use super::assemble::{AssembleError, Assembler};
use super::{millis_since, SessionContext, SessionId};
use crate::auth::Grant;
use crate::bus::BusError;
use crate::metrics::Rejection;
use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use pgws_protocol::close::CloseReason;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use pgws_protocol::limits::NOTIFY_PAYLOAD_MAX;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

/// What the reader tells the writer.
#[derive(Debug)]
pub enum ReaderEvent {
    /// The client pinged: answer with this payload.
    Ping(Vec<u8>),
    /// The client sent a close frame.
    ClientClosed,
    /// Close the socket with this reason.
    Fail(CloseReason),
    /// The connection is gone (EOF, reset).
    Lost,
}

/// What the reader needs.
pub struct ReaderContext {
    /// For logs.
    pub session: SessionId,
    /// Mode and channels.
    pub grant: Grant,
    /// Serialised claims for envelopes.
    pub claims: ClaimsJson,
    /// Bus, metrics, limits.
    pub ctx: Arc<SessionContext>,
    /// Base of `last_seen`.
    pub epoch: Instant,
    /// Milliseconds since `epoch` of the last frame received.
    pub last_seen: Arc<AtomicU64>,
}

/// Read until the socket ends; the last event sent says why.
pub async fn run<R>(
    mut read: WebSocketRead<R>,
    rc: ReaderContext,
    events: mpsc::Sender<ReaderEvent>,
) where
    R: AsyncRead + Unpin,
{
    // Control frames are answered by the writer, which owns the write half.
    read.set_auto_close(false);
    read.set_auto_pong(false);
    read.set_max_message_size(rc.ctx.limits.max_message_size.saturating_add(1));
    let mut assembler = Assembler::new(rc.ctx.limits.max_message_size);
    let event = loop {
        let frame = match read
            .read_frame(&mut |_| async { Ok::<(), Infallible>(()) })
            .await
        {
            Ok(frame) => frame,
            Err(e) => break read_error(e),
        };
        rc.last_seen
            .store(millis_since(rc.epoch), Ordering::Relaxed);
        match frame.opcode {
            OpCode::Close => break ReaderEvent::ClientClosed,
            OpCode::Ping => {
                // A flood of pings while the writer is busy loses only pongs.
                let _ = events.try_send(ReaderEvent::Ping(frame.payload.to_vec()));
            }
            OpCode::Pong => {}
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match assembler.push(frame.opcode, frame.fin, &frame.payload) {
                    Ok(None) => {}
                    Ok(Some(message)) => {
                        if let Err(reason) = on_message(&rc, &message).await {
                            break ReaderEvent::Fail(reason);
                        }
                    }
                    Err(e) => break ReaderEvent::Fail(assemble_failure(&rc, e)),
                }
            }
        }
    };
    let _ = events.send(event).await;
}

fn read_error(e: WebSocketError) -> ReaderEvent {
    match e {
        WebSocketError::FrameTooLarge => ReaderEvent::Fail(CloseReason::MessageTooBig),
        WebSocketError::InvalidUTF8 => ReaderEvent::Fail(CloseReason::InvalidPayload),
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => ReaderEvent::Lost,
        _ => ReaderEvent::Fail(CloseReason::ProtocolError),
    }
}

fn assemble_failure(rc: &ReaderContext, e: AssembleError) -> CloseReason {
    match e {
        AssembleError::TooLarge => {
            rc.ctx.metrics.rejected(Rejection::TooLarge);
            CloseReason::MessageTooBig
        }
        AssembleError::NotUtf8 => {
            rc.ctx.metrics.rejected(Rejection::InvalidPayload);
            CloseReason::InvalidPayload
        }
        AssembleError::BadFragment => CloseReason::ProtocolError,
    }
}

/// One whole client message: for each of the socket's channels, one
/// envelope on the bus. Nothing is queued unless every envelope fits.
async fn on_message(rc: &ReaderContext, message: &str) -> Result<(), CloseReason> {
    let metrics = &rc.ctx.metrics;
    if !rc.grant.mode.can_write() {
        // As in the original, a read-only socket's messages are ignored.
        metrics.rejected(Rejection::ReadOnly);
        tracing::debug!(
            session = rc.session.0,
            "message on a read-only socket ignored"
        );
        return Ok(());
    }
    let now = envelope::unix_now();
    let envelopes: Vec<(&str, String)> = rc
        .grant
        .channels
        .iter()
        .map(|channel| {
            let text = envelope::build(Event::WebsocketMessage, channel, message, &rc.claims, now);
            (channel.as_str(), text)
        })
        .collect();
    if envelopes
        .iter()
        .any(|(_, text)| text.len() > NOTIFY_PAYLOAD_MAX)
    {
        metrics.rejected(Rejection::TooLarge);
        tracing::debug!(
            session = rc.session.0,
            bytes = message.len(),
            "message too large for NOTIFY"
        );
        return Err(CloseReason::MessageTooBig);
    }
    let traced = pgws_coordinator::telemetry::enabled().then(|| {
        let span = tracing::info_span!(
            "pgws.write",
            session = rc.session.0,
            channels = envelopes.len()
        );
        let traceparent = pgws_coordinator::telemetry::traceparent(&span);
        (span, traceparent)
    });
    let traceparent = traced.as_ref().and_then(|(_, tp)| tp.as_deref());
    for (channel, text) in envelopes {
        match rc
            .ctx
            .bus
            .publish(channel, text, traceparent, rc.ctx.limits.write_timeout)
            .await
        {
            Ok(()) => {}
            Err(BusError::Full) => {
                metrics.rejected(Rejection::QueueFull);
                tracing::warn!(
                    session = rc.session.0,
                    "NOTIFY queue full: closing the writer with 1013"
                );
                return Err(CloseReason::TryAgainLater);
            }
            Err(BusError::Unavailable) => {
                metrics.rejected(Rejection::QueueFull);
                tracing::warn!(
                    session = rc.session.0,
                    "bus unavailable: closing the writer with 1013"
                );
                return Err(CloseReason::TryAgainLater);
            }
            Err(BusError::Closed) => return Err(CloseReason::GoingAway),
        }
    }
    metrics.received.inc();
    metrics.received_bytes.inc_by(message.len() as u64);
    Ok(())
}
