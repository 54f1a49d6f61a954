//! The meta channel's `ConnectionOpen` / `ConnectionClose` events, for
//! sockets of either protocol.

use super::context::SessionContext;
use pgws_protocol::clock;
use pgws_protocol::envelope::{self, ClaimsJson, Event};

/// Send a meta event when `PGWS_META_CHANNEL` is set. Best effort with the
/// normal write timeout; a failure is logged and counted by the relay.
pub async fn event(ctx: &SessionContext, event: Event, channels: &[String], claims: &ClaimsJson) {
    let Some(meta) = &ctx.meta.name else {
        return;
    };
    let text = envelope::build_meta(event, meta, channels, claims, clock::unix_seconds());
    if text.len() > pgws_protocol::limits::NOTIFY_PAYLOAD_MAX {
        tracing::warn!(
            event = event.as_str(),
            "meta event larger than the NOTIFY limit: not sent"
        );
        return;
    }
    if let Err(e) = ctx
        .bus
        .publish(meta, text, None, ctx.limits.write_timeout)
        .await
    {
        tracing::warn!(event = event.as_str(), error = %e, "meta event not sent");
    }
}
