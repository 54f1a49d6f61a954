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
//! Any role that may connect may `NOTIFY pgws_outbox`, so a bell is
//! signed: HMAC-SHA256 under the key in `pgws.bell_key`, which only the
//! schema's owner (and the reader, which reads the outbox tables) can read.
//! An unsigned or wrongly signed bell is only a plain ring (a poll). A
//! replayed one is harmless: its rows are at or below the cursor, or its
//! previous `seq` is not the cursor.
//!
//! Format: the signature in hex, a newline, then per commit row,
//! concatenated:
//!
//! ```text
//! 2 <generation> <shard> <seq> <prev seq> <base> <first offset> <committed ms> <n> <channel bytes>\n
//! <channel> then n times: <payload bytes>\n<payload>
//! ```

use super::message::OutboxMessage;
use bytes::Bytes;
use ring::hmac;

/// Why a bell gives no rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRows {
    /// A plain ring (empty).
    Plain,
    /// Not signed with the outbox's key.
    Forged,
    /// Signed, but not in the format (a newer writer?), or from another
    /// outbox generation (a replay from before a rewind).
    Malformed,
}

/// The signing key, from `pgws.bell_key.k`.
pub fn key(k: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, k)
}

/// The commit rows of a signed bell of this `generation`.
pub fn open(bell: &str, key: &hmac::Key, generation: u64) -> Result<Vec<Rung>, NoRows> {
    if bell.is_empty() {
        return Err(NoRows::Plain);
    }
    let (tag, rows) = bell.split_once('\n').ok_or(NoRows::Forged)?;
    let tag = unhex(tag).ok_or(NoRows::Forged)?;
    hmac::verify(key, rows.as_bytes(), &tag).map_err(|_| NoRows::Forged)?;
    parse(rows, generation).ok_or(NoRows::Malformed)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

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

/// The commit rows of a bell's body (after the signature) written in
/// `generation`; `None` for anything else.
fn parse(bell: &str, generation: u64) -> Option<Vec<Rung>> {
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
    let [2, written_in, shard, seq, prev, base, first_offset, committed_ms, n, channel_len] =
        fields[..]
    else {
        return None;
    };
    if u64::try_from(written_in).ok()? != generation {
        return None;
    }
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
    const TWO: &str = "2 7 10 58233 58232 1796301849753 2 1796301849772 2 4\nfast24\n{\"channel\":\"fast\",\"p\":2}3\nx\ny\
2 7 13 58234 -1 1796301849772 1 1796301849772 1 0\n5\nplain";

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
        let bell = "2 0 0 5 4 1 1 1 1 4\nçà6\nhéllo";
        let rungs = parse(bell, 0).expect("parses");
        assert_eq!(rungs[0].messages[0].channel, "çà");
        assert_eq!(rungs[0].messages[0].payload.as_ref(), "héllo".as_bytes());
    }

    fn signed(rows: &str, k: &[u8]) -> String {
        let tag = hmac::sign(&key(k), rows.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}\n{rows}")
    }

    #[test]
    fn only_a_bell_signed_with_the_key_opens() {
        let k = b"0123456789abcdef0123456789abcdef";
        let rungs = open(&signed(TWO, k), &key(k), 7).expect("opens");
        assert_eq!(rungs.len(), 2);
        assert_eq!(open("", &key(k), 7), Err(NoRows::Plain));
        assert_eq!(
            open(&signed(TWO, k), &key(k), 8),
            Err(NoRows::Malformed),
            "a bell of another generation (replayed from before a rewind)"
        );
        assert_eq!(
            open(&signed(TWO, b"another key"), &key(k), 7),
            Err(NoRows::Forged)
        );
        assert_eq!(open(TWO, &key(k), 7), Err(NoRows::Forged), "unsigned");
        let tampered = signed(TWO, k).replace("58233", "99999");
        assert_eq!(open(&tampered, &key(k), 7), Err(NoRows::Forged));
        assert_eq!(open(&signed("2 7", k), &key(k), 7), Err(NoRows::Malformed));
    }

    /// The signature PostgreSQL computed (psql, `pgws.bell_key` of a test
    /// database) is the HMAC-SHA256 this side checks.
    #[test]
    fn the_sql_signature_is_hmac_sha256() {
        let k: Vec<u8> =
            unhex("766be10f23cb4b14b15559a780a7a799d2a336bbf5194da59b78512bd8d3857e").expect("hex");
        let bell = "9ce8e04ed3c64a18672f2e91e876cfe1dd6c0d1293240c2fbd7e3bffc96e8911\n\
2 0 10 58239 58238 1796301849753 6 1796305396387 1 4\nfast26\n{\"channel\":\"fast\",\"p\":\"x\"}";
        let rungs = open(bell, &key(&k), 0).expect("opens");
        assert_eq!(rungs[0].messages[0].offset, 6);
    }

    #[test]
    fn a_plain_ring_or_anything_malformed_is_none() {
        for bell in [
            "",
            "2 1 2 3 4 5 6 1 0\n1\nx",
            "2 0 1 2 3 4 5 6 1 0\n9\nx",
            "2 0 1 2 3 4 5 6 2 0\n1\nx",
            "2 0 1 2 3 4 5\n",
            "2 0 a 2 3 4 5 6 1 0\n1\nx",
            "2 0 1 2 3 4 5 6 1 9\nab",
            "2 0 1 2 3 4 -5 6 1 0\n1\nx",
            "2 1 1 2 3 4 5 6 1 0\n1\nx",
            "1 1 2 3 4 5 6 1 0\n1\nx",
        ] {
            assert_eq!(parse(bell, 0), None, "{bell:?}");
        }
    }
}
