//! The workload and what it observed: numbered notifications on several
//! channels (`pg_notify` on the listen channel, straight to PostgreSQL),
//! v1 and v2 readers of every channel on every gateway (v2 readers drop
//! their socket now and then and recover from their last position, and
//! recover on any offset gap), numbered v2 `publish` writes on every
//! gateway, and a direct `LISTEN` on the listen channel that records which
//! writes became NOTIFYs. Every task runs until the stop signal and
//! returns its history for the checker; none of them panics on a fault.

use crate::rng::Rng;
use futures_util::{SinkExt, StreamExt};
use pgws_testkit::token;
use pgws_testkit::ws::{try_connect, Ws};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Seconds since the run started: every history's time axis.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    /// Seconds since the start.
    pub fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// One notification the notifier sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its number on its channel, from 1.
    pub num: u64,
    /// When `pg_notify` was sent.
    pub at: f64,
    /// `true`: committed; `false`: ambiguous (the connection failed before
    /// the answer — it may or may not have committed).
    pub committed: bool,
}

/// What one v1 reader received.
#[derive(Debug, Clone, Default)]
pub struct V1Log {
    /// Gateway index.
    pub gateway: usize,
    /// Channel index.
    pub channel: usize,
    /// Numbers received, with their arrival time.
    pub got: Vec<(u64, f64)>,
    /// Intervals without a socket: `(from, to)`.
    pub down: Vec<(f64, f64)>,
}

/// One thing a v2 reader saw, in order.
#[derive(Debug, Clone)]
pub enum V2Event {
    /// A `subscribe` reply.
    Subscribed {
        /// When.
        at: f64,
        /// The position sent as `since`.
        since: Option<(String, u64)>,
        /// The reply's epoch and offset.
        epoch: String,
        /// The reply's offset.
        offset: u64,
        /// `recovered` (absent without `since`).
        recovered: Option<bool>,
        /// `replayed`.
        replayed: u64,
    },
    /// A message frame.
    Message {
        /// When.
        at: f64,
        /// Its epoch.
        epoch: String,
        /// Its offset.
        offset: u64,
        /// The number in its payload.
        num: u64,
    },
    /// The socket ended (or was dropped on purpose).
    Down {
        /// When.
        at: f64,
        /// Why.
        why: String,
    },
}

/// What one v2 reader saw.
#[derive(Debug, Clone, Default)]
pub struct V2Log {
    /// Gateway index.
    pub gateway: usize,
    /// Channel index.
    pub channel: usize,
    /// Everything, in order.
    pub events: Vec<V2Event>,
}

/// One writer's numbered writes.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    /// Gateway index.
    pub gateway: usize,
    /// Acknowledged writes: payload and the time of the reply.
    pub acked: Vec<(String, f64)>,
    /// Writes sent without a reply (socket lost) or with an error reply.
    pub unacked: usize,
}

/// What the direct `LISTEN` recorded.
#[derive(Debug, Clone, Default)]
pub struct RecorderLog {
    /// Write payloads seen as NOTIFYs, with time.
    pub seen: Vec<(String, f64)>,
    /// Intervals when the recorder was not listening.
    pub blind: Vec<(f64, f64)>,
}

/// Connect a plain client (Unix socket, no TLS), its connection driven in
/// the background.
async fn pg_connect(conninfo: &str) -> Option<tokio_postgres::Client> {
    let fut = tokio_postgres::connect(conninfo, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()?
        .ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Send numbered notifications round-robin over `channels` every `tick`
/// until stopped; returns what was sent per channel. `outbox`: each is
/// `SELECT pgws.send(payload)` in its own autocommitted transaction, so
/// the statement's answer is its COMMIT's: committed only when it returned,
/// ambiguous ("maybe") when the connection broke first.
pub async fn notifier(
    conninfo: String,
    listen: String,
    channels: Vec<String>,
    tick: Duration,
    outbox: bool,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> Vec<Vec<Sent>> {
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); channels.len()];
    let mut client: Option<tokio_postgres::Client> = None;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    while !*stop.borrow() {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        if client.is_none() {
            client = pg_connect(&conninfo).await;
        }
        let Some(c) = &client else { continue };
        let ch = turn % channels.len();
        turn += 1;
        let num = sent[ch].len() as u64 + 1;
        let text = json!({"channel": channels[ch], "payload": num.to_string()}).to_string();
        let at = clock.now();
        let (sql, params): (&str, [&(dyn tokio_postgres::types::ToSql + Sync); 2]) = if outbox {
            // `$2` (the listen channel) is ignored, so both forms take the
            // same parameters: `pgws.send` routes by the payload's channel.
            (
                "SELECT pgws.send($2) FROM (SELECT $1::text) AS l",
                [&listen, &text],
            )
        } else {
            ("SELECT pg_notify($1, $2)", [&listen, &text])
        };
        let r = tokio::time::timeout(Duration::from_secs(2), c.execute(sql, &params)).await;
        let committed = matches!(r, Ok(Ok(_)));
        if !committed {
            client = None;
        }
        sent[ch].push(Sent { num, at, committed });
    }
    sent
}

/// The number in a delivered payload (`None` for anything else).
fn number(payload: &str) -> Option<u64> {
    payload.parse().ok()
}

/// A v1 reader of `channel` on `url` (a gateway's base URL), reconnecting
/// whenever its socket ends.
pub async fn v1_reader(
    base: String,
    gateway: usize,
    channel: (usize, String),
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> V1Log {
    let mut log = V1Log {
        gateway,
        channel: channel.0,
        ..V1Log::default()
    };
    let url = format!("{base}/{}/{}", channel.1, token(json!({"mode": "r"})));
    let mut down_since = Some(clock.now());
    while !*stop.borrow() {
        let Ok(mut ws) = try_connect_url(&url).await else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        if let Some(from) = down_since.take() {
            log.down.push((from, clock.now()));
        }
        loop {
            let frame = tokio::select! {
                f = ws.next() => f,
                _ = stop.changed() => return log,
            };
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    if let Some(n) = v["payload"].as_str().and_then(number) {
                        log.got.push((n, clock.now()));
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        down_since = Some(clock.now());
    }
    log
}

async fn try_connect_url(url: &str) -> Result<Ws, (u16, String)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request().map_err(|e| (0, e.to_string()))?;
    try_connect(request).await
}

/// Why a v2 reader's socket session ended.
enum End {
    Stop,
    Lost(String),
    Planned,
    Gap(u64, u64),
}

/// A v2 reader of `channel` on `base`: subscribes (from its last position
/// once it has one), reads, drops its socket every 1.5–4 s (seeded) and
/// recovers, and recovers at once on an offset gap in one epoch.
pub async fn v2_reader(
    base: String,
    gateway: usize,
    channel: (usize, String),
    seed: u64,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> V2Log {
    let mut rng = Rng::new(seed);
    let mut log = V2Log {
        gateway,
        channel: channel.0,
        events: Vec::new(),
    };
    let url = format!("{base}/{}", token(json!({"mode": "r"})));
    let mut pos: Option<(String, u64)> = None;
    while !*stop.borrow() {
        let end = v2_session(
            &url,
            &channel.1,
            &mut pos,
            Duration::from_millis(rng.range(1500, 4000)),
            clock,
            &mut log,
            &mut stop,
        )
        .await;
        let why = match end {
            End::Stop => return log,
            End::Lost(why) => why,
            End::Planned => "planned reconnect".into(),
            End::Gap(want, got) => format!("offset gap: wanted {want}, got {got}"),
        };
        log.events.push(V2Event::Down {
            at: clock.now(),
            why: why.clone(),
        });
        if !why.starts_with("planned") && !why.starts_with("offset") {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
        }
    }
    log
}

/// One socket's life: connect, subscribe from `pos`, read until `life`
/// ends, the socket fails, a gap shows or the run stops.
async fn v2_session(
    url: &str,
    channel: &str,
    pos: &mut Option<(String, u64)>,
    life: Duration,
    clock: Clock,
    log: &mut V2Log,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let request = pgws_testkit::v2_request(url);
    let mut ws = match try_connect(request).await {
        Ok(ws) => ws,
        Err((code, why)) => return End::Lost(format!("connect: {code} {why}")),
    };
    let mut command = json!({"type": "subscribe", "id": 1, "channel": channel});
    if let Some((epoch, offset)) = pos.as_ref() {
        command["since"] = json!({"epoch": epoch, "offset": offset});
    }
    if ws.send(Message::text(command.to_string())).await.is_err() {
        return End::Lost("send subscribe".into());
    }
    let deadline = tokio::time::Instant::now() + life;
    let mut subscribed = false;
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(Duration::from_secs(10), ws.next()) => f,
            _ = tokio::time::sleep_until(deadline), if subscribed => return End::Planned,
            _ = stop.changed() => return End::Stop,
        };
        let text = match frame {
            Err(_) => return End::Lost("no frame for 10 s".into()),
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(c)))) => return End::Lost(format!("closed: {c:?}")),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return End::Lost(e.to_string()),
            Ok(None) => return End::Lost("socket ended".into()),
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("reply") if v["id"] == 1 => {
                if v.get("error").is_some() {
                    return End::Lost(format!("subscribe refused: {}", v["error"]));
                }
                let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                let offset = v["offset"].as_u64().unwrap_or(0);
                let recovered = v["recovered"].as_bool();
                log.events.push(V2Event::Subscribed {
                    at: clock.now(),
                    since: pos.clone(),
                    epoch: epoch.clone(),
                    offset,
                    recovered,
                    replayed: v["replayed"].as_u64().unwrap_or(0),
                });
                match recovered {
                    // Replayed messages follow and move the position.
                    Some(true) => {}
                    _ => *pos = Some((epoch, offset)),
                }
                subscribed = true;
            }
            Some("message") => {
                let epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                let offset = v["offset"].as_u64().unwrap_or(0);
                if let Some((last_epoch, last)) = pos.as_ref() {
                    if *last_epoch == epoch && offset != last + 1 && offset > *last {
                        return End::Gap(last + 1, offset);
                    }
                }
                // `data` is the v1 frame's text; the number is its payload.
                let inner: Value = v["data"]
                    .as_str()
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or(Value::Null);
                if let Some(num) = inner["payload"].as_str().and_then(number) {
                    log.events.push(V2Event::Message {
                        at: clock.now(),
                        epoch: epoch.clone(),
                        offset,
                        num,
                    });
                }
                *pos = Some((epoch, offset));
            }
            _ => {}
        }
    }
}

/// A writer on `base`: a numbered v2 `publish` on `channel` every `tick`,
/// one at a time; a reply without error is an acknowledgement.
pub async fn writer(
    base: String,
    gateway: usize,
    channel: String,
    tick: Duration,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> WriterLog {
    let mut log = WriterLog {
        gateway,
        ..WriterLog::default()
    };
    let url = format!("{base}/{}", token(json!({"mode": "w"})));
    let mut n = 0u64;
    while !*stop.borrow() {
        let Ok(mut ws) = try_connect(pgws_testkit::v2_request(&url)).await else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return log,
            }
            n += 1;
            let payload = format!("w{gateway}-{n}");
            let command = json!({"type": "publish", "id": n, "channel": channel, "data": payload});
            if ws.send(Message::text(command.to_string())).await.is_err() {
                log.unacked += 1;
                break;
            }
            match publish_reply(&mut ws, n).await {
                Some(true) => log.acked.push((payload, clock.now())),
                Some(false) => log.unacked += 1,
                None => {
                    log.unacked += 1;
                    break;
                }
            }
        }
    }
    log
}

/// The reply to publish `id`: `Some(true)` ok, `Some(false)` an error
/// reply, `None` the socket failed first.
async fn publish_reply(ws: &mut Ws, id: u64) -> Option<bool> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .ok()??;
        let Ok(Message::Text(t)) = frame else {
            if frame.is_err() {
                return None;
            }
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        if v["type"] == "reply" && v["id"] == id {
            return Some(v.get("error").is_none());
        }
    }
}

/// LISTEN on the listen channel directly in PostgreSQL and record every
/// writer's message that arrives as a NOTIFY, re-listening after a lost
/// connection (the time without a LISTEN is recorded as blind).
pub async fn recorder(
    conninfo: String,
    listen: String,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) -> RecorderLog {
    let mut log = RecorderLog::default();
    let mut blind_since = Some(clock.now());
    while !*stop.borrow() {
        let fut = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls);
        let Ok(Ok((client, mut connection))) =
            tokio::time::timeout(Duration::from_secs(2), fut).await
        else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let sql = format!("LISTEN \"{listen}\"");
        let listening = client.batch_execute(&sql);
        tokio::pin!(listening);
        let mut ok = false;
        loop {
            tokio::select! {
                r = &mut listening, if !ok => {
                    if r.is_err() { break; }
                    ok = true;
                    if let Some(from) = blind_since.take() {
                        log.blind.push((from, clock.now()));
                    }
                }
                m = messages.next() => match m {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        let v: Value = serde_json::from_str(n.payload()).unwrap_or(Value::Null);
                        if v["event"] == "WebsocketMessage" {
                            if let Some(p) = v["payload"].as_str() {
                                log.seen.push((p.to_string(), clock.now()));
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = stop.changed() => return log,
            }
        }
        if blind_since.is_none() {
            blind_since = Some(clock.now());
        }
    }
    log
}
