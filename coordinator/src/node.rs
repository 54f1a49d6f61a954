//! A coordinator node: standby until it wins the election, leader until it
//! loses the lease or is told to stop.
//!
//! ```text
//!        ┌──────── try_acquire every poll ────────┐
//!        ▼                                        │ lock held elsewhere
//!   ┌─────────┐  acquired (epoch)  ┌────────┐     │
//!   │ standby │ ─────────────────▶ │ leader │ ────┘ lease lapsed / lock lost /
//!   └─────────┘                    └────────┘       listener failed
//!        ▲ SIGTERM: exit              │ SIGTERM: stop term, release lock, exit
//! ```
//!
//! A term runs three tasks under one cancellation token: the listener (the
//! only LISTEN connection cluster-wide), the publisher it feeds, and the
//! forwarder of the writers' stream. Ending a term cancels all three before the
//! lock is released, so there is never a moment where two terms publish.
//!
//! With standby listening (`PGWS_STANDBY_LISTEN`, `crate::standby`) the
//! listener instead runs for the node's whole life, standbys keep what they
//! hear, and a term adds a fourth task — the stream markers, signed with
//! the key kept in Redis — and begins with the takeover: the new leader
//! resumes where its predecessor stopped. A standby whose buffer does not
//! reach back to the last publish defers to one whose buffer does
//! (`crate::election`, readiness), for a bounded time.

use crate::config::CoordinatorConfig;
use crate::election::{self, Attempt, Election, ElectionMetrics, Lease, Readiness};
use crate::forwarder::{Forwarder, ForwarderMetrics};
use crate::publisher::{Backlog, Publisher, PublisherMetrics, Publishing};
use crate::standby::{self, StandbyMetrics, StreamSink};
use crate::stream::MarkerId;
use anyhow::Context;
use pgws_postgres::listener::{self, ListenerConfig, ListenerMetrics, ListenerState};
use pgws_postgres::relay::{Notifier, RelayMetrics};
use pgws_service::admin::{self, AdminState};
use pgws_service::process::{bind, log_bound};
use pgws_service::redis_client::{connect_with_backoff, RedisClient, RESPONSE_TIMEOUT};
use prometheus::{IntGaugeVec, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a new leader waits for its first marker to come back through
/// its listener (and for Redis) before taking over without proof.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// Election rounds between two reads of the stream marker key.
const KEY_REFRESH: u64 = 25;

/// Whether this candidate is leaving a free lock to a capable standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deferral {
    /// Not deferring.
    No,
    /// Deferring since then.
    Since(Instant),
    /// Deferred its bound: takes the lock when free.
    Expired,
}

/// How a term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TermEnd {
    /// Shutdown requested: release and exit.
    Shutdown,
    /// The lease lapsed or the lock is someone else's: back to standby.
    LeaseLost,
    /// The listener gave up: release so another node can try.
    ListenerFailed,
}

struct Metrics {
    registry: Registry,
    election: ElectionMetrics,
    listener: ListenerMetrics,
    relay: RelayMetrics,
    publisher: PublisherMetrics,
    forwarder: ForwarderMetrics,
    standby: StandbyMetrics,
    /// Registered only with `PGWS_OUTBOX=true`, so its alerts stay quiet
    /// where it is off.
    outbox: Option<pgws_postgres::outbox::OutboxMetrics>,
}

impl Metrics {
    fn new(outbox: bool) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("pgws_build_info", "Build information"),
            &["version", "role"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "coordinator"])
            .set(1);
        registry.register(Box::new(build_info))?;
        Ok(Metrics {
            election: ElectionMetrics::register(&registry)?,
            listener: ListenerMetrics::register(&registry)?,
            relay: RelayMetrics::register(&registry)?,
            publisher: PublisherMetrics::register(&registry)?,
            forwarder: ForwarderMetrics::register(&registry)?,
            standby: StandbyMetrics::register(&registry)?,
            outbox: outbox
                .then(|| pgws_postgres::outbox::OutboxMetrics::register(&registry))
                .transpose()?,
            registry,
        })
    }
}

/// Run a coordinator until `shutdown`.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Metrics::new(config.outbox.is_some()).context("registering metrics")?;
    let (state_tx, state_rx) = watch::channel(ListenerState::Stopped);
    let leading = Arc::new(AtomicBool::new(false));
    let stop_admin = CancellationToken::new();
    let admin_task = match &config.admin {
        Some(addr) => {
            let listener = bind(addr)
                .await
                .context("PGWS_ADMIN_HOST/PGWS_ADMIN_PORT: cannot listen")?;
            log_bound("admin", &listener, false);
            let redis_up = metrics.election.redis_up.clone();
            let leading = leading.clone();
            let state = Arc::new(AdminState {
                registry: metrics.registry.clone(),
                readiness: Box::new(move || {
                    if redis_up.get() != 1 {
                        return Err("redis unreachable".into());
                    }
                    if leading.load(Ordering::Acquire)
                        && *state_rx.borrow() != ListenerState::Listening
                    {
                        return Err("leader, listener not listening yet".into());
                    }
                    Ok(())
                }),
            });
            Some(tokio::spawn(admin::serve(
                listener,
                state,
                stop_admin.clone(),
            )))
        }
        None => None,
    };

    let node = Node {
        stream: config
            .standby
            .as_ref()
            .map(|s| Arc::new(StreamSink::new(s.buffer, metrics.standby.clone()))),
        config,
        metrics,
        state: state_tx,
        leading,
    };
    let result = node.run(shutdown).await;
    stop_admin.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    result
}

struct Node {
    config: CoordinatorConfig,
    metrics: Metrics,
    state: watch::Sender<ListenerState>,
    leading: Arc<AtomicBool>,
    /// With standby listening: the lifelong listener's sink.
    stream: Option<Arc<StreamSink>>,
}

impl Node {
    async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // With standby listening the listener runs for the node's life; if
        // it gives up, so does the node (exit non-zero for a supervisor).
        let stop = shutdown.child_token();
        let lifelong = self.stream.clone().map(|sink| {
            let listening = tokio::spawn(listener::run(
                self.listener_config(),
                sink,
                self.state.clone(),
                self.metrics.listener.clone(),
                stop.clone(),
            ));
            let stop = stop.clone();
            tokio::spawn(async move {
                let outcome = listening.await;
                stop.cancel();
                match outcome {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow::anyhow!("listener task failed: {e}")),
                }
            })
        });
        let result = self.elect_and_lead(&stop).await;
        stop.cancel();
        if let Some(task) = lifelong {
            if let Ok(Err(e)) = task.await {
                if !shutdown.is_cancelled() {
                    return Err(e.context("the standby listener gave up"));
                }
            }
        }
        result
    }

    fn listener_config(&self) -> ListenerConfig {
        ListenerConfig {
            db: self.config.db.clone(),
            channel: self.config.listen_channel.clone(),
            also: self
                .config
                .standby
                .iter()
                .map(|s| s.marker_channel.clone())
                .collect(),
            retries: self.config.retries,
            check_interval: self.config.check_listener_interval,
        }
    }

    async fn elect_and_lead(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let shutdown = shutdown.clone();
        let Some(redis) = self.connect(&shutdown, Some(RESPONSE_TIMEOUT)).await else {
            return Ok(());
        };
        let Some(blocking) = self.connect(&shutdown, None).await else {
            return Ok(());
        };
        let mut election = Election::new(
            redis.clone(),
            self.config.keys.clone(),
            self.config.node_id.clone(),
            self.config.leader_ttl,
        );
        tracing::info!(node = %self.config.node_id, prefix = self.config.keys.prefix(), "standing by for election");
        loop {
            let lease = Arc::new(Lease::default());
            let Some(epoch) = self
                .stand_by(&mut election, &redis, &lease, &shutdown)
                .await
            else {
                return Ok(());
            };
            let end = self
                .lead(epoch, lease, &mut election, &redis, &blocking, &shutdown)
                .await;
            if end == TermEnd::Shutdown {
                return Ok(());
            }
            if end == TermEnd::ListenerFailed {
                // Give another node the first chance at the lock.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.config.leader_ttl) => {}
                }
            }
        }
    }

    /// Connect to Redis, retrying with backoff; None on shutdown.
    async fn connect(
        &self,
        shutdown: &CancellationToken,
        timeout: Option<Duration>,
    ) -> Option<RedisClient> {
        let up = &self.metrics.election.redis_up;
        connect_with_backoff(&self.config.redis, None, timeout, shutdown, |ok| {
            up.set(i64::from(ok))
        })
        .await
    }

    /// Poll for the lock until it is ours (Some(epoch)) or shutdown (None).
    async fn stand_by(
        &self,
        election: &mut Election,
        redis: &RedisClient,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> Option<u64> {
        let poll = (self.config.leader_ttl / 3).min(Duration::from_millis(200));
        let mut redis = redis.clone();
        let mut deferral = Deferral::No;
        for round in 0u64.. {
            let Some(readiness) = self.readiness(&mut redis, round, &mut deferral).await else {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(poll) => continue,
                }
            };
            self.metrics.election.attempts.inc();
            let sent = Instant::now();
            match election.try_acquire(readiness).await {
                Ok(Attempt::Won(epoch)) => {
                    lease.extend(sent, election.ttl());
                    self.metrics.election.redis_up.set(1);
                    return Some(epoch);
                }
                Ok(Attempt::Held) => {
                    self.metrics.election.redis_up.set(1);
                    deferral = Deferral::No;
                }
                Ok(Attempt::Deferred) => {
                    self.metrics.election.redis_up.set(1);
                    if deferral == Deferral::No {
                        deferral = Deferral::Since(Instant::now());
                        self.metrics.election.deferred.inc();
                        tracing::info!("leaving the free leader lock to a standby whose buffer reaches back to the last publish (this one's does not)");
                    }
                }
                Err(e) => {
                    self.metrics.election.redis_up.set(0);
                    tracing::warn!(error = %e, "election attempt failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        None
    }

    /// What this candidate says with its next attempt; None while, with
    /// standby listening, the marker key is not known yet (its buffer
    /// cannot be placed in the stream, and as leader it could not sign
    /// markers). The key is read again every [`KEY_REFRESH`] rounds, so a
    /// Redis that restarted empty (and got a new key) is followed.
    async fn readiness(
        &self,
        redis: &mut RedisClient,
        round: u64,
        deferral: &mut Deferral,
    ) -> Option<Readiness> {
        let Some(sink) = &self.stream else {
            return Some(Readiness::Plain);
        };
        if sink.key().is_none() || round % KEY_REFRESH == 0 {
            match standby::marker_key(redis, &self.config.keys).await {
                Ok(text) => sink.set_key(&text),
                Err(e) => {
                    self.metrics.election.redis_up.set(0);
                    tracing::warn!(error = %e, "cannot read the stream marker key");
                }
            }
        }
        sink.key()?;
        let capable = match standby::progress(redis, &self.config.keys).await {
            Ok(progress) => sink.reaches_back(progress.map(|(pos, _)| pos)),
            Err(_) => false,
        };
        self.metrics.election.capable.set(i64::from(capable));
        if capable {
            *deferral = Deferral::No;
            return Some(Readiness::Capable);
        }
        Some(match *deferral {
            Deferral::Since(since)
                if since.elapsed() >= self.config.leader_ttl * election::DEFER_TTLS =>
            {
                *deferral = Deferral::Expired;
                self.metrics.election.deferral_expired.inc();
                tracing::warn!(
                    waited_ms = since.elapsed().as_millis() as u64,
                    "no capable standby took the leader lock in time: taking it anyway"
                );
                Readiness::Forcing
            }
            Deferral::Expired => Readiness::Forcing,
            _ => Readiness::Waiting,
        })
    }

    async fn lead(
        &self,
        epoch: u64,
        lease: Arc<Lease>,
        election: &mut Election,
        redis: &RedisClient,
        blocking: &RedisClient,
        shutdown: &CancellationToken,
    ) -> TermEnd {
        tracing::info!(epoch, node = %self.config.node_id, "became leader");
        self.metrics.election.terms.inc();
        self.metrics.election.epoch.set(epoch as i64);
        self.metrics.election.leader.set(1);
        self.metrics.election.capable.set(0);
        self.leading.store(true, Ordering::Release);
        let term = CancellationToken::new();

        let publisher = |continuity, replay| Publisher {
            redis: redis.clone(),
            keys: self.config.keys.clone(),
            listen_channel: self.config.listen_channel.clone(),
            epoch,
            continuity,
            replay,
            lease: lease.clone(),
            history: self.config.history,
            metrics: self.metrics.publisher.clone(),
        };
        let (publishing, mut listener, markers) = match &self.stream {
            // The lifelong listener feeds the standby buffer: take over
            // from it.
            Some(sink) => {
                let markers = self.start_markers(epoch, &lease, &term);
                let publishing = self.take_over(sink, epoch, redis, &term, publisher).await;
                let pending =
                    tokio::spawn(std::future::pending::<Result<(), listener::ListenerError>>());
                (publishing, pending, Some(markers))
            }
            // The term's own listener: the only LISTEN connection.
            None => {
                let publishing = publisher(
                    pgws_protocol::position::Continuity {
                        term: epoch,
                        session: 1,
                    },
                    Vec::new(),
                )
                .start(term.clone());
                let listening = tokio::spawn(listener::run(
                    self.listener_config(),
                    publishing.sink.clone(),
                    self.state.clone(),
                    self.metrics.listener.clone(),
                    term.clone(),
                ));
                (publishing, listening, None)
            }
        };
        let mut forwarder = tokio::spawn(
            self.forwarder(redis, blocking, &lease, &publishing.backlog, &term)
                .run(term.clone()),
        );
        // The durable outbox, read for the length of the term.
        let outbox = self
            .config
            .outbox
            .clone()
            .zip(self.metrics.outbox.clone())
            .map(|(config, metrics)| {
                let continuity = pgws_protocol::position::Continuity {
                    term: epoch,
                    session: 1,
                };
                tokio::spawn(crate::outbox::run_term(
                    config,
                    publisher(continuity, Vec::new()),
                    self.config.keys.prefix().to_string(),
                    epoch,
                    self.config.retries,
                    metrics,
                    term.clone(),
                ))
            });

        let renew_every = election.ttl() / 3;
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(lease.deadline().into()) => {
                    if !lease.valid() {
                        tracing::warn!(epoch, "lease lapsed before it could be renewed: stepping down");
                        break TermEnd::LeaseLost;
                    }
                }
                _ = shutdown.cancelled() => break TermEnd::Shutdown,
                _ = renew.tick() => {
                    let sent = Instant::now();
                    match election.renew().await {
                        Ok(true) => {
                            lease.extend(sent, election.ttl());
                            self.metrics.election.redis_up.set(1);
                        }
                        Ok(false) => {
                            tracing::warn!(epoch, "the lock is no longer ours: stepping down");
                            break TermEnd::LeaseLost;
                        }
                        Err(e) => {
                            self.metrics.election.redis_up.set(0);
                            tracing::warn!(epoch, error = %e, "cannot renew the lock; leading until the lease runs out");
                        }
                    }
                }
                result = &mut listener => {
                    match result {
                        Ok(Err(e)) => tracing::error!(epoch, error = %e, "listener failed: stepping down"),
                        Ok(Ok(())) => tracing::error!(epoch, "listener stopped: stepping down"),
                        Err(e) => tracing::error!(epoch, error = %e, "listener task failed: stepping down"),
                    }
                    break TermEnd::ListenerFailed;
                }
                result = &mut forwarder => {
                    if let Ok(Err(e)) = result {
                        tracing::warn!(epoch, error = %e, "write forwarder failed: restarting it");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break TermEnd::Shutdown,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    forwarder = tokio::spawn(self.forwarder(redis, blocking, &lease, &publishing.backlog, &term).run(term.clone()));
                }
            }
        };

        // Stop the term's work before the lock can pass to anyone else.
        lease.revoke();
        term.cancel();
        if let Some(sink) = &self.stream {
            sink.stand_by();
        }
        self.leading.store(false, Ordering::Release);
        self.metrics.election.leader.set(0);
        let stop = async {
            let _ = publishing.task.await;
            if self.stream.is_none() && !listener.is_finished() {
                let _ = (&mut listener).await;
            }
            listener.abort();
            let _ = forwarder.await;
            if let Some(outbox) = outbox {
                let _ = outbox.await;
            }
            if let Some(markers) = markers {
                let _ = markers.await;
            }
        };
        if tokio::time::timeout(self.config.shutdown_timeout, stop)
            .await
            .is_err()
        {
            tracing::warn!(epoch, "term tasks did not stop in time");
        }
        if end != TermEnd::LeaseLost {
            match election.release().await {
                Ok(true) => tracing::info!(epoch, "released the leader lock"),
                Ok(false) => tracing::info!(epoch, "the leader lock had already passed on"),
                Err(e) => {
                    tracing::warn!(epoch, error = %e, "cannot release the leader lock; it expires with its ttl")
                }
            }
        }
        tracing::info!(epoch, ?end, "term ended");
        end
    }

    /// The marker task of a term with standby listening.
    fn start_markers(
        &self,
        epoch: u64,
        lease: &Arc<Lease>,
        term: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let standby = self.config.standby.as_ref();
        let key = self.stream.as_ref().and_then(|sink| sink.key());
        let Some(key) = key else {
            // Not reached: a standby-listening node wins only once it
            // knows the key.
            tracing::warn!(epoch, "no stream marker key: this term sends no markers");
            return tokio::spawn(async {});
        };
        tokio::spawn(standby::emit_markers(
            standby::MarkerTask {
                db: self.config.db.clone(),
                channel: standby
                    .map(|s| s.marker_channel.clone())
                    .unwrap_or_default(),
                key,
                epoch,
                every: standby.map_or(Duration::from_millis(100), |s| s.marker_interval),
                lease: lease.clone(),
                metrics: self.metrics.standby.clone(),
            },
            term.clone(),
        ))
    }

    /// Begin a term with standby listening: wait (bounded) until this
    /// node's listener has heard the term's first marker — its buffer then
    /// holds everything committed before — read where the predecessor
    /// stopped, and start the publisher there, in the predecessor's
    /// continuity when nothing was missed.
    async fn take_over<F>(
        &self,
        sink: &Arc<StreamSink>,
        epoch: u64,
        redis: &RedisClient,
        term: &CancellationToken,
        publisher: F,
    ) -> Publishing
    where
        F: FnOnce(
            pgws_protocol::position::Continuity,
            Vec<crate::publisher::Positioned>,
        ) -> Publisher,
    {
        let heard = sink.heard(MarkerId { epoch, n: 0 }, TAKEOVER_WAIT).await;
        let mut redis = redis.clone();
        let read = tokio::time::timeout(
            TAKEOVER_WAIT,
            standby::predecessor(&mut redis, &self.config.keys),
        )
        .await;
        let (predecessor, current) = match read {
            Ok(Ok(p)) => (p, heard),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the predecessor's progress");
                (standby::Predecessor::default(), false)
            }
            Err(_) => (standby::Predecessor::default(), false),
        };
        let (_, publishing) =
            standby::take_over(sink, &predecessor, current, epoch, |continuity, replay| {
                let publishing = publisher(continuity, replay).start(term.clone());
                (publishing.sink.clone(), publishing)
            });
        publishing
    }

    fn forwarder(
        &self,
        redis: &RedisClient,
        blocking: &RedisClient,
        lease: &Arc<Lease>,
        backlog: &Arc<Backlog>,
        term: &CancellationToken,
    ) -> Forwarder {
        Forwarder {
            redis: redis.clone(),
            blocking: blocking.clone(),
            keys: self.config.keys.clone(),
            notifier: Notifier::new(
                "forwarder".into(),
                self.config.db.clone(),
                self.config.listen_channel.clone(),
                self.metrics.relay.clone(),
                term.clone(),
            ),
            lease: lease.clone(),
            backlog: backlog.clone(),
            metrics: self.metrics.forwarder.clone(),
        }
    }
}
