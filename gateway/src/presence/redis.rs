//! Presence in Redis (cluster mode): the writer, the heartbeat, the sweep
//! and the queries.
//!
//! * **Writer**: one task applies this gateway's joins and leaves one at a
//!   time, in the order they happened, each with one script on the
//!   channel's keys that updates its presence hash and users count and
//!   publishes the event on its pub/sub channel. Before a channel's first
//!   local member it adds the channel to `{p}:presence:<gateway>`, after its
//!   last it removes it. A change that fails is retried until Redis answers
//!   (every script is idempotent); the queue to the writer is bounded
//!   ([`QUEUE`]): beyond it changes are dropped and counted.
//! * **Heartbeat**: every ttl/3 the gateway's score in `{p}:presence` moves
//!   to Redis time + ttl. If the gateway was not listed any more (it was
//!   swept as dead: a stall, a partition), it re-adds all its members
//!   (with join events).
//! * **Sweep**: every ttl/3 each gateway claims, one at a time, a gateway
//!   whose score has passed (the claim is a lease: another sweeper takes
//!   over if this one dies), removes its entries from every channel it was
//!   on — each with a leave event — and then the gateway itself.
//! * **Occupancy** (`PGWS_OCCUPANCY_EVENTS`, [`super::occupancy`]): the
//!   join script that gives a channel its first client while its occupied
//!   flag is unset sets it, and this gateway sends `ChannelOccupied`; the
//!   leave (or sweep) that takes its last client stamps the flag with a
//!   token, and a grace later this gateway runs the vacancy check, which
//!   deletes the flag — and this gateway sends `ChannelVacated` — only if
//!   the channel is still empty and the token still its own.
//! * **Queries** read the channel's hashes: `HLEN` then `HGETALL` for
//!   `presence`, `HLEN` of both for `presence_stats`.

use super::occupancy::Occupancy;
use super::shared::{PresenceError, PresenceMetrics};
use super::store::Store;
use pgws_protocol::envelope::Event;
use pgws_protocol::keys::KeySpace;
use pgws_protocol::presence::{self, Change, Member};
use pgws_service::redis_client::{connect_with_backoff, RedisClient, RedisConfig};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// Changes waiting for Redis before new ones are dropped.
pub const QUEUE: usize = 100_000;

static JOIN: LazyLock<Script> = LazyLock::new(|| Script::new(presence::JOIN_SCRIPT));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(presence::LEAVE_SCRIPT));
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(presence::SWEEP_SCRIPT));
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(&presence::heartbeat_script()));
static VACATE: LazyLock<Script> = LazyLock::new(|| Script::new(presence::VACATE_SCRIPT));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(&presence::claim_script()));

/// Where presence keeps its entries.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// The Redis.
    pub redis: RedisConfig,
    /// The key layout.
    pub keys: KeySpace,
}

/// One change for the writer.
enum Op {
    Change {
        channel: Arc<str>,
        member: Member,
        change: Change,
        /// First member of the channel here (join), or last (leave).
        edge: bool,
    },
    /// Re-add every member of the store (this gateway was swept).
    Resync,
}

/// The handle.
pub struct RedisPresence {
    ops: mpsc::Sender<Op>,
    slot: Arc<RwLock<Option<RedisClient>>>,
    keys: KeySpace,
    metrics: PresenceMetrics,
    /// Raised when the writer has applied everything and left Redis.
    stopped: Arc<Notify>,
    done: Arc<AtomicBool>,
    stop: CancellationToken,
}

/// What the tasks share.
struct Shared {
    settings: RedisSettings,
    gateway: String,
    ttl: Duration,
    store: Arc<Store>,
    metrics: PresenceMetrics,
    slot: Arc<RwLock<Option<RedisClient>>>,
    /// `PGWS_OCCUPANCY_EVENTS`.
    occupancy: Option<Arc<Occupancy>>,
    /// Numbers this gateway's vacancy tokens.
    tokens: AtomicU64,
}

impl Shared {
    fn client(&self) -> Option<RedisClient> {
        self.slot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A vacancy token no other leave of the cluster uses.
    fn token(&self) -> String {
        format!(
            "{}.{}",
            self.gateway,
            self.tokens.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// What a join or leave script answered, for occupancy: 2 is a
    /// transition (see [`presence::JOIN_SCRIPT`]).
    fn transition(&self, channel: &str, change: Change, answer: i64, token: String) {
        let Some(occupancy) = &self.occupancy else {
            return;
        };
        if answer != 2 {
            return;
        }
        match change {
            Change::Join => occupancy.send(&Arc::from(channel), Event::ChannelOccupied),
            Change::Leave => self.vacate_later(occupancy.clone(), channel, token),
        }
    }

    /// A grace from now, the vacancy check of `channel` with `token`.
    fn vacate_later(&self, occupancy: Arc<Occupancy>, channel: &str, token: String) {
        let Some(client) = self.client() else { return };
        let clients = self.settings.keys.presence_clients(channel);
        let flag = self.settings.keys.presence_occupied(channel);
        let channel: Arc<str> = Arc::from(channel);
        tokio::spawn(async move {
            tokio::time::sleep(occupancy.grace).await;
            let never = CancellationToken::new();
            let (clients, flag, token) = (&clients, &flag, &token);
            let answer = retry(&never, || {
                let mut client = client.clone();
                async move {
                    VACATE
                        .key(clients)
                        .key(flag)
                        .arg(token)
                        .invoke_async::<i64>(&mut client)
                        .await
                }
            })
            .await;
            match answer {
                Some(1) => occupancy.send(&channel, Event::ChannelVacated),
                Some(0) => occupancy.suppressed(),
                _ => {} // a later leave's check decides
            }
        });
    }
}

impl RedisPresence {
    /// Connect and start the writer, heartbeat and sweep tasks.
    pub fn start(
        settings: RedisSettings,
        gateway: String,
        ttl: Duration,
        store: Arc<Store>,
        metrics: PresenceMetrics,
        occupancy: Option<Arc<Occupancy>>,
    ) -> RedisPresence {
        let (ops, rx) = mpsc::channel(QUEUE);
        let slot = Arc::new(RwLock::new(None));
        let keys = settings.keys.clone();
        let shared = Arc::new(Shared {
            settings,
            gateway,
            ttl,
            store,
            metrics: metrics.clone(),
            slot: slot.clone(),
            occupancy,
            tokens: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let stopped = Arc::new(Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(
            shared,
            rx,
            ops.clone(),
            stop.clone(),
            stopped.clone(),
            done.clone(),
        ));
        RedisPresence {
            ops,
            slot,
            keys,
            metrics,
            stopped,
            done,
            stop,
        }
    }

    /// Queue a change for Redis (never waits).
    pub fn change(&self, channel: Arc<str>, member: Member, change: Change, edge: bool) {
        let op = Op::Change {
            channel,
            member,
            change,
            edge,
        };
        if self.ops.try_send(op).is_err() {
            self.metrics.dropped.inc();
            tracing::warn!("presence queue full: a change was not written to Redis");
        }
    }

    fn client(&self) -> Result<RedisClient, PresenceError> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(PresenceError::Unavailable)
    }

    /// The entries of `channel`, at most `max`.
    pub async fn list(&self, channel: &str, max: usize) -> Result<Vec<String>, PresenceError> {
        let mut client = self.client()?;
        let key = self.keys.presence_clients(channel);
        let query = async {
            let count: u64 = redis::cmd("HLEN")
                .arg(&key)
                .query_async(&mut client)
                .await?;
            if count > max as u64 {
                return Ok(Err(PresenceError::TooMany(count)));
            }
            let values: Vec<Vec<u8>> = redis::cmd("HVALS")
                .arg(&key)
                .query_async(&mut client)
                .await?;
            Ok::<_, redis::RedisError>(Ok(values
                .iter()
                .filter_map(|v| presence::stored_entry(v))
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect()))
        };
        match tokio::time::timeout(Duration::from_secs(5), query).await {
            Ok(Ok(answer)) => answer,
            _ => Err(PresenceError::Unavailable),
        }
    }

    /// `(clients, users)` of `channel`.
    pub async fn stats(&self, channel: &str) -> Result<(u64, u64), PresenceError> {
        let mut client = self.client()?;
        let mut pipe = redis::pipe();
        pipe.cmd("HLEN")
            .arg(self.keys.presence_clients(channel))
            .cmd("HLEN")
            .arg(self.keys.presence_users(channel));
        let query = pipe.query_async::<(u64, u64)>(&mut client);
        match tokio::time::timeout(Duration::from_secs(5), query).await {
            Ok(Ok(counts)) => Ok(counts),
            _ => Err(PresenceError::Unavailable),
        }
    }

    /// Apply what is queued, then leave Redis, by `deadline`.
    pub async fn stop(&self, deadline: Instant) {
        self.stop.cancel();
        if self.done.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout_at(deadline.into(), self.stopped.notified()).await;
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Op>,
    ops: mpsc::Sender<Op>,
    stop: CancellationToken,
    stopped: Arc<Notify>,
    done: Arc<AtomicBool>,
) {
    let never = CancellationToken::new();
    let Some(mut client) =
        connect_with_backoff(&shared.settings.redis, None, None, &stop, |_| {}).await
    else {
        done.store(true, Ordering::Release);
        stopped.notify_one();
        return;
    };
    *shared.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
    // Listed before any entry exists, so a death is always swept.
    retry(&never, || heartbeat(&shared, client.clone())).await;
    let beats = tokio::spawn(beat(shared.clone(), ops, stop.clone()));
    let sweeps = tokio::spawn(sweep_loop(shared.clone(), stop.clone()));
    loop {
        let op = tokio::select! {
            op = rx.recv() => op,
            _ = stop.cancelled() => None,
        };
        let Some(op) = op else { break };
        apply(&shared, &mut client, op, &never).await;
    }
    // Draining: what the ending sessions queued, then off Redis.
    rx.close();
    while let Ok(op) = rx.try_recv() {
        apply(&shared, &mut client, op, &stop_soon()).await;
    }
    beats.abort();
    sweeps.abort();
    let keys = &shared.settings.keys;
    let _: Result<(), _> = redis::cmd("ZREM")
        .arg(keys.presence_gateways())
        .arg(&shared.gateway)
        .query_async(&mut client)
        .await;
    let _: Result<(), _> = redis::cmd("DEL")
        .arg(keys.presence_gateway_channels(&shared.gateway))
        .query_async(&mut client)
        .await;
    done.store(true, Ordering::Release);
    stopped.notify_one();
}

/// A token cancelled after a short while: changes at shutdown are not
/// retried for long.
fn stop_soon() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        cancel.cancel();
    });
    token
}

/// Run `attempt` until it succeeds or `cancel`.
async fn retry<F, Fut, T>(cancel: &CancellationToken, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut logged = false;
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "presence: Redis failed, retrying");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn apply(shared: &Shared, client: &mut RedisClient, op: Op, cancel: &CancellationToken) {
    match op {
        Op::Change {
            channel,
            member,
            change,
            edge,
        } => {
            let token = shared.token();
            let answer = retry(cancel, || {
                write(
                    shared,
                    client.clone(),
                    &channel,
                    &member,
                    change,
                    edge,
                    &token,
                )
            })
            .await;
            if let Some(answer) = answer {
                shared.transition(&channel, change, answer, token);
            }
        }
        Op::Resync => {
            shared.metrics.resyncs.inc();
            for (channel, member) in shared.store.all() {
                let answer = retry(cancel, || {
                    write(
                        shared,
                        client.clone(),
                        &channel,
                        &member,
                        Change::Join,
                        true,
                        "",
                    )
                })
                .await;
                if let Some(answer) = answer {
                    shared.transition(&channel, Change::Join, answer, String::new());
                }
            }
        }
    }
}

async fn write(
    shared: &Shared,
    mut client: RedisClient,
    channel: &str,
    member: &Member,
    change: Change,
    edge: bool,
    token: &str,
) -> redis::RedisResult<i64> {
    let keys = &shared.settings.keys;
    let channels = keys.presence_gateway_channels(&shared.gateway);
    if edge && change == Change::Join {
        let _: () = redis::cmd("SADD")
            .arg(&channels)
            .arg(channel)
            .query_async(&mut client)
            .await?;
    }
    let script = match change {
        Change::Join => &*JOIN,
        Change::Leave => &*LEAVE,
    };
    let last = match change {
        Change::Join if shared.occupancy.is_some() => "1",
        Change::Join => "0",
        Change::Leave => token,
    };
    let answer: i64 = script
        .key(keys.presence_clients(channel))
        .key(keys.presence_users(channel))
        .key(keys.presence_occupied(channel))
        .arg(&member.client)
        .arg(member.stored())
        .arg(&member.user)
        .arg(client.publish_command())
        .arg(keys.channel(channel))
        .arg(member.event(change))
        .arg(last)
        .invoke_async(&mut client)
        .await?;
    if edge && change == Change::Leave {
        let _: () = redis::cmd("SREM")
            .arg(&channels)
            .arg(channel)
            .query_async(&mut client)
            .await?;
    }
    Ok(answer)
}

/// This gateway's score in `{p}:presence`; whether it was still listed.
async fn heartbeat(shared: &Shared, mut client: RedisClient) -> redis::RedisResult<bool> {
    let listed: i64 = HEARTBEAT
        .key(shared.settings.keys.presence_gateways())
        .arg(&shared.gateway)
        .arg(shared.ttl.as_millis() as u64)
        .invoke_async(&mut client)
        .await?;
    Ok(listed == 1)
}

async fn beat(shared: Arc<Shared>, ops: mpsc::Sender<Op>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(client) = shared.client() else {
            continue;
        };
        match heartbeat(&shared, client).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    gateway = %shared.gateway,
                    "presence: this gateway was swept as dead; re-adding its members"
                );
                if ops.send(Op::Resync).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(client) = shared.client() else {
            continue;
        };
        if let Err(e) = sweep(&shared, client).await {
            tracing::warn!(error = %e, "presence sweep failed");
        }
    }
}

/// Claim and sweep every expired gateway.
async fn sweep(shared: &Shared, mut client: RedisClient) -> redis::RedisResult<()> {
    let keys = &shared.settings.keys;
    for _ in 0..64 {
        let dead: Option<String> = CLAIM
            .key(keys.presence_gateways())
            .arg(shared.ttl.as_millis() as u64)
            .invoke_async(&mut client)
            .await?;
        let Some(dead) = dead else { return Ok(()) };
        if dead == shared.gateway {
            continue; // stalled, not dead: its heartbeat lists it again
        }
        let set = keys.presence_gateway_channels(&dead);
        let channels: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut client)
            .await?;
        let mut removed = 0u64;
        for channel in &channels {
            let token = shared.token();
            let (n, emptied): (u64, i64) = SWEEP
                .key(keys.presence_clients(channel))
                .key(keys.presence_users(channel))
                .key(keys.presence_occupied(channel))
                .arg(format!("{dead}."))
                .arg(client.publish_command())
                .arg(keys.channel(channel))
                .arg(&token)
                .invoke_async(&mut client)
                .await?;
            removed += n;
            // An emptied channel is a last leave: 2 as the leave script.
            shared.transition(channel, Change::Leave, emptied * 2, token);
        }
        let _: () = redis::cmd("DEL").arg(&set).query_async(&mut client).await?;
        let _: () = redis::cmd("ZREM")
            .arg(keys.presence_gateways())
            .arg(&dead)
            .query_async(&mut client)
            .await?;
        shared.metrics.swept.inc_by(removed);
        tracing::info!(gateway = %dead, channels = channels.len(), entries = removed, "presence: swept a dead gateway");
    }
    Ok(())
}
