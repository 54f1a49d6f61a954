//! The public HTTP listener: websocket upgrades, static files, and the
//! plain-text banner.
//!
//! Every refusal happens before the upgrade, as an HTTP response whose body
//! is the reason (see `docs/protocol.md`): 401 for token problems, 403 for
//! permission problems, 503 when full or draining.

pub mod request;
pub mod static_files;

use crate::auth::{self, Keys, Refusal};
use crate::session::{self, SessionContext, Slot};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The body of every response this server writes.
pub type Body = Full<Bytes>;

const BANNER: &str = "postgres-websockets: open a websocket on /<channel>/<jwt> or /<jwt>\n";

/// What request handling needs.
pub struct HttpState {
    /// JWT verification keys.
    pub keys: Keys,
    /// Shared by all sessions.
    pub sessions: Arc<SessionContext>,
    /// Tracks session tasks so the drain can wait for them.
    pub tracker: TaskTracker,
    /// `PGWS_ROOT_PATH`, canonical.
    pub root_path: Option<PathBuf>,
    /// `PGWS_ALLOWED_ORIGINS`.
    pub allowed_origins: Option<Vec<String>>,
    /// `PGWS_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

/// Accept connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<HttpState>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, state).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(stream: S, state: Arc<HttpState>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(req, state).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

async fn handle(req: Request<Incoming>, state: Arc<HttpState>) -> Response<Body> {
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        return match upgrade(req, &state) {
            Ok(response) => response,
            Err(refusal) => {
                state.sessions.metrics.refused(&refusal);
                text(
                    StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN),
                    refusal.to_string(),
                )
            }
        };
    }
    match *req.method() {
        Method::GET | Method::HEAD => static_or_banner(req.uri().path(), &state).await,
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n"),
    }
}

fn upgrade(mut req: Request<Incoming>, state: &HttpState) -> Result<Response<Body>, Refusal> {
    if state.sessions.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    check_origin(&req, state.allowed_origins.as_deref())?;
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let parts = request::RequestParts {
        path: req.uri().path(),
        query: req.uri().query(),
        authorization: header(hyper::header::AUTHORIZATION),
        protocols: header(SEC_WEBSOCKET_PROTOCOL),
    };
    let Ok(target) = request::parse(parts) else {
        return Ok(text(StatusCode::NOT_FOUND, "Not found\n"));
    };
    let span = tracing::info_span!(
        "pgws.handshake",
        channel = target.channel.as_deref().unwrap_or("")
    );
    let _entered = span.enter();
    let token = target.token.as_deref().ok_or(Refusal::MissingToken)?;
    let claims = tracing::info_span!("pgws.jwt_verify").in_scope(|| state.keys.verify(token))?;
    let grant = auth::authorize(claims, target.channel.as_deref())?;
    let slot =
        Slot::acquire(&state.sessions, state.max_connections).ok_or(Refusal::TooManyConnections)?;
    // The upgraded connection is taken from hyper directly: fastwebsockets
    // validates the request and builds the 101 response, but its own
    // future would wrap the connection in its reader, which allocates 8 KiB
    // per socket (see `session::inbound`).
    let upgrading = hyper::upgrade::on(&mut req);
    let (response, _) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!("Bad websocket request: {e}\n"),
            ))
        }
    };
    let (mut parts, _) = response.into_parts();
    if let Some(protocol) = target
        .subprotocol
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        parts.headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    state.sessions.metrics.accepted();
    let sessions = state.sessions.clone();
    state.tracker.spawn(async move {
        match upgrading.await {
            Ok(upgraded) => session::run(TokioIo::new(upgraded), grant, sessions, slot).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade did not complete"),
        }
    });
    Ok(Response::from_parts(parts, Body::default()))
}

fn check_origin<B>(req: &Request<B>, allowed: Option<&[String]>) -> Result<(), Refusal> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let origin = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok());
    match origin {
        Some(o)
            if allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o.trim_end_matches('/'))) =>
        {
            Ok(())
        }
        _ => Err(Refusal::OriginNotAllowed),
    }
}

async fn static_or_banner(path: &str, state: &HttpState) -> Response<Body> {
    let Some(root) = &state.root_path else {
        return text(StatusCode::OK, BANNER);
    };
    match static_files::load(root, path).await {
        Some(file) => Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, file.content_type)
            .body(Body::new(file.body))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "")),
        None => text(StatusCode::NOT_FOUND, "Not found\n"),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
