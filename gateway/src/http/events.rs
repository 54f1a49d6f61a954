//! Opening an event stream (for hyper's path, the gateway's own HTTP/1
//! writer and HTTP/2 alike) and what it reads from a request: the channel and
//! token, the origin.

use super::request;
use super::response::{text, Body};
use super::state::{HttpState, PendingCell};
use crate::auth::Refusal;
use crate::sse::{self, stream::SseStream};
use hyper::header::{HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ORIGIN};
use hyper::{Request, Response, StatusCode};
use tracing::Instrument;

/// Whether a GET asks for `text/event-stream`.
pub fn wants_event_stream<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// A header's value, if it is text.
pub fn header<B>(req: &Request<B>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The channel and token of a non-upgrade request, as for a websocket.
pub fn target<B>(req: &Request<B>) -> Result<request::Target, request::NotFound> {
    request::parse(request::RequestParts {
        path: req.uri().path(),
        query: req.uri().query(),
        authorization: header(req, hyper::header::AUTHORIZATION),
        protocols: None,
    })
}

/// Open an event stream for `req` (HTTP/1 through hyper or the
/// gateway's own writer, `http::direct`; HTTP/2): the same checks, limits, counters and recovery for
/// every transport. `Err` is the response that says why not. An open
/// stream gives up the connection's pending count.
pub async fn open_event_stream<B>(
    req: &Request<B>,
    state: &HttpState,
    pending: &PendingCell,
) -> Result<SseStream, Response<Body>> {
    let opened = async {
        check_browser_origin(req, state.allowed_origins.as_deref())?;
        let Ok(target) = target(req) else {
            return Ok(None);
        };
        let last_event_id = header(req, hyper::header::HeaderName::from_static("last-event-id"))
            .map(str::to_string)
            .or_else(|| request::query_value(req.uri().query(), "lastEventId"));
        let span = tracing::info_span!(
            "pgws.sse_open",
            channel = target.channel.as_deref().unwrap_or("")
        );
        state
            .streams
            .open(sse::Request {
                channel: target.channel.as_deref(),
                token: target.token.as_deref(),
                last_event_id: last_event_id.as_deref(),
            })
            .instrument(span)
            .await
            .map(Some)
    };
    match opened.await {
        Ok(Some(stream)) => {
            // Open: no longer pending, as an upgraded websocket.
            drop(pending.lock().unwrap_or_else(|p| p.into_inner()).take());
            Ok(stream)
        }
        Ok(None) => Err(text(StatusCode::NOT_FOUND, "Not found\n")),
        Err(refusal) => {
            state.sessions.metrics.refused(&refusal);
            Err(text(refusal.status(), format!("{refusal}\n")))
        }
    }
}

/// An open event stream's response: its head, `body` the events.
pub fn event_stream_response<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `PGWS_ALLOWED_ORIGINS` for plain HTTP: a request that names an origin
/// (browsers do on cross-origin requests and on every POST) must name an
/// allowed one; one without (same-origin GET, curl) is let through.
pub fn check_browser_origin<B>(
    req: &Request<B>,
    allowed: Option<&[String]>,
) -> Result<(), Refusal> {
    if req.headers().contains_key(ORIGIN) {
        check_origin(req, allowed)
    } else {
        Ok(())
    }
}

pub fn check_origin<B>(req: &Request<B>, allowed: Option<&[String]>) -> Result<(), Refusal> {
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
