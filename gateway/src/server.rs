//! Wiring: builds every component from the [`Config`], runs them, and drains
//! them in order on shutdown. Nothing here does the work itself.
//!
//! The bus is chosen once — [`bus::local`] without `PGWS_REDIS_URL`,
//! [`bus::redis`] with it — and everything above it is the same in both
//! modes: the hub is the bus's inbox, sessions publish on the bus.
//!
//! Shutdown order: stop accepting, flip `/readyz` to 503, close every socket
//! with 1001, wait for sessions (which publish what their clients already
//! sent), then stop the bus (queued writes go out) — all within
//! `PGWS_SHUTDOWN_TIMEOUT` — and last the admin endpoints.

use crate::auth::Keys;
use crate::bus::{self, Bus, Started};
use crate::config::{Backend, Config};
use crate::http::publish::Publisher;
use crate::http::{self, HttpState};
use crate::hub::Hub;
use crate::idempotency::Memory;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::session::SessionContext;
use crate::sse::Streams;
use crate::tls;
use anyhow::Context;
use pgws_service::admin::{self, AdminState};
use pgws_service::process::{bind, log_bound};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why `run` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was requested and the drain completed (or timed out).
    Clean,
    /// The bus failed for good — the standalone `LISTEN` connection died
    /// without self-healing: exit non-zero so an external supervisor
    /// restarts the process, as in the original.
    BusFailed,
}

/// Run the gateway until `shutdown` is cancelled or the bus fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    let keys = jwt_keys(&config)?;
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

    let hub = Arc::new(Hub::new(metrics.clone()));
    let presence = start_presence(&config, &hub, &metrics)?;
    let Started {
        bus,
        mut lifecycle,
        idempotency,
    } = match config.backend {
        Backend::Standalone(local) => {
            let outbox = bus::local::prepare_outbox(&local, &shutdown).await?;
            bus::local::start(*local, outbox, hub.clone(), &metrics.registry)
        }
        Backend::Cluster(cluster) => bus::redis::start(cluster, hub.clone(), &metrics.registry),
    }
    .context("registering metrics")?;

    let closing = CancellationToken::new(); // sessions close with 1001
    let mut context = SessionContext::new(
        hub,
        bus.clone(),
        metrics.clone(),
        config.session,
        config.meta,
        keys,
        closing.clone(),
    );
    context.presence = presence.clone();
    if let (Some(presence), Some(meta)) = (&presence, &context.meta.name) {
        presence.connect_occupancy(crate::presence::occupancy::Sink {
            bus: bus.clone(),
            meta: meta.clone(),
            wait: context.limits.write_timeout,
        });
    }
    let sessions = Arc::new(context);
    let tracker = TaskTracker::new();
    let idempotency = idempotency.unwrap_or_else(|| {
        Arc::new(Memory::new(
            config.idempotency.max_keys,
            metrics.publish.idempotency_keys.clone(),
            metrics.publish.idempotency_evicted.clone(),
        ))
    });
    let http_state = Arc::new(HttpState {
        streams: Streams {
            ctx: sessions.clone(),
            tracker: tracker.clone(),
            max_connections: config.max_connections,
            settings: config.sse,
            metrics: metrics.sse.clone(),
        },
        publisher: Publisher {
            ctx: sessions.clone(),
            store: idempotency,
            settings: config.idempotency,
        },
        sessions: sessions.clone(),
        tracker: tracker.clone(),
        root_path: config.root_path,
        allowed_origins: config.allowed_origins,
        max_connections: config.max_connections,
        max_pending: config.max_pending_connections,
        http2_max_streams: config.http2_max_streams,
        send_buffer: config.socket_send_buffer,
        pending: Arc::default(),
    });
    let stop_accepting = CancellationToken::new();
    let http_task = tokio::spawn(http::serve(
        public,
        tls,
        http_state.clone(),
        stop_accepting.clone(),
    ));
    let stop_admin = CancellationToken::new(); // admin answers until the very end
    let admin_task =
        admin_listener.map(|l| serve_admin(l, &metrics, bus.as_ref(), &closing, &stop_admin));

    let exit = tokio::select! {
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested: draining");
            Exit::Clean
        }
        reason = lifecycle.failed() => {
            tracing::error!(%reason, "the bus failed: shutting down");
            Exit::BusFailed
        }
    };

    // 1. stop accepting, 2. not ready, close every socket with 1001.
    let deadline = Instant::now() + config.shutdown_timeout;
    stop_accepting.cancel();
    let _ = http_task.await;
    closing.cancel();
    // 3. wait for sessions: they publish what their clients sent, and their
    //    ConnectionClose events.
    tracker.close();
    if tokio::time::timeout_at(deadline.into(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not finish within PGWS_SHUTDOWN_TIMEOUT: terminating now");
    }
    // Presence writes the sessions' leaves and takes this gateway off Redis.
    if let Some(presence) = &presence {
        presence.stop(deadline).await;
    }
    // 4. with every bus handle gone, the bus sends what is queued and stops.
    drop(http_state);
    drop(sessions);
    drop(bus);
    lifecycle.stop(deadline).await;
    stop_admin.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tracing::info!(?exit, "stopped");
    Ok(exit)
}

/// Presence, when `PGWS_PRESENCE` is on: in this process standalone, in
/// Redis in cluster mode.
fn start_presence(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<Presence>>> {
    if !config.presence.enabled {
        return Ok(None);
    }
    let presence = match &config.backend {
        Backend::Standalone(_) => {
            Presence::local(config.presence.clone(), hub.clone(), &metrics.registry)
        }
        Backend::Cluster(cluster) => Presence::cluster(
            config.presence.clone(),
            crate::presence::redis::RedisSettings {
                redis: cluster.redis.clone(),
                keys: cluster.keys.clone(),
            },
            &metrics.registry,
        ),
    }
    .context("registering metrics")?;
    Ok(Some(presence))
}

/// The verification keys; a weak HMAC key is worth a warning.
fn jwt_keys(config: &Config) -> anyhow::Result<Keys> {
    let keys = Keys::from_secret(&config.jwt.secret, config.jwt.base64)
        .map_err(|e| anyhow::anyhow!("PGWS_JWT_SECRET: {e}"))?;
    if let Some(bytes) = keys.weakest_hmac_key() {
        tracing::warn!(
            bytes,
            minimum = crate::auth::MIN_HMAC_KEY,
            "PGWS_JWT_SECRET: an HMAC key shorter than 32 bytes can be brute-forced; use a longer one"
        );
    }
    Ok(keys)
}

/// `/healthz`, `/readyz` (not ready while closing, or while the bus says
/// so), `/metrics`.
fn serve_admin(
    listener: TcpListener,
    metrics: &Metrics,
    bus: &dyn Bus,
    closing: &CancellationToken,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let ready = bus.readiness();
    let closing = closing.clone();
    let state = Arc::new(AdminState {
        registry: metrics.registry.clone(),
        readiness: Box::new(move || {
            if closing.is_cancelled() {
                return Err("draining".into());
            }
            ready()
        }),
    });
    tokio::spawn(admin::serve(listener, state, stop.clone()))
}
