//! HTTP/2 on the TLS listener (ALPN `h2`): one connection carries many
//! event streams, publishes and files at once.
//!
//! The limits of HTTP/1 hold per connection as they do there — the first
//! request must begin within what is left of
//! [`HEAD_TIMEOUT`](super::HEAD_TIMEOUT), a header block may take at most
//! [`MAX_HEAD`] bytes, the connection is pending until its first event
//! stream opens, and every event stream takes a connection slot
//! (`PGWS_MAX_CONNECTIONS`) exactly as on HTTP/1 — and HTTP/2's own are
//! bounded: `PGWS_HTTP2_MAX_STREAMS` streams at once (advertised in
//! SETTINGS: a client waits for a stream to end before it opens another,
//! and h2 refuses one over it with `REFUSED_STREAM`), small flow-control
//! windows (what a client may make the gateway buffer), pings every
//! `PGWS_PING_INTERVAL`, and hyper's protections against rapid resets
//! (CVE-2023-44487) and streams reset for errors. A connection that h2
//! ends with an error is counted (`pgws_http2_connection_errors_total`).
//!
//! Websockets are not served over HTTP/2 (no RFC 8441 extended CONNECT:
//! SETTINGS_ENABLE_CONNECT_PROTOCOL is not sent, so browsers open their
//! websockets on an HTTP/1.1 connection of their own).

use super::response::Body;
use super::state::{HttpState, PendingCell, HEAD_TIMEOUT, MAX_HEAD};
use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The receive window of one stream: the most request body a client may
/// send before the gateway reads it (a publish is read as it arrives).
const STREAM_WINDOW: u32 = 64 * 1024;
/// The receive window of a connection, over all its streams.
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// What hyper may buffer to send per stream (an event stream's flush is
/// at most 64 KiB and one event).
const SEND_BUFFER: usize = 128 * 1024;
/// Streams a client may open and reset before the gateway accepts them
/// (the "rapid reset" attack) before the connection is closed.
const MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway may reset for the client's errors before it closes
/// the connection.
const MAX_ERROR_RESETS: usize = 64;

/// Serve HTTP/2 on one TLS connection with `service`, which tells
/// `first_request` of every request; `pending` is the connection's
/// pending count (given up by its first event stream).
pub(super) async fn serve<S, Svc>(
    stream: S,
    state: &HttpState,
    pending: PendingCell,
    service: Svc,
    first_request: Arc<tokio::sync::Notify>,
    head_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: HttpService<Incoming, ResBody = Body, Error = Infallible> + Send + 'static,
    Svc::Future: Send + 'static,
{
    let metrics = state.sessions.metrics.clone();
    let ping = state.sessions.limits.ping_interval;
    let max_streams = state.http2_max_streams;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams)
        .max_header_list_size(MAX_HEAD as u32)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .keep_alive_interval(ping);
    if let Some(interval) = ping {
        // A peer silent for two intervals is dropped, as a websocket.
        builder.keep_alive_timeout(interval);
    }
    metrics.http2_connections.inc();
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // The first request must begin within `head_timeout`; after it, a
    // connection still pending (no event stream open) that begins no
    // request for `HEAD_TIMEOUT` is told to go away (GOAWAY; its streams
    // in flight finish), as hyper closes an idle HTTP/1 keep-alive
    // connection: idle connections that answer pings must not hold
    // `PGWS_MAX_PENDING_CONNECTIONS` for ever.
    let mut wait = head_timeout;
    let mut requested = false;
    let result = loop {
        let next = tokio::time::timeout(wait, first_request.notified());
        tokio::select! {
            result = connection.as_mut() => break Some(result),
            next = next => match next {
                Ok(()) => {
                    requested = true;
                    wait = HEAD_TIMEOUT;
                }
                Err(_) if !requested => break None,
                Err(_) => {
                    if is_pending(&pending) {
                        tracing::debug!("HTTP/2 connection idle and pending: going away");
                        connection.as_mut().graceful_shutdown();
                    }
                    break Some(connection.await);
                }
            },
        }
    };
    metrics.http2_connections.dec();
    drop(pending);
    match result {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            metrics.http2_errors.inc();
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
        }
        None => tracing::debug!("HTTP/2 connection sent no request in time: closed"),
    }
}

/// Whether the connection still holds its pending count.
fn is_pending(pending: &PendingCell) -> bool {
    pending.lock().unwrap_or_else(|p| p.into_inner()).is_some()
}
