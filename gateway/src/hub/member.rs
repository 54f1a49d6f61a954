//! A reading socket, as the hub sees it: an id, a bounded send queue, a
//! kill switch, and what it asked to be spared or given (its own messages,
//! presence events).

use super::control::SessionControl;
use super::echo::Echoes;
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
    /// Presence events (`join`/`leave`) are sent to it.
    pub presence_events: bool,
    /// Set when it asked not to receive what it published itself.
    pub echo: Option<Arc<Echoes>>,
}

impl Subscriber {
    /// A reader of messages only.
    pub fn new(
        id: SessionId,
        queue: mpsc::Sender<Arc<Delivery>>,
        control: Arc<SessionControl>,
    ) -> Subscriber {
        Subscriber {
            id,
            queue,
            control,
            presence_events: false,
            echo: None,
        }
    }

    /// Whether `delivery` is for it.
    pub fn wants(&self, delivery: &Delivery) -> bool {
        if delivery.presence.is_some() {
            return self.presence_events;
        }
        match &self.echo {
            Some(echoes) => !echoes.take(delivery.origin()),
            None => true,
        }
    }
}
