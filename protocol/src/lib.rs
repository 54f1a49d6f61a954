//! The wire contract shared by `pgws-gateway` and `pgws-coordinator`.
//!
//! Everything two processes (or a process and a client) must agree on is
//! defined here once, so the two binaries cannot drift apart.
//!
//! # Layout
//!
//! * [`envelope`] — the JSON text a client message (or a meta event) becomes
//!   before it is sent to PostgreSQL with `pg_notify`.
//! * [`routing`] — which websocket channel a NOTIFY payload is delivered to.
//! * [`close`] — every websocket close code the gateway sends, in one table.
//! * [`limits`] — hard limits imposed by PostgreSQL.
//! * [`keys`] — the Redis key and channel layout of cluster mode.
//! * [`bus`] — the wire format of notifications republished on Redis.

pub mod bus;
pub mod close;
pub mod envelope;
pub mod keys;
pub mod limits;
pub mod routing;

/// Version of the wire contract; bumped on any incompatible change to the
/// envelope or (in cluster mode) the Redis key layout.
pub const WIRE_VERSION: u32 = 1;
