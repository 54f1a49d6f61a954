//! Wiring: builds every component from the [`Config`], runs them, and drains
//! them in order on shutdown.
//!
//! Shutdown order: stop accepting, flip `/readyz` to 503, close every socket
//! with 1001, wait for sessions and queued NOTIFYs within
//! `PGWS_SHUTDOWN_TIMEOUT`, then stop the listener and the admin endpoints.

use crate::auth::Keys;
use crate::bus::Bus;
use crate::config::Config;
use crate::fanout::Fanout;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::SessionContext;
use crate::tls;
use anyhow::Context;
use pgws_coordinator::admin::{self, AdminState};
use pgws_coordinator::listener::{self, ListenerConfig, ListenerMetrics, ListenerState};
use pgws_coordinator::relay::{Relay, RelayConfig, RelayMetrics};
use pgws_coordinator::settings::{bind, log_bound};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
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

/// Run the gateway until `shutdown` is cancelled or the listener is lost.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let keys = Keys::from_secret(&config.jwt.secret, config.jwt.base64)
        .map_err(|e| anyhow::anyhow!("PGWS_JWT_SECRET: {e}"))?;
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(&files.certificate, &files.key)?),
        None => None,
    };
    let metrics = Metrics::new().context("registering metrics")?;
    let listener_metrics =
        ListenerMetrics::register(&metrics.registry).context("registering metrics")?;
    let relay_metrics = RelayMetrics::register(&metrics.registry).context("registering metrics")?;

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

    let drain = CancellationToken::new(); // sessions close with 1001
    let abort = CancellationToken::new(); // end of the grace period
    let (relay, relay_workers) = Relay::start(
        RelayConfig {
            db: config.database.db.clone(),
            listen_channel: config.listen_channel.clone(),
            pool_size: config.database.pool_size,
            queue_capacity: config.database.write_queue_size,
            max_batch: MAX_NOTIFY_BATCH,
        },
        relay_metrics,
        abort.clone(),
    );
    let registry = Arc::new(Registry::default());
    let sessions = Arc::new(SessionContext::new(
        registry.clone(),
        Bus::Local(relay),
        metrics.clone(),
        config.session.clone(),
        config.meta_channel.clone(),
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
    });

    let (state_tx, state_rx) = watch::channel(ListenerState::Connecting);
    let stop_listener = CancellationToken::new();
    let fanout = Arc::new(Fanout::new(
        registry,
        metrics.clone(),
        config.listen_channel.clone(),
    ));
    let mut listener_task = tokio::spawn(listener::run(
        ListenerConfig {
            db: config.database.db.clone(),
            channel: config.listen_channel.clone(),
            retries: config.database.retries,
            check_interval: config.database.check_listener_interval,
        },
        fanout,
        state_tx,
        listener_metrics,
        stop_listener.clone(),
    ));

    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new(); // admin answers until the very end
    let http_task = tokio::spawn(http::serve(
        public,
        tls,
        http_state.clone(),
        stop_accepting.clone(),
    ));
    let admin_task = admin_listener.map(|l| {
        let draining = drain.clone();
        let state = Arc::new(AdminState {
            registry: metrics.registry.clone(),
            readiness: Box::new(move || {
                if draining.is_cancelled() {
                    return Err("draining".into());
                }
                match *state_rx.borrow() {
                    ListenerState::Listening => Ok(()),
                    other => Err(format!("listener {other:?}").to_lowercase()),
                }
            }),
        });
        tokio::spawn(admin::serve(l, state, stop_admin.clone()))
    });

    let exit = tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested: draining");
            Exit::Clean
        }
        result = &mut listener_task => {
            match result {
                Ok(Ok(())) => Exit::Clean,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "listener stopped: shutting down");
                    Exit::ListenerLost
                }
                Err(e) => {
                    tracing::error!(error = %e, "listener task failed: shutting down");
                    Exit::ListenerLost
                }
            }
        }
    };

    // 1. stop accepting, 2. not ready, close every socket with 1001.
    let deadline = Instant::now() + config.shutdown_timeout;
    stop_accepting.cancel();
    let _ = http_task.await;
    drain.cancel();
    // 3. wait for sessions (their ConnectionClose events queue NOTIFYs).
    tracker.close();
    if tokio::time::timeout_at(deadline.into(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not finish within PGWS_SHUTDOWN_TIMEOUT: terminating now");
    }
    // 4. let the relay send what is queued: it stops once every handle is gone.
    drop(http_state);
    drop(sessions);
    let mut relay_workers = relay_workers;
    let relay_done = async { while relay_workers.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline.into(), relay_done)
        .await
        .is_err()
    {
        tracing::warn!("queued NOTIFYs not sent within PGWS_SHUTDOWN_TIMEOUT: dropping them");
        abort.cancel();
        while relay_workers.join_next().await.is_some() {}
    }
    stop_listener.cancel();
    if !listener_task.is_finished() {
        let _ = listener_task.await;
    }
    stop_admin.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tracing::info!(?exit, "stopped");
    Ok(exit)
}
