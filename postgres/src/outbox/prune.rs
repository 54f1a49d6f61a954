//! Pruning: rows older than `PGWS_OUTBOX_RETENTION` go, in batches of
//! [`BATCH`] rows per statement, so no statement holds many row locks or
//! runs long, and senders — who only insert — are never blocked.
//!
//! * A commit row goes once it is older than the retention *and* every
//!   reader is past it — this one, every other live reader on the database
//!   (their cursors noted in `pgws.readers`) and every cluster's saved
//!   cursor (`pgws.cursors`): nothing unread is ever deleted. A cluster
//!   taken out of service keeps its row until a DBA deletes it.
//! * A message row goes once it is older than the retention and below the
//!   first message of every remaining commit row (rows of rolled-back
//!   transactions have none, and go by age alone). A transaction still
//!   running is invisible to the delete, so its rows stay.
//!
//! * After a pass that deleted at least [`VACUUM_AFTER`] rows the two
//!   tables are vacuumed (`SKIP_LOCKED`), so their size stays flat where
//!   autovacuum is off or behind.
//!
//! `pgws.channels` is kept: one row per channel ever sent on, so a channel
//! keeps its epoch for as long as the database does.

use super::config::{OutboxConfig, PRUNE_APP_NAME};
use super::metrics::OutboxMetrics;
use super::reader::Cursors;
use crate::pg;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows deleted per statement.
pub const BATCH: i64 = 5000;
/// Rows pruned in one pass after which the tables are vacuumed.
pub const VACUUM_AFTER: u64 = 10_000;

/// Commit rows behind this reader (`$1` shards, `$2` its cursors), every
/// live reader's recorded cursor and every saved cluster cursor, and older
/// than `$3` seconds; at most `$4`.
const COMMITS_SQL: &str = "\
WITH floors AS (
  SELECT k.shard, least(k.cur,
           (SELECT min(r.seqs[k.shard + 1]) FROM pgws.readers r
             WHERE r.seqs IS NOT NULL AND r.pid IN (SELECT pid FROM pg_stat_activity)),
           (SELECT min(c.seqs[k.shard + 1]) FROM pgws.cursors c)) AS floor
    FROM unnest($1::int[], $2::bigint[]) AS k(shard, cur))
DELETE FROM pgws.commits WHERE seq IN (
  SELECT c.seq FROM pgws.commits c
    JOIN floors f ON c.shard = f.shard AND c.seq <= f.floor
   WHERE c.committed_at < now() - make_interval(secs => $3)
   LIMIT $4)";

const OUTBOX_SQL: &str = "\
DELETE FROM pgws.outbox WHERE id IN (
  SELECT o.id FROM pgws.outbox o
   WHERE o.id < coalesce((SELECT min(first_id) FROM pgws.commits), 9223372036854775807)
     AND o.created_at < now() - make_interval(secs => $1)
   ORDER BY o.id
   LIMIT $2)";

/// How often pruning runs: a tenth of the retention, between 1 s and 60 s.
pub fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Prune every [`period`] until shutdown; failures are logged and retried
/// next time.
pub async fn run(
    config: OutboxConfig,
    cursors: Arc<Mutex<Cursors>>,
    metrics: OutboxMetrics,
    shutdown: CancellationToken,
) {
    let mut every = pgws_service::time::every(period(config.retention));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let current = cursors.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = once(&config, &current, &metrics).await {
            tracing::warn!(error = %e, "pruning the outbox failed: retrying later");
        }
    }
}

/// One pruning pass.
pub async fn once(
    config: &OutboxConfig,
    cursors: &Cursors,
    metrics: &OutboxMetrics,
) -> Result<(), String> {
    let (client, connection) = pg::connect(&config.db, PRUNE_APP_NAME)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let mut connection = connection;
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if message.is_err() {
                return;
            }
        }
    });
    let result = async {
        let retention = config.retention.as_secs_f64();
        let commit_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&cursors.shards, &cursors.seqs, &retention, &BATCH];
        let outbox_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&retention, &BATCH];
        let commits = drain(|| client.execute(COMMITS_SQL, &commit_params)).await?;
        let outbox = drain(|| client.execute(OUTBOX_SQL, &outbox_params)).await?;
        metrics
            .pruned
            .with_label_values(&["commits"])
            .inc_by(commits);
        metrics.pruned.with_label_values(&["outbox"]).inc_by(outbox);
        metrics.prune_runs.inc();
        if commits + outbox >= VACUUM_AFTER {
            // Where autovacuum is off (or slow), deleted rows would never
            // make room: vacuum these two tables after a large pass. It
            // takes no lock senders wait for; without ownership PostgreSQL
            // skips it with a warning.
            client
                .batch_execute("VACUUM (SKIP_LOCKED) pgws.commits, pgws.outbox")
                .await?;
            metrics.vacuums.inc();
        }
        if commits + outbox > 0 {
            tracing::debug!(commits, outbox, "outbox pruned");
        }
        Ok::<_, tokio_postgres::Error>(())
    }
    .await
    .map_err(|e| pg::error_chain(&e));
    driver.abort();
    result
}

/// Run `delete` until it deletes fewer than a batch; the total.
async fn drain<F, Fut>(mut delete: F) -> Result<u64, tokio_postgres::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}
