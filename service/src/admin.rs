//! The admin listener of both binaries, separate from any public port.
//!
//! | path       | answers                                                         |
//! |------------|-----------------------------------------------------------------|
//! | `/healthz` | 200 while the process runs (liveness)                           |
//! | `/readyz`  | 200 while the process's readiness check passes, else 503 + why  |
//! | `/metrics` | Prometheus text format                                          |
//!
//! What "ready" means is the caller's: the gateway is ready while it can
//! deliver (listener LISTENing, or Redis connected), a coordinator while it
//! can lead or take over.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a whole request head.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest request head accepted (then 431).
pub const MAX_HEAD: usize = 16 * 1024;

/// The readiness check: `Ok` when ready, else the reason.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the admin endpoints report on.
pub struct AdminState {
    /// All metrics of the process.
    pub registry: Registry,
    /// The readiness check.
    pub readiness: Readiness,
}

/// Serve the admin endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&req, &state)) }
            });
            // The public listener's limits: a head must arrive whole, and
            // small, within the timeout.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .max_header_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match (state.readiness)() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => metrics(&state.registry),
        _ => text(StatusCode::NOT_FOUND, "Not found\n".into()),
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut buffer = Vec::new();
    let mut families = registry.gather();
    families.extend(crate::panics::registry().gather());
    if let Err(e) = TextEncoder::new().encode(&families, &mut buffer) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        );
    }
    let mut response = Response::new(Full::new(Bytes::from(buffer)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
