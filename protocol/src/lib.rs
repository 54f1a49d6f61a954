//! The wire contract shared by `pgws-gateway` and `pgws-coordinator`.
//!
//! Everything two processes (or a process and a client) must agree on is
//! defined here once, so the two binaries cannot drift apart. Versions
//! live where the formats do: the republished message's header starts
//! with `pgws2` (`pgws1` is still read), a v2 socket negotiates `pgws.v2`,
//! and every Redis name starts with the configurable prefix.
//!
//! # Layout
//!
//! * [`envelope`] — the JSON text a client message (or a meta event) becomes
//!   before it is sent to PostgreSQL with `pg_notify`.
//! * [`routing`] — which websocket channel a NOTIFY payload is delivered to.
//! * [`close`] — every websocket close code the gateway sends, in one table.
//! * [`limits`] — hard limits imposed by PostgreSQL.
//! * [`keys`] — the Redis key and channel layout of cluster mode.
//! * [`republish`] — the wire format of notifications republished on Redis.
//! * [`position`] — offsets and epochs: a message's place in its channel,
//!   and whether a client's last position can be recovered.
//! * [`history`] — channel state and history in Redis: the encoding and
//!   the scripts that write and read them.
//! * [`v2`] — protocol v2's commands and frames.
//! * [`presence`] — presence entries, `join`/`leave` frames, presence
//!   events on Redis and the scripts that keep presence there.
//! * [`clock`] — Unix time, and the conversions between it and `Instant`s
//!   that timestamps crossing processes need.

pub mod clock;
pub mod close;
pub mod envelope;
pub mod history;
pub mod keys;
pub mod limits;
pub mod position;
pub mod presence;
pub mod republish;
pub mod routing;
pub mod v2;
