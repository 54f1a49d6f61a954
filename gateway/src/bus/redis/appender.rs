//! Writers' messages into the `{p}:writes` stream, batched: one appender
//! task takes the messages of all sockets, up to [`APPEND_BATCH`] per
//! Redis call. Far from the bound a batch is one `MULTI`/`XADD…`/`SET
//! marker`/`XLEN`/`EXEC`; near it, a script checks the bound message by
//! message.
//!
//! **Every answer is definite.** A writer hears `Ok` (queued), `Full`
//! (the stream is at its bound: not queued), `Unavailable` (Redis did not
//! answer before the writer's deadline and the message was never sent) or
//! `Unknown` — only when a batch was sent, the connection failed before
//! the answer came back, and Redis stayed away for [`VERIFY_WITHIN`]. To
//! tell "went in" from "did not" after such a failure, each batch writes a
//! marker key (`{p}:appended:<gateway>:<n>`, the number of messages that
//! went in, [`MARKER_TTL`]) atomically with its `XADD`s; a retry runs the
//! script, which reads the marker first and appends only if it is absent.
//! So a retry never appends twice, and `1013` always means "not sent".

use super::super::BusError;
use pgws_protocol::keys::{KeySpace, FIELD_CHANNEL, FIELD_MESSAGE, FIELD_TRACE};
use pgws_service::redis_client::RedisClient;
use redis::Script;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Append a batch unless its marker says it already went in: KEYS = stream,
/// marker; ARGV = max length, marker ttl (ms), then (channel, envelope,
/// traceparent) per message; `{c}`/`{m}`/`{t}` become the field names of
/// `pgws_protocol::keys`. Appends in order until the stream holds the
/// maximum; returns how many were appended (the rest are refused) and the
/// stream's length.
const APPEND: &str = r"
local done = redis.call('GET', KEYS[2])
if done then
  return {tonumber(done), redis.call('XLEN', KEYS[1])}
end
local length = redis.call('XLEN', KEYS[1])
local max = tonumber(ARGV[1])
local appended = 0
for i = 3, #ARGV, 3 do
  if length >= max then
    break
  end
  if ARGV[i + 2] == '' then
    redis.call('XADD', KEYS[1], '*', '{c}', ARGV[i], '{m}', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[1], '*', '{c}', ARGV[i], '{m}', ARGV[i + 1], '{t}', ARGV[i + 2])
  end
  length = length + 1
  appended = appended + 1
end
redis.call('SET', KEYS[2], appended, 'PX', ARGV[2])
return {appended, length}";

/// Most messages appended in one call.
const APPEND_BATCH: usize = 256;
/// Below this share of `PGWS_WRITE_STREAM_MAX_LEN` (as last seen) a batch is
/// appended with a plain `MULTI`/`XADD…`/`EXEC`; above it, with the script
/// that checks the bound message by message. The script costs Redis about
/// 3 µs per message more than a plain `XADD` (measured with `INFO
/// commandstats`); the half of the bound left as headroom absorbs whatever
/// other gateways append between two of our batches.
const FAST_PATH_SHARE: f64 = 0.5;
/// Writes waiting for the appender before writers wait.
pub const APPEND_QUEUE: usize = 4096;
/// Pause between attempts while Redis does not answer.
const APPEND_RETRY: Duration = Duration::from_millis(250);
/// How long a batch's marker lives in Redis.
const MARKER_TTL: Duration = Duration::from_secs(30);
/// How long after a failed send the appender keeps trying to learn the
/// batch's fate (well inside the marker's life).
pub const VERIFY_WITHIN: Duration = Duration::from_secs(25);

/// One writer's message on its way to the stream.
pub struct Append {
    /// The websocket channel.
    pub channel: String,
    /// The envelope to NOTIFY.
    pub envelope: String,
    /// The writer's traceparent, or empty.
    pub traceparent: String,
    /// Until the batch is first sent: after this the writer is told
    /// `Unavailable`, and the message is never sent.
    pub deadline: Instant,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Result<(), BusError>>,
}

/// How one attempt ended.
enum Attempt {
    /// This many of the batch (a prefix) are in the stream; the rest were
    /// refused by the bound.
    Appended(usize),
    /// Nothing was sent (no connection, or it was refused).
    NotSent,
    /// Sent, but no answer: the batch may or may not be in.
    Unknown,
}

/// Batches writers' messages into one Redis call per batch.
pub struct Appender {
    slot: Arc<RwLock<Option<RedisClient>>>,
    keys: KeySpace,
    stream: String,
    /// This gateway process, in marker names.
    instance: String,
    batches: u64,
    max_len: usize,
    script: Script,
    /// The stream's length after our last append (the bound until known).
    last_len: usize,
}

impl Appender {
    /// An appender bounded at `max_len`, using whatever client the link
    /// keeps in `slot`.
    pub fn new(slot: Arc<RwLock<Option<RedisClient>>>, keys: KeySpace, max_len: usize) -> Appender {
        Appender {
            slot,
            stream: keys.writes(),
            keys,
            instance: instance_id(),
            batches: 0,
            max_len,
            last_len: max_len,
            script: Script::new(
                &APPEND
                    .replace("{c}", FIELD_CHANNEL)
                    .replace("{m}", FIELD_MESSAGE)
                    .replace("{t}", FIELD_TRACE),
            ),
        }
    }

    /// Append until every sender is gone.
    pub async fn run(mut self, mut appends: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        while appends.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            self.settle(&mut batch).await;
        }
    }

    /// Append `batch` and answer every writer in it, retrying while Redis
    /// does not answer.
    async fn settle(&mut self, batch: &mut Vec<Append>) {
        self.batches += 1;
        let marker = self.keys.append_marker(&self.instance, self.batches);
        let mut first_sent: Option<Instant> = None;
        loop {
            if first_sent.is_none() {
                refuse_expired(batch);
            }
            if batch.is_empty() {
                return;
            }
            match self.attempt(batch, &marker, first_sent.is_some()).await {
                Attempt::Appended(appended) => {
                    for (i, append) in batch.drain(..).enumerate() {
                        let result = if i < appended {
                            Ok(())
                        } else {
                            Err(BusError::Full)
                        };
                        let _ = append.reply.send(result);
                    }
                    return;
                }
                Attempt::NotSent => {}
                Attempt::Unknown => {
                    first_sent.get_or_insert_with(Instant::now);
                }
            }
            if first_sent.is_some_and(|at| at.elapsed() >= VERIFY_WITHIN) {
                tracing::error!(
                    messages = batch.len(),
                    "writes sent to Redis could not be confirmed or denied in time"
                );
                for append in batch.drain(..) {
                    let _ = append.reply.send(Err(BusError::Unknown));
                }
                return;
            }
            let mut pause = Instant::now() + APPEND_RETRY;
            if first_sent.is_none() {
                if let Some(deadline) = batch.iter().map(|a| a.deadline).min() {
                    pause = pause.min(deadline);
                }
            }
            tokio::time::sleep_until(pause.into()).await;
        }
    }

    async fn attempt(&mut self, batch: &[Append], marker: &str, retry: bool) -> Attempt {
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut client) = client else {
            return Attempt::NotSent;
        };
        let far_from_bound =
            ((self.last_len + batch.len()) as f64) < self.max_len as f64 * FAST_PATH_SHARE;
        // A retry always goes through the script: it reads the marker first.
        let result = if far_from_bound && !retry {
            self.append_all(&mut client, batch, marker)
                .await
                .map(|len| (batch.len(), len))
        } else {
            self.append_bounded(&mut client, batch, marker).await
        };
        match result {
            Ok((appended, len)) => {
                self.last_len = len;
                Attempt::Appended(appended)
            }
            Err(e) => {
                self.last_len = self.max_len;
                tracing::warn!(error = %e, messages = batch.len(), "cannot queue writes in Redis: retrying");
                if e.is_connection_refusal() {
                    Attempt::NotSent
                } else {
                    Attempt::Unknown
                }
            }
        }
    }

    /// Append every message and the marker in one transaction; returns the
    /// new length.
    async fn append_all(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
        marker: &str,
    ) -> redis::RedisResult<usize> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for a in batch {
            let add = pipe.cmd("XADD").arg(&self.stream).arg("*");
            add.arg(FIELD_CHANNEL)
                .arg(&a.channel)
                .arg(FIELD_MESSAGE)
                .arg(&a.envelope);
            if !a.traceparent.is_empty() {
                add.arg(FIELD_TRACE).arg(&a.traceparent);
            }
            add.ignore();
        }
        pipe.cmd("SET")
            .arg(marker)
            .arg(batch.len())
            .arg("PX")
            .arg(MARKER_TTL.as_millis() as u64)
            .ignore();
        pipe.cmd("XLEN").arg(&self.stream);
        let (len,): (usize,) = pipe.query_async(client).await?;
        Ok(len)
    }

    /// Append in order while the stream is under the bound, unless the
    /// marker says the batch is in already; returns how many are in and
    /// the stream's length.
    async fn append_bounded(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
        marker: &str,
    ) -> redis::RedisResult<(usize, usize)> {
        let mut invocation = self.script.key(&self.stream);
        invocation
            .key(marker)
            .arg(self.max_len)
            .arg(MARKER_TTL.as_millis() as u64);
        for a in batch {
            invocation
                .arg(&a.channel)
                .arg(&a.envelope)
                .arg(&a.traceparent);
        }
        let (appended, len): (i64, i64) = invocation.invoke_async(client).await?;
        Ok((appended.max(0) as usize, len.max(0) as usize))
    }
}

/// Answer `Unavailable` to every message whose deadline has passed, and
/// drop it unsent.
fn refuse_expired(batch: &mut Vec<Append>) {
    let now = Instant::now();
    let (expired, live): (Vec<Append>, Vec<Append>) =
        batch.drain(..).partition(|a| a.deadline <= now);
    *batch = live;
    for append in expired {
        let _ = append.reply.send(Err(BusError::Unavailable));
    }
}

/// A name for this process in marker keys: unique enough that two gateways
/// (or two lives of one) never share a marker within its 30 s.
fn instance_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let random = RandomState::new().hash_one((nanos, std::process::id()));
    format!("{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_service::redis_client::{RedisConfig, TlsFiles};

    fn redis_url() -> String {
        std::env::var("PGWS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn append(
        text: &str,
        deadline: Instant,
    ) -> (Append, tokio::sync::oneshot::Receiver<Result<(), BusError>>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let a = Append {
            channel: "chat".into(),
            envelope: text.into(),
            traceparent: String::new(),
            deadline,
            reply,
        };
        (a, answer)
    }

    async fn xlen(client: &mut RedisClient, stream: &str) -> usize {
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(client)
            .await
            .expect("XLEN")
    }

    /// Against the shared Redis (own key prefix): a batch retried with its
    /// marker is not appended again, whichever path sent it first.
    #[tokio::test]
    async fn a_retried_batch_is_never_appended_twice() {
        let config = RedisConfig::parse(&redis_url(), false, TlsFiles::default()).expect("url");
        let mut client = RedisClient::connect(&config, None, Some(Duration::from_secs(5)))
            .await
            .expect("the test Redis");
        let prefix = format!("pgws-unit-{}-{}", std::process::id(), instance_id());
        let keys = KeySpace::new(&prefix);
        let slot = Arc::new(RwLock::new(Some(client.clone())));
        let mut appender = Appender::new(slot, keys.clone(), 1000);
        appender.last_len = 0; // far from the bound: the MULTI path first
        let later = Instant::now() + Duration::from_secs(60);
        let batch: Vec<Append> = (0..3).map(|i| append(&format!("m{i}"), later).0).collect();
        let marker = keys.append_marker("test", 1);
        assert!(matches!(
            appender.attempt(&batch, &marker, false).await,
            Attempt::Appended(3)
        ));
        assert_eq!(xlen(&mut client, &keys.writes()).await, 3);
        // The answer was lost; the retry finds the marker.
        assert!(matches!(
            appender.attempt(&batch, &marker, true).await,
            Attempt::Appended(3)
        ));
        assert_eq!(xlen(&mut client, &keys.writes()).await, 3, "appended twice");
        // A batch whose first send failed before Redis ran it: the retry
        // appends it, once.
        let marker2 = keys.append_marker("test", 2);
        assert!(matches!(
            appender.attempt(&batch, &marker2, true).await,
            Attempt::Appended(3)
        ));
        assert!(matches!(
            appender.attempt(&batch, &marker2, true).await,
            Attempt::Appended(3)
        ));
        assert_eq!(xlen(&mut client, &keys.writes()).await, 6);
        let _: () = redis::cmd("DEL")
            .arg(keys.writes())
            .arg(&marker)
            .arg(&marker2)
            .query_async(&mut client)
            .await
            .expect("clean up");
    }

    #[tokio::test]
    async fn a_message_never_sent_is_refused_at_its_deadline() {
        let slot = Arc::new(RwLock::new(None)); // no connection yet
        let mut appender = Appender::new(slot, KeySpace::new("p"), 1000);
        let (a, answer) = append("m", Instant::now() + Duration::from_millis(50));
        let mut batch = vec![a];
        tokio::time::timeout(Duration::from_secs(5), appender.settle(&mut batch))
            .await
            .expect("settled");
        assert_eq!(answer.await.expect("answered"), Err(BusError::Unavailable));
    }
}
