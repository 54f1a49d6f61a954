//! pgws-postgres: the database side of postgres-websockets, used by the
//! standalone gateway and by the cluster's leader alike.
//!
//! # Layout
//!
//! * [`pg`] — connections with libpq's settings and semantics: both
//!   connection-string forms, `PG*` defaults, the password file, several
//!   hosts with `target_session_attrs`, TLS for every `sslmode`.
//! * [`listener`] — the supervised `LISTEN` connection: connects with
//!   retries, detects a dead backend, reconnects (self-healing) or reports
//!   the loss.
//! * [`outbox`] — the durable source: `pgws.send` in the application's
//!   transaction, read back in commit order (`PGWS_OUTBOX`).
//! * [`relay`] — client messages into `pg_notify`, batched per transaction,
//!   sharded by channel so per-channel order is kept.

pub mod listener;
pub mod outbox;
pub mod pg;
pub mod relay;
