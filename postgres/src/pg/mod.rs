//! PostgreSQL connections with libpq's settings and semantics.
//!
//! Every connection either binary opens (the `LISTEN` connection, the
//! NOTIFY pool, the coordinator's drain) goes through [`connect`], so all of
//! them honour the same connection string: both of libpq's forms, its
//! environment defaults (`PGHOST`, `PGSSLMODE`, …), the password file,
//! several hosts with `target_session_attrs`, and TLS with every `sslmode`
//! (rustls with ring; no OpenSSL).
//!
//! # Layout
//!
//! * [`conninfo`] — the URI and `key=value` grammars, nothing more.
//! * [`options`] — keywords and environment into a typed [`PgConfig`].
//! * [`passfile`] — `~/.pgpass` lookups.
//! * [`tls`] — rustls configured per `sslmode`.
//! * [`connect`] — hosts in order, fallbacks, the role check.

pub mod connect;
pub mod conninfo;
pub mod options;
pub mod passfile;
pub mod tls;

pub use connect::{connect, drive, error_chain, Cause, ConnectError, Connection};
pub use options::{Env, OptionsError, PgConfig};

/// The `application_name` of the LISTEN connection.
pub const LISTENER_APP_NAME: &str = "pgws listener";
/// The `application_name` of the NOTIFY connections.
pub const NOTIFY_APP_NAME: &str = "pgws notify";
/// `application_name` of the leader's stream-marker connection.
pub const MARKER_APP_NAME: &str = "pgws markers";

/// Quote an identifier for SQL (`LISTEN "postgres-websockets-listener"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parse `PGWS_DB_URI` with the process environment's libpq defaults.
pub fn parse_with_process_env(text: &str) -> Result<PgConfig, OptionsError> {
    PgConfig::parse(text, &|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_escaped() {
        assert_eq!(
            quote_ident("postgres-websockets-listener"),
            "\"postgres-websockets-listener\""
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
