//! pgws-coordinator: the cluster's coordinators. One is elected leader
//! through a Redis lock with a fencing epoch; it alone holds the `LISTEN`
//! connection, republishes every notification on Redis pub/sub, and
//! forwards the writers' messages from a Redis stream into `NOTIFY`. The
//! others stand by.
//!
//! The database side (connections, the listener, the NOTIFY relay) is
//! `pgws-postgres`; the process plumbing (configuration, start-up,
//! telemetry, admin endpoints, the Redis client) is `pgws-service`.
//!
//! # Layout
//!
//! * [`config`] — the coordinator's `PGWS_*` variables.
//! * [`node`] — a coordinator's life: standby, leader term, step-down.
//! * [`election`] — the Redis lock, the fencing epoch, and the local lease.
//! * [`publisher`] — the leader republishes notifications on Redis pub/sub.
//! * [`outbox`] — the leader reads the durable outbox and publishes it at
//!   the offsets PostgreSQL assigned (`PGWS_OUTBOX`).
//! * [`forwarder`] — the leader turns the writers' Redis stream into
//!   NOTIFYs, trimming the stream after commit.
//! * [`stream`] — positions in the NOTIFY stream (markers), the standby
//!   buffer, and where a new leader resumes.
//! * [`standby`] — standby listening: the lifelong listener's sink, the
//!   marker task, the takeover.

pub mod config;
pub mod election;
pub mod forwarder;
pub mod node;
pub mod outbox;
pub mod publisher;
pub mod standby;
pub mod stream;
