//! pgws-testkit: the integration-test harness, shared by the gateway's and
//! the coordinator's tests.
//!
//! Tests start the real binaries (found next to the test executable)
//! against real PostgreSQL and Redis servers and talk to them over real
//! sockets. Every test has its own ports, listen channel and Redis prefix,
//! stops what it starts by pid, and waits by polling with a deadline.
//!
//! # Layout
//!
//! * [`names`] — the shared secret, the wait bound, unique names, tokens.
//! * [`ports`] — free ports on loopback.
//! * [`process`] — `pgws-gateway` / `pgws-coordinator` processes.
//! * [`cluster`] — coordinators and gateways sharing a prefix and channel.
//! * [`http`] — raw HTTP requests, metrics.
//! * [`ws`] — websocket clients; [`raw`] — a raw-socket one for malformed
//!   frames; [`v2`] — a protocol v2 client; [`sse`] — an event-stream
//!   client and a raw POST.
//! * [`db`] — the shared PostgreSQL: clients, NOTIFY, LISTEN.
//! * [`outbox`] — a database per test, senders' ledger, the delivery checker.
//! * [`pg_server`] — private PostgreSQL servers (TLS-only, standbys).
//! * [`proxy`] — a TCP proxy that delays or partitions, for fault tests.
//! * [`redis_server`] — private Redis servers: plain, TLS, Cluster,
//!   Sentinel.
//! * [`republished`] — what coordinators republish on Redis, decoded.
//! * [`certs`] — a throw-away PKI.
//! * [`checker`] — the fault-injection checker's per-reader invariants
//!   (lost, duplicated, reordered; reused v2 offsets).

#![allow(missing_docs)]

pub mod certs;
pub mod checker;
pub mod cluster;
pub mod db;
pub mod http;
pub mod names;
pub mod outbox;
pub mod pg_server;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod redis_server;
pub mod republished;
pub mod sse;
pub mod v2;
pub mod ws;

pub use db::*;
pub use http::*;
pub use names::*;
pub use ports::*;
pub use process::*;
pub use redis_server::{redis_addr, redis_url, RedisClusterServers, RedisServer};
pub use sse::{http_post, Sse, SseBlock};
pub use v2::{read_while_reconnecting, v2_request, Pos, V2};
pub use ws::*;
