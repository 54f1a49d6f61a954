//! The leader's durable outbox: for the length of a term, read
//! `pgws.send`'s messages in commit order (`pgws_postgres::outbox`) and
//! publish them through the same script as notifications, at the offsets
//! PostgreSQL gave them.
//!
//! Where the cluster stands in the outbox is saved in PostgreSQL
//! (`pgws.cursors`, row `cluster:<PGWS_REDIS_PREFIX>`) after every batch,
//! with the term's fencing epoch: a new leader — after a failover, or after
//! every coordinator was down — starts where the last one stopped, and a
//! deposed leader cannot move the cursor (its write is refused, and it
//! stops reading). A batch published but not yet saved when a leader died
//! is published again by its successor and skipped by the script (the
//! channel already has those offsets): exactly once in history. A term
//! also replays a short tail before its saved cursor ([`reader::REPLAY`]),
//! which the script takes only where Redis lost it: a batch Redis took just
//! before it went down without its data, whose pushes never reached the
//! gateways, is back in history for them to fill their hole from.

use crate::publisher::Publisher;
use pgws_postgres::outbox::reader::{self, Cursors, SavedCursor, SinkFuture, Start};
use pgws_postgres::outbox::{
    prune, OutboxConfig, OutboxMessage, OutboxMetrics, OutboxSink, Reader,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The cursor's name for a cluster with this Redis prefix.
pub fn cursor_name(prefix: &str) -> String {
    format!("cluster:{prefix}")
}

/// Publishes outbox batches for one term.
struct Sink {
    publisher: Mutex<(Publisher, u64)>,
    /// The saved cursor the term started from: what is at or below it was
    /// published by a previous term, and is replayed (see [`reader::REPLAY`]).
    saved: Cursors,
}

impl OutboxSink for Sink {
    fn deliver<'a>(&'a self, batch: &'a [OutboxMessage]) -> SinkFuture<'a> {
        Box::pin(async move {
            let mut guard = self.publisher.lock().await;
            let (publisher, seq) = &mut *guard;
            publisher.publish_durable(batch, seq, &self.saved).await
        })
    }
}

/// Read and publish the outbox until `term` ends.
pub async fn run_term(
    config: OutboxConfig,
    publisher: Publisher,
    prefix: String,
    epoch: u64,
    retries: u32,
    metrics: OutboxMetrics,
    term: CancellationToken,
) {
    let name = cursor_name(&prefix);
    let initial = match reader::prepare(&config, &Start::Saved(name.clone()), retries, &term).await
    {
        Ok(initial) => initial,
        Err(e) => {
            if !term.is_cancelled() {
                tracing::error!(error = %e, "the outbox cannot be read this term");
            }
            return;
        }
    };
    let sink = std::sync::Arc::new(Sink {
        publisher: Mutex::new((publisher, 0)),
        saved: initial.saved,
    });
    let (reader, _state) = Reader::new(
        config.clone(),
        initial.cursors,
        sink,
        metrics.clone(),
        Some(SavedCursor {
            name,
            fence: epoch as i64,
        }),
        term.clone(),
    );
    let pruning = tokio::spawn(prune::run(config, reader.cursors(), metrics, term.clone()));
    if let Err(e) = reader.run().await {
        tracing::warn!(error = %e, "the outbox reader stopped");
    }
    let _ = pruning.await;
}
