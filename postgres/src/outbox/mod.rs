//! The durable outbox: what applications send with `pgws.send(payload)`
//! inside their own transactions, read back in commit order by the one
//! process that holds the `LISTEN` (the standalone gateway, or the cluster's
//! leader) and handed to the same routing, positions and fan-out as a
//! NOTIFY.
//!
//! The SQL side is one file, `postgres/sql/outbox.sql` ([`schema::SQL`]):
//! it assigns each channel's offsets at commit under per-shard locks, so
//! commit order within a shard is the order of `pgws.commits.seq`, and the
//! reader follows each shard with a plain cursor (the argument is in
//! `docs/architecture.md`, "The durable outbox").
//!
//! # Layout
//!
//! * [`config`] — `PGWS_OUTBOX_*`, errors, the names the SQL shares.
//! * [`schema`] — applying or checking the SQL at start.
//! * [`reader`] — the poll loop, woken by the doorbell, and what it hands
//!   over ([`OutboxMessage`], [`OutboxSink`]).
//! * [`bell`] — what the doorbell carries, so an idle reader delivers
//!   without a poll.
//! * [`message`] — [`OutboxMessage`], what the reader hands over.
//! * [`prune`] — deleting what is older than the retention, in batches.
//! * [`metrics`] — `pgws_outbox_*`.

pub mod bell;
pub mod config;
pub mod message;
pub mod metrics;
pub mod prune;
pub mod reader;
pub mod schema;

pub use config::*;
pub use message::OutboxMessage;
pub use metrics::OutboxMetrics;
pub use reader::{Initial, OutboxSink, Reader, ReaderState};
