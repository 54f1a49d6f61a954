//! A reading socket, as the hub sees it: an id, a bounded send queue, and
//! a kill switch.

use super::control::SessionControl;
use crate::bus::Delivery;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A socket's process-unique id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// One reading socket, as seen by fan-out.
pub struct Subscriber {
    /// The socket's id, to remove it again.
    pub id: SessionId,
    /// Its bounded send queue.
    pub queue: mpsc::Sender<Arc<Delivery>>,
    /// Used to cut it off when the queue is full.
    pub control: Arc<SessionControl>,
}
