//! Positions in the NOTIFY stream, shared by every coordinator that
//! LISTENs, and the standby's buffer (`PGWS_STANDBY_LISTEN`).
//!
//! PostgreSQL hands every listener the same notifications in the same
//! (commit) order, identical payloads folded the same way. What no
//! notification carries is a position: a payload alone cannot say where it
//! stands (the same text may be notified a thousand times). So the leader
//! notifies **markers** — `<fencing epoch>:<counter>:<unix ms>:<tag>` on
//! the marker channel, every `PGWS_MARKER_INTERVAL` — and every listener counts
//! the notifications after the last marker it saw: a notification's
//! [`StreamPos`] is `(marker, index)`, the same for every listener that saw
//! that marker. Markers of one leader are committed one after another, so
//! their counters follow stream order; a later leader's epoch is larger.
//! A marker that would take the position backwards (a deposed leader's,
//! committed late) is ignored.
//!
//! Anyone who may NOTIFY may notify on the marker channel, so a marker
//! carries an HMAC-SHA256 `tag` under a secret only the coordinators
//! know ([`MarkerKey`], kept in Redis): a payload without a valid tag is
//! not a marker (counted and ignored by the listener's sink). Without
//! it, one forged marker with a huge epoch would make every later
//! position look older than the forged one, and a new leader would skip
//! live notifications as "already published".
//!
//! The leader records, per channel, the position of the last notification
//! it published (the publish script skips anything at or before it) and,
//! per batch, its overall progress (`{p}:progress`). A standby keeps the
//! last notifications it heard in a [`StandbyBuffer`]; on taking over it
//! [`plan`]s where to resume: right after the predecessor's progress if the
//! buffer reaches back to it, else from the buffer's start — a gap, said
//! so with a new epoch.

use pgws_postgres::listener::Notification;
use std::collections::VecDeque;
use std::fmt;

/// A marker: the emitting leader's fencing epoch and its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MarkerId {
    /// The emitting leader's fencing epoch.
    pub epoch: u64,
    /// Its counter within the term.
    pub n: u64,
}

/// A marker as notified: its id and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Which marker.
    pub id: MarkerId,
    /// Unix milliseconds at the emitter.
    pub sent_ms: u64,
}

impl Marker {
    /// The signed text: the three numbers.
    fn text(&self) -> String {
        format!("{}:{}:{}", self.id.epoch, self.id.n, self.sent_ms)
    }

    /// The three numbers of a marker's signed text.
    fn parse_text(text: &str) -> Option<Marker> {
        let [epoch, n, sent_ms] = three_numbers(text, ':')?;
        Some(Marker {
            id: MarkerId { epoch, n },
            sent_ms,
        })
    }
}

/// The coordinators' shared secret that signs markers: 32 random bytes,
/// kept in Redis (`{p}:marker-key`, made by the first coordinator that
/// finds none), so no configuration is needed and no database role can
/// forge a marker.
pub struct MarkerKey {
    key: ring::hmac::Key,
    /// The secret as stored (to notice that Redis holds another one).
    text: String,
}

impl MarkerKey {
    /// A key from the stored secret text (hex).
    pub fn new(text: &str) -> MarkerKey {
        MarkerKey {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, text.as_bytes()),
            text: text.to_string(),
        }
    }

    /// A fresh random secret as stored (64 hex digits).
    pub fn generate() -> Result<String, ring::error::Unspecified> {
        let bytes: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
        Ok(hex(&bytes))
    }

    /// The secret as stored.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The payload notified for `marker`: its numbers and their tag.
    pub fn sign(&self, marker: &Marker) -> String {
        let text = marker.text();
        let tag = ring::hmac::sign(&self.key, text.as_bytes());
        format!("{text}:{}", hex(tag.as_ref()))
    }

    /// The marker of a payload whose tag is valid under this key.
    pub fn open(&self, payload: &[u8]) -> Result<Marker, Forged> {
        let text = std::str::from_utf8(payload).map_err(|_| Forged)?;
        let (signed, tag) = text.rsplit_once(':').ok_or(Forged)?;
        let tag = unhex(tag).ok_or(Forged)?;
        ring::hmac::verify(&self.key, signed.as_bytes(), &tag).map_err(|_| Forged)?;
        Marker::parse_text(signed).ok_or(Forged)
    }
}

/// A payload on the marker channel that is not a marker signed with the
/// coordinators' key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a marker signed with the coordinators' key")]
pub struct Forged;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Exactly three unsigned numbers separated by `sep`.
fn three_numbers(text: &str, sep: char) -> Option<[u64; 3]> {
    let mut parts = text.split(sep).map(|p| p.parse::<u64>().ok());
    let numbers = [parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(numbers)
}

/// Where a notification stands in the NOTIFY stream: the last marker
/// before it, and its rank among the notifications after that marker
/// (from 1). Ordered as the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPos {
    /// The marker it follows.
    pub marker: MarkerId,
    /// Its rank after the marker.
    pub index: u64,
}

impl fmt::Display for StreamPos {
    /// As the publish script stores it: three numbers.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.marker.epoch, self.marker.n, self.index)
    }
}

impl StreamPos {
    /// Parse what `Display` wrote.
    pub fn parse(text: &str) -> Option<StreamPos> {
        let [epoch, n, index] = three_numbers(text, ' ')?;
        Some(StreamPos {
            marker: MarkerId { epoch, n },
            index,
        })
    }
}

/// Counts notifications after markers: one per listening connection.
#[derive(Debug, Default)]
pub struct Tracker {
    last: Option<Marker>,
    index: u64,
}

impl Tracker {
    /// A marker arrived. False when it is older than the last one (a
    /// deposed leader's, committed late): it is ignored.
    pub fn marker(&mut self, marker: Marker) -> bool {
        if self.last.is_some_and(|last| marker.id <= last.id) {
            return false;
        }
        self.last = Some(marker);
        self.index = 0;
        true
    }

    /// The position of the next notification (none before the first
    /// marker: it cannot be placed).
    pub fn place(&mut self) -> Option<StreamPos> {
        let marker = self.last?;
        self.index += 1;
        Some(StreamPos {
            marker: marker.id,
            index: self.index,
        })
    }

    /// The connection was lost: positions start again at the next marker.
    pub fn reset(&mut self) {
        *self = Tracker::default();
    }

    /// The last marker seen.
    pub fn last_marker(&self) -> Option<Marker> {
        self.last
    }
}

/// One buffered notification.
#[derive(Debug, Clone)]
pub struct Buffered {
    /// Its place in the stream (`None` before the first marker).
    pub pos: Option<StreamPos>,
    /// The notification.
    pub notification: Notification,
}

/// What a standby heard lately, oldest first, at most `capacity`.
#[derive(Debug)]
pub struct StandbyBuffer {
    entries: VecDeque<Buffered>,
    capacity: usize,
    /// Markers seen, with the index into `entries` each was seen at
    /// (trimmed with the entries).
    markers: VecDeque<(Marker, u64)>,
    /// Entries ever pushed (for the marker indexes).
    pushed: u64,
}

impl StandbyBuffer {
    /// An empty buffer of `capacity` notifications.
    pub fn new(capacity: usize) -> StandbyBuffer {
        StandbyBuffer {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            markers: VecDeque::new(),
            pushed: 0,
        }
    }

    /// Keep a notification, dropping the oldest beyond the capacity.
    pub fn push(&mut self, entry: Buffered) {
        self.entries.push_back(entry);
        self.pushed += 1;
        if self.entries.len() > self.capacity {
            self.entries.pop_front();
            // Keep the marker that precedes the first entry left.
            let first = self.pushed - self.entries.len() as u64;
            while self.markers.get(1).is_some_and(|(_, at)| *at <= first) {
                self.markers.pop_front();
            }
        }
    }

    /// A marker was seen after the entries so far.
    pub fn marker(&mut self, marker: Marker) {
        self.markers.push_back((marker, self.pushed));
    }

    /// Forget everything (the connection was lost: what follows cannot be
    /// aligned with what came before).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.markers.clear();
    }

    /// How many notifications are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The marker before the oldest entry (when the buffer starts: for the
    /// size of a gap).
    pub fn oldest_marker(&self) -> Option<Marker> {
        self.markers.front().map(|(m, _)| *m)
    }

    /// Whether the buffer holds everything after `progress`: its first
    /// placed entry is at or before it (the buffer is one unbroken run of
    /// the stream since it was last cleared). With no progress recorded
    /// any buffer will do. The election's readiness test, in O(1).
    pub fn reaches_back(&self, progress: Option<StreamPos>) -> bool {
        let Some(progress) = progress else {
            return true;
        };
        self.entries
            .iter()
            .find_map(|e| e.pos)
            .is_some_and(|first| first <= progress)
    }

    /// Take the entries from `from` on.
    pub fn take_from(&mut self, from: usize) -> Vec<Buffered> {
        let taken = self.entries.drain(from.min(self.entries.len())..).collect();
        self.clear();
        taken
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Buffered> {
        self.entries.iter()
    }
}

/// Where a new leader resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No leader has published before (no progress recorded): publish what
    /// the buffer holds, from its first placed notification.
    Fresh {
        /// Index of the first entry to publish.
        from: usize,
    },
    /// The buffer holds everything after the predecessor's last publish:
    /// resume right after it; nothing was missed.
    Resume {
        /// Index of the first entry to publish.
        from: usize,
    },
    /// The buffer does not reach back to the predecessor's last publish
    /// (or could not be brought up to date): publish what it holds, and
    /// say that something before it may be missing.
    Gap {
        /// Index of the first entry to publish.
        from: usize,
        /// Why.
        reason: &'static str,
    },
}

/// Decide where to resume, from the buffer (brought up to date: `current`
/// says whether the new leader saw its own first marker come back) and the
/// predecessor's recorded progress.
pub fn plan(buffer: &StandbyBuffer, progress: Option<StreamPos>, current: bool) -> Plan {
    let first_placed = buffer
        .entries()
        .position(|e| e.pos.is_some())
        .unwrap_or(buffer.len());
    if !current {
        return Plan::Gap {
            from: first_placed,
            reason: "the standby could not make sure its buffer is up to date (its first marker did not come back, or Redis did not answer)",
        };
    }
    let Some(progress) = progress else {
        return Plan::Fresh { from: first_placed };
    };
    if let Some(at) = buffer.entries().position(|e| e.pos == Some(progress)) {
        return Plan::Resume { from: at + 1 };
    }
    let starts_after = buffer
        .entries()
        .find_map(|e| e.pos)
        .is_none_or(|first| first > progress);
    Plan::Gap {
        from: first_placed,
        reason: if starts_after {
            "the buffer does not reach back to the predecessor's last publish"
        } else {
            // One stream cannot hold a position on both sides of it and not
            // the position itself: do not pretend.
            "the predecessor's last publish is not where the buffer says"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn marker(epoch: u64, n: u64) -> Marker {
        Marker {
            id: MarkerId { epoch, n },
            sent_ms: 1_000 * n,
        }
    }

    fn note(text: &str) -> Notification {
        Notification {
            payload: bytes::Bytes::from(text.to_string()),
            received_at: Instant::now(),
            source: 0,
        }
    }

    /// A buffer fed `events` ("m<n>" a marker of epoch 7, anything else a
    /// notification) through a tracker.
    fn fed(events: &[&str], capacity: usize) -> StandbyBuffer {
        let mut tracker = Tracker::default();
        let mut buffer = StandbyBuffer::new(capacity);
        for e in events {
            if let Some(n) = e.strip_prefix('m') {
                let m = marker(7, n.parse().expect("n"));
                if tracker.marker(m) {
                    buffer.marker(m);
                }
            } else {
                buffer.push(Buffered {
                    pos: tracker.place(),
                    notification: note(e),
                });
            }
        }
        buffer
    }

    fn pos(n: u64, index: u64) -> StreamPos {
        StreamPos {
            marker: MarkerId { epoch: 7, n },
            index,
        }
    }

    fn payloads(buffer: &StandbyBuffer, from: usize) -> Vec<String> {
        buffer
            .entries()
            .skip(from)
            .map(|e| String::from_utf8_lossy(&e.notification.payload).into_owned())
            .collect()
    }

    #[test]
    fn markers_and_positions_round_trip() {
        let key = MarkerKey::new(&MarkerKey::generate().expect("random"));
        let m = marker(1_795_838_085_123, 42);
        assert_eq!(key.open(key.sign(&m).as_bytes()), Ok(m));
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "a:b:c",
            "{\"channel\":\"x\"}",
            "1:2:3:zz",
            "1:2:3:0",
        ] {
            assert_eq!(key.open(bad.as_bytes()), Err(Forged), "{bad:?}");
        }
        let p = pos(3, 9);
        assert_eq!(StreamPos::parse(&p.to_string()), Some(p));
        assert!(pos(3, 9) < pos(4, 1) && pos(4, 1) < pos(4, 2));
    }

    #[test]
    fn a_marker_is_only_accepted_with_the_coordinators_tag() {
        let key = MarkerKey::new(&MarkerKey::generate().expect("random"));
        let other = MarkerKey::new(&MarkerKey::generate().expect("random"));
        let genuine = key.sign(&marker(7, 1));
        // The forgery of issue 20: a bare huge marker, as any role could
        // NOTIFY it.
        assert_eq!(key.open(b"9000000000000000:0:0"), Err(Forged));
        // Signed with another key, or altered after signing.
        assert_eq!(key.open(other.sign(&marker(7, 1)).as_bytes()), Err(Forged));
        let altered = genuine.replacen('7', "9000000000000000", 1);
        assert_eq!(key.open(altered.as_bytes()), Err(Forged));
        assert!(key.open(genuine.as_bytes()).is_ok());
    }

    #[test]
    fn identical_payloads_are_told_apart_by_their_positions() {
        // The same payload three times: only positions say which was
        // published last.
        let b = fed(&["m1", "same", "same", "m2", "same", "same"], 100);
        assert_eq!(plan(&b, Some(pos(2, 1)), true), Plan::Resume { from: 3 });
        assert_eq!(payloads(&b, 3), vec!["same"]);
        assert_eq!(plan(&b, Some(pos(1, 2)), true), Plan::Resume { from: 2 });
    }

    #[test]
    fn a_buffer_that_does_not_reach_back_is_a_gap() {
        let b = fed(&["m1", "a", "b", "m2", "c", "d", "e"], 3);
        assert_eq!(b.len(), 3);
        assert!(!b.reaches_back(Some(pos(1, 1))));
        assert!(b.reaches_back(Some(pos(2, 1))) && b.reaches_back(None));
        assert!(
            !fed(&["x", "y"], 10).reaches_back(Some(pos(1, 1))),
            "nothing placed: started after the last marker"
        );
        assert!(matches!(
            plan(&b, Some(pos(1, 1)), true),
            Plan::Gap { from: 0, .. }
        ));
        assert_eq!(plan(&b, Some(pos(2, 1)), true), Plan::Resume { from: 1 });
        assert!(matches!(plan(&b, Some(pos(2, 1)), false), Plan::Gap { .. }));
    }

    #[test]
    fn notifications_before_the_first_marker_are_not_placed_and_late_markers_are_ignored() {
        let b = fed(&["x", "y", "m5", "a", "m4", "b"], 100);
        let placed: Vec<Option<StreamPos>> = b.entries().map(|e| e.pos).collect();
        assert_eq!(
            placed,
            vec![None, None, Some(pos(5, 1)), Some(pos(5, 2))],
            "m4 came after m5: ignored, b counts on from m5"
        );
        assert_eq!(plan(&b, None, true), Plan::Fresh { from: 2 });
    }

    #[test]
    fn markers_leave_with_the_entries_they_preceded() {
        let mut b = fed(&["m1", "a", "m2", "b", "c", "d"], 2);
        assert_eq!(b.oldest_marker().map(|m| m.id.n), Some(2));
        let taken = b.take_from(1);
        assert_eq!(taken.len(), 1);
        assert!(b.is_empty());
    }
}
