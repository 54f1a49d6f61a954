//! The one task that drives a socket from open to close.
//!
//! A single `select!` waits on the gateway's drain, the socket's kill switch
//! (raised by fan-out for a slow consumer), inbound frames, the token's
//! expiry, the send queue, the keep-alive timer and the client message
//! being published. Publishing a message is one more branch, not an await
//! in the loop: while it waits for the bus (a full NOTIFY queue, Redis
//! failing over) the socket keeps delivering, pinging and reading pongs,
//! so a writer cannot be cut off as a slow consumer — or for silence — by
//! its own write. Messages are published one at a time, in order; while
//! one is published and another waits behind it, the socket stops reading
//! (TCP pushes back on the client), so a socket buffers at most two whole
//! messages beside the one being assembled. Inbound frames are
//! decoded by the cancel-safe [`FrameReader`], so the read can be dropped
//! whenever another branch wins; everything written goes through the
//! socket's [`FrameWriter`], one `write_all` per burst. One task and no
//! channels between halves keeps an idle socket small (see
//! `docs/benchmarks.md`).

use super::assemble::{AssembleError, Assembler};
use super::context::SessionEnd;
use super::inbound::{close_frame_error, CloseProblem, FrameError, FrameReader, InFrame};
use super::outbound::{FrameWriter, FLUSH_AT};
use super::publish::{self, Writer};
use crate::bus::Delivery;
use crate::hub::SessionControl;
use crate::metrics::Rejection;
use fastwebsockets::OpCode;
use pgws_protocol::close::CloseReason;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Most queued messages encoded into one write.
const WRITE_BURST: usize = 64;
/// How long we wait for the client's answer to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the socket task needs besides the connection.
pub struct SocketContext {
    /// The socket's send queue (readers only; empty and closed otherwise).
    pub queue: mpsc::Receiver<Arc<Delivery>>,
    /// Kill switch raised by fan-out.
    pub control: Arc<SessionControl>,
    /// The token's `exp`.
    pub expires_at: Option<Instant>,
    /// Who this socket is; its session context holds the limits, the
    /// metrics and the gateway's drain token.
    pub writer: Arc<Writer>,
}

/// A client message on its way to the bus.
type Publishing = Pin<Box<dyn Future<Output = Result<(), CloseReason>> + Send>>;

/// The client's whole messages not yet handed to the bus, in order.
#[derive(Default)]
struct Writes {
    /// The one being published.
    publishing: Option<Publishing>,
    /// The ones after it.
    waiting: VecDeque<String>,
}

/// The state of one socket while it runs.
struct Socket<S> {
    io: S,
    frames: FrameReader,
    out: FrameWriter,
    assembler: Assembler,
    writes: Writes,
    last_seen: Instant,
    sc: SocketContext,
}

/// What one turn of the loop decided.
enum Step {
    Continue,
    End(SessionEnd),
}

/// Why writing failed.
enum WriteFailure {
    /// The connection failed.
    Socket,
    /// A write took longer than the send timeout.
    Stalled,
}

/// Run the socket until it ends; returns how it ended.
pub async fn run<S>(io: S, sc: SocketContext) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut socket = Socket {
        io,
        frames: FrameReader::new(),
        out: FrameWriter::default(),
        assembler: Assembler::new(sc.writer.ctx.limits.max_message_size),
        writes: Writes::default(),
        last_seen: Instant::now(),
        sc,
    };
    let served = socket.serve().await;
    // What the client sent before the end is still published (unless a
    // publish failed, which ends the socket with its own code).
    socket.finish_writes(&served).await;
    match served {
        Ok(SessionEnd::Closed(reason)) => {
            socket.close(reason).await;
            SessionEnd::Closed(reason)
        }
        Ok(end) => end,
        Err(WriteFailure::Socket) => SessionEnd::ConnectionLost,
        // Not even a close frame could get through: drop the connection.
        Err(WriteFailure::Stalled) => SessionEnd::Closed(
            socket
                .sc
                .control
                .reason()
                .unwrap_or(CloseReason::SlowConsumer),
        ),
    }
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self) -> Result<SessionEnd, WriteFailure> {
        let ctx = self.sc.writer.ctx.clone();
        let expires_at = self.sc.expires_at;
        let expiry = async move {
            match expires_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let mut ping = ctx.limits.ping_interval.map(|every| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // Registered once, not on every turn of the loop: re-creating these
        // futures would re-register their wakers (a lock on the token shared
        // by every socket) for each message written.
        let control = self.sc.control.clone();
        let cancelled = ctx.shutdown.cancelled();
        let killed = control.closed();
        tokio::pin!(expiry, cancelled, killed);
        let mut queue_open = true;
        loop {
            // Checked first on every turn, so that a drain or a kill is seen
            // even while frames and deliveries keep arriving.
            if ctx.shutdown.is_cancelled() {
                return Ok(SessionEnd::Closed(CloseReason::GoingAway));
            }
            if let Some(reason) = self.sc.control.reason() {
                return Ok(SessionEnd::Closed(reason));
            }
            // Not biased: a client that sends without pause must not starve
            // its own deliveries, nor a flood of deliveries its pings.
            let step = tokio::select! {
                _ = &mut cancelled => Step::End(SessionEnd::Closed(CloseReason::GoingAway)),
                _ = &mut killed => Step::End(SessionEnd::Closed(
                    self.sc.control.reason().unwrap_or(CloseReason::InternalError),
                )),
                frame = self.frames.read_frame(&mut self.io, self.assembler.remaining()),
                    if self.writes.waiting.is_empty() => self.on_frame(frame).await?,
                outcome = publishing(&mut self.writes.publishing),
                    if self.writes.publishing.is_some() => self.on_published(outcome),
                _ = &mut expiry => Step::End(SessionEnd::Closed(CloseReason::JwtExpired)),
                delivery = self.sc.queue.recv(), if queue_open => match delivery {
                    Some(first) => self.write_burst(first).await?,
                    None => {
                        queue_open = false;
                        Step::Continue
                    }
                },
                _ = tick(&mut ping) => self.keep_alive().await?,
            };
            if let Step::End(end) = step {
                return Ok(end);
            }
        }
    }

    /// One inbound frame (or why there is none).
    async fn on_frame(&mut self, frame: Result<InFrame, FrameError>) -> Result<Step, WriteFailure> {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Ok(Step::End(self.read_failure(e))),
        };
        self.last_seen = Instant::now();
        match frame.opcode {
            OpCode::Close => match close_frame_error(&frame.payload) {
                None => {
                    // Echo the close handshake with a normal closure.
                    self.out.close(CloseReason::Normal.code(), b"");
                    let _ = self.flush().await;
                    Ok(Step::End(SessionEnd::ClientClosed))
                }
                Some(CloseProblem::Malformed) => {
                    Ok(Step::End(SessionEnd::Closed(CloseReason::ProtocolError)))
                }
                Some(CloseProblem::NotUtf8) => {
                    Ok(Step::End(SessionEnd::Closed(CloseReason::InvalidPayload)))
                }
            },
            OpCode::Ping => {
                self.out.push(true, OpCode::Pong, &frame.payload);
                self.flush().await?;
                Ok(Step::Continue)
            }
            OpCode::Pong => Ok(Step::Continue),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match self.assembler.push(frame.opcode, frame.fin, &frame.payload) {
                    Ok(None) => Ok(Step::Continue),
                    Ok(Some(message)) => {
                        self.writes.waiting.push_back(message);
                        self.publish_next();
                        Ok(Step::Continue)
                    }
                    Err(e) => Ok(Step::End(SessionEnd::Closed(self.assemble_failure(e)))),
                }
            }
        }
    }

    /// Start publishing the next waiting message, if none is under way.
    fn publish_next(&mut self) {
        if self.writes.publishing.is_some() {
            return;
        }
        if let Some(message) = self.writes.waiting.pop_front() {
            // Boxed: a rare, large future kept out of every socket's
            // resting state.
            self.writes.publishing = Some(Box::pin(publish::on_message(
                self.sc.writer.clone(),
                message,
            )));
        }
    }

    /// The message being published is on the bus, or could not be.
    fn on_published(&mut self, outcome: Result<(), CloseReason>) -> Step {
        self.writes.publishing = None;
        match outcome {
            Ok(()) => {
                self.publish_next();
                Step::Continue
            }
            Err(reason) => Step::End(SessionEnd::Closed(reason)),
        }
    }

    /// Publish what is under way and waiting, within the write timeout,
    /// before the socket goes. After a failed publish nothing more is sent:
    /// the client's messages stay in order, and its close code says so.
    async fn finish_writes(&mut self, served: &Result<SessionEnd, WriteFailure>) {
        let failed = self.writes.publishing.is_none()
            && matches!(served, Ok(SessionEnd::Closed(r)) if is_write_failure(*r));
        if failed {
            self.drop_waiting();
            return;
        }
        let deadline = Instant::now() + self.sc.writer.ctx.limits.write_timeout;
        self.publish_next();
        while let Some(next) = self.writes.publishing.as_mut() {
            match tokio::time::timeout_at(deadline.into(), next).await {
                Ok(Ok(())) => {
                    self.writes.publishing = None;
                    self.publish_next();
                }
                Ok(Err(_)) | Err(_) => {
                    self.writes.publishing = None;
                    self.drop_waiting();
                    return;
                }
            }
        }
    }

    /// Count and forget messages that will not be published.
    fn drop_waiting(&mut self) {
        let dropped = self.writes.waiting.len() + usize::from(self.writes.publishing.is_some());
        if dropped > 0 {
            let metrics = &self.sc.writer.ctx.metrics;
            for _ in 0..dropped {
                metrics.rejected(Rejection::QueueFull);
            }
            tracing::info!(
                session = self.sc.writer.session.0,
                dropped,
                "socket closing: messages not published"
            );
        }
        self.writes = Writes::default();
    }

    fn read_failure(&self, e: FrameError) -> SessionEnd {
        match e {
            FrameError::TooLarge => {
                self.sc.writer.ctx.metrics.rejected(Rejection::TooLarge);
                SessionEnd::Closed(CloseReason::MessageTooBig)
            }
            FrameError::Protocol(what) => {
                tracing::debug!(session = self.sc.writer.session.0, what, "protocol error");
                SessionEnd::Closed(CloseReason::ProtocolError)
            }
            FrameError::Eof | FrameError::Io(_) => SessionEnd::ConnectionLost,
        }
    }

    fn assemble_failure(&self, e: AssembleError) -> CloseReason {
        match e {
            AssembleError::TooLarge => {
                self.sc.writer.ctx.metrics.rejected(Rejection::TooLarge);
                CloseReason::MessageTooBig
            }
            AssembleError::NotUtf8 => {
                self.sc
                    .writer
                    .ctx
                    .metrics
                    .rejected(Rejection::InvalidPayload);
                CloseReason::InvalidPayload
            }
            AssembleError::BadFragment => CloseReason::ProtocolError,
        }
    }

    /// Encode `first` and whatever else is already queued (up to a burst),
    /// then write them all at once. Stops early once the socket has been
    /// told to close.
    async fn write_burst(&mut self, first: Arc<Delivery>) -> Result<Step, WriteFailure> {
        let metrics = &self.sc.writer.ctx.metrics;
        let mut next = Some(first);
        let (mut frames, mut bytes) = (0u64, 0u64);
        while let Some(delivery) = next.take() {
            self.out.text(&delivery.payload);
            // Observed as the frame is encoded, just before the burst's
            // single write.
            metrics
                .latency
                .observe(delivery.received_at.elapsed().as_secs_f64());
            frames += 1;
            bytes += delivery.payload.len() as u64;
            if frames < WRITE_BURST as u64
                && self.out.pending() < FLUSH_AT
                && self.sc.control.reason().is_none()
            {
                next = self.sc.queue.try_recv().ok();
            }
        }
        metrics.delivered.inc_by(frames);
        metrics.delivered_bytes.inc_by(bytes);
        self.flush().await?;
        Ok(Step::Continue)
    }

    /// Ping the client, or give up on it after two silent periods.
    async fn keep_alive(&mut self) -> Result<Step, WriteFailure> {
        if let Some(every) = self.sc.writer.ctx.limits.ping_interval {
            if self.last_seen.elapsed() > 2 * every {
                return Ok(Step::End(SessionEnd::Closed(CloseReason::PingTimeout)));
            }
        }
        self.out.push(true, OpCode::Ping, &[]);
        self.flush().await?;
        Ok(Step::Continue)
    }

    /// Write what is queued within the send timeout.
    async fn flush(&mut self) -> Result<(), WriteFailure> {
        let limit = self.sc.writer.ctx.limits.send_timeout;
        match tokio::time::timeout(limit, self.out.write_to(&mut self.io)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "websocket write failed");
                Err(WriteFailure::Socket)
            }
            Err(_) => Err(WriteFailure::Stalled),
        }
    }

    /// Send our close frame, then give the client a moment to answer it.
    async fn close(&mut self, reason: CloseReason) {
        let text: &[u8] = if reason == CloseReason::Normal {
            b""
        } else {
            reason.text().as_bytes()
        };
        self.out.close(reason.code(), text);
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            loop {
                let budget = self.sc.writer.ctx.limits.max_message_size;
                match self.frames.read_frame(&mut self.io, budget).await {
                    Ok(frame) if frame.opcode == OpCode::Close => return,
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// Whether `reason` is how a failed publish ends a socket.
fn is_write_failure(reason: CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::TryAgainLater | CloseReason::WriteOutcomeUnknown | CloseReason::MessageTooBig
    )
}

/// The message being published; never resolves when there is none.
async fn publishing(slot: &mut Option<Publishing>) -> Result<(), CloseReason> {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
