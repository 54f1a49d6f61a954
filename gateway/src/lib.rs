//! pgws-gateway: postgres-websockets in Rust.
pub mod auth;
pub mod config;
