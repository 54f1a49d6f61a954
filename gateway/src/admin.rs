//! The admin listener, separate from the public port.
//!
//! | path       | answers                                                      |
//! |------------|--------------------------------------------------------------|
//! | `/healthz` | 200 while the process runs (liveness)                        |
//! | `/readyz`  | 200 while the listener is LISTENing and not draining, else 503 |
//! | `/metrics` | Prometheus text format                                       |

use crate::http::{text, Body};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgws_coordinator::listener::ListenerState;
use prometheus::{Encoder, Registry, TextEncoder};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the admin endpoints report on.
pub struct AdminState {
    /// All metrics of the process.
    pub registry: Registry,
    /// The listener's state, for readiness.
    pub listener: watch::Receiver<ListenerState>,
    /// Cancelled when draining: not ready any more.
    pub draining: CancellationToken,
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
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readiness(state),
        "/metrics" => metrics(&state.registry),
        _ => text(StatusCode::NOT_FOUND, "Not found\n"),
    }
}

fn readiness(state: &AdminState) -> Response<Body> {
    if state.draining.is_cancelled() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match *state.listener.borrow() {
        ListenerState::Listening => text(StatusCode::OK, "ready\n"),
        other => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("listener {other:?}\n").to_lowercase(),
        ),
    }
}

fn metrics(registry: &Registry) -> Response<Body> {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buffer) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        );
    }
    let mut response = Response::new(Body::new(buffer.into()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
