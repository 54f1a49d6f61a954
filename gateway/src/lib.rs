//! pgws-gateway: postgres-websockets in Rust — JWT-authorised websockets
//! over PostgreSQL LISTEN/NOTIFY.
//!
//! # Layout
//!
//! * [`config`] — every `PGWS_*` variable, parsed and validated in one place.
//! * [`auth`] — JWT keys and verification; claims → channels and mode.
//! * [`http`] — the public listener: upgrades, token sources, static files.
//! * [`session`] — one websocket: reader and writer tasks, close codes.
//! * [`registry`] — this node's sockets by channel (sharded).
//! * [`fanout`] — one notification to every local reader, never blocking.
//! * [`bus`] — the path from writers to NOTIFY (in-process relay in
//!   standalone mode).
//! * [`metrics`] — the gateway's Prometheus metrics.
//! * [`tls`] — rustls for `wss://`.
//! * [`server`] — builds all of the above from a `Config`, runs it, drains it.

pub mod auth;
pub mod bus;
pub mod config;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod session;
pub mod tls;
