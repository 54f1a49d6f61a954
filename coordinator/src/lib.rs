//! The database side of postgres-websockets: the one LISTEN connection and
//! the NOTIFY relay.
//!
//! In standalone mode `pgws-gateway` embeds these pieces and connects them to
//! its in-memory bus; in cluster mode the `pgws-coordinator` binary runs them
//! on the elected leader only.
//!
//! # Layout
//!
//! * [`admin`] — `/healthz`, `/readyz`, `/metrics` on their own port.
//! * [`pg`] — PostgreSQL connections with libpq's settings: both string
//!   forms, `PG*` defaults, the password file, several hosts with
//!   `target_session_attrs`, TLS for every `sslmode`.
//! * [`backoff`] — the retry schedule shared by every reconnect loop.
//! * [`listener`] — the supervised `LISTEN` connection: connects with retries,
//!   detects a dead backend, reconnects (self-healing) or reports the loss.
//! * [`redis_client`] — one Redis handle over a single Redis or a Redis
//!   Cluster (RESP3 push messages, sharded pub/sub on a cluster).
//! * [`config`] — the coordinator binary's `PGWS_*` variables.
//! * [`node`] — a coordinator's life: standby, leader term, step-down.
//! * [`election`] — the Redis lock, the fencing epoch, and the local lease.
//! * [`publisher`] — the leader republishes notifications on Redis pub/sub.
//! * [`drain`] — the leader turns the writers' Redis stream into NOTIFYs,
//!   acknowledging after commit.
//! * [`settings`] — how both binaries read `PGWS_*` variables; binding
//!   listeners; logging.
//! * [`telemetry`] — logs, and OpenTelemetry traces over OTLP when
//!   configured.
//! * [`relay`] — turns queued envelopes into `pg_notify` calls, batched per
//!   transaction, sharded by channel so per-channel order is kept.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod drain;
pub mod election;
pub mod listener;
pub mod node;
pub mod pg;
pub mod publisher;
pub mod redis_client;
pub mod relay;
pub mod settings;
pub mod telemetry;
