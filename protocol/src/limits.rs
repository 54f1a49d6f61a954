//! Hard limits imposed by PostgreSQL on what can travel through NOTIFY.

/// The largest NOTIFY payload PostgreSQL accepts, in bytes: a payload must be
/// *shorter* than 8000 bytes in the default build, so 7999 is the maximum.
pub const NOTIFY_PAYLOAD_MAX: usize = 7999;

/// The longest channel name PostgreSQL keeps (`NAMEDATALEN - 1`); a longer
/// name given to `LISTEN` or `pg_notify` is an error.
pub const PG_IDENTIFIER_MAX: usize = 63;
