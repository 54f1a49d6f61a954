//! The outbox's settings (`PGWS_OUTBOX_*`), its errors, and the names
//! the SQL and the reader share (lock namespaces, the doorbell channel).

use crate::pg::PgConfig;
use std::time::Duration;

/// The advisory-lock namespace of the shard locks (`pgws` in ASCII).
pub const SHARD_LOCKS: i32 = 1_885_828_979;
/// The advisory-lock namespace of the doorbell: key 0 is held (shared) by
/// every committing sender, key `pid` (exclusive) by a busy reader.
pub const DOORBELL_LOCKS: i32 = 1_885_828_980;
/// The channel the doorbell rings on.
pub const DOORBELL_CHANNEL: &str = "pgws_outbox";
/// `application_name` of the reader's connection.
pub const READER_APP_NAME: &str = "pgws outbox";
/// `application_name` of the pruning connection.
pub const PRUNE_APP_NAME: &str = "pgws outbox prune";

/// `PGWS_OUTBOX_*`.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Where to connect.
    pub db: PgConfig,
    /// `PGWS_OUTBOX_MIGRATE`: create what is missing (else only check).
    pub migrate: bool,
    /// `PGWS_OUTBOX_RETENTION`: rows older than this (and read) are pruned.
    pub retention: Duration,
    /// `PGWS_OUTBOX_POLL_INTERVAL`: the longest wait without a doorbell.
    pub poll_interval: Duration,
    /// Commit rows read per query.
    pub batch: i64,
}

/// Why the outbox cannot run.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The schema is missing or older than this binary, and migrating is
    /// off.
    #[error("the outbox schema is {found} (version {expected} is needed) and PGWS_OUTBOX_MIGRATE=false: apply postgres/sql/outbox.sql (shipped with pgws) as the schema's owner, e.g. `psql \"$PGWS_DB_URI\" -v ON_ERROR_STOP=1 -f postgres/sql/outbox.sql`")]
    NotMigrated {
        /// What was found.
        found: String,
        /// The version this binary needs.
        expected: &'static str,
    },
    /// Applying the schema failed.
    #[error("PGWS_OUTBOX: applying postgres/sql/outbox.sql failed: {0}")]
    Migrate(String),
    /// The database could not be reached or refused a query.
    #[error("PGWS_OUTBOX: {0}")]
    Database(String),
}

/// The names of the outbox variables, the same in both binaries.
pub mod vars {
    /// `PGWS_OUTBOX`.
    pub const OUTBOX: &str = "PGWS_OUTBOX";
    /// `PGWS_OUTBOX_MIGRATE`.
    pub const MIGRATE: &str = "PGWS_OUTBOX_MIGRATE";
    /// `PGWS_OUTBOX_RETENTION`.
    pub const RETENTION: &str = "PGWS_OUTBOX_RETENTION";
    /// `PGWS_OUTBOX_POLL_INTERVAL`.
    pub const POLL_INTERVAL: &str = "PGWS_OUTBOX_POLL_INTERVAL";
}

/// Default `PGWS_OUTBOX_RETENTION`, seconds.
pub const DEFAULT_RETENTION_S: u64 = 3600;
/// Commit rows read per poll.
pub const BATCH: i64 = 500;

/// Read the outbox variables: `None` unless `PGWS_OUTBOX=true`. Errors
/// name the variable.
pub fn read_config(
    sources: &pgws_service::config::Sources,
    db: &PgConfig,
) -> Result<Option<OutboxConfig>, pgws_service::config::ConfigError> {
    use pgws_service::config::err;
    if !sources.flag(vars::OUTBOX)? {
        return Ok(None);
    }
    let retention: u64 = sources.parsed(vars::RETENTION, "a number of seconds")?;
    if retention == 0 {
        return Err(err(vars::RETENTION, "must be at least 1 second"));
    }
    let poll_interval = sources
        .millis(vars::POLL_INTERVAL)?
        .unwrap_or(Duration::from_secs(1));
    if poll_interval.is_zero() {
        return Err(err(vars::POLL_INTERVAL, "must be at least 1 millisecond"));
    }
    Ok(Some(OutboxConfig {
        db: db.clone(),
        migrate: sources.flag(vars::MIGRATE)?,
        retention: Duration::from_secs(retention),
        poll_interval,
        batch: BATCH,
    }))
}
