//! The outbox's SQL, applied at start (`PGWS_OUTBOX_MIGRATE=true`, the
//! default) or only checked (`false`: a DBA applies the file).

use super::config::OutboxError;
use tokio_postgres::Client;

/// `postgres/sql/outbox.sql`, the whole schema; idempotent.
pub const SQL: &str = include_str!("../../sql/outbox.sql");
/// The schema version this binary reads: it also reads any newer one
/// (versions only add, and only change function bodies compatibly), so in
/// a rolling upgrade the old processes keep reading what a new one
/// migrated, and never move it back.
pub const VERSION: &str = "4";

/// Apply [`SQL`] unless the database already has this version or a newer
/// one (then nothing is run: no lock is taken on tables senders use), then
/// check the result. The file takes an advisory lock, so concurrent starts
/// apply it one after the other.
pub async fn migrate(client: &Client) -> Result<(), OutboxError> {
    if is_current(version(client).await?.as_deref()) {
        return Ok(());
    }
    client
        .batch_execute(SQL)
        .await
        .map_err(|e| OutboxError::Migrate(crate::pg::error_chain(&e)))?;
    check(client).await
}

/// The schema is there, at [`VERSION`].
pub async fn check(client: &Client) -> Result<(), OutboxError> {
    let found = version(client).await?;
    if is_current(found.as_deref()) {
        return Ok(());
    }
    Err(OutboxError::NotMigrated {
        found: match found {
            Some(v) => format!("at version {v}"),
            None => "missing".into(),
        },
        expected: VERSION,
    })
}

/// `found` is [`VERSION`] or newer.
fn is_current(found: Option<&str>) -> bool {
    let number = |v: &str| v.parse::<u32>().ok();
    match (found.and_then(number), number(VERSION)) {
        (Some(found), Some(ours)) => found >= ours,
        _ => false,
    }
}

async fn version(client: &Client) -> Result<Option<String>, OutboxError> {
    let exists = client
        .query_one("SELECT to_regclass('pgws.meta') IS NOT NULL", &[])
        .await
        .map_err(|e| OutboxError::Database(crate::pg::error_chain(&e)))?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT value FROM pgws.meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(|e| OutboxError::Database(crate::pg::error_chain(&e)))?;
    Ok(row.map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::config::{DOORBELL_CHANNEL, DOORBELL_LOCKS, SHARD_LOCKS};

    #[test]
    fn a_newer_schema_is_current_and_an_older_or_odd_one_is_not() {
        assert!(is_current(Some(VERSION)));
        assert!(is_current(Some("99")));
        assert!(!is_current(Some("3")));
        assert!(!is_current(Some("x")));
        assert!(!is_current(None));
    }

    #[test]
    fn the_sql_and_the_reader_name_the_same_locks_and_channel() {
        assert!(SQL.contains(&format!("pg_advisory_xact_lock({SHARD_LOCKS}, -1)")));
        assert!(SQL.contains(&format!(
            "pg_try_advisory_xact_lock_shared({DOORBELL_LOCKS}, 0)"
        )));
        assert!(SQL.contains(&format!("pg_notify('{DOORBELL_CHANNEL}', '')")));
        assert!(SQL.contains(&format!("VALUES ('schema_version', '{VERSION}')")));
    }
}
