//! pgws-gateway: postgres-websockets in Rust — JWT-authorised websockets
//! over PostgreSQL LISTEN/NOTIFY, standalone or as a stateless node of a
//! cluster.
//!
//! # Layout
//!
//! The layers read top-down; each imports only those below it:
//!
//! * [`server`] — wiring: builds everything from a [`config::Config`], runs
//!   it, drains it on shutdown.
//! * [`http`] — the public listener: upgrades (refused before the upgrade,
//!   with the reason), token sources, static files.
//! * [`sse`] — Server-Sent Events: a v1 reader's stream over plain HTTP,
//!   recovering with `Last-Event-ID` (HTTP publish is in [`http`]).
//! * [`session`] — one websocket, one task: frames in, bursts out,
//!   publishing its writer's messages, keep-alive, close codes.
//! * [`presence`] — who is subscribed where, across the cluster; `join` and
//!   `leave` events (`PGWS_PRESENCE`).
//! * [`hub`] — this node's sockets by channel and fan-out to them; the
//!   bus's inbox.
//! * [`bus`] — where notifications come from and writes go: [`bus::local`]
//!   (standalone: the listener and NOTIFY relay in this process) or
//!   [`bus::redis`] (cluster: Redis pub/sub in, a Redis stream out).
//!
//! Beside them, used by the layers above: [`config`] (every `PGWS_*`
//! variable, read in one place), [`auth`] (JWT keys; claims → channels and
//! mode), [`metrics`] (the gateway's metrics and the events that log and
//! count them), [`tls`] (`wss://`: its own stream on rustls' unbuffered API,
//! holding no buffer while a socket is at rest), [`idempotency`] (HTTP
//! publishes' `Idempotency-Key`s: in memory, or in Redis for a cluster).

pub mod auth;
pub mod bus;
pub mod config;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod metrics;
pub mod presence;
pub mod server;
pub mod session;
pub mod sse;
pub mod tls;
