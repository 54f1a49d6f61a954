//! Who may open which channels, in which mode.
//!
//! [`Keys`] turns `PGWS_JWT_SECRET` into verification keys once at start-up:
//! a raw HMAC secret (optionally base64), a single JWK, or a JWKS from which
//! the token's `kid` picks the key. An empty HMAC key is refused (it would
//! make every token signed with an empty key valid); one under 32 bytes is
//! reported by [`Keys::weakest_hmac_key`] for a start-up warning.
//! [`Keys::verify`] refuses a header with `crit` (RFC 7515 §4.1.11: we
//! understand no extension, so every critical one — `b64`, anything — is
//! unknown, and an empty list is forbidden outright), checks the signature
//! (HS/RS/PS/ES 256/384/512 and EdDSA; `none` can never verify), `exp` and
//! `nbf` (no leeway, as in the original), and returns the claims.
//! [`authorize`] turns claims and the requested channel into a [`Grant`], or
//! a [`Refusal`] whose text is the HTTP body the client sees.

use base64::Engine;
use hyper::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// The JWT claims of a token, as a JSON object.
pub type Claims = Map<String, Value>;

/// What a socket may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `r`: receive only.
    Read,
    /// `w`: send only.
    Write,
    /// `rw`: both.
    ReadWrite,
}

impl Mode {
    /// Whether the socket receives the channels' messages.
    pub fn can_read(self) -> bool {
        matches!(self, Mode::Read | Mode::ReadWrite)
    }

    /// Whether the socket's messages become NOTIFYs.
    pub fn can_write(self) -> bool {
        matches!(self, Mode::Write | Mode::ReadWrite)
    }

    /// The claim value, also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "r",
            Mode::Write => "w",
            Mode::ReadWrite => "rw",
        }
    }
}

/// What an accepted token allows this socket.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Read, write or both.
    pub mode: Mode,
    /// The socket's channels, deduplicated, in claim order.
    pub channels: Vec<String>,
    /// All claims, for envelopes and meta events.
    pub claims: Claims,
    /// The token's `exp` (Unix seconds), when it has one.
    pub expires_at: Option<f64>,
}

/// Why a websocket upgrade is refused; the text is the response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token in the path, query, Authorization or Sec-WebSocket-Protocol.
    #[error("Missing token")]
    MissingToken,
    /// The token's `exp` has passed.
    #[error("Token expired")]
    TokenExpired,
    /// The token did not verify (bad signature, malformed, wrong algorithm…).
    #[error("{0}")]
    InvalidToken(String),
    /// The claims have no `mode`.
    #[error("Missing mode")]
    MissingMode,
    /// `mode` is not `r`, `w` or `rw`.
    #[error("Invalid mode")]
    InvalidMode,
    /// `channel`/`channels` are not strings / an array of strings.
    #[error("Invalid channels claim")]
    InvalidChannelsClaim,
    /// The requested channel is not in the claims, or there is none at all.
    #[error("No allowed channels")]
    NoAllowedChannels,
    /// `Origin` is not in `PGWS_ALLOWED_ORIGINS`.
    #[error("Origin not allowed")]
    OriginNotAllowed,
    /// `PGWS_MAX_CONNECTIONS` reached.
    #[error("Too many connections")]
    TooManyConnections,
    /// The gateway is draining.
    #[error("Server shutting down")]
    ShuttingDown,
    /// An upgrade request with another method than GET (RFC 6455 §4.1).
    #[error("Websocket upgrades must use GET")]
    UpgradeNotGet,
    /// `PGWS_MAX_PENDING_CONNECTIONS` connections are not yet upgraded.
    #[error("Too many pending connections")]
    TooManyPending,
    /// Cluster mode: a v1 reader's Redis subscription could not be queued
    /// (`PGWS_REDIS_SUBSCRIPTION_QUEUE`) or was not confirmed within 5 s.
    #[error("Subscription unavailable, try again later")]
    SubscriptionUnavailable,
    /// An event stream (or a read) asked with a token of mode `w`.
    #[error("Token mode does not allow reading")]
    NotReadable,
    /// An HTTP publish with a token of mode `r`.
    #[error("Token mode does not allow writing")]
    NotWritable,
    /// A websocket asked for over HTTP/2 (RFC 8441 is not served).
    #[error("Websockets need HTTP/1.1: connect without HTTP/2 (ALPN http/1.1)")]
    WebsocketOverHttp2,
}

impl Refusal {
    /// Every kind of refusal (an empty message stands for a token error's).
    pub fn all() -> [Refusal; 16] {
        [
            Refusal::MissingToken,
            Refusal::TokenExpired,
            Refusal::InvalidToken(String::new()),
            Refusal::MissingMode,
            Refusal::InvalidMode,
            Refusal::InvalidChannelsClaim,
            Refusal::NoAllowedChannels,
            Refusal::OriginNotAllowed,
            Refusal::TooManyConnections,
            Refusal::ShuttingDown,
            Refusal::UpgradeNotGet,
            Refusal::TooManyPending,
            Refusal::SubscriptionUnavailable,
            Refusal::NotReadable,
            Refusal::NotWritable,
            Refusal::WebsocketOverHttp2,
        ]
    }

    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingToken | Refusal::TokenExpired | Refusal::InvalidToken(_) => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::MissingMode
            | Refusal::InvalidMode
            | Refusal::InvalidChannelsClaim
            | Refusal::NoAllowedChannels
            | Refusal::OriginNotAllowed
            | Refusal::NotReadable
            | Refusal::NotWritable => StatusCode::FORBIDDEN,
            Refusal::WebsocketOverHttp2 => StatusCode::BAD_REQUEST,
            Refusal::UpgradeNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::TooManyConnections
            | Refusal::ShuttingDown
            | Refusal::TooManyPending
            | Refusal::SubscriptionUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::TokenExpired => "token_expired",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::MissingMode => "missing_mode",
            Refusal::InvalidMode => "invalid_mode",
            Refusal::InvalidChannelsClaim => "invalid_channels_claim",
            Refusal::NoAllowedChannels => "no_allowed_channels",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::UpgradeNotGet => "method_not_allowed",
            Refusal::TooManyPending => "too_many_pending",
            Refusal::SubscriptionUnavailable => "subscription_unavailable",
            Refusal::NotReadable => "not_readable",
            Refusal::NotWritable => "not_writable",
            Refusal::WebsocketOverHttp2 => "websocket_over_http2",
        }
    }
}

/// Why `PGWS_JWT_SECRET` could not become keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `PGWS_JWT_SECRET_BASE64` is set but the secret is not base64.
    #[error("not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The secret looks like JSON but is not a usable JWK or JWKS.
    #[error("not a usable JWK or JWKS: {0}")]
    Jwk(String),
    /// The secret is empty.
    #[error("must not be empty")]
    Empty,
}

struct JwkKey {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

/// Verification keys built from `PGWS_JWT_SECRET`.
pub struct Keys {
    hmac: Option<DecodingKey>,
    jwks: Vec<JwkKey>,
    /// Length of the shortest HMAC key, in bytes.
    shortest_hmac: Option<usize>,
}

/// HMAC keys shorter than this draw a warning at start-up (RFC 7518 §3.2
/// asks for at least the hash size: 32 bytes for HS256).
pub const MIN_HMAC_KEY: usize = 32;

impl Keys {
    /// Build keys from the secret's bytes.
    pub fn from_secret(secret: &[u8], base64: bool) -> Result<Keys, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        if base64 {
            let text: Vec<u8> = secret
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&text))?;
            return Keys::hmac(&raw);
        }
        let trimmed = String::from_utf8_lossy(secret);
        let trimmed = trimmed.trim();
        if trimmed.starts_with('{') {
            return Keys::from_json(trimmed);
        }
        Keys::hmac(secret)
    }

    fn hmac(secret: &[u8]) -> Result<Keys, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keys {
            hmac: Some(DecodingKey::from_secret(secret)),
            jwks: Vec::new(),
            shortest_hmac: Some(secret.len()),
        })
    }

    /// The length of the shortest HMAC key when it is under
    /// [`MIN_HMAC_KEY`] bytes.
    pub fn weakest_hmac_key(&self) -> Option<usize> {
        self.shortest_hmac.filter(|n| *n < MIN_HMAC_KEY)
    }

    fn from_json(json: &str) -> Result<Keys, KeyError> {
        let value: Value = serde_json::from_str(json).map_err(|e| KeyError::Jwk(e.to_string()))?;
        let jwks: Vec<Jwk> = if value.get("keys").is_some() {
            let set: JwkSet =
                serde_json::from_value(value).map_err(|e| KeyError::Jwk(e.to_string()))?;
            set.keys
        } else {
            vec![serde_json::from_value(value).map_err(|e| KeyError::Jwk(e.to_string()))?]
        };
        let mut shortest_hmac: Option<usize> = None;
        for jwk in &jwks {
            if let jsonwebtoken::jwk::AlgorithmParameters::OctetKey(oct) = &jwk.algorithm {
                let len = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(oct.value.trim_end_matches('='))
                    .map_err(|e| KeyError::Jwk(format!("oct key: {e}")))?
                    .len();
                if len == 0 {
                    return Err(KeyError::Jwk("an oct key with an empty \"k\"".into()));
                }
                shortest_hmac = Some(shortest_hmac.map_or(len, |s| s.min(len)));
            }
        }
        let keys = jwks
            .iter()
            .map(|jwk| {
                Ok(JwkKey {
                    kid: jwk.common.key_id.clone(),
                    algorithm: jwk
                        .common
                        .key_algorithm
                        .and_then(|a| a.to_string().parse::<Algorithm>().ok()),
                    key: DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwk(e.to_string()))?,
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        if keys.is_empty() {
            return Err(KeyError::Jwk("the key set is empty".into()));
        }
        Ok(Keys {
            hmac: None,
            jwks: keys,
            shortest_hmac,
        })
    }

    /// Verify `token` and return its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        refuse_critical_extensions(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(token_error)?;
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;

        let candidates = self.candidates(header.alg, header.kid.as_deref());
        if candidates.is_empty() {
            return Err(Refusal::InvalidToken(match header.kid {
                Some(kid) => format!("No key for kid {kid:?} and algorithm {:?}", header.alg),
                None => format!("No key for algorithm {:?}", header.alg),
            }));
        }
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(token_error)
            .unwrap_or(Refusal::InvalidToken("InvalidSignature".into())))
    }

    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<&DecodingKey> {
        if let Some(key) = &self.hmac {
            return if family_matches(key, alg) {
                vec![key]
            } else {
                Vec::new()
            };
        }
        self.jwks
            .iter()
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.algorithm.is_none_or(|a| a == alg))
            .filter(|k| family_matches(&k.key, alg))
            .map(|k| &k.key)
            .collect()
    }
}

/// RFC 7515 §4.1.11: a recipient must reject a JWS whose `crit` names an
/// extension it does not understand — we understand none — and `crit` may
/// not be empty. The header is read here because the JWT library ignores
/// `crit`.
pub fn refuse_critical_extensions(token: &str) -> Result<(), Refusal> {
    let Some(encoded) = token.split('.').next() else {
        return Ok(());
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('='))
    else {
        return Ok(()); // malformed: decode_header reports it
    };
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(());
    };
    match header.get("crit") {
        None => Ok(()),
        Some(Value::Array(names)) if !names.is_empty() => {
            let names: Vec<String> = names
                .iter()
                .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                .collect();
            Err(Refusal::InvalidToken(format!(
                "Unsupported critical header parameters: {}",
                names.join(", ")
            )))
        }
        Some(_) => Err(Refusal::InvalidToken(
            "Invalid crit header: must be a non-empty list".into(),
        )),
    }
}

fn family_matches(key: &DecodingKey, alg: Algorithm) -> bool {
    key.family() == alg.family()
}

fn token_error(e: jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::TokenExpired,
        _ => Refusal::InvalidToken(e.to_string()),
    }
}

/// Who may use the meta channel (`PGWS_META_CHANNEL`).
///
/// By default its events — which carry every connecting user's claims —
/// are read only by tokens that name the channel in `channel`/`channels`,
/// and nobody writes to it. `PGWS_META_CHANNEL_PUBLIC=true` restores the
/// original's behaviour: any token that may open any channel reads it, and
/// writers may post on it.
#[derive(Debug, Clone, Default)]
pub struct MetaChannel {
    /// The channel's name, when meta events are on.
    pub name: Option<String>,
    /// The original's open behaviour.
    pub public: bool,
}

impl MetaChannel {
    /// Whether `channel` is the meta channel and is guarded.
    pub fn guards(&self, channel: &str) -> bool {
        !self.public && self.name.as_deref() == Some(channel)
    }
}

/// What a verified token allows a protocol v2 socket: its mode on a set of
/// channels, or — a token without channel claims — on any channel but a
/// guarded meta channel.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// Read, write or both.
    pub mode: Mode,
    /// The `channel`/`channels` claims; `None` when the token has none.
    pub channels: Option<Vec<String>>,
    /// All claims, for envelopes and meta events.
    pub claims: Claims,
    /// The token's `exp` (Unix seconds), when it has one.
    pub expires_at: Option<f64>,
}

impl Permissions {
    fn allows(&self, channel: &str, meta: &MetaChannel) -> bool {
        match &self.channels {
            Some(list) => list.iter().any(|c| c == channel),
            None => !meta.guards(channel),
        }
    }

    /// Whether the socket may subscribe to `channel`.
    pub fn may_read(&self, channel: &str, meta: &MetaChannel) -> bool {
        self.mode.can_read() && self.allows(channel, meta)
    }

    /// Whether the socket may publish on `channel` (never on a guarded meta
    /// channel, whatever the claims say — as for v1 writers).
    pub fn may_write(&self, channel: &str, meta: &MetaChannel) -> bool {
        self.mode.can_write() && !meta.guards(channel) && self.allows(channel, meta)
    }

    /// The channel claims, for meta events (empty when there are none).
    pub fn claimed_channels(&self) -> &[String] {
        self.channels.as_deref().unwrap_or(&[])
    }
}

/// What a verified token allows a v2 socket.
pub fn permissions(claims: Claims) -> Result<Permissions, Refusal> {
    let channels = claim_channels(&claims)?;
    let mode = claim_mode(&claims)?;
    let expires_at = claims.get("exp").and_then(Value::as_f64);
    Ok(Permissions {
        mode,
        channels: (!channels.is_empty()).then_some(channels),
        claims,
        expires_at,
    })
}

fn claim_mode(claims: &Claims) -> Result<Mode, Refusal> {
    match claims.get("mode") {
        None => Err(Refusal::MissingMode),
        Some(Value::String(m)) => match m.as_str() {
            "r" => Ok(Mode::Read),
            "w" => Ok(Mode::Write),
            "rw" | "wr" => Ok(Mode::ReadWrite),
            _ => Err(Refusal::InvalidMode),
        },
        Some(_) => Err(Refusal::InvalidMode),
    }
}

/// Decide what a verified token allows, given the channel named in the URL.
pub fn authorize(
    claims: Claims,
    requested: Option<&str>,
    meta: &MetaChannel,
) -> Result<Grant, Refusal> {
    let allowed = claim_channels(&claims)?;
    let mode = claim_mode(&claims)?;
    let channels = match requested {
        // No channel claims: any channel named in the URL — except a
        // guarded meta channel, which must be named in the claims.
        Some(channel) if allowed.is_empty() && meta.guards(channel) => Vec::new(),
        Some(channel) if allowed.is_empty() => vec![channel.to_string()],
        Some(channel) => allowed.into_iter().filter(|c| c == channel).collect(),
        None => allowed,
    };
    if channels.is_empty() {
        return Err(Refusal::NoAllowedChannels);
    }
    let expires_at = claims.get("exp").and_then(Value::as_f64);
    Ok(Grant {
        mode,
        channels,
        claims,
        expires_at,
    })
}

/// `channel` and `channels` merged, `channel` first, duplicates removed.
fn claim_channels(claims: &Claims) -> Result<Vec<String>, Refusal> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |c: &str| {
        if !out.iter().any(|o| o == c) {
            out.push(c.to_string());
        }
    };
    match claims.get("channel") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) => push(c),
        Some(_) => return Err(Refusal::InvalidChannelsClaim),
    }
    match claims.get("channels") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for c in list {
                match c {
                    Value::String(c) => push(c),
                    _ => return Err(Refusal::InvalidChannelsClaim),
                }
            }
        }
        Some(_) => return Err(Refusal::InvalidChannelsClaim),
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
