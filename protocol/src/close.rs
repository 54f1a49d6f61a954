//! Every websocket close code the gateway sends, in one table.
//!
//! Codes in the 1000 range are the RFC 6455 ones; 3001 is inherited from the
//! original postgres-websockets; the other 3xxx codes are ours; the 4xxx
//! codes close a protocol v2 socket whose `connect` frame failed (4000 +
//! the HTTP status the same problem gets at the upgrade). All are
//! documented in `docs/protocol.md`. Where a close sends a more specific
//! reason than [`CloseReason::text`] (the 4xxx codes and 1008 name the
//! problem), the session writes that text instead.

/// A reason the gateway closes a websocket, with its code and the text sent
/// in the close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed the socket, or the conversation ended normally.
    Normal,
    /// The server is shutting down (SIGTERM) or the listener died.
    GoingAway,
    /// The client sent something that is not valid for this protocol.
    ProtocolError,
    /// A message is not valid UTF-8 (it must become JSON text).
    InvalidPayload,
    /// A frame or its NOTIFY envelope is larger than allowed.
    MessageTooBig,
    /// An unexpected server-side failure.
    InternalError,
    /// The write queue to the database is full; retry later.
    TryAgainLater,
    /// The token's `exp` has passed (code inherited from the original).
    JwtExpired,
    /// The socket's send queue overflowed: the client does not read fast enough.
    SlowConsumer,
    /// No pong (or any frame) arrived within two ping intervals.
    PingTimeout,
    /// A message was handed to Redis and whether it was queued could not be
    /// learnt in time: it may or may not be sent.
    WriteOutcomeUnknown,
    /// v2: a binary frame.
    UnsupportedData,
    /// v2: a frame that is not a JSON object, or a command without a usable
    /// `id`.
    PolicyViolation,
    /// v2: the first frame was not a usable `connect`.
    ConnectBadRequest,
    /// v2: the `connect` token is missing, invalid or expired.
    ConnectUnauthorized,
    /// v2: the `connect` token's claims allow nothing (mode, channels).
    ConnectForbidden,
    /// v2: no `connect` frame within `PGWS_CONNECT_TIMEOUT`.
    ConnectTimeout,
    /// v2: a `refresh` token that names another identity (`sub`, `iss`) or
    /// allows more than the socket's token (mode, channels, no `exp`).
    RefreshRefused,
}

impl CloseReason {
    /// Every reason, for tables and metrics initialisation.
    pub const ALL: [CloseReason; 18] = [
        CloseReason::Normal,
        CloseReason::GoingAway,
        CloseReason::ProtocolError,
        CloseReason::InvalidPayload,
        CloseReason::MessageTooBig,
        CloseReason::InternalError,
        CloseReason::TryAgainLater,
        CloseReason::JwtExpired,
        CloseReason::SlowConsumer,
        CloseReason::PingTimeout,
        CloseReason::WriteOutcomeUnknown,
        CloseReason::UnsupportedData,
        CloseReason::PolicyViolation,
        CloseReason::ConnectBadRequest,
        CloseReason::ConnectUnauthorized,
        CloseReason::ConnectForbidden,
        CloseReason::ConnectTimeout,
        CloseReason::RefreshRefused,
    ];

    /// The close code sent in the close frame.
    pub const fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::MessageTooBig => 1009,
            CloseReason::InternalError => 1011,
            CloseReason::TryAgainLater => 1013,
            CloseReason::JwtExpired => 3001,
            CloseReason::SlowConsumer => 3008,
            CloseReason::PingTimeout => 3009,
            CloseReason::WriteOutcomeUnknown => 3010,
            CloseReason::UnsupportedData => 1003,
            CloseReason::PolicyViolation => 1008,
            CloseReason::ConnectBadRequest => 4400,
            CloseReason::ConnectUnauthorized => 4401,
            CloseReason::ConnectForbidden => 4403,
            CloseReason::ConnectTimeout => 4408,
            CloseReason::RefreshRefused => 3011,
        }
    }

    /// The human-readable reason sent in the close frame.
    pub const fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "",
            CloseReason::GoingAway => "Server shutting down",
            CloseReason::ProtocolError => "Protocol error",
            CloseReason::InvalidPayload => "Message is not valid UTF-8",
            CloseReason::MessageTooBig => "Message too big",
            CloseReason::InternalError => "Internal error",
            CloseReason::TryAgainLater => "Try again later",
            CloseReason::JwtExpired => "JWT expired",
            CloseReason::SlowConsumer => "Slow consumer",
            CloseReason::PingTimeout => "Ping timeout",
            CloseReason::WriteOutcomeUnknown => "Write outcome unknown",
            CloseReason::UnsupportedData => "Binary frames are not supported",
            CloseReason::PolicyViolation => "Policy violation",
            CloseReason::ConnectBadRequest => "Expected a connect frame",
            CloseReason::ConnectUnauthorized => "Invalid token",
            CloseReason::ConnectForbidden => "Not allowed",
            CloseReason::ConnectTimeout => "No connect frame in time",
            CloseReason::RefreshRefused => "Refresh refused",
        }
    }

    /// A short, stable label for metrics and logs.
    pub const fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::GoingAway => "going_away",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidPayload => "invalid_payload",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::InternalError => "internal_error",
            CloseReason::TryAgainLater => "try_again_later",
            CloseReason::JwtExpired => "jwt_expired",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::WriteOutcomeUnknown => "write_outcome_unknown",
            CloseReason::UnsupportedData => "unsupported_data",
            CloseReason::PolicyViolation => "policy_violation",
            CloseReason::ConnectBadRequest => "connect_bad_request",
            CloseReason::ConnectUnauthorized => "connect_unauthorized",
            CloseReason::ConnectForbidden => "connect_forbidden",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::RefreshRefused => "refresh_refused",
        }
    }

    /// Inverse of [`CloseReason::code`], for the session's atomic kill flag.
    pub fn from_code(code: u16) -> Option<CloseReason> {
        CloseReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        let mut codes: Vec<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseReason::ALL.len());
    }

    #[test]
    fn jwt_expired_keeps_the_original_code() {
        assert_eq!(CloseReason::JwtExpired.code(), 3001);
        assert_eq!(CloseReason::JwtExpired.text(), "JWT expired");
    }
}
