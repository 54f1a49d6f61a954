//! The public HTTP listener: websocket upgrades, Server-Sent Events
//! (`GET` with `Accept: text/event-stream`, opened by [`crate::sse`]),
//! publishing ([`publish`], `POST`), static files, and the plain-text
//! banner. HTTP/1.1 on every connection, HTTP/2 ([`h2`]) on a TLS
//! connection that chose it (ALPN); an HTTP/1 connection's first request
//! is read by [`direct`], which serves an event stream without hyper.
//!
//! Every refusal happens before the upgrade, as an HTTP response whose body
//! is the reason (see `docs/protocol.md`): 401 for token problems, 403 for
//! permission problems, 405 for an upgrade that is not a GET, 431 for a
//! request head over [`MAX_HEAD`], 503 when full or draining.
//!
//! Memory before a token is checked is bounded: a request head may take at
//! most [`MAX_HEAD`] bytes and must arrive within [`HEAD_TIMEOUT`], and at
//! most `PGWS_MAX_PENDING_CONNECTIONS` connections may be open and not yet
//! upgraded (TLS handshakes, HTTP requests, static files); the next one is
//! answered 503 and closed. An event stream stops being pending once it
//! is open, as an upgraded websocket does.

mod direct;
pub mod events;
mod h2;
pub mod publish;
pub mod request;
pub mod response;
mod stall;
pub mod state;
pub mod static_files;

pub use response::{text, Body};
pub use state::{HttpState, HEAD_TIMEOUT, MAX_HEAD};

use events::{
    check_browser_origin, check_origin, event_stream_response, header, open_event_stream, target,
    wants_event_stream,
};
use state::{Pending, PendingCell};

use crate::auth::{self, Refusal};
use crate::session::{self, Slot};
use crate::tls::TlsAcceptor;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION,
};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

const BANNER: &str =
    "postgres-websockets: open a websocket (or an event stream) on /<channel>/<jwt> or /<jwt>\n";

/// What a connection over the pending limit is told before it is closed.
const TOO_MANY_PENDING: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\nconnection: close\r\n\r\nToo many pending connections\n";

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
        if let Some(bytes) = state.send_buffer {
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(bytes) {
                tracing::debug!(%peer, error = %e, "SO_SNDBUF not set");
            }
        }
        let Some(pending) = Pending::acquire(&state) else {
            state.sessions.metrics.refused(&Refusal::TooManyPending);
            tracing::debug!(%peer, "too many pending connections: refused");
            if tls.is_none() {
                tokio::spawn(refuse_pending(stream));
            }
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, state, pending, HEAD_TIMEOUT).await,
                // Boxed: a plain connection's task is not sized for TLS.
                Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, state, pending)).await,
            }
        });
    }
}

/// The TLS handshake, then HTTP/2 or HTTP/1 as the client chose (ALPN).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    acceptor: TlsAcceptor,
    state: Arc<HttpState>,
    pending: Pending,
) {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    // Boxed: the handshake's state is not kept for the connection's life.
    let handshake = Box::pin(acceptor.accept(stream));
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => {
            // What the handshake used is not given again.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if stream.is_h2() {
                // Boxed: an HTTP/1 stream over TLS is not sized for HTTP/2.
                let pending: PendingCell = Arc::new(std::sync::Mutex::new(Some(pending)));
                let first_request = Arc::new(tokio::sync::Notify::new());
                let service = service(state.clone(), pending.clone(), Some(first_request.clone()));
                let serving = h2::serve(stream, &state, pending, service, first_request, left);
                Box::pin(serving).await
            } else {
                serve_connection(stream, state, pending, left).await
            }
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Tell a connection over the pending limit why it is closed.
async fn refuse_pending(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TOO_MANY_PENDING)).await;
}

/// Serve HTTP/1 on one connection; `pending` is held until the connection
/// is upgraded (hyper's future then completes), opens an event stream, or
/// is closed. A request head must arrive within `head_timeout` (what is
/// left of [`HEAD_TIMEOUT`]). The first request is read by [`direct`],
/// which serves an event stream itself; hyper serves everything else.
async fn serve_connection<S>(
    mut stream: S,
    state: Arc<HttpState>,
    pending: Pending,
    head_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + head_timeout;
    let pending: PendingCell = Arc::new(std::sync::Mutex::new(Some(pending)));
    let first = tokio::time::timeout_at(deadline, direct::read_first(&mut stream)).await;
    let (prefix, head_timeout) = match first {
        // hyper would close a connection whose head is late, too.
        Err(_) | Ok(direct::First::Closed) => return,
        Ok(direct::First::Other(prefix)) => (
            prefix,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        ),
        Ok(direct::First::EventStream(request)) => {
            match direct::serve(&mut stream, request, &state, &pending).await {
                direct::After::KeepAlive => (bytes::Bytes::new(), HEAD_TIMEOUT),
                direct::After::Close => return,
            }
        }
    };
    // Boxed: a connection served by `direct` does not carry hyper's state.
    Box::pin(serve_http1(
        direct::Prefixed::new(prefix, stream),
        state,
        pending,
        head_timeout,
    ))
    .await
}

/// hyper's HTTP/1 on a connection.
async fn serve_http1<S>(
    stream: S,
    state: Arc<HttpState>,
    pending: PendingCell,
    head_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Twice the send timeout: an upgraded websocket times its own writes
    // (and says why it ends) before this would.
    let stream = stall::Stalls::new(stream, 2 * state.sessions.limits.send_timeout);
    let service = service(state, pending.clone(), None);
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    drop(pending);
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// The service of one connection (HTTP/1 or HTTP/2); `first_request` is
/// told of every request (HTTP/2's head timeout waits for the first).
fn service(
    state: Arc<HttpState>,
    pending: PendingCell,
    first_request: Option<Arc<tokio::sync::Notify>>,
) -> impl hyper::service::HttpService<
    Incoming,
    ResBody = Body,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Send
       + 'static {
    hyper::service::service_fn(move |req| {
        if let Some(first) = &first_request {
            first.notify_one();
        }
        let state = state.clone();
        let pending = pending.clone();
        async move { Ok::<_, Infallible>(handle(req, state, pending).await) }
    })
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<HttpState>,
    pending: PendingCell,
) -> Response<Body> {
    if req.version() == Version::HTTP_2 && asks_for_websocket(&req) {
        let refusal = Refusal::WebsocketOverHttp2;
        state.sessions.metrics.refused(&refusal);
        return text(refusal.status(), format!("{refusal}\n"));
    }
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        let upgraded = if req.method() == Method::GET {
            upgrade(req, &state).await
        } else {
            Err(Refusal::UpgradeNotGet)
        };
        return match upgraded {
            Ok(response) => response,
            Err(refusal) => {
                state.sessions.metrics.refused(&refusal);
                text(refusal.status(), refusal.to_string())
            }
        };
    }
    match *req.method() {
        Method::GET if wants_event_stream(&req) => event_stream(req, &state, &pending).await,
        Method::GET | Method::HEAD => static_or_banner(req.uri().path(), &state).await,
        Method::POST => publish(req, &state).await,
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n"),
    }
}

/// Whether an HTTP/2 request is a websocket handshake: an (extended)
/// CONNECT, or a request with websocket headers (h2 itself resets a
/// stream that carries `Connection`/`Upgrade`).
fn asks_for_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || req.headers().contains_key(SEC_WEBSOCKET_KEY)
        || req.headers().contains_key(SEC_WEBSOCKET_VERSION)
}

/// Open an event stream, or answer why not.
async fn event_stream(
    req: Request<Incoming>,
    state: &HttpState,
    pending: &PendingCell,
) -> Response<Body> {
    match open_event_stream(&req, state, pending).await {
        Ok(stream) => event_stream_response(stream.boxed()),
        Err(refusal) => refusal,
    }
}

/// Publish the body, or answer why not.
async fn publish(req: Request<Incoming>, state: &HttpState) -> Response<Body> {
    if let Err(refusal) = check_browser_origin(&req, state.allowed_origins.as_deref()) {
        state.sessions.metrics.refused(&refusal);
        return text(refusal.status(), format!("{refusal}\n"));
    }
    let Ok(target) = target(&req) else {
        return text(StatusCode::NOT_FOUND, "Not found\n");
    };
    let key = header(
        &req,
        hyper::header::HeaderName::from_static(publish::IDEMPOTENCY_KEY),
    )
    .map(str::to_string);
    let length = header(&req, CONTENT_LENGTH).and_then(|l| l.parse().ok());
    let body = req.into_body();
    state
        .publisher
        .publish(
            publish::Request {
                channel: target.channel.as_deref(),
                token: target.token.as_deref(),
                key: key.as_deref(),
                length,
            },
            body,
        )
        .await
}

async fn upgrade(mut req: Request<Incoming>, state: &HttpState) -> Result<Response<Body>, Refusal> {
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
    let no_echo = request::no_echo(parts.query);
    let Ok(target) = request::parse(parts) else {
        return Ok(text(StatusCode::NOT_FOUND, "Not found\n"));
    };
    let span = tracing::info_span!(
        "pgws.handshake",
        channel = target.channel.as_deref().unwrap_or("")
    );
    let authorized = span.in_scope(|| authorize(&target, state))?;
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
    // A v1 reader is on its channels, its subscriptions in effect, before
    // the socket opens (a refusal takes it off them again).
    let session = match authorized {
        Authorized::V1(grant) => {
            let joined = session::join(&state.sessions, &grant, no_echo)
                .instrument(span)
                .await
                .map_err(|_| Refusal::SubscriptionUnavailable)?;
            Session::V1(grant, joined)
        }
        Authorized::V2(permissions) => Session::V2(permissions),
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
        let io = match upgrading.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade did not complete"),
        };
        match session {
            Session::V1(grant, joined) => session::run(io, grant, joined, sessions, slot).await,
            Session::V2(permissions) => session::run_v2(io, permissions, sessions, slot).await,
        }
    });
    Ok(Response::from_parts(
        parts,
        Empty::new().map_err(|never| match never {}).boxed(),
    ))
}

/// Verify the token: what the socket may do.
fn authorize(target: &request::Target, state: &HttpState) -> Result<Authorized, Refusal> {
    let keys = &state.sessions.keys;
    let verify =
        |token: &str| tracing::info_span!("pgws.jwt_verify").in_scope(|| keys.verify(token));
    // v1: a grant for the URL's channel (or the claims'); v2: permissions
    // for what the socket may subscribe to, or none yet — the token may
    // come in the first frame.
    let session = if target.v2 {
        let permissions = match target.token.as_deref() {
            Some(token) => Some(auth::permissions(verify(token)?)?),
            None => None,
        };
        Authorized::V2(permissions)
    } else {
        let token = target.token.as_deref().ok_or(Refusal::MissingToken)?;
        let grant = auth::authorize(
            verify(token)?,
            target.channel.as_deref(),
            &state.sessions.meta,
        )?;
        Authorized::V1(grant)
    };
    Ok(session)
}

/// What a verified token allows.
enum Authorized {
    V1(auth::Grant),
    V2(Option<auth::Permissions>),
}

/// What an accepted upgrade becomes.
enum Session {
    /// v1: its grant, and its place in the hub (subscriptions confirmed).
    V1(auth::Grant, session::Joined),
    V2(Option<auth::Permissions>),
}

async fn static_or_banner(path: &str, state: &HttpState) -> Response<Body> {
    let Some(root) = &state.root_path else {
        return text(StatusCode::OK, BANNER);
    };
    match static_files::open(root, path).await {
        Some(file) => {
            let chunks =
                tokio_util::io::ReaderStream::with_capacity(file.file, static_files::CHUNK)
                    .map_ok(Frame::data);
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, file.content_type)
                .header(CONTENT_LENGTH, file.len)
                .body(StreamBody::new(chunks).boxed())
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, ""))
        }
        None => text(StatusCode::NOT_FOUND, "Not found\n"),
    }
}
