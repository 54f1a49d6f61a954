//! The checker's per-reader invariants over numbered notifications, for
//! fault-injection runs (issue 20): given what was sent (`1..=sent` on a
//! channel) and what one reader received, in order, say what was lost,
//! duplicated, reordered or never sent — with the first violations, for a
//! report a person can read. And for v2 readers: no offset of one epoch
//! carries two payloads.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// How many violations of each kind a report lists (all are counted).
const FIRST: usize = 5;

/// One reader's sequence against what was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceReport {
    /// Numbers sent: `1..=sent`.
    pub sent: u64,
    /// Numbers received (with repeats).
    pub received: usize,
    /// Sent, never received: how many, and the first.
    pub lost: (usize, Vec<u64>),
    /// Received more than once: extra copies, and the first numbers.
    pub duplicated: (usize, Vec<u64>),
    /// Received after a larger number (first time seen): how many, and
    /// the first `(number, index in the received sequence)`.
    pub reordered: (usize, Vec<(u64, usize)>),
    /// Received but never sent (0, or above `sent`).
    pub unexpected: (usize, Vec<u64>),
}

impl SequenceReport {
    /// No violation of any kind.
    pub fn ok(&self) -> bool {
        self.lost.0 == 0
            && self.duplicated.0 == 0
            && self.reordered.0 == 0
            && self.unexpected.0 == 0
    }
}

fn note<T>(slot: &mut (usize, Vec<T>), item: T) {
    slot.0 += 1;
    if slot.1.len() < FIRST {
        slot.1.push(item);
    }
}

/// Check `received` (in arrival order) against `1..=sent`.
pub fn check_sequence(sent: u64, received: &[u64]) -> SequenceReport {
    let mut report = SequenceReport {
        sent,
        received: received.len(),
        ..SequenceReport::default()
    };
    let mut seen = BTreeSet::new();
    let mut highest = 0;
    for (at, &n) in received.iter().enumerate() {
        if n == 0 || n > sent {
            note(&mut report.unexpected, n);
            continue;
        }
        if !seen.insert(n) {
            note(&mut report.duplicated, n);
            continue;
        }
        if n < highest {
            note(&mut report.reordered, (n, at));
        }
        highest = highest.max(n);
    }
    for n in 1..=sent {
        if !seen.contains(&n) {
            note(&mut report.lost, n);
        }
    }
    report
}

impl fmt::Display for SequenceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, received {}: lost {} {:?}, duplicated {} {:?}, reordered {} {:?}, unexpected {} {:?}",
            self.sent,
            self.received,
            self.lost.0,
            self.lost.1,
            self.duplicated.0,
            self.duplicated.1,
            self.reordered.0,
            self.reordered.1,
            self.unexpected.0,
            self.unexpected.1
        )
    }
}

/// A v2 message as the checker needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Its epoch.
    pub epoch: String,
    /// Its offset in the epoch.
    pub offset: u64,
    /// Its payload.
    pub payload: String,
}

/// Offsets of one epoch used for two different payloads, across every
/// reader's messages (live and recovered alike): the first few
/// `(epoch, offset, one payload, the other)`, and how many.
pub fn reused_offsets<'a>(
    messages: impl IntoIterator<Item = &'a Offered>,
) -> (usize, Vec<(String, u64, String, String)>) {
    let mut first: HashMap<(&str, u64), &str> = HashMap::new();
    let mut out = (0, Vec::new());
    for m in messages {
        match first.get(&(m.epoch.as_str(), m.offset)) {
            Some(&earlier) if earlier != m.payload => note(
                &mut out,
                (
                    m.epoch.clone(),
                    m.offset,
                    earlier.to_string(),
                    m.payload.clone(),
                ),
            ),
            Some(_) => {}
            None => {
                first.insert((m.epoch.as_str(), m.offset), m.payload.as_str());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_sequence_is_ok() {
        let r = check_sequence(5, &[1, 2, 3, 4, 5]);
        assert!(r.ok(), "{r}");
    }

    #[test]
    fn each_kind_of_violation_is_counted_with_the_first_ones() {
        let r = check_sequence(6, &[1, 3, 2, 3, 5, 9, 0]);
        assert_eq!(r.lost, (2, vec![4, 6]));
        assert_eq!(r.duplicated, (1, vec![3]));
        assert_eq!(r.reordered, (1, vec![(2, 2)]));
        assert_eq!(r.unexpected, (2, vec![9, 0]));
        assert!(!r.ok());
        assert!(r.to_string().contains("lost 2 [4, 6]"), "{r}");
    }

    #[test]
    fn only_the_first_few_are_listed_but_all_are_counted() {
        let r = check_sequence(100, &[]);
        assert_eq!(r.lost.0, 100);
        assert_eq!(r.lost.1, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn an_offset_reused_for_another_payload_is_found() {
        let m = |epoch: &str, offset, payload: &str| Offered {
            epoch: epoch.into(),
            offset,
            payload: payload.into(),
        };
        let live = [m("e1", 1, "a"), m("e1", 2, "b"), m("e2", 1, "z")];
        let recovered = [m("e1", 2, "b"), m("e1", 3, "c"), m("e1", 1, "not a")];
        let (n, first) = reused_offsets(live.iter().chain(recovered.iter()));
        assert_eq!(n, 1);
        assert_eq!(first, vec![("e1".into(), 1, "a".into(), "not a".into())]);
    }
}
