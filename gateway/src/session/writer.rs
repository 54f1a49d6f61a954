//! The writing half of a socket: the send queue, pongs and pings, and the
//! decision of when and how the socket closes.

use super::reader::ReaderEvent;
use super::{millis_since, Delivery, SessionControl, SessionEnd};
use crate::metrics::Metrics;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketWrite};
use pgws_protocol::close::CloseReason;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most queued messages written before one flush.
const WRITE_BURST: usize = 64;

/// What the writer needs.
pub struct WriterContext {
    /// The socket's send queue (readers only; empty and closed otherwise).
    pub queue: mpsc::Receiver<Delivery>,
    /// Reports from the reader.
    pub events: mpsc::Receiver<ReaderEvent>,
    /// Kill switch raised by fan-out.
    pub control: Arc<SessionControl>,
    /// Gateway drain.
    pub shutdown: CancellationToken,
    /// The token's `exp`.
    pub expires_at: Option<Instant>,
    /// Keep-alive period.
    pub ping_interval: Option<Duration>,
    /// Base of `last_seen`.
    pub epoch: Instant,
    /// Milliseconds since `epoch` of the last frame received.
    pub last_seen: Arc<AtomicU64>,
    /// Delivery metrics.
    pub metrics: Metrics,
}

/// Write until the socket must end; returns how it ended.
pub async fn run<W>(mut write: WebSocketWrite<W>, mut wc: WriterContext) -> SessionEnd
where
    W: AsyncWrite + Unpin,
{
    let end = loop_until_end(&mut write, &mut wc).await;
    match end {
        Ok(end) => {
            if let SessionEnd::Closed(reason) = end {
                let _ = send_close(&mut write, reason).await;
            }
            end
        }
        Err(_) => SessionEnd::ConnectionLost,
    }
}

async fn loop_until_end<W>(
    write: &mut WebSocketWrite<W>,
    wc: &mut WriterContext,
) -> Result<SessionEnd, WebSocketError>
where
    W: AsyncWrite + Unpin,
{
    let expiry = async {
        match wc.expires_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let mut ping = wc.ping_interval.map(|every| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut queue_open = true;
    loop {
        tokio::select! {
            biased;
            _ = wc.shutdown.cancelled() => return Ok(SessionEnd::Closed(CloseReason::GoingAway)),
            _ = wc.control.closed() => {
                return Ok(SessionEnd::Closed(wc.control.reason().unwrap_or(CloseReason::InternalError)));
            }
            event = wc.events.recv() => match event {
                Some(ReaderEvent::Ping(payload)) => {
                    write.write_frame(Frame::pong(Payload::Owned(payload))).await?;
                    write.flush().await?;
                }
                Some(ReaderEvent::ClientClosed) => {
                    // Echo the close handshake with a normal closure.
                    let _ = send_close(write, CloseReason::Normal).await;
                    return Ok(SessionEnd::ClientClosed);
                }
                Some(ReaderEvent::Fail(reason)) => return Ok(SessionEnd::Closed(reason)),
                Some(ReaderEvent::Lost) | None => return Ok(SessionEnd::ConnectionLost),
            },
            _ = &mut expiry => return Ok(SessionEnd::Closed(CloseReason::JwtExpired)),
            _ = tick(&mut ping) => {
                if let Some(every) = wc.ping_interval {
                    let silent = millis_since(wc.epoch).saturating_sub(wc.last_seen.load(Ordering::Relaxed));
                    if silent > 2 * every.as_millis() as u64 {
                        return Ok(SessionEnd::Closed(CloseReason::PingTimeout));
                    }
                }
                write.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await?;
                write.flush().await?;
            }
            delivery = wc.queue.recv(), if queue_open => match delivery {
                Some(first) => write_burst(write, &mut wc.queue, first, &wc.metrics).await?,
                None => queue_open = false,
            },
        }
    }
}

/// Write `first` and whatever else is already queued (up to a burst), then
/// flush once.
async fn write_burst<W>(
    write: &mut WebSocketWrite<W>,
    queue: &mut mpsc::Receiver<Delivery>,
    first: Delivery,
    metrics: &Metrics,
) -> Result<(), WebSocketError>
where
    W: AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    while let Some(delivery) = next.take() {
        write
            .write_frame(Frame::text(Payload::Borrowed(&delivery.payload)))
            .await?;
        metrics.delivered.inc();
        metrics
            .delivered_bytes
            .inc_by(delivery.payload.len() as u64);
        metrics
            .latency
            .observe(delivery.received_at.elapsed().as_secs_f64());
        written += 1;
        if written < WRITE_BURST {
            next = queue.try_recv().ok();
        }
    }
    write.flush().await
}

async fn send_close<W>(
    write: &mut WebSocketWrite<W>,
    reason: CloseReason,
) -> Result<(), WebSocketError>
where
    W: AsyncWrite + Unpin,
{
    let frame = if reason == CloseReason::Normal {
        Frame::close(reason.code(), b"")
    } else {
        Frame::close(reason.code(), reason.text().as_bytes())
    };
    write.write_frame(frame).await?;
    write.flush().await
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
