//! Standby listening (`PGWS_STANDBY_LISTEN=true`): every coordinator
//! LISTENs for its whole life, standbys keep what they hear, and a new
//! leader publishes what its predecessor did not before going live — a
//! failover that loses no notification (`docs/architecture.md`,
//! "Gapless takeover").
//!
//! * [`StreamSink`] is the listener's sink: it places each notification in
//!   the NOTIFY stream (`crate::stream`) and either keeps it in the standby
//!   buffer or hands it to this node's publisher while it leads.
//! * [`emit_markers`] is the leader's marker task; markers are signed with
//!   the coordinators' key ([`marker_key`]: a random secret kept in Redis),
//!   and the sink counts and ignores anything on the marker channel
//!   without a valid tag.
//! * [`take_over`] decides, from the buffer and the predecessor's progress,
//!   where the new leader resumes and in which continuity.

use crate::election::Lease;
use crate::publisher::{Positioned, PublisherSink};
use crate::stream::{
    plan, Buffered, Forged, Marker, MarkerId, MarkerKey, Plan, StandbyBuffer, StreamPos, Tracker,
};
use pgws_postgres::listener::{Notification, NotificationSink};
use pgws_postgres::pg::{self, PgConfig};
use pgws_protocol::keys::KeySpace;
use pgws_protocol::position::Continuity;
use pgws_service::events::RateLimit;
use pgws_service::redis_client::RedisClient;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The marker channel's name for a listen channel.
pub fn marker_channel(listen_channel: &str) -> String {
    format!("{listen_channel}.markers")
}

/// What standby listening counts.
#[derive(Clone)]
pub struct StandbyMetrics {
    buffered: IntGauge,
    heard: IntCounter,
    takeovers: IntCounterVec,
    replayed: IntCounter,
    markers: IntCounter,
    forged: IntCounter,
    forged_log: Arc<RateLimit>,
}

impl StandbyMetrics {
    /// Create and register.
    pub fn register(registry: &Registry) -> prometheus::Result<StandbyMetrics> {
        let m = StandbyMetrics {
            buffered: IntGauge::new(
                "pgws_standby_buffered",
                "Notifications a standby keeps for a takeover (PGWS_STANDBY_LISTEN)",
            )?,
            heard: IntCounter::new(
                "pgws_stream_markers_heard_total",
                "Stream markers this coordinator's listener heard",
            )?,
            takeovers: IntCounterVec::new(
                Opts::new(
                    "pgws_takeovers_total",
                    "Terms begun with standby listening, by outcome: gapless (resumed where the predecessor stopped), gap (the buffer did not reach back: a new epoch), fresh (no predecessor)",
                ),
                &["outcome"],
            )?,
            replayed: IntCounter::new(
                "pgws_takeover_replayed_total",
                "Buffered notifications a new leader handed to its publisher on taking over (those its predecessor had published are skipped and counted in pgws_notifications_already_published_total)",
            )?,
            markers: IntCounter::new(
                "pgws_stream_markers_sent_total",
                "Stream markers the leader notified",
            )?,
            forged: IntCounter::new(
                "pgws_stream_markers_forged_total",
                "Payloads on the marker channel without a valid tag under the coordinators' key (forged, or sent before the key was known): ignored",
            )?,
            forged_log: Arc::new(RateLimit::default()),
        };
        registry.register(Box::new(m.buffered.clone()))?;
        registry.register(Box::new(m.heard.clone()))?;
        registry.register(Box::new(m.takeovers.clone()))?;
        registry.register(Box::new(m.replayed.clone()))?;
        registry.register(Box::new(m.markers.clone()))?;
        registry.register(Box::new(m.forged.clone()))?;
        for outcome in ["gapless", "gap", "fresh"] {
            m.takeovers.with_label_values(&[outcome]);
        }
        Ok(m)
    }

    /// A payload on the marker channel was not a signed marker: counted,
    /// logged at most once a second.
    fn forged(&self, error: Forged) {
        self.forged.inc();
        if self.forged_log.allow() {
            tracing::warn!(total = self.forged.get(), %error, "ignored a forged stream marker");
        }
    }
}

enum Mode {
    /// Keeping what is heard.
    Standby(StandbyBuffer),
    /// Handing it to this node's publisher.
    Leading(Arc<PublisherSink>),
}

struct State {
    mode: Mode,
    tracker: Tracker,
}

/// The listener's sink on a coordinator that listens for its whole life.
pub struct StreamSink {
    state: Mutex<State>,
    capacity: usize,
    /// The last marker seen (a new leader waits for its own).
    seen: watch::Sender<Option<MarkerId>>,
    /// The key markers are signed with (none until read from Redis:
    /// markers are not trusted before).
    key: RwLock<Option<Arc<MarkerKey>>>,
    metrics: StandbyMetrics,
}

impl StreamSink {
    /// A sink that starts as a standby keeping `capacity` notifications.
    pub fn new(capacity: usize, metrics: StandbyMetrics) -> StreamSink {
        StreamSink {
            state: Mutex::new(State {
                mode: Mode::Standby(StandbyBuffer::new(capacity)),
                tracker: Tracker::default(),
            }),
            capacity,
            seen: watch::Sender::new(None),
            key: RwLock::new(None),
            metrics,
        }
    }

    /// The marker key as read from Redis (replaced when Redis holds
    /// another one, e.g. after it restarted empty).
    pub fn set_key(&self, text: &str) {
        let mut key = self.key.write().unwrap_or_else(|p| p.into_inner());
        if key.as_ref().is_none_or(|k| k.text() != text) {
            *key = Some(Arc::new(MarkerKey::new(text)));
        }
    }

    /// The marker key, once known.
    pub fn key(&self) -> Option<Arc<MarkerKey>> {
        self.key.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until marker `id` (or a later one) has been heard, at most
    /// `within`; whether it was.
    pub async fn heard(&self, id: MarkerId, within: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        let heard = tokio::time::timeout(within, async {
            seen.wait_for(|last| last.is_some_and(|l| l >= id))
                .await
                .is_ok()
        })
        .await;
        heard.unwrap_or(false)
    }

    /// Become the leader's feed: `start` is given the buffer (to decide
    /// what to replay, take it and start the publisher) and returns the
    /// plan and the publisher's sink; from then on everything heard goes
    /// to it. All under the sink's lock, so nothing heard meanwhile is lost
    /// or replayed twice.
    pub fn lead<F, T>(&self, start: F) -> (Plan, T)
    where
        F: FnOnce(&mut StandbyBuffer) -> (Plan, Arc<PublisherSink>, T),
    {
        let mut state = self.lock();
        let mut buffer = match std::mem::replace(
            &mut state.mode,
            Mode::Standby(StandbyBuffer::new(self.capacity)),
        ) {
            Mode::Standby(buffer) => buffer,
            Mode::Leading(_) => StandbyBuffer::new(self.capacity),
        };
        let (plan, publisher, started) = start(&mut buffer);
        self.metrics.buffered.set(0);
        state.mode = Mode::Leading(publisher);
        (plan, started)
    }

    /// Whether a takeover now would resume without a gap: this node
    /// stands by and its buffer reaches back to `progress` (the leader's
    /// last published position; none: no leader has published).
    pub fn reaches_back(&self, progress: Option<StreamPos>) -> bool {
        match &self.lock().mode {
            Mode::Standby(buffer) => buffer.reaches_back(progress),
            Mode::Leading(_) => false,
        }
    }

    /// The term ended: keep what is heard again, from now.
    pub fn stand_by(&self) {
        self.lock().mode = Mode::Standby(StandbyBuffer::new(self.capacity));
        self.metrics.buffered.set(0);
    }
}

impl StreamSink {
    /// A marker with a valid tag: positions count from it.
    fn marker(&self, marker: Marker) {
        let mut state = self.lock();
        let State { mode, tracker } = &mut *state;
        if tracker.marker(marker) {
            if let Mode::Standby(buffer) = mode {
                buffer.marker(marker);
            }
            self.metrics.heard.inc();
            self.seen.send_replace(Some(marker.id));
        }
    }
}

impl NotificationSink for StreamSink {
    fn deliver(&self, notification: Notification) {
        if notification.source != 0 {
            let opened = match self.key() {
                Some(key) => key.open(&notification.payload),
                None => Err(Forged),
            };
            match opened {
                Ok(marker) => self.marker(marker),
                Err(forged) => self.metrics.forged(forged),
            }
            return;
        }
        let mut state = self.lock();
        let State { mode, tracker } = &mut *state;
        let pos = tracker.place();
        match mode {
            Mode::Standby(buffer) => {
                buffer.push(Buffered { pos, notification });
                self.metrics.buffered.set(buffer.len() as i64);
            }
            Mode::Leading(publisher) => publisher.deliver_at(notification, pos),
        }
    }

    fn session_lost(&self) {
        let mut state = self.lock();
        state.tracker.reset();
        match &mut state.mode {
            Mode::Standby(buffer) => {
                buffer.clear();
                self.metrics.buffered.set(0);
            }
            Mode::Leading(publisher) => publisher.session_lost(),
        }
    }

    fn session_started(&self) {
        // A standby's buffer was emptied at the loss and fills from now on;
        // a leader's publisher ends the outage's continuity.
        if let Mode::Leading(publisher) = &self.lock().mode {
            publisher.session_started();
        }
    }
}

/// What the leader's marker task needs.
pub struct MarkerTask {
    /// Where to NOTIFY.
    pub db: PgConfig,
    /// The marker channel.
    pub channel: String,
    /// The coordinators' key markers are signed with.
    pub key: Arc<MarkerKey>,
    /// This term's fencing epoch.
    pub epoch: u64,
    /// Time between markers.
    pub every: Duration,
    /// This term's lease.
    pub lease: Arc<Lease>,
    /// Metrics.
    pub metrics: StandbyMetrics,
}

/// The leader's marker task: marker `(epoch, 0)` at once, then one every
/// `every`, while the lease holds, until `term` ends.
pub async fn emit_markers(task: MarkerTask, term: CancellationToken) {
    let MarkerTask {
        db,
        channel,
        key,
        epoch,
        every,
        lease,
        metrics,
    } = task;
    let mut n = 0u64;
    let mut client = None;
    let mut tick = pgws_service::time::every(every);
    loop {
        if lease.valid() {
            if client.is_none() {
                client = connect(&db, &term).await;
            }
            if let Some(c) = &client {
                let marker = Marker {
                    id: MarkerId { epoch, n },
                    sent_ms: pgws_protocol::clock::unix_now().as_millis() as u64,
                };
                match c
                    .execute("SELECT pg_notify($1, $2)", &[&channel, &key.sign(&marker)])
                    .await
                {
                    Ok(_) => {
                        metrics.markers.inc();
                        n += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %pg::error_chain(&e), "cannot send a stream marker");
                        client = None;
                    }
                }
            }
        }
        tokio::select! {
            _ = term.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

async fn connect(db: &PgConfig, term: &CancellationToken) -> Option<tokio_postgres::Client> {
    let connecting = pg::connect(db, pg::MARKER_APP_NAME);
    let (client, connection) = tokio::select! {
        _ = term.cancelled() => return None,
        c = connecting => match c {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect for stream markers");
                return None;
            }
        },
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "marker connection ended");
        }
    });
    Some(client)
}

/// Why the marker key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MarkerKeyError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The system gave no random bytes.
    #[error("no random bytes for a new marker key")]
    Random,
    /// The key was deleted between writing and reading it.
    #[error("the marker key vanished from Redis")]
    Vanished,
}

/// The coordinators' marker key from Redis, made (random) by the first
/// coordinator that finds none.
pub async fn marker_key(
    redis: &mut RedisClient,
    keys: &KeySpace,
) -> Result<String, MarkerKeyError> {
    let fresh = MarkerKey::generate().map_err(|_| MarkerKeyError::Random)?;
    let _: Option<String> = redis::cmd("SET")
        .arg(keys.marker_key())
        .arg(&fresh)
        .arg("NX")
        .query_async(redis)
        .await?;
    let stored: Option<String> = redis::cmd("GET")
        .arg(keys.marker_key())
        .query_async(redis)
        .await?;
    stored.ok_or(MarkerKeyError::Vanished)
}

/// The stream position of the leader's last published notification, as
/// recorded in `{p}:progress`.
pub async fn progress(
    redis: &mut RedisClient,
    keys: &KeySpace,
) -> redis::RedisResult<Option<(StreamPos, u64)>> {
    let text: Option<String> = redis::cmd("GET")
        .arg(keys.progress())
        .query_async(redis)
        .await?;
    Ok(text.and_then(|text| {
        let (pos, ms) = text.rsplit_once(' ')?;
        Some((StreamPos::parse(pos)?, ms.parse().ok()?))
    }))
}

/// What a new leader needs to know about its predecessor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Predecessor {
    /// The stream position of its last published notification, and when
    /// it was recorded (Unix ms).
    pub progress: Option<(StreamPos, u64)>,
    /// The continuity it published in.
    pub continuity: Option<Continuity>,
}

/// Read the predecessor's progress and continuity from Redis.
pub async fn predecessor(
    redis: &mut RedisClient,
    keys: &KeySpace,
) -> redis::RedisResult<Predecessor> {
    let progress = progress(redis, keys).await?;
    let continuity: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(keys.continuity())
        .arg("t")
        .arg("s")
        .query_async(redis)
        .await?;
    let continuity = match continuity.as_slice() {
        [Some(term), Some(session)] => Some(Continuity {
            term: *term,
            session: *session,
        }),
        _ => None,
    };
    Ok(Predecessor {
        progress,
        continuity,
    })
}

/// The outcome of a takeover, for its log line and counter.
pub fn report(
    plan: &Plan,
    predecessor: &Predecessor,
    oldest: Option<Marker>,
    epoch: u64,
    metrics: &StandbyMetrics,
) {
    match plan {
        Plan::Fresh { .. } => {
            metrics.takeovers.with_label_values(&["fresh"]).inc();
            tracing::info!(epoch, "took over with no predecessor's progress recorded");
        }
        Plan::Resume { .. } => {
            metrics.takeovers.with_label_values(&["gapless"]).inc();
            tracing::info!(
                epoch,
                "took over where the predecessor stopped: nothing missed"
            );
        }
        Plan::Gap { reason, .. } => {
            metrics.takeovers.with_label_values(&["gap"]).inc();
            let window_ms = match (predecessor.progress, oldest) {
                (Some((_, at)), Some(marker)) => marker.sent_ms.saturating_sub(at),
                _ => 0,
            };
            tracing::warn!(
                epoch,
                reason,
                window_ms,
                "took over with a gap: notifications in the window may be lost; every channel starts a new epoch"
            );
        }
    }
}

/// The continuity a new leader publishes in: its predecessor's when it
/// resumes exactly where that one stopped, else a new one.
pub fn continuity_after(plan: &Plan, predecessor: &Predecessor, epoch: u64) -> Continuity {
    match (plan, predecessor.continuity) {
        (Plan::Resume { .. }, Some(inherited)) => inherited,
        _ => Continuity {
            term: epoch,
            session: 1,
        },
    }
}

/// Decide where to resume (the buffer is current when the leader heard
/// its own first marker).
pub fn decide(buffer: &StandbyBuffer, predecessor: &Predecessor, current: bool) -> Plan {
    plan(buffer, predecessor.progress.map(|(p, _)| p), current)
}

/// Take over: called by the node once the lock is won. `start` starts the
/// publisher in the given continuity with the notifications to replay, and
/// returns its sink and whatever the caller keeps of it.
pub fn take_over<T>(
    sink: &StreamSink,
    predecessor: &Predecessor,
    current: bool,
    epoch: u64,
    start: impl FnOnce(Continuity, Vec<Positioned>) -> (Arc<PublisherSink>, T),
) -> (Plan, T) {
    let mut oldest = None;
    let (decided, started) = sink.lead(|buffer| {
        oldest = buffer.oldest_marker();
        let plan = decide(buffer, predecessor, current);
        let from = match &plan {
            Plan::Fresh { from } | Plan::Resume { from } | Plan::Gap { from, .. } => *from,
        };
        let replay: Vec<Positioned> = buffer
            .take_from(from)
            .into_iter()
            .map(|b| (b.notification, b.pos))
            .collect();
        sink.metrics.replayed.inc_by(replay.len() as u64);
        let (publisher, started) = start(continuity_after(&plan, predecessor, epoch), replay);
        (plan, publisher, started)
    });
    report(&decided, predecessor, oldest, epoch, &sink.metrics);
    (decided, started)
}
