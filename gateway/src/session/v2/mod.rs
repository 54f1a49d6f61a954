//! Protocol v2 on one socket (`docs/protocol.md`, "Protocol v2"): the
//! commands, the socket's subscriptions, and recovery.
//!
//! The socket task ([`super::socket`]) owns a [`V2`] and hands it every
//! whole client message, every delivery from its send queue and every
//! answer the bus gives to a subscription's recovery. Nothing here blocks
//! or awaits: a command either answers at once (written into the socket's
//! frame buffer) or starts work the socket polls — a recovery (many may
//! run at once, one per channel) or a publish (one at a time, in order,
//! through the socket's write queue, as v1 messages are). An answered
//! recovery's replay is not written with its reply: the socket asks for
//! it a flush's worth per turn ([`V2::write_owed`]), within
//! `PGWS_REPLAY_MAX_BYTES` owed per socket.
//!
//! * [`connect`] — the `connect` frame, for a socket opened without a token.
//! * [`subscriptions`] — which channels the socket reads and where each
//!   stands: held-back deliveries during recovery, duplicates skipped.
//! * [`rate`] — the per-socket command rate limit.
//! * [`refresh`] — what a `refresh` token may change.
//!
//! Presence (`PGWS_PRESENCE`, [`crate::presence`]): a subscription is a
//! member of its channel from its reply on until it ends; `presence` and
//! `presence_stats` are answered through the same set of futures as
//! recoveries. Echo suppression: a subscription with `"echo":false`
//! remembers the envelopes the socket publishes on its channel
//! ([`crate::hub::echo`]).

pub mod connect;
mod rate;
mod refresh;
pub mod subscriptions;

use super::context::SessionContext;
use super::outbound::{FrameWriter, FLUSH_AT};
use crate::auth::{self, Permissions};
use crate::bus::{BusError, Delivery, Recovered, Replayed};
use crate::hub::echo::Echoes;
use crate::hub::{SessionControl, SessionId, Subscriber};
use crate::metrics::RecoveryOutcome;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use pgws_protocol::clock;
use pgws_protocol::close::CloseReason;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use pgws_protocol::limits::NOTIFY_PAYLOAD_MAX;
use pgws_protocol::position::Since;
use pgws_protocol::presence::Member;
use pgws_protocol::v2::{
    self, Command, ErrorCode, ParseError, SubscribeOptions, Subscribed, MAX_CHANNEL_NAME,
};
use rate::TokenBucket;
use refresh::Identity;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use subscriptions::{Owed, Subscriptions, Verdict};
use tokio::sync::mpsc;

/// A publish on its way to the bus: the command id and the outcome.
pub type PublishFuture = Pin<Box<dyn Future<Output = (u64, Result<(), BusError>)> + Send>>;

/// The error reason when the bus refuses a channel's subscription.
const QUEUE_FULL: &str =
    "Too many subscriptions wait for Redis (PGWS_REDIS_SUBSCRIPTION_QUEUE): try again later";

/// A recovery on its way back from the bus.
type RecoveryFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// An answer the socket was waiting for.
pub enum Answer {
    /// The bus's answer to one subscription's recovery.
    Recovery(Recovery),
    /// A presence query's reply (or error).
    Reply {
        /// The command.
        id: u64,
        /// The reply frame, or the error.
        result: Result<String, (ErrorCode, String)>,
    },
}

/// The bus's answer to one subscription's recovery.
pub struct Recovery {
    command: u64,
    channel: Arc<str>,
    with_since: bool,
    result: Result<Recovered, BusError>,
}

/// What a command asks of the socket, beyond the frames already written.
pub enum Effect {
    /// Nothing more.
    Done,
    /// Publish this, in order with the socket's other publishes.
    Publish(PublishFuture),
    /// Close the socket: the reason, and the text for the close frame.
    Close(CloseReason, String),
}

/// What the meta channel's `ConnectionOpen` said about the socket; its
/// `ConnectionClose` says the same, whatever refreshes came between.
struct Opened {
    channels: Vec<String>,
    claims: ClaimsJson,
}

/// One v2 socket's state.
pub struct V2 {
    permissions: Permissions,
    /// The first token's `sub` and `iss`: a refresh must name the same.
    identity: Identity,
    opened: Opened,
    /// The token's `exp`, as an instant (computed once per token).
    expires_at: Option<Instant>,
    claims: ClaimsJson,
    subs: Subscriptions,
    recoveries: FuturesUnordered<RecoveryFuture>,
    rate: TokenBucket,
    /// The socket's send queue, for the registry entries of new
    /// subscriptions.
    queue: mpsc::Sender<Arc<Delivery>>,
    control: Arc<SessionControl>,
    session: SessionId,
    ctx: Arc<SessionContext>,
    /// How presence lists this socket (when presence is on).
    member: Option<Member>,
    /// The token's `presence` claim is `true`.
    may_query_presence: bool,
    /// Channels where this socket is a presence member.
    joined: HashSet<Arc<str>>,
    /// Channels subscribed with `"echo":false`.
    no_echo: HashSet<Arc<str>>,
    /// What it published there, until it comes back.
    echoes: Arc<Echoes>,
}

impl V2 {
    /// A socket allowed `permissions`, with no subscription yet.
    pub fn new(
        permissions: Permissions,
        queue: mpsc::Sender<Arc<Delivery>>,
        control: Arc<SessionControl>,
        session: SessionId,
        ctx: Arc<SessionContext>,
    ) -> V2 {
        let mut permissions = permissions;
        let identity = Identity::of(&permissions.claims);
        let member = ctx
            .presence
            .as_ref()
            .map(|p| p.member(session, &permissions.claims));
        let may_query_presence = crate::presence::may_query(&permissions.claims);
        let claims = ClaimsJson::new(&std::mem::take(&mut permissions.claims));
        let opened = Opened {
            channels: permissions.claimed_channels().to_vec(),
            claims: claims.clone(),
        };
        V2 {
            expires_at: permissions.expires_at.map(clock::instant_of_unix_seconds),
            identity,
            opened,
            permissions,
            claims,
            subs: Subscriptions::new(ctx.limits.send_queue),
            recoveries: FuturesUnordered::new(),
            rate: TokenBucket::new(ctx.limits.command_rate),
            queue,
            control,
            session,
            ctx,
            member,
            may_query_presence,
            joined: HashSet::new(),
            no_echo: HashSet::new(),
            echoes: Arc::default(),
        }
    }

    /// When the current token expires.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// The token's mode, for the connections gauge.
    pub fn mode(&self) -> &'static str {
        self.permissions.mode.as_str()
    }

    /// Whether recoveries are under way.
    pub fn recovering(&self) -> bool {
        !self.recoveries.is_empty()
    }

    /// The next recovery answer (pending while there is none).
    pub async fn next_answer(&mut self) -> Answer {
        match self.recoveries.next().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    /// A whole text message from the client.
    pub fn on_text(&mut self, text: &str, out: &mut FrameWriter) -> Effect {
        let command = match v2::parse(text) {
            Ok(command) => command,
            Err(ParseError::Fatal(reason)) => {
                tracing::debug!(session = self.session.0, %reason, "unusable v2 frame: closing 1008");
                return Effect::Close(CloseReason::PolicyViolation, reason);
            }
            Err(ParseError::Reply { id, reason }) => {
                self.error(out, id, ErrorCode::BadRequest, &reason);
                return Effect::Done;
            }
        };
        let metrics = &self.ctx.metrics.v2;
        metrics.command(command.name());
        if !self.rate.take(Instant::now()) {
            if let Some(id) = command_id(&command) {
                self.error(out, id, ErrorCode::TooMany, "Command rate limit exceeded");
            }
            return Effect::Done;
        }
        match command {
            Command::Connect { id, .. } => {
                if let Some(id) = id {
                    self.error(out, id, ErrorCode::BadRequest, "Already connected");
                }
                Effect::Done
            }
            Command::Subscribe {
                id,
                channel,
                since,
                options,
            } => {
                self.subscribe(out, id, channel, since, options);
                Effect::Done
            }
            Command::Presence { id, channel } => {
                self.presence(out, id, channel, false);
                Effect::Done
            }
            Command::PresenceStats { id, channel } => {
                self.presence(out, id, channel, true);
                Effect::Done
            }
            Command::Unsubscribe { id, channel } => {
                self.unsubscribe(&channel);
                out.text(v2::reply(id, None).as_bytes());
                Effect::Done
            }
            Command::Publish { id, channel, data } => self.publish(out, id, &channel, &data),
            Command::Refresh { id, token } => self.refresh(out, id, &token),
            Command::Ping { id } => {
                out.text(v2::reply(id, None).as_bytes());
                Effect::Done
            }
        }
    }

    fn error(&self, out: &mut FrameWriter, id: u64, code: ErrorCode, reason: &str) {
        self.ctx.metrics.v2.error(self.session.0, code, reason);
        out.text(v2::error(id, code, reason).as_bytes());
    }

    /// Why this socket may not see presence on `channel`, if it may not.
    fn presence_refusal(&self, channel: &str) -> Option<(ErrorCode, String)> {
        if self.ctx.presence.is_none() {
            let reason = "Presence is not enabled on this server (PGWS_PRESENCE)";
            return Some((ErrorCode::NotFound, reason.into()));
        }
        if !self.may_query_presence {
            let reason = "The token does not allow presence (claim \"presence\":true)";
            return Some((ErrorCode::Forbidden, reason.into()));
        }
        if !self.permissions.may_read(channel, &self.ctx.meta) {
            return Some((
                ErrorCode::Forbidden,
                format!("Channel {:?} not allowed", channel),
            ));
        }
        None
    }

    /// `presence` (or `presence_stats`) on `channel`: answered when Redis
    /// (or the local store) has.
    fn presence(&mut self, out: &mut FrameWriter, id: u64, channel: String, stats: bool) {
        if let Some((code, reason)) = self.presence_refusal(&channel) {
            return self.error(out, id, code, &reason);
        }
        let Some(presence) = self.ctx.presence.clone() else {
            return;
        };
        self.recoveries.push(Box::pin(async move {
            let result = if stats {
                presence.stats(&channel).await.map(|(clients, users)| {
                    pgws_protocol::presence::stats_reply(id, clients, users)
                })
            } else {
                presence.list(&channel).await.map(|entries| {
                    pgws_protocol::presence::list_reply(id, entries.iter().map(String::as_str))
                })
            };
            let result = result.map_err(|e| {
                let code = match e {
                    crate::presence::PresenceError::TooMany(_) => ErrorCode::TooLarge,
                    crate::presence::PresenceError::Unavailable => ErrorCode::Unavailable,
                };
                (code, e.to_string())
            });
            Answer::Reply { id, result }
        }));
    }

    fn subscribe(
        &mut self,
        out: &mut FrameWriter,
        id: u64,
        channel: String,
        since: Option<Since>,
        options: SubscribeOptions,
    ) {
        if !self.permissions.may_read(&channel, &self.ctx.meta) {
            let reason = format!("Channel {:?} not allowed", channel);
            return self.error(out, id, ErrorCode::Forbidden, &reason);
        }
        if options.presence {
            if let Some((code, reason)) = self.presence_refusal(&channel) {
                return self.error(out, id, code, &reason);
            }
        }
        if self.subs.contains(&channel) {
            return self.error(out, id, ErrorCode::Conflict, "Already subscribed");
        }
        if self.subs.len() >= self.ctx.limits.max_subscriptions {
            let reason = format!(
                "At most {} subscriptions (PGWS_MAX_SUBSCRIPTIONS)",
                self.ctx.limits.max_subscriptions
            );
            return self.error(out, id, ErrorCode::TooMany, &reason);
        }
        let channel: Arc<str> = Arc::from(channel);
        // In the registry first, then ask where the channel stands: every
        // message after the answer reaches this socket.
        if self.register(&channel, options).is_err() {
            return self.error(out, id, ErrorCode::Unavailable, QUEUE_FULL);
        }
        if !options.echo {
            self.no_echo.insert(channel.clone());
        }
        self.subs.begin(channel.clone(), id);
        let bus = self.ctx.bus.clone();
        self.recoveries.push(Box::pin(async move {
            let result = bus.recover(&channel, since.as_ref()).await;
            Answer::Recovery(Recovery {
                command: id,
                channel,
                with_since: since.is_some(),
                result,
            })
        }));
    }

    /// Put this socket on `channel`, unless the bus refuses the channel's
    /// subscription.
    fn register(&self, channel: &str, options: SubscribeOptions) -> Result<(), BusError> {
        let mut subscriber =
            Subscriber::new(self.session, self.queue.clone(), self.control.clone());
        subscriber.presence_events = options.presence;
        let ctx = &self.ctx;
        ctx.hub.registry.try_insert(channel, subscriber, || {
            ctx.bus.subscribe(channel)?;
            ctx.metrics.channels.inc();
            Ok(())
        })?;
        ctx.metrics.v2.subscriptions.inc();
        Ok(())
    }

    fn unregister(&self, channel: &str) {
        let ctx = &self.ctx;
        ctx.hub.registry.remove(channel, self.session, || {
            ctx.metrics.channels.dec();
            ctx.bus.unsubscribe(channel);
        });
        ctx.metrics.v2.subscriptions.dec();
    }

    /// End `channel`'s subscription, if any (succeeds either way).
    fn unsubscribe(&mut self, channel: &str) {
        if self.subs.remove(channel) {
            self.unregister(channel);
        }
        self.no_echo.remove(channel);
        if let Some(channel) = self.joined.take(channel) {
            if let (Some(presence), Some(member)) = (&self.ctx.presence, &self.member) {
                presence.leave(&channel, member);
            }
        }
    }

    /// An answer: a presence reply, or a recovery's.
    pub fn on_answer(&mut self, answer: Answer, out: &mut FrameWriter) {
        match answer {
            Answer::Recovery(recovery) => self.on_recovery(recovery, out),
            Answer::Reply { id, result } => match result {
                Ok(reply) => out.text(reply.as_bytes()),
                Err((code, reason)) => self.error(out, id, code, &reason),
            },
        }
    }

    /// The bus answered a recovery: reply, replay, then what was held back;
    /// the subscription is now a presence member.
    fn on_recovery(&mut self, recovery: Recovery, out: &mut FrameWriter) {
        let Recovery {
            command,
            channel,
            with_since,
            result,
        } = recovery;
        if !self.subs.is_recovering(&channel, command) {
            // Unsubscribed (or unsubscribed and subscribed again) meanwhile.
            return self.error(
                out,
                command,
                ErrorCode::Conflict,
                "Unsubscribed before the subscription was live",
            );
        }
        let recovered = match result {
            Ok(recovered) => recovered,
            Err(e) => {
                self.unsubscribe(&channel);
                if with_since {
                    self.ctx.metrics.v2.recovery(RecoveryOutcome::Failed, 0);
                }
                tracing::warn!(session = self.session.0, error = %e, "subscription failed: the bus could not answer");
                return self.error(
                    out,
                    command,
                    ErrorCode::Unavailable,
                    "Temporarily unavailable, try again",
                );
            }
        };
        let (replay, outcome) = self.bounded(recovered.replay);
        let replayed = replay.as_ref().map(|r| r.len() as u64);
        if with_since {
            self.ctx
                .metrics
                .v2
                .recovery(outcome, replayed.unwrap_or(0) as usize);
        }
        let reply = v2::reply(
            command,
            Some(&Subscribed {
                position: recovered.position,
                recovered: with_since.then_some(replayed),
            }),
        );
        out.text(reply.as_bytes());
        // The replay and what was held back follow from the next turns,
        // a flush bound at a time ([`V2::write_owed`]).
        self.subs.answer(
            &channel,
            command,
            recovered.position,
            replay.unwrap_or_default(),
        );
        if let (Some(presence), Some(member)) = (&self.ctx.presence, &self.member) {
            presence.join(&channel, member);
            self.joined.insert(channel);
        }
    }

    /// `replay`, unless it does not fit in what the socket may still owe
    /// (`PGWS_REPLAY_MAX_BYTES` of payload): then none, answered
    /// `recovered:false` as for trimmed history.
    fn bounded(&self, replay: Option<Vec<Replayed>>) -> (Option<Vec<Replayed>>, RecoveryOutcome) {
        let Some(replay) = replay else {
            return (None, RecoveryOutcome::NotRecovered);
        };
        let bytes: usize = replay.iter().map(|e| e.payload.len()).sum();
        let room = self
            .ctx
            .limits
            .replay_max_bytes
            .saturating_sub(self.subs.owed_bytes());
        if bytes > room {
            tracing::info!(
                session = self.session.0,
                bytes,
                room,
                "replay over PGWS_REPLAY_MAX_BYTES: answered recovered:false"
            );
            return (None, RecoveryOutcome::TooLarge);
        }
        (Some(replay), RecoveryOutcome::Recovered)
    }

    /// Whether subscriptions owe replayed or held-back frames.
    pub fn catching_up(&self) -> bool {
        self.subs.catching_up()
    }

    /// Write what catching-up subscriptions owe until the buffer holds a
    /// flush's worth ([`FLUSH_AT`]): a replay goes out across turns, so a
    /// client that does not read holds one flush of it, not all of it.
    pub fn write_owed(&mut self, out: &mut FrameWriter) {
        // A flush and the frame that crosses it: a channel name and a
        // payload every byte of which JSON may escape as `\u00XX`.
        out.reserve_total(FLUSH_AT + MAX_CHANNEL_NAME + 6 * NOTIFY_PAYLOAD_MAX + 128);
        let mut bytes = 0;
        while out.pending() < FLUSH_AT {
            match self.subs.next_owed() {
                Some(Owed::Replayed {
                    channel,
                    position,
                    payload,
                }) => {
                    bytes += payload.len();
                    let data = String::from_utf8_lossy(&payload);
                    out.text(&v2::message(&channel, Some(&position), &data));
                }
                Some(Owed::Delivery(delivery)) => self.write_delivery(&delivery, out),
                None => break,
            }
        }
        self.ctx.metrics.v2.replayed_bytes.inc_by(bytes as u64);
    }

    /// A delivery from the send queue: written, skipped, or held back.
    /// `Err` when a recovering subscription holds back too many.
    pub fn on_delivery(
        &mut self,
        delivery: &Arc<Delivery>,
        out: &mut FrameWriter,
    ) -> Result<bool, CloseReason> {
        match self.subs.on_delivery(delivery) {
            Verdict::Send => {
                self.write_delivery(delivery, out);
                Ok(true)
            }
            Verdict::Skip | Verdict::Held => Ok(false),
            Verdict::Overflow => Err(CloseReason::SlowConsumer),
        }
    }

    /// A delivery's frame — or, for a message this socket published on a
    /// subscription with `"echo":false`, an `echo` frame: its position
    /// without its data, so the client's offsets stay contiguous.
    fn write_delivery(&self, delivery: &Delivery, out: &mut FrameWriter) {
        let own = delivery.presence.is_none()
            && self.no_echo.contains(&delivery.channel)
            && self.echoes.take(delivery.origin());
        if own {
            self.ctx.metrics.echo_suppressed.inc();
            out.text(&v2::echo(&delivery.channel, delivery.position.as_ref()));
        } else {
            out.text(delivery.v2_frame());
        }
    }

    fn publish(&mut self, out: &mut FrameWriter, id: u64, channel: &str, data: &str) -> Effect {
        if !self.permissions.may_write(channel, &self.ctx.meta) {
            let reason = format!("Publishing on {:?} not allowed", channel);
            self.error(out, id, ErrorCode::Forbidden, &reason);
            return Effect::Done;
        }
        let now = clock::unix_seconds();
        let text = envelope::build(Event::WebsocketMessage, channel, data, &self.claims, now);
        if text.len() > NOTIFY_PAYLOAD_MAX {
            let reason = format!("The message's envelope exceeds {NOTIFY_PAYLOAD_MAX} bytes");
            self.error(out, id, ErrorCode::TooLarge, &reason);
            return Effect::Done;
        }
        if self.no_echo.contains(channel) {
            self.echoes.remember(text.as_bytes());
        }
        let bus = self.ctx.bus.clone();
        let wait = self.ctx.limits.write_timeout;
        let channel = channel.to_string();
        let traced = pgws_service::telemetry::enabled().then(|| {
            let span = tracing::info_span!("pgws.write", session = self.session.0, channels = 1);
            pgws_service::telemetry::traceparent(&span)
        });
        Effect::Publish(Box::pin(async move {
            let traceparent = traced.flatten();
            let result = bus
                .publish(&channel, text, traceparent.as_deref(), wait)
                .await;
            (id, result)
        }))
    }

    /// A publish finished: its reply.
    pub fn on_published(&self, id: u64, result: Result<(), BusError>, out: &mut FrameWriter) {
        match result {
            Ok(()) => {
                self.ctx.metrics.received.inc();
                out.text(v2::reply(id, None).as_bytes());
            }
            Err(e) => {
                let reason = match e {
                    BusError::Full
                    | BusError::Unavailable
                    | BusError::Closed
                    | BusError::SubscriptionQueueFull => "Not sent: try again later",
                    BusError::Unknown => {
                        "Sent, but not confirmed in time: it may or may not be delivered"
                    }
                };
                self.error(out, id, ErrorCode::Unavailable, reason);
            }
        }
    }

    /// A new token: in force at once, or an error reply (an invalid one;
    /// the old token stays), or the socket closes (3011: not a
    /// continuation of this connection, see [`refresh`]).
    fn refresh(&mut self, out: &mut FrameWriter, id: u64, token: &str) -> Effect {
        let granted = self.ctx.keys.verify(token).and_then(auth::permissions);
        let mut permissions = match granted {
            Ok(p) => p,
            Err(refusal) => {
                let code = if refusal.status() == hyper::StatusCode::UNAUTHORIZED {
                    ErrorCode::Unauthorized
                } else {
                    ErrorCode::Forbidden
                };
                self.error(out, id, code, &refusal.to_string());
                return Effect::Done;
            }
        };
        if let Err(why) = refresh::check(&self.identity, &self.permissions, &permissions) {
            tracing::info!(
                session = self.session.0,
                ?why,
                "refresh refused: closing 3011"
            );
            return Effect::Close(CloseReason::RefreshRefused, why.reason().to_string());
        }
        self.may_query_presence = crate::presence::may_query(&permissions.claims);
        self.claims = ClaimsJson::new(&std::mem::take(&mut permissions.claims));
        self.expires_at = permissions.expires_at.map(clock::instant_of_unix_seconds);
        self.permissions = permissions;
        for channel in self.subs.channels() {
            if !self.permissions.may_read(&channel, &self.ctx.meta) {
                self.unsubscribe(&channel);
                out.text(
                    v2::unsubscribed(&channel, "The new token does not allow this channel")
                        .as_bytes(),
                );
            }
        }
        out.text(v2::reply(id, None).as_bytes());
        Effect::Done
    }

    /// The socket is ending: leave every channel.
    pub fn end(&mut self) {
        for channel in self.subs.channels() {
            self.unsubscribe(&channel);
        }
    }

    /// The meta event for this socket (a future that owns what it needs,
    /// so it can be spawned).
    pub fn meta_event(&self, event: Event) -> impl Future<Output = ()> + Send + 'static {
        let ctx = self.ctx.clone();
        let channels = self.opened.channels.clone();
        let claims = self.opened.claims.clone();
        async move { super::meta::event(&ctx, event, &channels, &claims).await }
    }
}

fn command_id(command: &Command) -> Option<u64> {
    match command {
        Command::Connect { id, .. } => *id,
        Command::Subscribe { id, .. }
        | Command::Unsubscribe { id, .. }
        | Command::Publish { id, .. }
        | Command::Refresh { id, .. }
        | Command::Presence { id, .. }
        | Command::PresenceStats { id, .. }
        | Command::Ping { id } => Some(*id),
    }
}
