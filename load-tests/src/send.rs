//! How the load tool publishes: `pg_notify` on the listen channel or
//! `pgws.send` (`--send`), alone in its transaction or beside one row of
//! application data (`--with-write`), one notification or a batch per
//! transaction. One place, so every scenario compares the same statements.
//!
//! `--with-write` is the application's usual transaction: it changes a row
//! and notifies about it. Its commit then writes WAL and waits for the
//! flush — a NOTIFY-only transaction has no WAL to flush — and NOTIFY holds
//! its database-wide commit lock across that flush.

use crate::options::Common;
use tokio_postgres::{Client, Statement};

/// The table `--with-write` inserts into (made if missing).
const APP_TABLE: &str = "pgws_load_app";

/// A publisher's prepared statements.
pub(crate) struct Sender {
    one: Statement,
    many: Statement,
    outbox: bool,
    listen_channel: String,
}

impl Sender {
    /// Prepare on `client` what `c` asks for (`--send`, `--with-write`).
    pub(crate) async fn prepare(c: &Common, client: &Client) -> anyhow::Result<Sender> {
        let write = if c.with_write {
            client
                .batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {APP_TABLE} (id bigserial PRIMARY KEY, v text NOT NULL)"
                ))
                .await?;
            format!("WITH w AS (INSERT INTO {APP_TABLE} (v) VALUES ('x')) ")
        } else {
            String::new()
        };
        let (one, many) = if c.outbox() {
            (
                format!("{write}SELECT pgws.send($1)"),
                format!("{write}SELECT pgws.send(p) FROM unnest($1::text[]) AS t(p)"),
            )
        } else {
            (
                format!("{write}SELECT pg_notify($1, $2)"),
                format!("{write}SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)"),
            )
        };
        Ok(Sender {
            one: client.prepare(&one).await?,
            many: client.prepare(&many).await?,
            outbox: c.outbox(),
            listen_channel: c.listen_channel.clone(),
        })
    }

    /// One autocommitted transaction publishing `payload`.
    pub(crate) async fn one(&self, client: &Client, payload: &str) -> anyhow::Result<()> {
        if self.outbox {
            client.execute(&self.one, &[&payload]).await?;
        } else {
            client
                .execute(&self.one, &[&self.listen_channel, &payload])
                .await?;
        }
        Ok(())
    }

    /// One autocommitted transaction publishing every payload.
    pub(crate) async fn many(&self, client: &Client, payloads: &[String]) -> anyhow::Result<()> {
        if self.outbox {
            client.execute(&self.many, &[&payloads]).await?;
        } else {
            client
                .execute(&self.many, &[&self.listen_channel, &payloads])
                .await?;
        }
        Ok(())
    }
}
