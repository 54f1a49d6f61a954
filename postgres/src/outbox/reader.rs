//! The outbox reader: one connection that follows every shard of
//! `pgws.commits` with a cursor and hands each committed message, with its
//! channel's offset, to an [`OutboxSink`].
//!
//! # Busy, idle, and the doorbell
//!
//! A reader is *busy* while it holds its own advisory lock
//! `(DOORBELL_LOCKS, pid)` and polls back to back, and *idle* (waiting)
//! otherwise. A committing transaction (the SQL's `pgws.commit_sends`)
//! holds `(DOORBELL_LOCKS, 0)` shared until its commit ends, and rings —
//! `NOTIFY pgws_outbox` — only if some reader's own lock is free, i.e. a
//! reader is idle (or if it cannot have `(…, 0)` at all). So under load,
//! when the reader polls back to back, no transaction pays for NOTIFY's
//! database-wide commit lock.
//!
//! Going idle, the reader (1) releases its lock, (2) *tries* `(…, 0)`
//! exclusively: it is free only when no transaction that may have seen
//! the reader busy (and rung nothing) is still committing; (3) releases
//! it, (4) polls once more, and only then (5) waits for a doorbell or
//! `PGWS_OUTBOX_POLL_INTERVAL`. When (2) fails the reader stays busy and
//! polls again after a short pause that doubles up to [`BUSY_PAUSE_MAX`].
//! Every commit is therefore seen by a poll after it, or rings in (5): a
//! transaction that checked before (1) holds `(…, 0)` until it has
//! committed, so (2) cannot succeed before that; one that checks after
//! (1) finds the reader's lock free and rings. Woken, the reader takes its
//! lock and polls in one round trip: the doorbell is delivered after the
//! ringing transaction committed. No lock is ever waited for — neither by
//! the reader nor by a sender — so a long transaction, a prepared one, or
//! a role holding these advisory keys can slow the doorbell (more polls,
//! more NOTIFYs) but never stop delivery. The poll interval is a backstop
//! (a doorbell lost with the connection), not the delivery path.
//!
//! # Bells, and when to stop being rung
//!
//! An idle reader delivers what a signed bell carries without a poll
//! ([`bell`]). But every ringing sender holds NOTIFY's database-wide lock
//! across its commit's WAL flush, which serializes ringing senders: when
//! two *sessions* ring less than [`BELL_GAP`] apart (each notification
//! names its sender's backend pid), the reader turns busy, and a busy
//! reader stays busy (polling every [`LINGER_PAUSE`]) until its polls have
//! found nothing for [`BUSY_LINGER`]. One session ringing, however fast,
//! keeps the reader idle: its commits never overlap, so no commit waits
//! for another's flush, and each is delivered from its bell. So a trickle,
//! or a single publisher, is delivered at the doorbell's latency, and
//! concurrent senders under a steady rate never ring.
//!
//! # A database that went back in time
//!
//! A failover to a replica that had not received the newest commits (or a
//! restore) hands out the same commit sequence numbers and offsets again.
//! When a shard's newest `seq` is below this reader's cursor, the reader
//! bumps `pgws.meta.generation` (part of every outbox epoch: v2 clients
//! resync instead of trusting offsets that now name other messages), logs
//! it, counts `pgws_outbox_rewinds_total`, and follows the database from
//! where it is.
//!
//! # Order and exactly once
//!
//! Within a shard, `seq` order is commit order (the SQL's shard lock), and
//! a cursor moves past a row only after the sink took it: each committed
//! message is handed over once per cursor, in commit order per channel.
//! What the sink must make idempotent is a batch handed over again after a
//! failure (the leader's publish script and the standalone history both
//! drop an offset they already have).

use super::bell;
use super::config::{OutboxConfig, OutboxError, DOORBELL_CHANNEL, DOORBELL_LOCKS, READER_APP_NAME};
pub use super::message::OutboxMessage;
use super::metrics::OutboxMetrics;
use crate::pg::{self, PgConfig};
use bytes::Bytes;
use pgws_service::backoff::Backoff;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Row, Statement};
use tokio_util::sync::CancellationToken;

/// The longest pause between polls while a committing transaction keeps
/// the reader from going idle.
pub const BUSY_PAUSE_MAX: Duration = Duration::from_millis(50);
/// Bells kept while the reader is busy or slow to look (beyond: a poll).
const BELLS_KEPT: usize = 64;
/// More bells than this at one wake-up: the reader polls instead.
const BELLS_AT_ONCE: usize = 8;
/// Two bells closer than this (or several at one wake-up): the rate is up,
/// so the reader turns busy and senders stop paying for NOTIFY's
/// database-wide commit lock (held across each commit's WAL flush, it
/// serializes every ringing transaction).
const BELL_GAP: Duration = Duration::from_millis(10);
/// A busy reader stays busy while it found something this recently,
/// polling every [`LINGER_PAUSE`]: under a steady rate no sender rings.
const BUSY_LINGER: Duration = Duration::from_millis(50);
/// A reader busy this long goes idle once even while its polls find
/// something, so that the bells tell it whether one session sends (it then
/// stays idle, delivering from bells) or several (busy again at once). The
/// price under concurrent load: a few ringing commits per probe.
const BUSY_PROBE: Duration = Duration::from_secs(1);
/// See [`BUSY_LINGER`].
const LINGER_PAUSE: Duration = Duration::from_millis(1);
/// How often a reader records its cursor in `pgws.readers` (for pruning).
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// A future the sink returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where the reader hands messages.
pub trait OutboxSink: Send + Sync + 'static {
    /// Take a batch, in commit order per channel. `Err`: not taken; the
    /// same messages are handed over again after a pause (so taking them
    /// must be idempotent by offset).
    fn deliver<'a>(&'a self, batch: &'a [OutboxMessage]) -> SinkFuture<'a>;
}

/// What the reader is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderState {
    /// Not connected yet.
    Starting,
    /// Connected, following the outbox.
    Reading,
    /// The connection was lost; making it again.
    Reconnecting,
    /// Stopped.
    Stopped,
}

/// Where a shard stands: the last `seq` handed over, per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    /// Shard numbers, `0..pgws.shards()`.
    pub shards: Vec<i32>,
    /// The last sequence number taken, per shard (same order).
    pub seqs: Vec<i64>,
}

impl Cursors {
    /// `seq` of `shard` is at or below its cursor.
    pub fn covers(&self, shard: i32, seq: i64) -> bool {
        self.shards
            .iter()
            .position(|s| *s == shard)
            .is_some_and(|i| seq <= self.seqs[i])
    }

    fn advance(&mut self, batch: &[OutboxMessage]) {
        for m in batch {
            if let Some(i) = self.shards.iter().position(|s| *s == m.shard) {
                self.seqs[i] = self.seqs[i].max(m.seq);
            }
        }
    }
}

/// Where reading starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Standalone: from what is committed now, with the newest
    /// `per_channel` messages of each channel committed within `within`
    /// as history (the outbox is the history across a restart).
    History {
        /// Messages per channel.
        per_channel: i64,
        /// How far back.
        within: Duration,
    },
    /// A cluster's leader: from the cursor saved under this name, or from
    /// what is committed now when there is none.
    Saved(String),
}

/// What [`prepare`] found.
#[derive(Debug)]
pub struct Initial {
    /// Where to start reading.
    pub cursors: Cursors,
    /// The history to load (standalone), oldest first.
    pub history: Vec<OutboxMessage>,
    /// A cluster's leader: the saved cursor. Reading starts up to
    /// [`REPLAY`] commits before it; what lies at or below it a previous
    /// term published, and is only replayed.
    pub saved: Cursors,
}

/// A cluster's leader starts reading up to this many commits per shard
/// before its saved cursor, committed within [`REPLAY_WITHIN`]: a previous
/// term published them, and Redis may have taken the last of them without
/// its pushes reaching the gateways, then lost its data (a new term always
/// follows: the lock key went with it). The publish script takes a replay
/// only where the channel has no message yet or it continues the channel.
pub const REPLAY: i64 = 256;
/// See [`REPLAY`].
pub const REPLAY_WITHIN: Duration = Duration::from_secs(60);

/// Per shard, where reading starts to replay what was committed within
/// `$3` seconds, at most `$4` commits, at or below the cursor.
const REPLAY_SQL: &str = "\
SELECT coalesce((SELECT min(t.seq) - 1
                   FROM (SELECT c.seq FROM pgws.commits c
                          WHERE c.shard = k.shard AND c.seq <= k.cur
                            AND c.committed_at > now() - make_interval(secs => $3)
                          ORDER BY c.seq DESC
                          LIMIT $4) AS t), k.cur)
  FROM unnest($1::int[], $2::bigint[]) WITH ORDINALITY AS k(shard, cur, i)
 ORDER BY k.i";

/// A cluster leader's saved cursor: written after each batch, refused
/// once a leader with a larger fencing epoch has written it.
#[derive(Debug, Clone)]
pub struct SavedCursor {
    /// The cursor's name (`pgws.cursors.name`).
    pub name: String,
    /// This leader's fencing epoch.
    pub fence: i64,
}

/// Connect, apply (or check) the schema, and find where to start. A
/// connection failure is retried `retries` times on the listener's
/// schedule; a schema that is missing while migrating is off is final.
pub async fn prepare(
    config: &OutboxConfig,
    start: &Start,
    retries: u32,
    shutdown: &CancellationToken,
) -> Result<Initial, OutboxError> {
    let mut backoff = Backoff::new();
    let mut failures = 0;
    // Whether any attempt found no outbox at all (kept across retries: an
    // attempt that created it and then failed must not make the next one
    // start from what committed since).
    let mut fresh = false;
    loop {
        match prepare_once(config, start, &mut fresh).await {
            Err(OutboxError::Database(why)) if failures < retries => {
                failures += 1;
                let delay = backoff.next_delay();
                tracing::warn!(attempt = failures, error = %why, retry_in_ms = delay.as_millis() as u64, "cannot prepare the outbox");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(OutboxError::Database("shutdown".into())),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}

async fn prepare_once(
    config: &OutboxConfig,
    start: &Start,
    fresh: &mut bool,
) -> Result<Initial, OutboxError> {
    let session = Session::open(&config.db).await?;
    // Before migrating: with no outbox yet, nothing can have committed
    // before this reader looked, so a cluster with no saved cursor starts
    // from the beginning — not from the head it finds after the migration,
    // which sends may already have moved.
    *fresh |= !outbox_exists(&session.client)
        .await
        .map_err(|e| OutboxError::Database(pg::error_chain(&e)))?;
    if config.migrate {
        super::schema::migrate(&session.client).await?;
    } else {
        super::schema::check(&session.client).await?;
    }
    let db = |e: tokio_postgres::Error| OutboxError::Database(pg::error_chain(&e));
    session
        .client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(db)?;
    let generation = generation(&session.client).await.map_err(db)?;
    let cursors = newest(&session.client).await.map_err(db)?;
    let mut history = Vec::new();
    match start {
        Start::History {
            per_channel,
            within,
        } => {
            let rows = session
                .client
                .query(HISTORY_SQL, &[&within.as_secs_f64(), per_channel])
                .await
                .map_err(db)?;
            history = messages(&rows, generation);
        }
        // Where a cluster's leader starts is claimed below, outside this
        // read-only transaction.
        Start::Saved(_) => {}
    }
    session.client.batch_execute("COMMIT").await.map_err(db)?;
    let cursors = match start {
        Start::Saved(name) => {
            let from = if *fresh {
                Cursors {
                    seqs: vec![0; cursors.shards.len()],
                    ..cursors
                }
            } else {
                cursors
            };
            claim_start(&session.client, name, from).await.map_err(db)?
        }
        Start::History { .. } => cursors,
    };
    let saved = cursors.clone();
    let cursors = match start {
        Start::Saved(_) => {
            let rows = session
                .client
                .query(
                    REPLAY_SQL,
                    &[
                        &cursors.shards,
                        &cursors.seqs,
                        &REPLAY_WITHIN.as_secs_f64(),
                        &REPLAY,
                    ],
                )
                .await
                .map_err(db)?;
            Cursors {
                seqs: rows.iter().map(|r| r.get::<_, i64>(0)).collect(),
                ..cursors
            }
        }
        Start::History { .. } => cursors,
    };
    Ok(Initial {
        cursors,
        history,
        saved,
    })
}

/// `pgws.commits` exists: something may have committed.
async fn outbox_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT to_regclass('pgws.commits') IS NOT NULL", &[])
        .await?
        .get(0))
}

/// A cluster's first leader saves where it starts before it reads (fence
/// 0: any leader's save replaces it): a leader stopped before its first
/// batch must not let its successor start from a later "now" and skip
/// what committed in between. Whatever is saved by then is where reading
/// starts. `from` is the outbox's head when this leader looked — or the
/// beginning, when it found no outbox: it created it (or another process
/// did meanwhile), and whatever committed since must be published.
async fn claim_start(
    client: &Client,
    name: &str,
    from: Cursors,
) -> Result<Cursors, tokio_postgres::Error> {
    let claimed = client
        .execute(
            "INSERT INTO pgws.cursors (name, seqs, fence) VALUES ($1, $2, 0) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &from.seqs],
        )
        .await?
        == 1;
    let saved: Vec<i64> = client
        .query_one("SELECT seqs FROM pgws.cursors WHERE name = $1", &[&name])
        .await?
        .get(0);
    // Never past the database (it may have gone back in time): the
    // reader's check then moves the generation.
    let mut cursors = from;
    for (i, seq) in saved.into_iter().enumerate().take(cursors.seqs.len()) {
        cursors.seqs[i] = seq;
    }
    tracing::info!(
        cursor = name,
        seqs = ?cursors.seqs,
        claimed,
        "the outbox is read from here (per shard: the last commit already taken)"
    );
    Ok(cursors)
}

/// The outbox's generation (`pgws.meta`).
async fn generation(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT value::bigint FROM pgws.meta WHERE key = 'generation'",
            &[],
        )
        .await?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
}

/// Every shard's newest sequence number.
async fn newest(client: &Client) -> Result<Cursors, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s, coalesce((SELECT max(seq) FROM pgws.commits WHERE shard = s), 0) \
               FROM generate_series(0, pgws.shards() - 1) AS s ORDER BY s",
            &[],
        )
        .await?;
    Ok(Cursors {
        shards: rows.iter().map(|r| r.get(0)).collect(),
        seqs: rows.iter().map(|r| r.get(1)).collect(),
    })
}

/// The newest `$2` messages per channel committed within `$1` seconds.
/// Payloads and channels are read as bytes: a database whose encoding
/// let through bytes that are not UTF-8 does not stop the reader.
const HISTORY_SQL: &str = "\
SELECT x.seq, x.shard, x.channel, x.base, x.message_offset, x.payload, x.committed_ms
  FROM (SELECT c.seq, c.shard, textsend(c.channel) AS channel, c.base, o.id,
               c.first_offset + row_number() OVER (PARTITION BY c.seq ORDER BY o.id) - 1 AS message_offset,
               textsend(o.payload) AS payload,
               floor(extract(epoch FROM c.committed_at) * 1000)::bigint AS committed_ms,
               row_number() OVER (PARTITION BY c.channel ORDER BY c.seq DESC, o.id DESC) AS rn
          FROM pgws.commits c
          JOIN pgws.outbox o ON o.xid = c.xid AND o.id BETWEEN c.first_id AND c.last_id
                            AND coalesce(o.channel, '') = c.channel
         WHERE c.committed_at > now() - make_interval(secs => $1)) AS x
 WHERE x.rn <= $2
 ORDER BY x.seq, x.id";

/// The next commits after the cursors (`$1` shards, `$2` their cursors),
/// at most `$3`, with their messages in commit order. Each step is an
/// index range scan whatever the table's statistics say (a server with
/// autovacuum off never analyzes them): per shard the commits after its
/// cursor on `(shard, seq)`, then each commit's messages on `(xid, id)`.
const POLL_SQL: &str = "\
WITH next AS (
  SELECT c.seq, c.shard, c.xid, c.channel, c.base, c.first_offset, c.first_id, c.last_id, c.committed_at
    FROM unnest($1::int[], $2::bigint[]) AS k(shard, cur)
    CROSS JOIN LATERAL (
      SELECT * FROM pgws.commits c
       WHERE c.shard = k.shard AND c.seq > k.cur
       ORDER BY c.seq
       LIMIT $3) AS c
   ORDER BY c.seq
   LIMIT $3)
SELECT n.seq, n.shard, textsend(n.channel), n.base, n.first_offset + m.idx - 1,
       textsend(m.payload), floor(extract(epoch FROM n.committed_at) * 1000)::bigint
  FROM next n
  CROSS JOIN LATERAL (
    SELECT o.id, o.payload, row_number() OVER (ORDER BY o.id) AS idx
      FROM pgws.outbox o
     WHERE o.xid = n.xid AND o.id BETWEEN n.first_id AND n.last_id
       AND coalesce(o.channel, '') = n.channel
     OFFSET 0) AS m
 ORDER BY n.seq, m.id";

/// Text that should be UTF-8, as it is or with U+FFFD for what is not.
fn text_of(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Rows of [`POLL_SQL`] or [`HISTORY_SQL`] as messages.
fn messages(rows: &[Row], generation: u64) -> Vec<OutboxMessage> {
    rows.iter()
        .map(|row| OutboxMessage {
            seq: row.get(0),
            shard: row.get(1),
            channel: text_of(row.get(2)),
            base: row.get::<_, i64>(3).max(0) as u64,
            generation,
            offset: row.get::<_, i64>(4).max(0) as u64,
            payload: Bytes::from(text_of(row.get(5))),
            committed_at_ms: row.get(6),
        })
        .collect()
}

/// A bell as heard: who rang it (the sending session's backend pid), when,
/// and what it carries.
#[derive(Debug)]
struct HeardBell {
    sender: i32,
    at: Instant,
    text: String,
}

/// The sessions that rang last, to tell a single sender ringing fast
/// (nothing waits: its commits never overlap) from several sessions
/// ringing close together, whose commits each wait for NOTIFY's
/// database-wide lock — held across the other's WAL flush.
#[derive(Debug, Default)]
struct Ringers {
    last: Option<(i32, Instant)>,
}

impl Ringers {
    /// Note bells rung by `senders` (pid, when heard, in order): whether
    /// two sessions rang less than [`BELL_GAP`] apart.
    fn contended(&mut self, senders: impl IntoIterator<Item = (i32, Instant)>) -> bool {
        let mut contended = false;
        for (sender, at) in senders {
            if let Some((last, last_at)) = self.last {
                contended |= last != sender && at.saturating_duration_since(last_at) < BELL_GAP;
            }
            self.last = Some((sender, at));
        }
        contended
    }
}

/// What the connection's driver heard since the reader last looked.
#[derive(Debug, Default)]
struct Heard {
    /// Bells that carried commits, in the order they came.
    bells: Vec<HeardBell>,
    /// A plain ring came, or more bells than are kept: only a poll will do.
    plain: bool,
}

/// The doorbell: notifications heard on the reader's connection, and the
/// wake-up for a reader waiting for them.
#[derive(Debug, Default)]
struct Doorbell {
    wake: Notify,
    heard: Mutex<Heard>,
}

impl Doorbell {
    fn ring(&self, sender: i32, payload: &str) {
        {
            let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
            if payload.is_empty() || heard.bells.len() >= BELLS_KEPT {
                heard.plain = true;
                heard.bells.clear();
            } else if !heard.plain {
                heard.bells.push(HeardBell {
                    sender,
                    at: Instant::now(),
                    text: payload.to_owned(),
                });
            }
        }
        self.wake.notify_one();
    }

    /// What was heard, forgotten here. Before a poll: whatever a bell heard
    /// so far carries, that poll reads too (a notification comes after its
    /// transaction committed).
    fn take(&self) -> Heard {
        std::mem::take(&mut *self.heard.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One connection: the client, and the task that drives it and hands
/// doorbell notifications to the [`Doorbell`].
struct Session {
    client: Client,
    doorbell: Arc<Doorbell>,
    driver: JoinHandle<String>,
    /// A forged bell was logged on this connection.
    forged_seen: AtomicBool,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Session {
    async fn open(db: &PgConfig) -> Result<Session, OutboxError> {
        let (client, mut connection) = pg::connect(db, READER_APP_NAME)
            .await
            .map_err(|e| OutboxError::Database(e.to_string()))?;
        let doorbell = Arc::new(Doorbell::default());
        let heard = doorbell.clone();
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        heard.ring(n.process_id(), n.payload())
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return pg::error_chain(&e),
                    None => return "connection closed".to_string(),
                }
            }
        });
        Ok(Session {
            client,
            doorbell,
            driver,
            forged_seen: AtomicBool::new(false),
        })
    }
}

/// How one connected session of the reader ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
    Fenced,
}

/// The reader; [`Reader::run`] follows the outbox until shutdown.
pub struct Reader {
    config: OutboxConfig,
    sink: Arc<dyn OutboxSink>,
    metrics: OutboxMetrics,
    state: watch::Sender<ReaderState>,
    saved: Option<SavedCursor>,
    cursors: Arc<Mutex<Cursors>>,
    /// The outbox generation the messages are read in.
    generation: AtomicU64,
    /// When the cursor was last noted in `pgws.readers`.
    recorded: Mutex<Option<Instant>>,
    shutdown: CancellationToken,
}

impl Reader {
    /// A reader from `cursors` on.
    pub fn new(
        config: OutboxConfig,
        cursors: Cursors,
        sink: Arc<dyn OutboxSink>,
        metrics: OutboxMetrics,
        saved: Option<SavedCursor>,
        shutdown: CancellationToken,
    ) -> (Reader, watch::Receiver<ReaderState>) {
        let (state, state_rx) = watch::channel(ReaderState::Starting);
        let reader = Reader {
            config,
            sink,
            metrics,
            state,
            saved,
            cursors: Arc::new(Mutex::new(cursors)),
            generation: AtomicU64::new(0),
            recorded: Mutex::new(None),
            shutdown,
        };
        (reader, state_rx)
    }

    /// The cursors as they move (the pruner deletes only what is behind
    /// them).
    pub fn cursors(&self) -> Arc<Mutex<Cursors>> {
        self.cursors.clone()
    }

    fn current(&self) -> Cursors {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follow the outbox until shutdown (`Ok`), or until a leader with a
    /// larger fencing epoch saved the cursor (`Err`).
    pub async fn run(self) -> Result<(), OutboxError> {
        let mut backoff = Backoff::new();
        loop {
            let opened = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                s = Session::open(&self.config.db) => s,
            };
            let end = match opened {
                Ok(session) => {
                    let started = Instant::now();
                    let end = self.follow(session).await;
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    end
                }
                Err(e) => SessionEnd::Lost(e.to_string()),
            };
            self.metrics.up.set(0);
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Fenced => {
                    self.state.send_replace(ReaderState::Stopped);
                    return Err(OutboxError::Database(
                        "a newer leader saved the outbox cursor: this one is deposed".into(),
                    ));
                }
                SessionEnd::Lost(why) => {
                    self.metrics.reconnects.inc();
                    self.state.send_replace(ReaderState::Reconnecting);
                    let delay = backoff.next_delay().min(Duration::from_secs(5));
                    tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "outbox reader connection lost: reconnecting");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.state.send_replace(ReaderState::Stopped);
        Ok(())
    }

    /// Register, then poll while busy and wait for the doorbell while idle.
    async fn follow(&self, session: Session) -> SessionEnd {
        let lost = |e: tokio_postgres::Error| SessionEnd::Lost(pg::error_chain(&e));
        let setup = async {
            let pid: i32 = session
                .client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            // Registered with where it starts: pruning counts it from now.
            session
                .client
                .batch_execute(&format!(
                    "DELETE FROM pgws.readers WHERE pid NOT IN (SELECT pid FROM pg_stat_activity); \
                     LISTEN {DOORBELL_CHANNEL}"
                ))
                .await?;
            session
                .client
                .execute(
                    "INSERT INTO pgws.readers (pid, seqs) VALUES ($1, $2) \
                     ON CONFLICT (pid) DO UPDATE SET seqs = excluded.seqs",
                    &[&pid, &self.current().seqs],
                )
                .await?;
            self.check_rewind(&session).await?;
            let poll = session.client.prepare(POLL_SQL).await?;
            // Row security shows the key to the schema's owner only.
            let key = session
                .client
                .query_opt("SELECT k FROM pgws.bell_key", &[])
                .await?
                .map(|row| bell::key(row.get::<_, &[u8]>(0)));
            Ok::<_, tokio_postgres::Error>((pid, poll, key))
        };
        let (pid, poll, key) = match setup.await {
            Ok(set) => set,
            Err(e) => return lost(e),
        };
        tracing::info!(pid, "reading the outbox");
        if key.is_none() {
            tracing::warn!("this role cannot read pgws.bell_key (only the schema's owner can): every doorbell costs a poll");
        }
        self.metrics.up.set(1);
        self.state.send_replace(ReaderState::Reading);
        let mut behind = false;
        let mut pause = Duration::ZERO;
        if let Err(e) = self.busy(&session, pid).await {
            return e;
        }
        // When the reader last found something: while that is recent it
        // stays busy (see BUSY_LINGER).
        let mut active = Instant::now();
        // When the reader last turned busy: after BUSY_PROBE it tries
        // going idle even while polls find something, to learn from the
        // bells whether one session sends (then it stays idle) or several.
        let mut busy_since = Instant::now();
        let mut ringers = Ringers::default();
        loop {
            // Busy: poll until polls come back empty for BUSY_LINGER, or
            // until it has been busy for BUSY_PROBE (a probe).
            let probing = match self.poll_and_deliver(&session, &poll, &mut behind).await {
                Ok(true) => {
                    pause = Duration::ZERO;
                    active = Instant::now();
                    if busy_since.elapsed() < BUSY_PROBE {
                        continue;
                    }
                    true
                }
                Ok(false) if active.elapsed() < BUSY_LINGER => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                        _ = tokio::time::sleep(LINGER_PAUSE) => {}
                    }
                    continue;
                }
                Ok(false) => false,
                Err(end) => return end,
            };
            // Idle: see the module documentation for why this order.
            match self.go_idle(&session, pid).await {
                Ok(true) => pause = Duration::ZERO,
                Ok(false) if probing => {
                    // Senders are committing back to back: stay busy.
                    busy_since = Instant::now();
                    continue;
                }
                Ok(false) => {
                    // A transaction that may not have rung is still
                    // committing: stay busy, polling after a pause.
                    pause = (pause * 2).clamp(Duration::from_millis(1), BUSY_PAUSE_MAX);
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
                Err(end) => return end,
            }
            // Whatever committed before the reader went idle; from here on
            // every commit rings, and the bells tell whether to turn busy.
            if let Err(end) = self.poll_and_deliver(&session, &poll, &mut behind).await {
                return end;
            }
            // Idle: bells that continue the cursors are delivered as they
            // come; anything else (a plain ring, a gap, a burst, the poll
            // interval) wakes the reader to poll.
            loop {
                self.metrics.lag.set(0.0);
                let rung = tokio::select! {
                    _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                    _ = session.doorbell.wake.notified() => true,
                    _ = tokio::time::sleep(self.config.poll_interval) => false,
                };
                if !rung {
                    break;
                }
                self.metrics.doorbells.inc();
                match self
                    .deliver_bells(&session, key.as_ref(), &mut behind, &mut ringers)
                    .await
                {
                    // Rung by one session (however fast: its commits never
                    // overlap, so none waited for another's): stay idle.
                    Ok(Some(false)) => {}
                    // Two sessions rang close together: each paid NOTIFY's
                    // database-wide lock, held across the other's WAL
                    // flush. Turn busy: they stop ringing.
                    Ok(Some(true)) => {
                        active = Instant::now();
                        break;
                    }
                    Ok(None) => break,
                    Err(end) => return end,
                }
            }
            // Woken: take the lock and poll in one round trip (both are
            // sent at once; the connection runs them in order).
            busy_since = Instant::now();
            let (locked, polled) = tokio::join!(
                self.busy(&session, pid),
                self.poll_and_deliver(&session, &poll, &mut behind)
            );
            if let Err(e) = locked.and(polled.map(|_| ())) {
                return e;
            }
        }
    }

    /// Compare the database with the cursors: a shard whose newest `seq`
    /// is below its cursor means the database went back in time (a
    /// failover to a replica behind, a restore). Then the generation moves
    /// on and the cursors follow the database.
    async fn check_rewind(&self, session: &Session) -> Result<(), tokio_postgres::Error> {
        let newest = newest(&session.client).await?;
        let mut cursors = self.current();
        let behind: Vec<(i32, i64, i64)> = cursors
            .shards
            .iter()
            .zip(&cursors.seqs)
            .filter_map(|(shard, cursor)| {
                let i = newest.shards.iter().position(|s| s == shard)?;
                (newest.seqs[i] < *cursor).then_some((*shard, *cursor, newest.seqs[i]))
            })
            .collect();
        if behind.is_empty() {
            let generation = generation(&session.client).await?;
            self.generation.store(generation, Ordering::Release);
            return Ok(());
        }
        let row = session
            .client
            .query_one(
                "INSERT INTO pgws.meta (key, value) VALUES ('generation', '1') \
                 ON CONFLICT (key) DO UPDATE SET value = (pgws.meta.value::bigint + 1)::text \
                 RETURNING value::bigint",
                &[],
            )
            .await?;
        let generation = row.get::<_, i64>(0).max(0) as u64;
        self.generation.store(generation, Ordering::Release);
        self.metrics.rewinds.inc();
        tracing::error!(
            generation,
            shards = ?behind,
            "the outbox database is behind this reader (a failover to a replica that had not received the newest commits, or a restore): what it lost is lost; its offsets are reused, so the outbox generation moves on and v2 clients resync"
        );
        for (i, shard) in cursors.shards.clone().iter().enumerate() {
            if let Some(j) = newest.shards.iter().position(|s| s == shard) {
                cursors.seqs[i] = cursors.seqs[i].min(newest.seqs[j]);
            }
        }
        *self.cursors.lock().unwrap_or_else(|p| p.into_inner()) = cursors;
        Ok(())
    }

    /// Take this reader's lock if it can (only a foreign holder of the key
    /// can prevent it, which costs doorbells, not delivery): senders stop
    /// ringing.
    async fn busy(&self, session: &Session, pid: i32) -> Result<(), SessionEnd> {
        session
            .client
            .execute(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&DOORBELL_LOCKS, &pid],
            )
            .await
            .map(|_| ())
            .map_err(|e| SessionEnd::Lost(pg::error_chain(&e)))
    }

    /// Release this reader's lock, then try the senders' shared key:
    /// `Ok(true)` when no sender that may have seen this reader busy is
    /// still committing; `Ok(false)` otherwise (the reader's lock is taken
    /// again: it stays busy).
    async fn go_idle(&self, session: &Session, pid: i32) -> Result<bool, SessionEnd> {
        let lost = |e: tokio_postgres::Error| SessionEnd::Lost(pg::error_chain(&e));
        session
            .client
            .execute("SELECT pg_advisory_unlock_all()", &[])
            .await
            .map_err(lost)?;
        let clear: bool = session
            .client
            .query_one("SELECT pg_try_advisory_lock($1, 0)", &[&DOORBELL_LOCKS])
            .await
            .map_err(lost)?
            .get(0);
        if clear {
            session
                .client
                .execute("SELECT pg_advisory_unlock($1, 0)", &[&DOORBELL_LOCKS])
                .await
                .map_err(lost)?;
            return Ok(true);
        }
        self.busy(session, pid).await?;
        Ok(false)
    }

    /// One poll; what it found goes to the sink, then the cursors move.
    /// `Ok(true)` when it found anything.
    async fn poll_and_deliver(
        &self,
        session: &Session,
        poll: &Statement,
        behind: &mut bool,
    ) -> Result<bool, SessionEnd> {
        session.doorbell.take();
        let cursors = self.current();
        self.metrics.polls.inc();
        let rows = session
            .client
            .query(poll, &[&cursors.shards, &cursors.seqs, &self.config.batch])
            .await
            .map_err(|e| SessionEnd::Lost(pg::error_chain(&e)))?;
        if rows.is_empty() {
            return Ok(false);
        }
        let batch = messages(&rows, self.generation.load(Ordering::Acquire));
        self.hand_over(session, cursors, &batch, behind).await?;
        Ok(true)
    }

    /// Deliver what the bells heard carry, if every commit row in them
    /// continues its shard's cursor (see [`bell`]): `Ok(Some(contended))`,
    /// where `contended` says two sessions rang less than [`BELL_GAP`]
    /// apart ([`Ringers`]). `Ok(None)`: the reader must poll instead.
    async fn deliver_bells(
        &self,
        session: &Session,
        key: Option<&ring::hmac::Key>,
        behind: &mut bool,
        ringers: &mut Ringers,
    ) -> Result<Option<bool>, SessionEnd> {
        let heard = session.doorbell.take();
        let Some(key) = key else {
            return Ok(None);
        };
        if heard.plain || heard.bells.len() > BELLS_AT_ONCE {
            return Ok(None);
        }
        let cursors = self.current();
        let generation = self.generation.load(Ordering::Acquire);
        let mut next = cursors.clone();
        let mut batch = Vec::new();
        for one in &heard.bells {
            let rungs = match bell::open(&one.text, key, generation) {
                Ok(rungs) => rungs,
                Err(why) => {
                    if why == bell::NoRows::Forged {
                        self.note_forged(session);
                    }
                    return Ok(None);
                }
            };
            for rung in rungs {
                let Some(i) = next.shards.iter().position(|s| *s == rung.shard) else {
                    return Ok(None);
                };
                if rung.seq <= next.seqs[i] {
                    continue; // a poll read it already
                }
                if rung.prev != next.seqs[i] {
                    return Ok(None); // something of the shard in between
                }
                next.seqs[i] = rung.seq;
                batch.extend(rung.messages);
            }
        }
        if !batch.is_empty() {
            self.hand_over(session, cursors, &batch, behind).await?;
            self.metrics.rung.inc_by(batch.len() as u64);
        }
        Ok(Some(ringers.contended(
            heard.bells.iter().map(|bell| (bell.sender, bell.at)),
        )))
    }

    /// Hand `batch` (read after `cursors`) to the sink until it takes it,
    /// then move the cursors (saved first, for a cluster's leader).
    async fn hand_over(
        &self,
        session: &Session,
        cursors: Cursors,
        batch: &[OutboxMessage],
        behind: &mut bool,
    ) -> Result<(), SessionEnd> {
        self.note_lag(batch, behind);
        let mut backoff = Backoff::new();
        while let Err(why) = self.sink.deliver(batch).await {
            self.metrics.refused.inc();
            let delay = backoff.next_delay().min(Duration::from_secs(5));
            tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "outbox batch not taken: retrying");
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(SessionEnd::Shutdown),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let mut next = cursors;
        next.advance(batch);
        if let Some(saved) = &self.saved {
            self.save(session, saved, &next).await?;
        }
        self.metrics.messages.inc_by(batch.len() as u64);
        self.record(session, &next).await?;
        *self.cursors.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Note how far this reader has read in `pgws.readers`, at most every
    /// [`RECORD_EVERY`]: pruning never passes the slowest live reader (a
    /// late record only makes pruning wait longer).
    async fn record(&self, session: &Session, cursors: &Cursors) -> Result<(), SessionEnd> {
        let now = Instant::now();
        {
            let mut last = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now.duration_since(at) < RECORD_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        session
            .client
            .execute(
                "UPDATE pgws.readers SET seqs = $1 WHERE pid = pg_backend_pid()",
                &[&cursors.seqs],
            )
            .await
            .map(|_| ())
            .map_err(|e| SessionEnd::Lost(pg::error_chain(&e)))
    }

    /// Write a leader's cursor; a larger fencing epoch there means this
    /// leader was deposed.
    async fn save(
        &self,
        session: &Session,
        saved: &SavedCursor,
        cursors: &Cursors,
    ) -> Result<(), SessionEnd> {
        let written = session
            .client
            .execute(
                "INSERT INTO pgws.cursors AS c (name, seqs, fence) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET seqs = excluded.seqs, fence = excluded.fence, updated_at = now() \
                 WHERE c.fence <= excluded.fence",
                &[&saved.name, &cursors.seqs, &saved.fence],
            )
            .await
            .map_err(|e| SessionEnd::Lost(pg::error_chain(&e)))?;
        if written == 0 {
            tracing::warn!(
                fence = saved.fence,
                "the outbox cursor was saved by a newer leader: stopping"
            );
            return Err(SessionEnd::Fenced);
        }
        Ok(())
    }

    /// A bell not signed with the outbox's key: some role that may NOTIFY
    /// sent it. Counted; logged once per connection (it costs a poll).
    fn note_forged(&self, session: &Session) {
        self.metrics.forged.inc();
        if !session.forged_seen.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                channel = DOORBELL_CHANNEL,
                "a notification on the outbox doorbell was not signed with the outbox's key (another role sent it): ignored; further ones on this connection are only counted"
            );
        }
    }

    fn note_lag(&self, batch: &[OutboxMessage], behind: &mut bool) {
        let now_ms = unix_millis();
        let oldest = batch
            .iter()
            .map(|m| m.committed_at_ms)
            .min()
            .unwrap_or(now_ms);
        let lag = Duration::from_millis(now_ms.saturating_sub(oldest).max(0) as u64);
        self.metrics.lag.set(lag.as_secs_f64());
        let is_behind = lag > self.config.retention;
        if is_behind && !*behind {
            self.metrics.behind.inc();
            tracing::warn!(
                lag_s = lag.as_secs(),
                retention_s = self.config.retention.as_secs(),
                "the outbox reader is further behind than PGWS_OUTBOX_RETENTION: nothing unread is pruned, the table grows until it catches up"
            );
        }
        *behind = is_behind;
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(shard: i32, seq: i64) -> OutboxMessage {
        OutboxMessage {
            channel: "c".into(),
            payload: Bytes::new(),
            base: 1,
            generation: 0,
            offset: 1,
            shard,
            seq,
            committed_at_ms: 0,
        }
    }

    #[test]
    fn one_session_ringing_fast_is_not_contention_two_close_together_are() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut ringers = Ringers::default();
        // One session, a bell every millisecond: never contended.
        assert!(!ringers.contended((0..20).map(|i| (7, ms(i)))));
        // Another session rings 1 ms after it: contended.
        assert!(ringers.contended([(8, ms(20))]));
        // Another one, a while later: not.
        assert!(!ringers.contended([(9, ms(20) + BELL_GAP)]));
        // Two sessions heard at one wake-up: contended.
        let mut fresh = Ringers::default();
        assert!(fresh.contended([(1, ms(100)), (2, ms(100))]));
    }

    #[test]
    fn cursors_move_per_shard_to_the_newest_taken() {
        let mut cursors = Cursors {
            shards: vec![0, 1, 2],
            seqs: vec![5, 7, 0],
        };
        cursors.advance(&[message(1, 9), message(0, 6), message(1, 8)]);
        assert_eq!(cursors.seqs, vec![6, 9, 0]);
    }
}
