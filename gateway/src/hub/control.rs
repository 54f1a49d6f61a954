//! The one-way "close this socket" signal other tasks (fan-out, mostly) can
//! raise without waiting for the socket.

use pgws_protocol::close::CloseReason;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::sync::Notify;

/// A socket's kill switch: the first reason wins.
#[derive(Default)]
pub struct SessionControl {
    reason: AtomicU16,
    notify: Notify,
}

impl SessionControl {
    /// Ask the socket to close with `reason`; false if it was already asked.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // notify_one stores a permit if the writer is not waiting yet.
            self.notify.notify_one();
        }
        first
    }

    /// The reason given, if any.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Resolves once [`SessionControl::close`] has been called.
    pub async fn closed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins_and_wakes_the_waiter() {
        let c = SessionControl::default();
        assert_eq!(c.reason(), None);
        assert!(c.close(CloseReason::SlowConsumer));
        assert!(!c.close(CloseReason::GoingAway));
        c.closed().await; // the stored permit resolves at once
        assert_eq!(c.reason(), Some(CloseReason::SlowConsumer));
    }
}
