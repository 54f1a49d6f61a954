//! Wiring: builds every component from the [`Config`], runs them, and drains
//! them in order on shutdown.
//!
//! Two backends share everything above the bus: standalone (the embedded
//! listener feeds fan-out directly; writes go to the embedded NOTIFY relay)
//! and cluster (Redis pub/sub feeds fan-out; writes go to a Redis stream).
//!
//! Shutdown order: stop accepting, flip `/readyz` to 503, close every socket
//! with 1001, wait for sessions and queued writes within
//! `PGWS_SHUTDOWN_TIMEOUT`, then stop the backend and the admin endpoints.

use crate::auth::Keys;
use crate::bus::redis::{RedisBus, RedisBusMetrics};
use crate::bus::Bus;
use crate::config::{Backend, ClusterConfig, Config, DatabaseConfig};
use crate::fanout::Fanout;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::SessionContext;
use crate::tls;
use anyhow::Context;
use pgws_postgres::listener::{
    self, ListenerConfig, ListenerError, ListenerMetrics, ListenerState,
};
use pgws_postgres::relay::{Relay, RelayConfig, RelayMetrics};
use pgws_service::admin::{self, AdminState, Readiness};
use pgws_service::process::{bind, log_bound};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Most notifications sent per NOTIFY transaction.
const MAX_NOTIFY_BATCH: usize = 256;

/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested and the drain completed (or timed out).
    Clean,
    /// The LISTEN connection died without self-healing: exit non-zero so
    /// an external supervisor restarts the process, as in the original.
    ListenerLost,
}

/// The running backend: how writes leave, when the node is ready, and what
/// to stop at the end.
struct RunningBackend {
    bus: Bus,
    readiness: Readiness,
    /// Resolves if the backend fails for good (standalone listener lost).
    failed: Pin<Box<dyn Future<Output = Exit> + Send>>,
    stop: CancellationToken,
    /// Tasks that finish once the bus handles are dropped (relay workers).
    draining: JoinSet<()>,
    /// Tasks that run until `stop` (listener, Redis link).
    background: Vec<JoinHandle<()>>,
    /// Cancelled when queued work must be abandoned.
    abort: CancellationToken,
}

/// Run the gateway until `shutdown` is cancelled or the listener is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let keys = Keys::from_secret(&config.jwt.secret, config.jwt.base64)
        .map_err(|e| anyhow::anyhow!("PGWS_JWT_SECRET: {e}"))?;
    if let Some(bytes) = keys.weakest_hmac_key() {
        tracing::warn!(
            bytes,
            minimum = crate::auth::MIN_HMAC_KEY,
            "PGWS_JWT_SECRET: an HMAC key shorter than 32 bytes can be brute-forced; use a longer one"
        );
    }
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.certificate, &files.key)?),
        None => None,
    };
    let metrics = Metrics::new().context("registering metrics")?;

    let public = bind(&config.public)
        .await
        .context("PGWS_HOST/PGWS_PORT: cannot listen")?;
    log_bound("public", &public, tls.is_some());
    let admin_listener = match &config.admin {
        Some(addr) => {
            let l = bind(addr)
                .await
                .context("PGWS_ADMIN_HOST/PGWS_ADMIN_PORT: cannot listen")?;
            log_bound("admin", &l, false);
            Some(l)
        }
        None => None,
    };

    let registry = Arc::new(Registry::default());
    let fanout = Arc::new(Fanout::new(
        registry.clone(),
        metrics.clone(),
        config.listen_channel.clone(),
    ));
    let mut backend = match &config.backend {
        Backend::Standalone(db) => start_standalone(db, &config, fanout, &metrics)?,
        Backend::Cluster(cluster) => start_cluster(cluster, fanout, &metrics)?,
    };

    let drain = CancellationToken::new(); // sessions close with 1001
    let sessions = Arc::new(SessionContext::new(
        registry,
        backend.bus.clone(),
        metrics.clone(),
        config.session.clone(),
        config.meta.clone(),
        drain.clone(),
    ));
    let tracker = TaskTracker::new();
    let http_state = Arc::new(HttpState {
        keys,
        sessions: sessions.clone(),
        tracker: tracker.clone(),
        root_path: config.root_path.clone(),
        allowed_origins: config.allowed_origins.clone(),
        max_connections: config.max_connections,
        max_pending: config.max_pending_connections,
        pending: Arc::default(),
    });

    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new(); // admin answers until the very end
    let http_task = tokio::spawn(http::serve(
        public,
        tls,
        http_state.clone(),
        stop_accepting.clone(),
    ));
    let ready = std::mem::replace(&mut backend.readiness, Box::new(|| Ok(())));
    let admin_task = admin_listener.map(|l| {
        let draining = drain.clone();
        let state = Arc::new(AdminState {
            registry: metrics.registry.clone(),
            readiness: Box::new(move || {
                if draining.is_cancelled() {
                    return Err("draining".into());
                }
                ready()
            }),
        });
        tokio::spawn(admin::serve(l, state, stop_admin.clone()))
    });

    let exit = tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested: draining");
            Exit::Clean
        }
        exit = &mut backend.failed => exit,
    };

    // 1. stop accepting, 2. not ready, close every socket with 1001.
    let deadline = Instant::now() + config.shutdown_timeout;
    stop_accepting.cancel();
    let _ = http_task.await;
    drain.cancel();
    // 3. wait for sessions (their ConnectionClose events are queued too).
    tracker.close();
    if tokio::time::timeout_at(deadline.into(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not finish within PGWS_SHUTDOWN_TIMEOUT: terminating now");
    }
    // 4. send what is queued: relay workers stop once every handle is gone.
    drop(http_state);
    drop(sessions);
    backend.bus = Bus::Closed;
    let draining = async { while backend.draining.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline.into(), draining)
        .await
        .is_err()
    {
        tracing::warn!("queued writes not sent within PGWS_SHUTDOWN_TIMEOUT: dropping them");
        backend.abort.cancel();
        while backend.draining.join_next().await.is_some() {}
    }
    backend.stop.cancel();
    for task in backend.background {
        let _ = task.await;
    }
    stop_admin.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tracing::info!(?exit, "stopped");
    Ok(exit)
}

/// Standalone: the listener in this process feeds fan-out; writes go to the
/// embedded NOTIFY relay.
fn start_standalone(
    db: &DatabaseConfig,
    config: &Config,
    fanout: Arc<Fanout>,
    metrics: &Metrics,
) -> anyhow::Result<RunningBackend> {
    let listener_metrics =
        ListenerMetrics::register(&metrics.registry).context("registering metrics")?;
    let relay_metrics = RelayMetrics::register(&metrics.registry).context("registering metrics")?;
    let abort = CancellationToken::new();
    let (relay, draining) = Relay::start(
        RelayConfig {
            db: db.db.clone(),
            listen_channel: config.listen_channel.clone(),
            pool_size: db.pool_size,
            queue_capacity: db.write_queue_size,
            max_batch: MAX_NOTIFY_BATCH,
        },
        relay_metrics,
        abort.clone(),
    );
    let (state_tx, state_rx) = watch::channel(ListenerState::Connecting);
    let stop = CancellationToken::new();
    let listener_task = tokio::spawn(listener::run(
        ListenerConfig {
            db: db.db.clone(),
            channel: config.listen_channel.clone(),
            retries: db.retries,
            check_interval: db.check_listener_interval,
        },
        fanout,
        state_tx,
        listener_metrics,
        stop.clone(),
    ));
    // The listener's outcome decides the exit; the task handle moves into
    // the `failed` future, which is awaited only until shutdown starts.
    let (outcome_tx, outcome_rx) = tokio::sync::oneshot::channel::<Result<(), ListenerError>>();
    let watcher = tokio::spawn(async move {
        let outcome = match listener_task.await {
            Ok(result) => result,
            Err(e) => Err(ListenerError::Lost(format!("listener task failed: {e}"))),
        };
        let _ = outcome_tx.send(outcome);
    });
    let failed = Box::pin(async move {
        match outcome_rx.await {
            Ok(Err(e)) => {
                tracing::error!(error = %e, "listener stopped: shutting down");
                Exit::ListenerLost
            }
            // Stopped cleanly (only at shutdown): nothing failed.
            _ => std::future::pending().await,
        }
    });
    Ok(RunningBackend {
        bus: Bus::Local(relay),
        readiness: Box::new(move || match *state_rx.borrow() {
            ListenerState::Listening => Ok(()),
            other => Err(format!("listener {other:?}").to_lowercase()),
        }),
        failed,
        stop,
        draining,
        background: vec![watcher],
        abort,
    })
}

/// Cluster: Redis pub/sub feeds fan-out; writes go to the Redis stream.
fn start_cluster(
    cluster: &ClusterConfig,
    fanout: Arc<Fanout>,
    metrics: &Metrics,
) -> anyhow::Result<RunningBackend> {
    let bus_metrics =
        RedisBusMetrics::register(&metrics.registry).context("registering metrics")?;
    let stop = CancellationToken::new();
    let (bus, link) = RedisBus::start(
        cluster.redis.clone(),
        cluster.keys.clone(),
        cluster.stream_max_len,
        fanout,
        bus_metrics,
        stop.clone(),
    );
    let probe = bus.clone();
    Ok(RunningBackend {
        bus: Bus::Redis(bus),
        readiness: Box::new(move || {
            if probe.is_up() {
                Ok(())
            } else {
                Err("redis unreachable".into())
            }
        }),
        failed: Box::pin(std::future::pending()),
        stop,
        draining: JoinSet::new(),
        background: vec![link],
        abort: CancellationToken::new(),
    })
}
