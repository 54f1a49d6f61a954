//! pgws-service: what every pgws process needs, whatever its role.
//!
//! Both binaries — `pgws-gateway` and `pgws-coordinator` — read their
//! settings, start, log, trace, answer health checks and talk to Redis the
//! same way; that plumbing lives here, so neither binary depends on the
//! other's role.
//!
//! # Layout
//!
//! * [`config`] — configuration sources (defaults, TOML file, environment)
//!   and typed reading of `PGWS_*` variables; errors name the variable.
//! * [`process`] — a process's life: start-up, signals, the runtime,
//!   binding listeners in the original's host notation.
//! * [`telemetry`] — logs, and OpenTelemetry traces over OTLP when
//!   configured.
//! * [`admin`] — `/healthz`, `/readyz`, `/metrics` on their own port, and
//!   the plain-text responses both listeners write.
//! * [`redis_client`] — one Redis handle over a single Redis, a Redis
//!   Cluster or a Sentinel-managed master, with or without TLS.
//! * [`history`] — the history variables both binaries read.
//! * [`backoff`] — the retry schedule of every reconnect loop.
//! * [`time`] — timers shared by the loops.
//! * [`panics`] — a panic becomes one log line and one count.
//! * [`events`] — logging an event that can fire per message without
//!   flooding the log.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod events;
pub mod history;
pub mod panics;
pub mod process;
pub mod redis_client;
pub mod telemetry;
pub mod time;
