//! What the doorbell carries: a committing transaction that rings for an
//! idle reader puts its commit rows and their messages in the notification
//! (`pgws.number_sends` in `postgres/sql/outbox.sql` writes it), so the
//! reader delivers them without a poll — the same latency as a NOTIFY.
//!
//! A bell is only a shortcut, never the record: each commit row names the
//! shard's previous `seq`, read under the shard's lock, and the reader
//! takes it only when that is exactly where its cursor stands (nothing of
//! the shard can be in between). Anything else — a plain ring, a bell that
//! does not parse, one that does not continue a cursor — makes the reader
//! poll, as it did before bells carried anything.
//!
//! Format, per commit row, concatenated:
//!
//! ```text
//! 1 <shard> <seq> <prev seq> <base> <first offset> <committed ms> <n> <channel bytes>\n
//! <channel> then n times: <payload bytes>\n<payload>
//! ```

use super::message::OutboxMessage;
use bytes::Bytes;

/// One commit row read from a bell.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// The commit row's shard.
    pub shard: i32,
    /// Its sequence number.
    pub seq: i64,
    /// The shard's previous sequence number (-1: unknown).
    pub prev: i64,
    /// Its messages, in order.
    pub messages: Vec<OutboxMessage>,
}

/// The commit rows a bell carries, messages stamped with `generation`;
/// `None` for a plain ring or anything that does not parse.
pub fn parse(bell: &str, generation: u64) -> Option<Vec<Rung>> {
    if bell.is_empty() {
        return None;
    }
    let mut rest = bell.as_bytes();
    let mut rungs = Vec::new();
    while !rest.is_empty() {
        let (rung, after) = parse_one(rest, generation)?;
        rungs.push(rung);
        rest = after;
    }
    Some(rungs)
}

fn parse_one(input: &[u8], generation: u64) -> Option<(Rung, &[u8])> {
    let (header, mut rest) = line(input)?;
    let fields: Vec<i64> = std::str::from_utf8(header)
        .ok()?
        .split(' ')
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [1, shard, seq, prev, base, first_offset, committed_ms, n, channel_len] = fields[..] else {
        return None;
    };
    let channel = take(&mut rest, channel_len)?;
    let channel = String::from_utf8(channel.to_vec()).ok()?;
    let mut messages = Vec::with_capacity(usize::try_from(n).ok()?.min(64));
    for i in 0..n {
        let (len, after) = line(rest)?;
        rest = after;
        let len: i64 = std::str::from_utf8(len).ok()?.parse().ok()?;
        let payload = take(&mut rest, len)?;
        messages.push(OutboxMessage {
            channel: channel.clone(),
            payload: Bytes::from(String::from_utf8(payload.to_vec()).ok()?),
            base: u64::try_from(base).ok()?,
            generation,
            offset: u64::try_from(first_offset + i).ok()?,
            shard: i32::try_from(shard).ok()?,
            seq,
            committed_at_ms: committed_ms,
        });
    }
    let rung = Rung {
        shard: i32::try_from(shard).ok()?,
        seq,
        prev,
        messages,
    };
    Some((rung, rest))
}

/// Up to the next `\n` (excluded), and what follows it.
fn line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = input.iter().position(|b| *b == b'\n')?;
    Some((&input[..at], &input[at + 1..]))
}

/// The next `len` bytes.
fn take<'a>(rest: &mut &'a [u8], len: i64) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    if rest.len() < len {
        return None;
    }
    let (taken, after) = rest.split_at(len);
    *rest = after;
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bell as `pgws.number_sends` writes it (the shape seen from psql).
    const TWO: &str = "1 10 58233 58232 1796301849753 2 1796301849772 2 4\nfast24\n{\"channel\":\"fast\",\"p\":2}3\nx\ny\
1 13 58234 -1 1796301849772 1 1796301849772 1 0\n5\nplain";

    #[test]
    fn a_bell_gives_its_commit_rows_with_their_messages_in_order() {
        let rungs = parse(TWO, 7).expect("parses");
        assert_eq!(rungs.len(), 2);
        let fast = &rungs[0];
        assert_eq!((fast.shard, fast.seq, fast.prev), (10, 58233, 58232));
        let got: Vec<(&str, &[u8], u64)> = fast
            .messages
            .iter()
            .map(|m| (m.channel.as_str(), m.payload.as_ref(), m.offset))
            .collect();
        assert_eq!(
            got,
            vec![
                ("fast", &b"{\"channel\":\"fast\",\"p\":2}"[..], 2),
                ("fast", &b"x\ny"[..], 3)
            ]
        );
        assert_eq!(fast.messages[0].generation, 7);
        assert_eq!(fast.messages[0].base, 1796301849753);
        assert_eq!(fast.messages[0].committed_at_ms, 1796301849772);
        let plain = &rungs[1];
        assert_eq!((plain.shard, plain.prev), (13, -1));
        assert_eq!(plain.messages[0].channel, "");
        assert_eq!(plain.messages[0].payload.as_ref(), b"plain");
    }

    #[test]
    fn multibyte_text_is_counted_in_bytes() {
        let bell = "1 0 5 4 1 1 1 1 4\nçà6\nhéllo";
        let rungs = parse(bell, 0).expect("parses");
        assert_eq!(rungs[0].messages[0].channel, "çà");
        assert_eq!(rungs[0].messages[0].payload.as_ref(), "héllo".as_bytes());
    }

    #[test]
    fn a_plain_ring_or_anything_malformed_is_none() {
        for bell in [
            "",
            "2 1 2 3 4 5 6 1 0\n1\nx",
            "1 1 2 3 4 5 6 1 0\n9\nx",
            "1 1 2 3 4 5 6 2 0\n1\nx",
            "1 1 2 3 4 5\n",
            "1 a 2 3 4 5 6 1 0\n1\nx",
            "1 1 2 3 4 5 6 1 9\nab",
            "1 1 2 3 4 -5 6 1 0\n1\nx",
        ] {
            assert_eq!(parse(bell, 0), None, "{bell:?}");
        }
    }
}
