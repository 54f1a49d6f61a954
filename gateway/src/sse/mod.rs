//! Server-Sent Events: a read-only stream of a v1 reader's channels over
//! plain HTTP (`docs/protocol.md`, "Server-Sent Events").
//!
//! A transport, not a second pipeline: a stream is authorised as a v1
//! socket of mode `r` ([`auth::authorize`]), takes a connection slot
//! (`PGWS_MAX_CONNECTIONS`), is put on its channels by the same
//! [`session::join`] (a hub member with a bounded queue and a kill
//! switch), recovers with the same [`Bus::recover`](crate::bus::Bus) and
//! protocol v2 [`Subscriptions`] (held-back deliveries, duplicates
//! skipped), and sends the same meta events. What differs is framing
//! ([`event`]) and flushing ([`stream`]).
//!
//! Opening a stream answers every refusal before the response starts,
//! with the websocket's status codes; once `200` is sent the stream has
//! its subscriptions in effect and knows where each channel stands.

pub mod event;
pub mod stream;

use crate::auth::{self, Grant, Refusal};
use crate::bus::{BusError, Recovered, Replayed};
use crate::config::SseSettings;
use crate::metrics::{RecoveryOutcome, SseMetrics};
use crate::session::subscriptions::Subscriptions;
use crate::session::{self, SessionContext, Slot};
use event::RESET_EVENT;
use pgws_protocol::clock;
use pgws_protocol::envelope::{ClaimsJson, Event};
use pgws_protocol::position::{Position, Since};
use std::sync::Arc;
use stream::{Closing, SseStream};
use tokio_util::task::TaskTracker;

/// What an event-stream request asks for.
pub struct Request<'a> {
    /// The channel in the path, if any.
    pub channel: Option<&'a str>,
    /// The token, from the path, `?token=` or `Authorization: Bearer`.
    pub token: Option<&'a str>,
    /// `Last-Event-ID` (or `?lastEventId=`).
    pub last_event_id: Option<&'a str>,
}

/// What opening streams needs.
pub struct Streams {
    /// Shared with websockets: hub, bus, keys, limits.
    pub ctx: Arc<SessionContext>,
    /// Streams' meta events are waited for by the drain.
    pub tracker: TaskTracker,
    /// `PGWS_MAX_CONNECTIONS` (websockets and streams together).
    pub max_connections: usize,
    /// `PGWS_SSE_*`.
    pub settings: SseSettings,
    /// The streams' metrics.
    pub metrics: SseMetrics,
}

impl Streams {
    /// Open a stream, or say why not (before any byte of the response).
    pub async fn open(&self, request: Request<'_>) -> Result<SseStream, Refusal> {
        let ctx = &self.ctx;
        if ctx.shutdown.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        let token = request.token.ok_or(Refusal::MissingToken)?;
        let claims = ctx.keys.verify(token)?;
        let mut grant = auth::authorize(claims, request.channel, &ctx.meta)?;
        if !grant.mode.can_read() {
            return Err(Refusal::NotReadable);
        }
        let slot = Slot::acquire(ctx, self.max_connections).ok_or(Refusal::TooManyConnections)?;
        let joined = session::join(ctx, &grant, false)
            .await
            .map_err(|_| Refusal::SubscriptionUnavailable)?;
        let channels: Vec<Arc<str>> = grant
            .channels
            .iter()
            .map(|c| Arc::from(c.as_str()))
            .collect();
        let sinces = request
            .last_event_id
            .map(|id| event::parse_last_event_id(id, channels.len()));
        let mut subs = Subscriptions::new(ctx.limits.send_queue);
        let answers = self.recover(&channels, sinces.as_ref(), &mut subs).await?;

        let mut preamble = Vec::new();
        let mut positions = Vec::with_capacity(channels.len());
        let mut resets = Vec::new();
        let mut owed = 0;
        for (i, (channel, recovered)) in channels.iter().zip(answers).enumerate() {
            let since = sinces.as_ref().map(|s| s.as_ref().map(|s| &s[i]));
            let newest = recovered.position;
            let (start, replay) = self.decide(since, recovered, &mut owed);
            if since.is_some() && replay.is_none() {
                resets.push((channel.clone(), start));
            }
            positions.push(start);
            // The replay runs up to `newest`: held deliveries at or before
            // it are duplicates of it.
            subs.answer(channel, i as u64, newest, replay.unwrap_or_default());
        }
        event::preamble(
            &mut preamble,
            self.settings.retry.as_millis() as u64,
            &event::id_of(&positions),
        );
        for (channel, position) in &resets {
            let data = serde_json::json!({
                "channel": &**channel,
                "epoch": position.epoch.to_string(),
                "offset": position.offset,
            })
            .to_string();
            event::write(&mut preamble, Some(RESET_EVENT), None, data.as_bytes());
            self.metrics.resets.inc();
        }

        let claims = ClaimsJson::new(&std::mem::take(&mut grant.claims));
        self.metrics.accepted.inc();
        self.metrics.streams.inc();
        tracing::debug!(session = joined.id().0, channels = ?grant.channels, "event stream open");
        session::meta::event(ctx, Event::ConnectionOpen, &grant.channels, &claims).await;
        Ok(self.stream(
            joined, subs, channels, positions, preamble, grant, claims, slot,
        ))
    }

    /// Ask the bus where every channel stands (and what a reconnecting
    /// client missed), all at once; the stream is already on the channels.
    async fn recover(
        &self,
        channels: &[Arc<str>],
        sinces: Option<&Option<Vec<Since>>>,
        subs: &mut Subscriptions,
    ) -> Result<Vec<Recovered>, Refusal> {
        let bus = &self.ctx.bus;
        let asks = channels.iter().enumerate().map(|(i, channel)| {
            subs.begin(channel.clone(), i as u64);
            let since = sinces.and_then(|s| s.as_ref()).map(|s| &s[i]);
            bus.recover(channel, since)
        });
        let answers: Vec<Result<Recovered, BusError>> = futures_util::future::join_all(asks).await;
        let answers: Result<Vec<Recovered>, BusError> = answers.into_iter().collect();
        answers.map_err(|e| {
            if sinces.is_some() {
                self.metrics.recovery(RecoveryOutcome::Failed);
            }
            tracing::warn!(error = %e, "event stream refused: the bus could not answer");
            Refusal::SubscriptionUnavailable
        })
    }

    /// Where a channel's stream starts (its first `id`) and what it
    /// replays: after `since`
    /// when history has every message since (within
    /// `PGWS_REPLAY_MAX_BYTES` over the stream), else at the channel's
    /// newest position, with no replay.
    fn decide(
        &self,
        since: Option<Option<&Since>>,
        recovered: Recovered,
        owed: &mut usize,
    ) -> (Position, Option<Vec<Replayed>>) {
        let newest = recovered.position;
        let Some(since) = since else {
            return (newest, None);
        };
        let (Some(since), Some(replay)) = (since, recovered.replay) else {
            self.metrics.recovery(RecoveryOutcome::NotRecovered);
            return (newest, None);
        };
        let bytes: usize = replay.iter().map(|e| e.payload.len()).sum();
        if *owed + bytes > self.ctx.limits.replay_max_bytes {
            self.metrics.recovery(RecoveryOutcome::TooLarge);
            return (newest, None);
        }
        *owed += bytes;
        self.metrics.recovery(RecoveryOutcome::Recovered);
        let start = Position {
            epoch: newest.epoch,
            offset: since.offset,
        };
        (start, Some(replay))
    }

    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        joined: session::Joined,
        subs: Subscriptions,
        channels: Vec<Arc<str>>,
        positions: Vec<Position>,
        preamble: Vec<u8>,
        grant: Grant,
        claims: ClaimsJson,
        slot: Slot,
    ) -> SseStream {
        let expires_at = grant.expires_at.map(clock::instant_of_unix_seconds);
        let keep_alive = self.settings.keep_alive;
        SseStream {
            ending: stream::ending(&self.ctx, &joined, expires_at),
            joined,
            subs,
            channels,
            positions,
            preamble,
            keep_alive,
            tick: Box::pin(tokio::time::sleep(keep_alive)),
            ended: false,
            end: "client_closed",
            closing: Closing {
                ctx: self.ctx.clone(),
                tracker: self.tracker.clone(),
                metrics: self.metrics.clone(),
                meta_channels: grant.channels,
                claims,
                slot: Some(slot),
            },
        }
    }
}
