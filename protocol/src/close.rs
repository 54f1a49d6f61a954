//! Every websocket close code the gateway sends, in one table.
//!
//! Codes in the 1000 range are the RFC 6455 ones; 3001 is inherited from the
//! original postgres-websockets; the other 3xxx codes are ours and are
//! documented in `docs/protocol.md`.

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
}

impl CloseReason {
    /// Every reason, for tables and metrics initialisation.
    pub const ALL: [CloseReason; 11] = [
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
