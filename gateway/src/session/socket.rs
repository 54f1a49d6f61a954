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
//!
//! The loop speaks both protocols ([`Proto`]): a v1 socket's messages are
//! published to its channels and its deliveries written verbatim; a v2
//! socket's messages are commands ([`super::v2`]), its deliveries pass its
//! subscriptions' filter, one more branch takes the bus's answers to
//! its subscriptions' recoveries, and another writes what an answered
//! recovery owes (its replay, then the messages held back meanwhile) a
//! flush's worth ([`FLUSH_AT`]) per turn: a client that does not read
//! holds one flush of a replay in its buffer, not the whole of it. A v2 socket opened without a token
//! starts [`Proto::Connecting`]: its first message must be `connect`,
//! before `PGWS_CONNECT_TIMEOUT`.

use super::assemble::{AssembleError, Assembler};
use super::context::{SessionContext, SessionEnd};
use super::inbound::{close_frame_error, CloseProblem, FrameError, FrameReader, InFrame};
use super::outbound::{FrameWriter, FLUSH_AT};
use super::publish::{self, Writer};
use super::v2::{self, Effect, V2};
use crate::bus::{BusError, Delivery};
use crate::hub::{SessionControl, SessionId};
use crate::metrics::Rejection;
use fastwebsockets::OpCode;
use pgws_protocol::close::CloseReason;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Most queued messages encoded into one write.
const WRITE_BURST: usize = 64;
/// How long we wait for the client's answer to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Which protocol the socket speaks, with its state.
pub enum Proto {
    /// v1: every message is published to the socket's channels.
    V1(Arc<Writer>),
    /// v2, opened without a token: waiting for the `connect` frame. Holds
    /// the send queue's sender for the subscriptions to come.
    Connecting(mpsc::Sender<Arc<Delivery>>),
    /// v2.
    V2(Box<V2>),
}

impl Proto {
    fn is_v2(&self) -> bool {
        !matches!(self, Proto::V1(_))
    }

    fn recovering(&self) -> bool {
        matches!(self, Proto::V2(v2) if v2.recovering())
    }

    fn catching_up(&self) -> bool {
        matches!(self, Proto::V2(v2) if v2.catching_up())
    }
}

/// What the socket task needs besides the connection.
pub struct SocketContext {
    /// The socket's send queue (empty and closed for a v1 socket that
    /// does not read).
    pub queue: mpsc::Receiver<Arc<Delivery>>,
    /// Kill switch raised by fan-out.
    pub control: Arc<SessionControl>,
    /// The token's `exp` (the `connect` deadline while connecting).
    pub expires_at: Option<Instant>,
    /// Limits, metrics, the bus and the gateway's drain token.
    pub ctx: Arc<SessionContext>,
    /// The socket's id, for logs.
    pub session: SessionId,
    /// The protocol.
    pub proto: Proto,
}

/// How the socket task ended, and what the session must still undo.
pub struct Finished {
    /// How it ended.
    pub end: SessionEnd,
    /// The protocol state at the end (a v2 socket's subscriptions).
    pub proto: Proto,
    /// The `connect` frame's `ConnectionOpen` event, when one was sent
    /// from the loop (awaited before `ConnectionClose`).
    pub opened: Option<tokio::task::JoinHandle<()>>,
    /// The connections gauge a v2 socket joined once connected.
    pub open_gauge: Option<prometheus::IntGauge>,
}

/// A client message on its way to the bus.
enum Publishing {
    /// v1: a failure closes the socket.
    V1(Pin<Box<dyn Future<Output = Result<(), CloseReason>> + Send>>),
    /// v2: a failure is the command's error reply.
    V2(v2::PublishFuture),
}

/// How a publish ended.
enum Published {
    V1(Result<(), CloseReason>),
    V2(u64, Result<(), BusError>),
}

/// A message waiting for its turn.
enum Waiting {
    V1(String),
    V2(v2::PublishFuture),
}

/// The client's whole messages not yet handed to the bus, in order.
#[derive(Default)]
struct Writes {
    /// The one being published.
    publishing: Option<Publishing>,
    /// The ones after it.
    waiting: VecDeque<Waiting>,
}

/// The state of one socket while it runs.
struct Socket<S> {
    io: S,
    frames: FrameReader,
    out: FrameWriter,
    assembler: Assembler,
    writes: Writes,
    last_seen: Instant,
    /// The token's expiry (or the `connect` deadline); `None`: never.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When `expiry` fires.
    expires_at: Option<Instant>,
    /// The text of our close frame when it says more than the code's
    /// usual one (v2: which frame was unusable, why a token was refused).
    close_detail: Option<String>,
    opened: Option<tokio::task::JoinHandle<()>>,
    open_gauge: Option<prometheus::IntGauge>,
    sc: SocketContext,
}

/// What one turn of the loop decided.
#[derive(Debug, PartialEq, Eq)]
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

/// Run the socket until it ends.
pub async fn run<S>(io: S, sc: SocketContext) -> Finished
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut socket = Socket {
        io,
        frames: FrameReader::new(),
        out: FrameWriter::default(),
        assembler: Assembler::new(sc.ctx.limits.max_message_size),
        writes: Writes::default(),
        last_seen: Instant::now(),
        expiry: sc.expires_at.map(sleep_until),
        expires_at: sc.expires_at,
        close_detail: None,
        opened: None,
        open_gauge: None,
        sc,
    };
    let served = socket.serve().await;
    // What the client sent before the end is still published (unless a
    // publish failed, which ends the socket with its own code).
    socket.finish_writes(&served).await;
    let end = match served {
        Ok(SessionEnd::Closed(reason)) => {
            socket.close(reason).await;
            socket.end_stream().await;
            SessionEnd::Closed(reason)
        }
        Ok(SessionEnd::ClientClosed) => {
            socket.end_stream().await;
            SessionEnd::ClientClosed
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
    };

    Finished {
        end,
        proto: socket.sc.proto,
        opened: socket.opened,
        open_gauge: socket.open_gauge,
    }
}

fn sleep_until(at: Instant) -> Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep_until(at.into()))
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self) -> Result<SessionEnd, WriteFailure> {
        let ctx = self.sc.ctx.clone();
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
        tokio::pin!(cancelled, killed);
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
                    if self.writes.waiting.is_empty() => self.on_frame(frame),
                outcome = publishing(&mut self.writes.publishing),
                    if self.writes.publishing.is_some() => self.on_published(outcome),
                answer = next_answer(&mut self.sc.proto), if self.sc.proto.recovering() => {
                    if let Proto::V2(v2) = &mut self.sc.proto {
                        v2.on_answer(answer, &mut self.out);
                    }
                    Step::Continue
                }
                // A replay, a flush's worth per turn: the turn's flush
                // below waits for the client before the next.
                _ = std::future::ready(()), if self.sc.proto.catching_up() => {
                    if let Proto::V2(v2) = &mut self.sc.proto {
                        v2.write_owed(&mut self.out);
                    }
                    Step::Continue
                }
                _ = expired(&mut self.expiry) => Step::End(SessionEnd::Closed(
                    if matches!(self.sc.proto, Proto::Connecting(_)) {
                        CloseReason::ConnectTimeout
                    } else {
                        CloseReason::JwtExpired
                    },
                )),
                delivery = self.sc.queue.recv(), if queue_open => match delivery {
                    Some(first) => self.write_burst(first),
                    None => {
                        queue_open = false;
                        Step::Continue
                    }
                },
                _ = tick(&mut ping) => self.keep_alive(),
            };
            // Everything a turn wrote (deliveries, replies, pongs, pings)
            // goes out in one write, here: the handlers only fill the
            // buffer, which keeps every socket's resting state small.
            if self.out.pending() > 0 {
                match self.flush().await {
                    Ok(()) => {}
                    // The client closed: its close frame was answered if it
                    // could be.
                    Err(_) if step == Step::End(SessionEnd::ClientClosed) => {}
                    Err(failure) => return Err(failure),
                }
            }
            if let Step::End(end) = step {
                return Ok(end);
            }
        }
    }

    /// One inbound frame (or why there is none).
    fn on_frame(&mut self, frame: Result<InFrame, FrameError>) -> Step {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Step::End(self.read_failure(e)),
        };
        self.last_seen = Instant::now();
        match frame.opcode {
            OpCode::Close => match close_frame_error(&frame.payload) {
                None => {
                    // Echo the close handshake with a normal closure.
                    self.out.close(CloseReason::Normal.code(), b"");
                    Step::End(SessionEnd::ClientClosed)
                }
                Some(CloseProblem::Malformed) => {
                    Step::End(SessionEnd::Closed(CloseReason::ProtocolError))
                }
                Some(CloseProblem::NotUtf8) => {
                    Step::End(SessionEnd::Closed(CloseReason::InvalidPayload))
                }
            },
            OpCode::Ping => {
                self.out.push(true, OpCode::Pong, &frame.payload);
                Step::Continue
            }
            OpCode::Pong => Step::Continue,
            OpCode::Binary if self.sc.proto.is_v2() => {
                Step::End(SessionEnd::Closed(CloseReason::UnsupportedData))
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match self.assembler.push(frame.opcode, frame.fin, &frame.payload) {
                    Ok(None) => Step::Continue,
                    Ok(Some(message)) => self.on_message(message),
                    Err(e) => Step::End(SessionEnd::Closed(self.assemble_failure(e))),
                }
            }
        }
    }

    /// One whole client message.
    fn on_message(&mut self, message: String) -> Step {
        let effect = match &mut self.sc.proto {
            Proto::V1(_) => {
                self.writes.waiting.push_back(Waiting::V1(message));
                self.publish_next();
                return Step::Continue;
            }
            Proto::Connecting(_) => return self.on_connect(&message),
            Proto::V2(v2) => {
                let effect = v2.on_text(&message, &mut self.out);
                // A refresh may have moved the expiry.
                let expires_at = v2.expires_at();
                self.set_expiry(expires_at);
                effect
            }
        };
        match effect {
            Effect::Done => Step::Continue,
            Effect::Publish(future) => {
                self.writes.waiting.push_back(Waiting::V2(future));
                self.publish_next();
                Step::Continue
            }
            Effect::Close(reason, detail) => {
                self.close_detail = Some(detail);
                Step::End(SessionEnd::Closed(reason))
            }
        }
    }

    /// Move the expiry (a new token), re-arming the timer only on a change.
    fn set_expiry(&mut self, at: Option<Instant>) {
        if at != self.expires_at {
            self.expires_at = at;
            self.expiry = at.map(sleep_until);
        }
    }

    /// The first message of a v2 socket opened without a token.
    fn on_connect(&mut self, message: &str) -> Step {
        let ctx = self.sc.ctx.clone();
        let (permissions, id) = match v2::connect::accept(message, &ctx) {
            Ok(accepted) => accepted,
            Err((reason, detail)) => {
                tracing::debug!(session = self.sc.session.0, %detail, "v2 connect refused");
                self.close_detail = Some(detail);
                return Step::End(SessionEnd::Closed(reason));
            }
        };
        let placeholder = Proto::Connecting(mpsc::channel(1).0);
        let Proto::Connecting(queue) = std::mem::replace(&mut self.sc.proto, placeholder) else {
            return Step::Continue;
        };
        let v2 = V2::new(
            permissions,
            queue,
            self.sc.control.clone(),
            self.sc.session,
            ctx.clone(),
        );
        let gauge = ctx.metrics.open(v2.mode());
        gauge.inc();
        self.open_gauge = Some(gauge);
        self.set_expiry(v2.expires_at());
        let v2 = Box::new(v2);
        self.opened = Some(tokio::spawn(
            v2.meta_event(pgws_protocol::envelope::Event::ConnectionOpen),
        ));
        self.sc.proto = Proto::V2(v2);
        if let Some(id) = id {
            self.out.text(pgws_protocol::v2::reply(id, None).as_bytes());
        }
        Step::Continue
    }

    /// Start publishing the next waiting message, if none is under way.
    fn publish_next(&mut self) {
        if self.writes.publishing.is_some() {
            return;
        }
        self.writes.publishing = match self.writes.waiting.pop_front() {
            // Boxed: a rare, large future kept out of every socket's
            // resting state.
            Some(Waiting::V1(message)) => match &self.sc.proto {
                Proto::V1(writer) => Some(Publishing::V1(Box::pin(publish::on_message(
                    writer.clone(),
                    message,
                )))),
                _ => None,
            },
            Some(Waiting::V2(future)) => Some(Publishing::V2(future)),
            None => None,
        };
    }

    /// The message being published is on the bus, or could not be.
    fn on_published(&mut self, outcome: Published) -> Step {
        self.writes.publishing = None;
        match outcome {
            Published::V1(Ok(())) => {}
            Published::V1(Err(reason)) => return Step::End(SessionEnd::Closed(reason)),
            Published::V2(id, result) => {
                if let Proto::V2(v2) = &self.sc.proto {
                    v2.on_published(id, result, &mut self.out);
                }
            }
        }
        self.publish_next();
        Step::Continue
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
        let deadline = Instant::now() + self.sc.ctx.limits.write_timeout;
        self.publish_next();
        while self.writes.publishing.is_some() {
            let next = publishing(&mut self.writes.publishing);
            match tokio::time::timeout_at(deadline.into(), next).await {
                Ok(Published::V1(Ok(())) | Published::V2(_, Ok(()))) => {
                    self.writes.publishing = None;
                    self.publish_next();
                }
                Ok(_) | Err(_) => {
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
            let metrics = &self.sc.ctx.metrics;
            for _ in 0..dropped {
                metrics.rejected(Rejection::QueueFull);
            }
            tracing::info!(
                session = self.sc.session.0,
                dropped,
                "socket closing: messages not published"
            );
        }
        self.writes = Writes::default();
    }

    fn read_failure(&self, e: FrameError) -> SessionEnd {
        match e {
            FrameError::TooLarge => {
                self.sc.ctx.metrics.rejected(Rejection::TooLarge);
                SessionEnd::Closed(CloseReason::MessageTooBig)
            }
            FrameError::Protocol(what) => {
                tracing::debug!(session = self.sc.session.0, what, "protocol error");
                SessionEnd::Closed(CloseReason::ProtocolError)
            }
            FrameError::Eof | FrameError::Io(_) => SessionEnd::ConnectionLost,
        }
    }

    fn assemble_failure(&self, e: AssembleError) -> CloseReason {
        match e {
            AssembleError::TooLarge => {
                self.sc.ctx.metrics.rejected(Rejection::TooLarge);
                CloseReason::MessageTooBig
            }
            AssembleError::NotUtf8 => {
                self.sc.ctx.metrics.rejected(Rejection::InvalidPayload);
                CloseReason::InvalidPayload
            }
            AssembleError::BadFragment => CloseReason::ProtocolError,
        }
    }

    /// Encode `first` and whatever else is already queued (up to a burst),
    /// then write them all at once. Stops early once the socket has been
    /// told to close.
    fn write_burst(&mut self, first: Arc<Delivery>) -> Step {
        let metrics = &self.sc.ctx.metrics;
        let mut next = Some(first);
        let (mut taken, mut frames, mut bytes) = (0usize, 0u64, 0u64);
        while let Some(delivery) = next.take() {
            taken += 1;
            let written = match &mut self.sc.proto {
                Proto::V1(_) => {
                    self.out.text(&delivery.payload);
                    true
                }
                Proto::V2(v2) => match v2.on_delivery(&delivery, &mut self.out) {
                    Ok(written) => written,
                    Err(reason) => {
                        let first = self.sc.control.close(reason);
                        metrics.queue_full(self.sc.session.0, first);
                        break;
                    }
                },
                Proto::Connecting(_) => false,
            };
            if written {
                // Observed as the frame is encoded, just before the
                // burst's single write.
                metrics
                    .latency
                    .observe(delivery.received_at.elapsed().as_secs_f64());
                frames += 1;
                bytes += delivery.payload.len() as u64;
            }
            if taken < WRITE_BURST
                && self.out.pending() < FLUSH_AT
                && self.sc.control.reason().is_none()
            {
                next = self.sc.queue.try_recv().ok();
            }
        }
        metrics.delivered.inc_by(frames);
        metrics.delivered_bytes.inc_by(bytes);
        Step::Continue
    }

    /// Ping the client, or give up on it after two silent periods.
    fn keep_alive(&mut self) -> Step {
        if let Some(every) = self.sc.ctx.limits.ping_interval {
            if self.last_seen.elapsed() > 2 * every {
                return Step::End(SessionEnd::Closed(CloseReason::PingTimeout));
            }
        }
        self.out.push(true, OpCode::Ping, &[]);
        Step::Continue
    }

    /// Write what is queued within the send timeout.
    async fn flush(&mut self) -> Result<(), WriteFailure> {
        let limit = self.sc.ctx.limits.send_timeout;
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
    /// After a close handshake, end the stream rather than just drop the
    /// socket: over TLS this sends close_notify, so the client sees a clean
    /// end, not a truncation. Bounded: a client that stopped reading does
    /// not hold the task.
    async fn end_stream(&mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, self.io.shutdown()).await;
    }

    async fn close(&mut self, reason: CloseReason) {
        let detail = self.close_detail.take();
        let text: &[u8] = match &detail {
            Some(detail) => close_reason_text(detail),
            None if reason == CloseReason::Normal => b"",
            None => reason.text().as_bytes(),
        };
        self.out.close(reason.code(), text);
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            loop {
                let budget = self.sc.ctx.limits.max_message_size;
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
async fn publishing(slot: &mut Option<Publishing>) -> Published {
    match slot {
        Some(Publishing::V1(future)) => Published::V1(future.await),
        Some(Publishing::V2(future)) => {
            let (id, result) = future.await;
            Published::V2(id, result)
        }
        None => std::future::pending().await,
    }
}

/// The next answer to a v2 recovery; never resolves when there is none.
async fn next_answer(proto: &mut Proto) -> v2::Answer {
    match proto {
        Proto::V2(v2) => v2.next_answer().await,
        _ => std::future::pending().await,
    }
}

/// Resolves at the expiry; never when there is none.
async fn expired(expiry: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A close frame's reason may take 123 bytes (RFC 6455 §5.5): cut at a
/// character boundary.
fn close_reason_text(detail: &str) -> &[u8] {
    let mut end = detail.len().min(123);
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail.as_bytes()[..end]
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
