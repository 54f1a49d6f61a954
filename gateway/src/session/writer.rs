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
    /// Longest time one frame may take to write.
    pub send_timeout: Duration,
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
    match loop_until_end(&mut write, &mut wc).await {
        Ok(end) => {
            if let SessionEnd::Closed(reason) = end {
                let _ = tokio::time::timeout(wc.send_timeout, send_close(&mut write, reason)).await;
            }
            end
        }
        // A write that stalls past the send timeout: the peer is stuck, and
        // not even a close frame could get through. Drop the connection.
        Err(WriteFailure::Stalled) => match wc.control.reason() {
            Some(reason) => SessionEnd::Closed(reason),
            None => SessionEnd::Closed(CloseReason::SlowConsumer),
        },
        Err(WriteFailure::Socket(e)) => {
            tracing::debug!(error = %e, "websocket write failed");
            SessionEnd::ConnectionLost
        }
    }
}

/// Why writing stopped early.
enum WriteFailure {
    /// The socket failed.
    Socket(WebSocketError),
    /// One frame took longer than the send timeout.
    Stalled,
}

impl From<WebSocketError> for WriteFailure {
    fn from(e: WebSocketError) -> Self {
        WriteFailure::Socket(e)
    }
}

/// Write one frame (and flush) within `limit`.
async fn write_within<W>(
    write: &mut WebSocketWrite<W>,
    frame: Frame<'_>,
    limit: Duration,
) -> Result<(), WriteFailure>
where
    W: AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, async {
        write.write_frame(frame).await?;
        write.flush().await
    })
    .await
    {
        Ok(result) => Ok(result?),
        Err(_) => Err(WriteFailure::Stalled),
    }
}

async fn loop_until_end<W>(
    write: &mut WebSocketWrite<W>,
    wc: &mut WriterContext,
) -> Result<SessionEnd, WriteFailure>
where
    W: AsyncWrite + Unpin,
{
    let expires_at = wc.expires_at;
    let expiry = async move {
        match expires_at {
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
    // Registered once, not on every turn of the loop: re-creating these
    // futures would re-register their wakers (a lock on the token shared by
    // every socket) for each message written.
    let shutdown = wc.shutdown.clone();
    let control = wc.control.clone();
    let cancelled = shutdown.cancelled();
    let killed = control.closed();
    tokio::pin!(cancelled, killed);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => return Ok(SessionEnd::Closed(CloseReason::GoingAway)),
            _ = &mut killed => {
                return Ok(SessionEnd::Closed(wc.control.reason().unwrap_or(CloseReason::InternalError)));
            }
            event = wc.events.recv() => match event {
                Some(ReaderEvent::Ping(payload)) => {
                    write_within(write, Frame::pong(Payload::Owned(payload)), wc.send_timeout).await?;
                }
                Some(ReaderEvent::ClientClosed) => {
                    // Echo the close handshake with a normal closure.
                    let _ = tokio::time::timeout(wc.send_timeout, send_close(write, CloseReason::Normal)).await;
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
                let ping = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]));
                write_within(write, ping, wc.send_timeout).await?;
            }
            delivery = wc.queue.recv(), if queue_open => match delivery {
                Some(first) => write_burst(write, wc, first).await?,
                None => queue_open = false,
            },
        }
    }
}

/// Write `first` and whatever else is already queued (up to a burst), then
/// flush once. Stops early when the socket has been told to close.
async fn write_burst<W>(
    write: &mut WebSocketWrite<W>,
    wc: &mut WriterContext,
    first: Delivery,
) -> Result<(), WriteFailure>
where
    W: AsyncWrite + Unpin,
{
    let mut next = Some(first);
    let mut written = 0;
    while let Some(delivery) = next.take() {
        let frame = Frame::text(Payload::Borrowed(&delivery.payload));
        match tokio::time::timeout(wc.send_timeout, write.write_frame(frame)).await {
            Ok(result) => result?,
            Err(_) => return Err(WriteFailure::Stalled),
        }
        wc.metrics.delivered.inc();
        wc.metrics
            .delivered_bytes
            .inc_by(delivery.payload.len() as u64);
        wc.metrics
            .latency
            .observe(delivery.received_at.elapsed().as_secs_f64());
        written += 1;
        if written < WRITE_BURST && wc.control.reason().is_none() {
            next = wc.queue.try_recv().ok();
        }
    }
    match tokio::time::timeout(wc.send_timeout, write.flush()).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(WriteFailure::Stalled),
    }
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
