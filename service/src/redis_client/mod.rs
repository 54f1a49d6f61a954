//! One Redis handle over a single Redis, a Redis Cluster, or a
//! Sentinel-managed master, with or without TLS.
//!
//! All speak RESP3 so that pub/sub messages arrive as push messages on a
//! channel given at connect time, on the same multiplexed connection as
//! commands, and all re-subscribe by themselves after a reconnect. On a
//! cluster, pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH`): a channel lives on
//! the node owning its slot, so pub/sub traffic scales with the shards.
//! Behind Sentinel, the handle follows the master across failovers
//! ([`sentinel`]).
//!
//! [`RedisClient`] implements `redis::aio::ConnectionLike`, so commands,
//! pipelines and scripts run on every kind unchanged.
//!
//! # Layout
//!
//! * [`client`] — the handle: connect, subscribe, publish.
//! * [`config`] — URLs (single, cluster seeds, `redis+sentinel://`) and
//!   TLS files.
//! * [`sentinel`] — the master connection that follows failovers.
//! * [`quorum`] — Sentinel replies, and the majority that picks a master.
//! * [`push`] — where pub/sub messages go.
//! * [`connect`] — connecting with backoff, for every reconnect loop.

pub mod client;
pub mod config;
pub mod connect;
pub mod push;
pub mod quorum;
pub mod sentinel;

pub use client::{describe_error, message_of, RedisClient, RESPONSE_TIMEOUT};
pub use config::{RedisConfig, RedisConfigError, RedisVars, SentinelSpec, TlsFiles, Topology};
pub use connect::connect_with_backoff;
pub use push::PushHandler;
