//! What every connection of the public listener shares: the state
//! request handling needs, the limits before a token is checked, and the
//! pending-connection count.

use super::publish;
use crate::session::SessionContext;
use crate::sse::Streams;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Largest request head (request line and headers) read before answering
/// 431: browsers send a few kilobytes, cookies included.
pub const MAX_HEAD: usize = 32 * 1024;
/// Time a client has from its TCP connection to the end of its first
/// request head, a TLS handshake included (one deadline for both).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What request handling needs.
pub struct HttpState {
    /// Shared by all sessions (and their JWT keys).
    pub sessions: Arc<SessionContext>,
    /// Tracks session tasks so the drain can wait for them.
    pub tracker: TaskTracker,
    /// `PGWS_ROOT_PATH`, canonical.
    pub root_path: Option<PathBuf>,
    /// `PGWS_ALLOWED_ORIGINS`.
    pub allowed_origins: Option<Vec<String>>,
    /// `PGWS_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `PGWS_MAX_PENDING_CONNECTIONS`.
    pub max_pending: usize,
    /// `PGWS_HTTP2_MAX_STREAMS`.
    pub http2_max_streams: u32,
    /// `PGWS_SOCKET_SEND_BUFFER`: what the kernel may hold for a client
    /// that does not read, beside the socket's one flush (`None`: the
    /// kernel's autotuning).
    pub send_buffer: Option<usize>,
    /// Connections accepted and not yet upgraded (or closed).
    pub pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Server-Sent Events.
    pub streams: Streams,
    /// HTTP publish.
    pub publisher: publish::Publisher,
}

/// A connection's pending count, given up by the first event stream it
/// opens.
pub type PendingCell = Arc<std::sync::Mutex<Option<Pending>>>;

/// A connection counted as pending until it is upgraded or closed.
pub struct Pending {
    count: Arc<std::sync::atomic::AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Pending {
    pub fn acquire(state: &HttpState) -> Option<Pending> {
        use std::sync::atomic::Ordering;
        let previous = state.pending.fetch_add(1, Ordering::AcqRel);
        if previous >= state.max_pending {
            state.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let gauge = state.sessions.metrics.pending.clone();
        gauge.inc();
        Some(Pending {
            count: state.pending.clone(),
            gauge,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.gauge.dec();
    }
}
