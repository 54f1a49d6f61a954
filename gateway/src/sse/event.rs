//! The text/event-stream wire format (WHATWG HTML, "Server-sent events"):
//! event blocks, the stream's `id:` (every channel's position), and the
//! `Last-Event-ID` a reconnecting browser sends back.
//!
//! An event's `id` lists, for each of the stream's channels in the order
//! of the token's claims, the position of the last message the stream
//! sent on it: `<epoch>:<offset>`, joined by `,` — for a one-channel
//! stream exactly the v2 position of the message. Epochs are hexadecimal
//! dotted triples, so neither `:` nor `,` can occur inside one.

use pgws_protocol::position::{Position, Since};

/// The event a stream sends for a channel whose position could not be
/// recovered: the page must resync (reload its state) before trusting
/// the events that follow.
pub const RESET_EVENT: &str = "pgws-reset";
/// The event a stream sends right before the server ends it.
pub const CLOSE_EVENT: &str = "pgws-close";
/// The keep-alive comment.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The positions in an event's `id`.
pub fn id_of(positions: &[Position]) -> String {
    let mut id = String::new();
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            id.push(',');
        }
        id.push_str(&format!("{}:{}", p.epoch, p.offset));
    }
    id
}

/// A `Last-Event-ID` for a stream of `channels` channels: one position per
/// channel, or `None` when it does not have that shape (the stream then
/// resets every channel).
pub fn parse_last_event_id(text: &str, channels: usize) -> Option<Vec<Since>> {
    let sinces: Vec<Since> = text
        .trim()
        .split(',')
        .map(|part| {
            let (epoch, offset) = part.rsplit_once(':')?;
            Some(Since {
                epoch: epoch.to_string(),
                offset: offset.parse().ok()?,
            })
        })
        .collect::<Option<_>>()?;
    (sinces.len() == channels).then_some(sinces)
}

/// Append one event: its optional name, its `id`, and `data` — one
/// `data:` line per line of the payload, split at every `\r\n`, `\n` and
/// `\r` as the parser does, so the browser's `event.data` is the payload
/// with its line breaks as `\n`.
pub fn write(out: &mut Vec<u8>, name: Option<&str>, id: Option<&str>, data: &[u8]) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// The stream's first bytes: the reconnection delay and where it stands,
/// an `id` without data (sets the browser's last event id, fires nothing).
pub fn preamble(out: &mut Vec<u8>, retry_ms: u64, id: &str) {
    out.extend_from_slice(format!("retry: {retry_ms}\nid: {id}\n\n").as_bytes());
}

/// The payload's lines as the event-stream parser splits them.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\n' => {
                lines.push(&data[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&data[start..i]);
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    lines.push(&data[start..]);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgws_protocol::position::{Continuity, Epoch};

    fn text(name: Option<&str>, id: Option<&str>, data: &str) -> String {
        let mut out = Vec::new();
        write(&mut out, name, id, data.as_bytes());
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn every_line_break_starts_a_data_line() {
        assert_eq!(text(None, Some("e:1"), "one"), "id: e:1\ndata: one\n\n");
        assert_eq!(
            text(None, None, "a\nb\r\nc\rd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(text(None, None, ""), "data: \n\n");
        assert_eq!(text(None, None, "x\n"), "data: x\ndata: \n\n");
        assert_eq!(
            text(Some(RESET_EVENT), None, "{}"),
            "event: pgws-reset\ndata: {}\n\n"
        );
    }

    #[test]
    fn ids_round_trip_and_bad_ones_are_refused() {
        let p = |offset| Position {
            epoch: Epoch {
                base: 0x1f,
                continuity: Continuity {
                    term: 2,
                    session: 3,
                },
            },
            offset,
        };
        let id = id_of(&[p(7), p(9)]);
        assert_eq!(id, "1f.2.3:7,1f.2.3:9");
        let sinces = parse_last_event_id(&id, 2).expect("two positions");
        assert_eq!(sinces[1].epoch, "1f.2.3");
        assert_eq!(sinces[1].offset, 9);
        assert!(parse_last_event_id(&id, 1).is_none(), "wrong count");
        for bad in ["", "x", "e:-1", "e:1,", "e:one"] {
            assert!(parse_last_event_id(bad, 1).is_none(), "{bad:?}");
        }
    }
}
