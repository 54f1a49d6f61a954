//! What every session shares, a connection slot, and how a session ended.

use crate::auth::{Keys, MetaChannel};
use crate::bus::Bus;
use crate::config::SessionLimits;
use crate::hub::{Hub, SessionId};
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every session shares.
pub struct SessionContext {
    /// Sockets by channel.
    pub hub: Arc<Hub>,
    /// Where writers' messages go.
    pub bus: Arc<dyn Bus>,
    /// Metrics.
    pub metrics: Metrics,
    /// Per-socket limits.
    pub limits: SessionLimits,
    /// `PGWS_META_CHANNEL` and who may use it.
    pub meta: MetaChannel,
    /// JWT verification keys (v2 verifies `connect` and `refresh` tokens).
    pub keys: Keys,
    /// Cancelled when the gateway drains: every socket closes with 1001.
    pub shutdown: CancellationToken,
    /// Open sockets, for `PGWS_MAX_CONNECTIONS`.
    pub open: AtomicUsize,
    /// Presence, when `PGWS_PRESENCE` is on.
    pub presence: Option<Arc<crate::presence::Presence>>,
    pub(super) next_id: AtomicU64,
}

impl SessionContext {
    /// Shared state for all sessions.
    pub fn new(
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        metrics: Metrics,
        limits: SessionLimits,
        meta: MetaChannel,
        keys: Keys,
        shutdown: CancellationToken,
    ) -> SessionContext {
        SessionContext {
            hub,
            bus,
            metrics,
            limits,
            meta,
            keys,
            shutdown,
            open: AtomicUsize::new(0),
            presence: None,
            next_id: AtomicU64::new(1),
        }
    }

    /// A process-unique id for a new session (of any transport).
    pub fn next_session_id(&self) -> SessionId {
        SessionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A reserved connection slot; released when dropped, even if the upgrade
/// never completes.
pub struct Slot(Arc<SessionContext>);

impl Slot {
    /// Reserve a slot, unless `max` (non-zero) sockets are already open.
    pub fn acquire(ctx: &Arc<SessionContext>, max: usize) -> Option<Slot> {
        let previous = ctx.open.fetch_add(1, Ordering::AcqRel);
        if max != 0 && previous >= max {
            ctx.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(ctx.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a session ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// We closed it with this reason.
    Closed(pgws_protocol::close::CloseReason),
    /// The client sent a close frame.
    ClientClosed,
    /// The connection broke without a close handshake.
    ConnectionLost,
}

impl SessionEnd {
    pub(super) fn label(self) -> &'static str {
        match self {
            SessionEnd::Closed(reason) => reason.label(),
            SessionEnd::ClientClosed => "client_closed",
            SessionEnd::ConnectionLost => "connection_lost",
        }
    }
}
