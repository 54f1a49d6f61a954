//! Writers' messages into the `{p}:writes` stream, batched: one appender
//! task takes the messages of all sockets, up to [`APPEND_BATCH`] per
//! Redis call. Far from the bound a batch is one `MULTI`/`XADD…`/`XLEN`/
//! `EXEC`; near it, a script checks the bound message by message. While
//! Redis is unreachable (restarting, failing over behind Sentinel) a batch
//! is retried until each writer's deadline; a message whose deadline passed
//! before it was ever sent is refused, unsent.

use super::super::BusError;
use pgws_coordinator::redis_client::RedisClient;
use pgws_protocol::keys::{FIELD_CHANNEL, FIELD_MESSAGE, FIELD_TRACE};
use redis::Script;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Append a batch near the bound: ARGV = max length, then (channel,
/// envelope, traceparent) per message; `{c}`/`{m}`/`{t}` become the field
/// names of `pgws_protocol::keys`. Appends in order until the stream holds
/// the maximum; returns how many were appended (the rest are refused) and
/// the stream's length.
const APPEND: &str = r"
local length = redis.call('XLEN', KEYS[1])
local max = tonumber(ARGV[1])
local appended = 0
for i = 2, #ARGV, 3 do
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
return {appended, length}";

/// Most messages appended in one call.
const APPEND_BATCH: usize = 256;
/// Below this share of `PGWS_WRITE_STREAM_MAX_LEN` (as last seen) a batch is
/// appended with a plain `MULTI`/`XADD…`/`XLEN`/`EXEC`; above it, with the
/// script that checks the bound message by message. The script costs Redis
/// about 3 µs per message more than a plain `XADD` (measured with `INFO
/// commandstats`); the half of the bound left as headroom absorbs whatever
/// other gateways append between two of our batches.
const FAST_PATH_SHARE: f64 = 0.5;
/// Writes waiting for the appender before writers wait.
pub const APPEND_QUEUE: usize = 4096;
/// Pause between attempts while Redis does not answer.
const APPEND_RETRY: Duration = Duration::from_millis(250);

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

/// One writer's message on its way to the stream.
pub struct Append {
    pub channel: String,
    pub envelope: String,
    pub traceparent: String,
    /// After this the writer is told `Unavailable`, and the message is not
    /// sent any more.
    pub deadline: Instant,
    pub reply: tokio::sync::oneshot::Sender<Result<(), BusError>>,
}

/// Batches writers' messages into one Redis call per batch.
pub struct Appender {
    slot: Arc<RwLock<Option<RedisClient>>>,
    stream: String,
    max_len: usize,
    script: Script,
    /// The stream's length after our last append (the bound until known).
    last_len: usize,
}

impl Appender {
    /// Append until every sender is gone.
    pub async fn run(mut self, mut appends: mpsc::Receiver<Append>) {
        let mut batch = Vec::with_capacity(APPEND_BATCH);
        while appends.recv_many(&mut batch, APPEND_BATCH).await > 0 {
            // While Redis is unreachable (restarting, or failing over behind
            // Sentinel) the batch is retried until each writer's deadline.
            loop {
                refuse_expired(&mut batch);
                let Some(first_deadline) = batch.iter().map(|a| a.deadline).min() else {
                    break;
                };
                if let Ok(appended) = self.append(&batch).await {
                    for (i, append) in batch.drain(..).enumerate() {
                        let result = if i < appended {
                            Ok(())
                        } else {
                            Err(BusError::Full)
                        };
                        let _ = append.reply.send(result);
                    }
                    break;
                }
                let pause = (Instant::now() + APPEND_RETRY).min(first_deadline);
                tokio::time::sleep_until(pause.into()).await;
            }
        }
    }

    /// How many of `batch` (a prefix) were appended; Err when Redis failed.
    async fn append(&mut self, batch: &[Append]) -> Result<usize, ()> {
        let client = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut client) = client else {
            return Err(());
        };
        let far_from_bound =
            ((self.last_len + batch.len()) as f64) < self.max_len as f64 * FAST_PATH_SHARE;
        let result = if far_from_bound {
            self.append_all(&mut client, batch)
                .await
                .map(|len| (batch.len(), len))
        } else {
            self.append_bounded(&mut client, batch).await
        };
        match result {
            Ok((appended, len)) => {
                self.last_len = len;
                Ok(appended)
            }
            Err(e) => {
                self.last_len = self.max_len;
                tracing::warn!(error = %e, messages = batch.len(), "cannot queue writes in Redis");
                Err(())
            }
        }
    }

    /// Append every message in one transaction; returns the new length.
    async fn append_all(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
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
        pipe.cmd("XLEN").arg(&self.stream);
        let (len,): (usize,) = pipe.query_async(client).await?;
        Ok(len)
    }

    /// Append in order while the stream is under the bound; returns how
    /// many were appended and the new length.
    async fn append_bounded(
        &self,
        client: &mut RedisClient,
        batch: &[Append],
    ) -> redis::RedisResult<(usize, usize)> {
        let mut invocation = self.script.key(&self.stream);
        invocation.arg(self.max_len);
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

impl Appender {
    /// An appender to `stream`, bounded at `max_len`, using whatever client
    /// the link keeps in `slot`.
    pub fn new(slot: Arc<RwLock<Option<RedisClient>>>, stream: String, max_len: usize) -> Appender {
        Appender {
            slot,
            stream,
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
}
