//! Publishing over HTTP: `POST /<channel>` (or `/<channel>/<jwt>`, or
//! `/<jwt>` for every channel of the token) with the message as the body
//! (`docs/protocol.md`, "Publishing over HTTP").
//!
//! The request is a v1 writer's one message: the same token sources and
//! authorization ([`auth::authorize`], mode `w` or `rw`), the same size
//! limits (`PGWS_MAX_MESSAGE_SIZE` for the body, the NOTIFY limit for the
//! envelope) and the same envelope onto the bus
//! ([`publish::on_message`]). `202` once the bus took it (queued for the
//! relay; in cluster mode appended to the writes stream); every refusal a
//! 4xx or 5xx whose body is the reason.
//!
//! An `Idempotency-Key` header is claimed in an [`IdempotencyStore`]
//! before publishing (per channel list, token subject and key); a retry
//! that finds it held is answered `202` with `"replayed":true` and
//! `Idempotent-Replayed: true`, and publishes nothing.

use super::response::{text, Body};
use crate::auth::{self, Grant, Refusal};
use crate::config::IdempotencySettings;
use crate::idempotency::IdempotencyStore;
use crate::metrics::PublishOutcome;
use crate::session::publish::{self, Writer};
use crate::session::SessionContext;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use pgws_protocol::close::CloseReason;
use pgws_protocol::envelope::ClaimsJson;
use serde_json::Value;
use std::sync::Arc;

/// The request header naming a retryable publish.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header saying whether the request was a retry.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY: usize = 255;

/// What HTTP publishing needs.
pub struct Publisher {
    /// Shared with websockets: bus, keys, limits, meta channel.
    pub ctx: Arc<SessionContext>,
    /// Where idempotency keys are held.
    pub store: Arc<dyn IdempotencyStore>,
    /// `PGWS_IDEMPOTENCY_*`.
    pub settings: IdempotencySettings,
}

/// What a publish request carries, its body still unread.
pub struct Request<'a> {
    /// From the path.
    pub channel: Option<&'a str>,
    /// From the path, `?token=` or `Authorization: Bearer`.
    pub token: Option<&'a str>,
    /// The `Idempotency-Key` header.
    pub key: Option<&'a str>,
    /// The `Content-Length` header, when given.
    pub length: Option<u64>,
}

/// A refusal: its status, its reason, how it is counted.
struct Answer {
    status: StatusCode,
    reason: String,
    outcome: PublishOutcome,
}

impl Answer {
    fn bad(status: StatusCode, reason: impl Into<String>) -> Answer {
        Answer {
            status,
            reason: reason.into(),
            outcome: PublishOutcome::BadRequest,
        }
    }

    fn unavailable(status: StatusCode, reason: impl Into<String>) -> Answer {
        Answer {
            status,
            reason: reason.into(),
            outcome: PublishOutcome::Unavailable,
        }
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Answer {
        let outcome = match refusal.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PublishOutcome::Refused,
            _ => PublishOutcome::Unavailable,
        };
        Answer {
            status: refusal.status(),
            reason: refusal.to_string(),
            outcome,
        }
    }
}

impl Publisher {
    /// Answer one publish request.
    pub async fn publish(&self, request: Request<'_>, body: Incoming) -> Response<Body> {
        let metrics = &self.ctx.metrics.publish;
        match self.try_publish(request, body).await {
            Ok((replayed, keyed)) => {
                let outcome = if replayed {
                    PublishOutcome::Replayed
                } else {
                    PublishOutcome::Accepted
                };
                metrics.outcome(outcome, 202, "");
                accepted(replayed, keyed)
            }
            Err(answer) => {
                metrics.outcome(answer.outcome, answer.status.as_u16(), &answer.reason);
                let mut response = text(answer.status, format!("{}\n", answer.reason));
                if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                response
            }
        }
    }

    /// `Ok((replayed, keyed))` once accepted.
    async fn try_publish(
        &self,
        request: Request<'_>,
        body: Incoming,
    ) -> Result<(bool, bool), Answer> {
        let ctx = &self.ctx;
        if ctx.shutdown.is_cancelled() {
            return Err(Refusal::ShuttingDown.into());
        }
        let token = request.token.ok_or(Refusal::MissingToken)?;
        let grant = auth::authorize(ctx.keys.verify(token)?, request.channel, &ctx.meta)?;
        if !grant.mode.can_write() {
            return Err(Refusal::NotWritable.into());
        }
        if grant.channels.iter().all(|c| ctx.meta.guards(c)) {
            return Err(Answer {
                status: StatusCode::FORBIDDEN,
                reason: "The meta channel cannot be written to".into(),
                outcome: PublishOutcome::Refused,
            });
        }
        let key = match request.key {
            Some(key) => Some(scope(&grant, valid_key(key)?)),
            None => None,
        };
        let message = self.read_body(request.length, body).await?;
        if let Some(key) = &key {
            let first = self
                .store
                .claim(key, self.settings.ttl)
                .await
                .map_err(|e| Answer::unavailable(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            if !first {
                return Ok((true, true));
            }
        }
        let result = self.send(grant, message).await;
        if let (Err(answer), Some(key)) = (&result, &key) {
            // Certainly not published (an unknown outcome is 504 and
            // keeps the key): a retry may publish.
            if answer.status != StatusCode::GATEWAY_TIMEOUT {
                self.store.release(key).await;
            }
        }
        result.map(|()| (false, key.is_some()))
    }

    /// The body, as text, within `PGWS_MAX_MESSAGE_SIZE`.
    async fn read_body(&self, length: Option<u64>, body: Incoming) -> Result<String, Answer> {
        let max = self.ctx.limits.max_message_size;
        let too_large = || {
            Answer::bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The body exceeds {max} bytes (PGWS_MAX_MESSAGE_SIZE)"),
            )
        };
        if length.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let bytes = match Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => {
                return Err(Answer::bad(
                    StatusCode::BAD_REQUEST,
                    format!("The body could not be read: {e}"),
                ))
            }
        };
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Answer::bad(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "The body must be UTF-8 text",
            )
        })
    }

    /// The message onto the bus, as a websocket writer's.
    async fn send(&self, mut grant: Grant, message: String) -> Result<(), Answer> {
        let claims = ClaimsJson::new(&std::mem::take(&mut grant.claims));
        let writer = Arc::new(Writer {
            session: self.ctx.next_session_id(),
            grant,
            claims,
            ctx: self.ctx.clone(),
            echo: None,
        });
        publish::on_message(writer, message)
            .await
            .map_err(|reason| match reason {
                CloseReason::MessageTooBig => Answer::bad(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "The message's envelope exceeds {} bytes (the NOTIFY limit)",
                        pgws_protocol::limits::NOTIFY_PAYLOAD_MAX
                    ),
                ),
                CloseReason::WriteOutcomeUnknown => Answer::unavailable(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Sent, but not confirmed in time: it may or may not be delivered",
                ),
                CloseReason::GoingAway => {
                    Answer::unavailable(StatusCode::SERVICE_UNAVAILABLE, "Server shutting down")
                }
                _ => Answer::unavailable(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Not sent: the write queue is full, try again later",
                ),
            })
    }
}

/// An `Idempotency-Key` must be 1 to [`MAX_KEY`] visible ASCII characters.
fn valid_key(key: &str) -> Result<&str, Answer> {
    if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Answer::bad(
            StatusCode::BAD_REQUEST,
            format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
        ));
    }
    Ok(key)
}

/// A key's scope: the same key from another subject, or for other
/// channels, is another key.
fn scope(grant: &Grant, key: &str) -> String {
    let subject = match grant.claims.get("sub") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let channels = serde_json::to_string(&grant.channels).unwrap_or_default();
    let subject = serde_json::to_string(&subject).unwrap_or_default();
    format!("{channels}:{subject}:{key}")
}

fn accepted(replayed: bool, keyed: bool) -> Response<Body> {
    let body = serde_json::json!({"accepted": true, "replayed": replayed}).to_string();
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if keyed {
        let value = if replayed { "true" } else { "false" };
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static(value));
    }
    response
}
