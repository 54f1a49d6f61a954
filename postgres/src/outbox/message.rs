//! [`OutboxMessage`]: one committed message as the reader hands it over
//! (read by a poll, or from a doorbell's bell).

use bytes::Bytes;

/// One message read from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The payload's `"channel"`; empty for a payload without one (it goes
    /// to the channel named like the listen channel, as a NOTIFY would).
    pub channel: String,
    /// What the application passed to `pgws.send`, verbatim.
    pub payload: Bytes,
    /// The channel's epoch base (`pgws.channels.base`).
    pub base: u64,
    /// The database's outbox generation (`pgws.meta`), moved on when the
    /// database went back in time.
    pub generation: u64,
    /// Its offset in the channel's sequence.
    pub offset: u64,
    /// Its commit row's shard and sequence number.
    pub shard: i32,
    /// See `shard`.
    pub seq: i64,
    /// When its transaction committed (Unix milliseconds).
    pub committed_at_ms: i64,
}
