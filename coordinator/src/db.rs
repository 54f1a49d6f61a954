//! Opening PostgreSQL connections that say who they are.
//!
//! Every connection carries an `application_name` (`pgws listener`,
//! `pgws notify`) so operators can tell them apart in `pg_stat_activity`.

use std::time::Duration;
use tokio_postgres::{Client, Config, NoTls};

/// The `application_name` of the LISTEN connection.
pub const LISTENER_APP_NAME: &str = "pgws listener";
/// The `application_name` of the NOTIFY connections.
pub const NOTIFY_APP_NAME: &str = "pgws notify";

/// A connection's driver: must be polled (spawned, or polled for messages)
/// for the client to make progress.
pub type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// Parse a libpq URI or key/value string (`PGWS_DB_URI`).
pub fn parse_uri(uri: &str) -> Result<Config, tokio_postgres::Error> {
    let mut config: Config = uri.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // Detect a silently vanished server within a minute rather than hours.
    config.keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// Open one connection named `app_name`.
pub async fn connect(
    config: &Config,
    app_name: &str,
) -> Result<(Client, Connection), tokio_postgres::Error> {
    let mut config = config.clone();
    config.application_name(app_name);
    config.connect(NoTls).await
}

/// Quote an identifier for SQL (`LISTEN "postgres-websockets-listener"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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

    #[test]
    fn uris_parse_and_get_a_connect_timeout() {
        let c = parse_uri("postgres://postgres@127.0.0.1:5432/postgres").expect("valid uri");
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(parse_uri("postgres://host:notaport/db").is_err());
    }
}
