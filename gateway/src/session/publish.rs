//! A writer's messages onto the bus: one envelope per channel of the
//! socket (with its claims and `message_delivered_at`), all or nothing
//! against the NOTIFY size limit, traced when tracing is on. A guarded
//! meta channel is never written to (see `auth::MetaChannel`).

use super::context::SessionContext;
use crate::auth::Grant;
use crate::bus::BusError;
use crate::hub::SessionId;
use crate::metrics::Rejection;
use pgws_protocol::close::CloseReason;
use pgws_protocol::envelope::{self, ClaimsJson, Event};
use pgws_protocol::limits::NOTIFY_PAYLOAD_MAX;
use std::sync::Arc;

/// Who is writing; shared by the socket and the message being published.
pub struct Writer {
    /// For logs.
    pub session: SessionId,
    /// Mode and channels.
    pub grant: Grant,
    /// Serialised claims for envelopes.
    pub claims: ClaimsJson,
    /// Bus, metrics, limits.
    pub ctx: Arc<SessionContext>,
    /// Set with `?echo=false`: its envelopes, so they are not sent back.
    pub echo: Option<Arc<crate::hub::echo::Echoes>>,
}

/// One whole client message: for each of the socket's channels, one
/// envelope on the bus. Nothing is queued unless every envelope fits.
pub async fn on_message(rc: Arc<Writer>, message: String) -> Result<(), CloseReason> {
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
    let now = pgws_protocol::clock::unix_seconds();
    let meta = &rc.ctx.meta;
    let writable = rc.grant.channels.iter().filter(|c| !meta.guards(c));
    let envelopes: Vec<(&str, String)> = writable
        .map(|channel| {
            let text = envelope::build(Event::WebsocketMessage, channel, &message, &rc.claims, now);
            (channel.as_str(), text)
        })
        .collect();
    if envelopes.is_empty() {
        // Only the meta channel: nothing may be written there.
        metrics.rejected(Rejection::MetaChannel);
        tracing::debug!(
            session = rc.session.0,
            "message to the meta channel ignored"
        );
        return Ok(());
    }
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
    let traced = pgws_service::telemetry::enabled().then(|| {
        let span = tracing::info_span!(
            "pgws.write",
            session = rc.session.0,
            channels = envelopes.len()
        );
        let traceparent = pgws_service::telemetry::traceparent(&span);
        (span, traceparent)
    });
    let traceparent = traced.as_ref().and_then(|(_, tp)| tp.as_deref());
    for (channel, text) in envelopes {
        if let Some(echo) = &rc.echo {
            echo.remember(text.as_bytes());
        }
        match rc
            .ctx
            .bus
            .publish(channel, text, traceparent, rc.ctx.limits.write_timeout)
            .await
        {
            Ok(()) => {}
            Err(e @ (BusError::Full | BusError::Unavailable | BusError::SubscriptionQueueFull)) => {
                metrics.rejected(Rejection::QueueFull);
                tracing::warn!(
                    session = rc.session.0,
                    error = %e,
                    "message not queued: closing the writer with 1013"
                );
                return Err(CloseReason::TryAgainLater);
            }
            Err(BusError::Closed) => return Err(CloseReason::GoingAway),
            Err(BusError::Unknown) => {
                metrics.rejected(Rejection::OutcomeUnknown);
                tracing::warn!(
                    session = rc.session.0,
                    "message sent to Redis, not confirmed in time: closing the writer with 3010"
                );
                return Err(CloseReason::WriteOutcomeUnknown);
            }
        }
    }
    metrics.received.inc();
    metrics.received_bytes.inc_by(message.len() as u64);
    Ok(())
}
