//! The wire format of a notification republished on Redis pub/sub.
//!
//! ```text
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

use bytes::Bytes;

const MAGIC: &str = "pgws1";

/// A decoded republished notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The publishing coordinator's fencing epoch.
    pub epoch: u64,
    /// Sequence number within the epoch.
    pub seq: u64,
    /// When the coordinator received it, Unix microseconds.
    pub sent_at_us: u64,
    /// W3C trace context of the publish span, when traces are on.
    pub traceparent: Option<String>,
    /// The NOTIFY payload, verbatim.
    pub payload: Bytes,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed bus message: {0}")]
pub struct DecodeError(&'static str);

/// Encode a notification for pub/sub.
pub fn encode(
    epoch: u64,
    seq: u64,
    sent_at_us: u64,
    traceparent: Option<&str>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(112 + payload.len());
    let header = match traceparent {
        // A traceparent is `00-<hex>-<hex>-<hex>`: it never contains a space
        // or newline, but refuse anything that would break the header.
        Some(tp) if !tp.is_empty() && !tp.contains([' ', '\n']) => {
            format!("{MAGIC} {epoch} {seq} {sent_at_us} {tp}\n")
        }
        _ => format!("{MAGIC} {epoch} {seq} {sent_at_us}\n"),
    };
    out.extend_from_slice(header.as_bytes());
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
    if fields.next() != Some(MAGIC) {
        return Err(DecodeError("unknown version"));
    }
    let mut number = |what| -> Result<u64, DecodeError> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or(DecodeError(what))
    };
    let epoch = number("bad epoch")?;
    let seq = number("bad seq")?;
    let sent_at_us = number("bad timestamp")?;
    let traceparent = fields.next().map(str::to_string);
    Ok(Published {
        epoch,
        seq,
        sent_at_us,
        traceparent,
        payload: message.slice(newline + 1..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_payload_verbatim() {
        let payload = "{\"channel\":\"chat\",\n \"payload\":\"ünïcode\"}";
        let m = decode(Bytes::from(encode(
            7,
            42,
            1_700_000_000_000_000,
            None,
            payload.as_bytes(),
        )))
        .expect("decode");
        assert_eq!(
            (m.epoch, m.seq, m.sent_at_us),
            (7, 42, 1_700_000_000_000_000)
        );
        assert_eq!(m.traceparent, None);
        assert_eq!(&m.payload[..], payload.as_bytes());
    }

    #[test]
    fn a_traceparent_rides_in_the_header() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let m = decode(Bytes::from(encode(1, 2, 3, Some(tp), b"x y\nz"))).expect("decode");
        assert_eq!(m.traceparent.as_deref(), Some(tp));
        assert_eq!(&m.payload[..], b"x y\nz");
        let m = decode(Bytes::from(encode(1, 2, 3, Some("bad value"), b"p"))).expect("decode");
        assert_eq!(m.traceparent, None, "an unsafe value is left out");
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "pgws1 1 2 3",
            "pgws2 1 2 3\nx",
            "pgws1 x 2 3\nx",
            "pgws1 1 2\nx",
        ] {
            assert!(decode(Bytes::from(bad)).is_err(), "{bad:?}");
        }
    }
}
