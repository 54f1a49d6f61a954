//! The wire format of a notification republished on Redis pub/sub.
//!
//! ```text
//! pgws2 <epoch> <seq> <sent_at_us> <base> <term> <session> <offset>[ <traceparent>]\n<payload>
//! pgws1 <epoch> <seq> <sent_at_us>[ <traceparent>]\n<payload>
//! ```
//!
//! One ASCII header line, then the NOTIFY payload verbatim — no escaping,
//! no re-encoding, so the gateway can hand the payload bytes to sockets as
//! they are. `epoch` is the coordinator's fencing epoch (gateways drop
//! anything older than the newest they have seen), `seq` counts within an
//! epoch, `sent_at_us` is when the coordinator received the notification
//! (Unix microseconds; the start of the delivery latency), and the optional
//! W3C `traceparent` makes the gateways' fan-out spans children of the
//! coordinator's publish span.
//!
//! `pgws2` adds the message's [`Position`] in its channel — the channel
//! epoch's `base`, `term` and `session`, and the offset — assigned by the
//! leader's publish script, which builds the header from
//! [`Header::script_prefix`] and [`Header::script_suffix`] around the numbers it
//! assigns. Gateways still read `pgws1` (a coordinator from before v2,
//! during a rolling upgrade): such messages have no position.

use crate::position::{Continuity, Epoch, Position};
use bytes::Bytes;

const MAGIC_V1: &str = "pgws1";
const MAGIC: &str = "pgws2";

/// A decoded republished notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The publishing coordinator's fencing epoch.
    pub epoch: u64,
    /// Sequence number within the epoch.
    pub seq: u64,
    /// When the coordinator received it, Unix microseconds.
    pub sent_at_us: u64,
    /// The message's place in its channel (`pgws2` only).
    pub position: Option<Position>,
    /// W3C trace context of the publish span, when traces are on.
    pub traceparent: Option<String>,
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
}

/// The header fields the publisher knows before the script assigns the
/// position.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The publishing coordinator's fencing epoch.
    pub epoch: u64,
    /// Sequence number within the epoch.
    pub seq: u64,
    /// When the coordinator received the notification, Unix microseconds.
    pub sent_at_us: u64,
    /// W3C trace context, when traces are on.
    pub traceparent: Option<&'a str>,
}

impl Header<'_> {
    /// A traceparent is `00-<hex>-<hex>-<hex>`: it never contains a space
    /// or newline, but anything that would break the header is left out.
    fn safe_traceparent(&self) -> Option<&str> {
        self.traceparent
            .filter(|tp| !tp.is_empty() && !tp.contains([' ', '\n']))
    }

    /// What comes before the position numbers.
    pub fn script_prefix(&self) -> String {
        format!("{MAGIC} {} {} {} ", self.epoch, self.seq, self.sent_at_us)
    }

    /// What comes after them (before the newline).
    pub fn script_suffix(&self) -> String {
        match self.safe_traceparent() {
            Some(tp) => format!(" {tp}"),
            None => String::new(),
        }
    }
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed bus message: {0}")]
pub struct DecodeError(&'static str);

/// Encode a notification for pub/sub: `pgws2` with a position, `pgws1`
/// without (the format of coordinators from before v2).
pub fn encode(header: &Header<'_>, position: Option<&Position>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + payload.len());
    let line = match position {
        Some(p) => format!(
            "{}{} {} {} {}{}\n",
            header.script_prefix(),
            p.epoch.base,
            p.epoch.continuity.term,
            p.epoch.continuity.session,
            p.offset,
            header.script_suffix()
        ),
        None => format!(
            "{MAGIC_V1} {} {} {}{}\n",
            header.epoch,
            header.seq,
            header.sent_at_us,
            header.script_suffix()
        ),
    };
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decode a pub/sub message; the payload shares `message`'s buffer.
pub fn decode(message: Bytes) -> Result<Published, DecodeError> {
    let newline = message
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(DecodeError("no header"))?;
    let header =
        std::str::from_utf8(&message[..newline]).map_err(|_| DecodeError("header not UTF-8"))?;
    let mut fields = header.split(' ');
    let positioned = match fields.next() {
        Some(MAGIC) => true,
        Some(MAGIC_V1) => false,
        _ => return Err(DecodeError("unknown version")),
    };
    let mut number = |what| -> Result<u64, DecodeError> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or(DecodeError(what))
    };
    let epoch = number("bad epoch")?;
    let seq = number("bad seq")?;
    let sent_at_us = number("bad timestamp")?;
    let position = if positioned {
        let base = number("bad base")?;
        let term = number("bad term")?;
        let session = number("bad session")?;
        let offset = number("bad offset")?;
        Some(Position {
            epoch: Epoch {
                base,
                continuity: Continuity { term, session },
            },
            offset,
        })
    } else {
        None
    };
    let traceparent = fields.next().map(str::to_string);
    Ok(Published {
        epoch,
        seq,
        sent_at_us,
        position,
        traceparent,
        payload: message.slice(newline + 1..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(traceparent: Option<&str>) -> Header<'_> {
        Header {
            epoch: 7,
            seq: 42,
            sent_at_us: 1_700_000_000_000_000,
            traceparent,
        }
    }

    fn position() -> Position {
        Position {
            epoch: Epoch {
                base: 1_795_838_085_123,
                continuity: Continuity {
                    term: 1_795_838_000_000,
                    session: 2,
                },
            },
            offset: 41,
        }
    }

    #[test]
    fn round_trip_keeps_the_payload_verbatim() {
        let payload = "{\"channel\":\"chat\",\n \"payload\":\"ünïcode\"}";
        for position in [Some(position()), None] {
            let m = decode(Bytes::from(encode(
                &header(None),
                position.as_ref(),
                payload.as_bytes(),
            )))
            .expect("decode");
            assert_eq!(
                (m.epoch, m.seq, m.sent_at_us),
                (7, 42, 1_700_000_000_000_000)
            );
            assert_eq!(m.position, position);
            assert_eq!(m.traceparent, None);
            assert_eq!(&m.payload[..], payload.as_bytes());
        }
    }

    #[test]
    fn the_script_builds_the_same_header_around_the_position() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let h = header(Some(tp));
        let p = position();
        let by_script = format!(
            "{}{} {} {} {}{}\nx",
            h.script_prefix(),
            p.epoch.base,
            p.epoch.continuity.term,
            p.epoch.continuity.session,
            p.offset,
            h.script_suffix()
        );
        assert_eq!(by_script.as_bytes(), &encode(&h, Some(&p), b"x")[..]);
    }

    #[test]
    fn a_traceparent_rides_in_the_header() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for position in [Some(position()), None] {
            let m = decode(Bytes::from(encode(
                &header(Some(tp)),
                position.as_ref(),
                b"x y\nz",
            )))
            .expect("decode");
            assert_eq!(m.traceparent.as_deref(), Some(tp));
            assert_eq!(&m.payload[..], b"x y\nz");
        }
        let m =
            decode(Bytes::from(encode(&header(Some("bad value")), None, b"p"))).expect("decode");
        assert_eq!(m.traceparent, None, "an unsafe value is left out");
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "pgws1 1 2 3",
            "pgws2 1 2 3\nx",
            "pgws2 1 2 3 4 5 6\nx",
            "pgws1 x 2 3\nx",
            "pgws1 1 2\nx",
            "pgws3 1 2 3\nx",
        ] {
            assert!(decode(Bytes::from(bad)).is_err(), "{bad:?}");
        }
    }
}
