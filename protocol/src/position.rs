//! Offsets and epochs: where a message stands in its channel's sequence,
//! and whether a client's last position can be recovered from history.
//!
//! Every notification delivered on a channel gets the channel's next
//! **offset**. Offsets of one channel increase by exactly one within an
//! **epoch**; the epoch changes whenever the sequence may have a hole, so
//! a recovery across a hole answers "not recovered" instead of replaying a
//! stream that silently lacks messages.
//!
//! An epoch is three numbers, shown to clients as one opaque string:
//!
//! * `base` — when the channel's state was created. A state that expired
//!   or was deleted starts again at offset 1 under a new base, so an old
//!   offset can never be mistaken for a new one.
//! * [`Continuity`] — `(term, session)`: which unbroken stream of
//!   notifications the offsets were assigned in. A new one begins whenever
//!   the source of notifications may have missed some: a new `LISTEN`
//!   session (the connection was lost and re-established), a new cluster
//!   leader, a new standalone process. Continuities are ordered; a channel's
//!   state is only ever moved forward.
//!
//! Within one base, offsets never restart: a new continuity starts a new
//! **run** of the same sequence (the first offset of the run is
//! `run_start + 1`). A channel whose last message is from an older
//! continuity than the current one is, as of now, at the start of a new
//! run: [`ChannelState::as_of`].
//!
//! The same rules run in Rust (standalone history, every recovery
//! decision) and in the coordinator's publish script (cluster history);
//! the script's fields are the names used here.

use std::fmt;

/// Which unbroken stream of notifications an offset was assigned in.
/// Ordered: `term` first (a fencing epoch in cluster mode, the process's
/// start in standalone mode), then `session` (the `LISTEN` session within
/// the term).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Continuity {
    /// The cluster leader's fencing epoch, or the standalone process's
    /// start time in milliseconds.
    pub term: u64,
    /// The `LISTEN` session within the term, from 1.
    pub session: u64,
}

impl Continuity {
    /// The continuity of the durable outbox's sequences: offsets assigned
    /// in PostgreSQL at commit, the same across restarts of any process.
    /// Larger than every process's or leader's continuity (and exact in a
    /// Lua number, which the publish script uses), so an outbox sequence is
    /// never taken for an older run; a NOTIFY on such a channel starts a
    /// new sequence instead of continuing it.
    pub const DURABLE: Continuity = Continuity {
        term: (1 << 53) - 1,
        session: 0,
    };

    /// The durable continuity in the outbox's `generation` (which moves on
    /// when its database went back in time and reuses offsets).
    pub const fn durable(generation: u64) -> Continuity {
        Continuity {
            term: Continuity::DURABLE.term,
            session: generation,
        }
    }

    /// Whether offsets of this continuity come from the durable outbox.
    pub const fn is_durable(&self) -> bool {
        self.term == Continuity::DURABLE.term
    }
}

/// A channel's epoch: the opaque string clients hold and send back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Epoch {
    /// When the channel's state was created (milliseconds; unique per
    /// channel over time).
    pub base: u64,
    /// The continuity of the current run.
    pub continuity: Continuity,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}.{:x}.{:x}",
            self.base, self.continuity.term, self.continuity.session
        )
    }
}

impl Epoch {
    /// Parse what [`Epoch`]'s `Display` wrote; `None` for anything else
    /// (which then matches no channel).
    pub fn parse(text: &str) -> Option<Epoch> {
        let mut parts = text.split('.');
        let mut next = || -> Option<u64> {
            let part = parts.next()?;
            if part.is_empty() || part.len() > 16 {
                return None;
            }
            u64::from_str_radix(part, 16).ok()
        };
        let epoch = Epoch {
            base: next()?,
            continuity: Continuity {
                term: next()?,
                session: next()?,
            },
        };
        parts.next().is_none().then_some(epoch)
    }
}

/// Where a message, or a channel, stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Position {
    /// The epoch.
    pub epoch: Epoch,
    /// The offset within it.
    pub offset: u64,
}

impl Position {
    /// Whether a message at `self` was already seen by a reader at `seen`:
    /// the same sequence (base) at or before `seen`'s offset, in the same
    /// continuity or an older one. Offsets of one base do not restart, so
    /// this holds across continuities — except where Redis lost the state
    /// they were assigned in (a Sentinel failover to a replica that lacked
    /// the old master's last writes, which readers had already received):
    /// then the leader numbers again from where the new master stands, in
    /// a *newer* continuity, and those messages were not seen.
    pub fn not_after(&self, seen: &Position) -> bool {
        self.epoch.base == seen.epoch.base
            && self.offset <= seen.offset
            && self.epoch.continuity <= seen.epoch.continuity
    }
}

/// One channel's sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelState {
    /// Creation time of the state (the epoch's base).
    pub base: u64,
    /// The continuity of the current run.
    pub continuity: Continuity,
    /// The last offset before the current run.
    pub run_start: u64,
    /// The newest offset assigned (0: none yet).
    pub offset: u64,
}

/// A message cannot be given an offset: the channel's state was moved on
/// by a newer continuity (a deposed leader still publishing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel was taken over by a newer continuity")]
pub struct Fenced;

impl ChannelState {
    /// A new state, created at `base` (milliseconds) in `continuity`.
    pub fn new(base: u64, continuity: Continuity) -> ChannelState {
        ChannelState {
            base,
            continuity,
            run_start: 0,
            offset: 0,
        }
    }

    /// The state as it stands in `current`: when its last run is from an
    /// older continuity, a new run starts at its newest offset.
    pub fn as_of(&self, current: Continuity) -> ChannelState {
        if self.continuity < current {
            ChannelState {
                continuity: current,
                run_start: self.offset,
                ..*self
            }
        } else {
            *self
        }
    }

    /// The channel's epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch {
            base: self.base,
            continuity: self.continuity,
        }
    }

    /// The newest position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch(),
            offset: self.offset,
        }
    }

    /// Assign the next offset to a message of continuity `current`.
    pub fn advance(&mut self, current: Continuity) -> Result<Position, Fenced> {
        if current < self.continuity {
            return Err(Fenced);
        }
        *self = self.as_of(current);
        self.offset += 1;
        Ok(self.position())
    }

    /// What recovering from `since` needs, with the state taken as of the
    /// current continuity ([`ChannelState::as_of`]).
    pub fn recovery(&self, since: &Since) -> Recovery {
        let same_epoch = Epoch::parse(&since.epoch) == Some(self.epoch());
        if !same_epoch || since.offset < self.run_start || since.offset > self.offset {
            return Recovery::Impossible;
        }
        Recovery::Replay {
            first: since.offset + 1,
            last: self.offset,
        }
    }
}

/// A client's last position, as it sends it in `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    /// The epoch string it was given.
    pub epoch: String,
    /// The last offset it read.
    pub offset: u64,
}

/// What a recovery needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Another epoch, an offset before the current run or beyond the
    /// newest: what was missed cannot be known.
    Impossible,
    /// Offsets `first..=last` (none when `first > last`) from history.
    Replay {
        /// The first offset to replay.
        first: u64,
        /// The last.
        last: u64,
    },
}

impl Recovery {
    /// How many messages the replay takes (0 when impossible).
    pub fn len(&self) -> u64 {
        match *self {
            Recovery::Impossible => 0,
            Recovery::Replay { first, last } => (last + 1).saturating_sub(first),
        }
    }

    /// Whether nothing is to be replayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `offsets` (history, oldest first) are exactly the ones this
    /// recovery needs: complete and in order, or it must not claim to be.
    pub fn complete(&self, offsets: impl IntoIterator<Item = u64>) -> bool {
        let Recovery::Replay { first, last } = *self else {
            return false;
        };
        let mut expected = first;
        for offset in offsets {
            if offset != expected || offset > last {
                return false;
            }
            expected += 1;
        }
        expected == last + 1 || first > last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: Continuity = Continuity {
        term: 10,
        session: 1,
    };
    const C2: Continuity = Continuity {
        term: 10,
        session: 2,
    };
    const C3: Continuity = Continuity {
        term: 11,
        session: 1,
    };

    fn since(state: &ChannelState, offset: u64) -> Since {
        Since {
            epoch: state.epoch().to_string(),
            offset,
        }
    }

    #[test]
    fn epochs_round_trip_and_nothing_else_parses() {
        let e = Epoch {
            base: 1_795_838_085_123,
            continuity: C3,
        };
        assert_eq!(Epoch::parse(&e.to_string()), Some(e));
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "x.1.1",
            "1..1",
            "11111111111111111.1.1",
        ] {
            assert_eq!(Epoch::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn continuities_order_by_term_then_session() {
        assert!(C1 < C2 && C2 < C3);
    }

    #[test]
    fn offsets_continue_and_the_epoch_changes_with_the_continuity() {
        let mut s = ChannelState::new(5, C1);
        assert_eq!(s.advance(C1).map(|p| p.offset), Ok(1));
        assert_eq!(s.advance(C1).map(|p| p.offset), Ok(2));
        let before = s.epoch();
        let p = s.advance(C2).expect("newer continuity");
        assert_eq!(p.offset, 3);
        assert_ne!(p.epoch, before);
        assert_eq!(s.run_start, 2);
        assert_eq!(s.advance(C1), Err(Fenced), "an older continuity is fenced");
    }

    #[test]
    fn recovery_within_the_epoch_replays_exactly_what_was_missed() {
        let mut s = ChannelState::new(5, C1);
        for _ in 0..5 {
            s.advance(C1).expect("advance");
        }
        let r = s.recovery(&since(&s, 2));
        assert_eq!(r, Recovery::Replay { first: 3, last: 5 });
        assert_eq!(r.len(), 3);
        assert!(r.complete([3, 4, 5]));
        assert!(!r.complete([3, 5]), "a hole");
        assert!(!r.complete([4, 5]), "the oldest trimmed away");
        assert!(!r.complete([3, 4, 5, 6]));
        let nothing = s.recovery(&since(&s, 5));
        assert!(nothing.is_empty() && nothing.complete([]));
    }

    #[test]
    fn recovery_is_impossible_across_a_hole_or_beyond_the_newest() {
        let mut s = ChannelState::new(5, C1);
        for _ in 0..3 {
            s.advance(C1).expect("advance");
        }
        let old = since(&s, 3);
        // A new LISTEN session began: a notification may have been missed,
        // even though none was published since.
        let now = s.as_of(C2);
        assert_eq!(now.recovery(&old), Recovery::Impossible);
        assert_eq!(
            now.recovery(&since(&now, 3)),
            Recovery::Replay { first: 4, last: 3 }
        );
        assert_eq!(
            now.recovery(&since(&now, 2)),
            Recovery::Impossible,
            "before the run"
        );
        assert_eq!(s.recovery(&since(&s, 4)), Recovery::Impossible, "beyond");
        let recreated = ChannelState::new(6, C1);
        assert_eq!(recreated.recovery(&old), Recovery::Impossible);
    }

    #[test]
    fn duplicates_are_recognised_across_continuities_of_one_base() {
        let seen = Position {
            epoch: Epoch {
                base: 5,
                continuity: C2,
            },
            offset: 7,
        };
        let older_run = Position {
            epoch: Epoch {
                base: 5,
                continuity: C1,
            },
            offset: 7,
        };
        let other_base = Position {
            epoch: Epoch {
                base: 6,
                continuity: C2,
            },
            offset: 1,
        };
        assert!(older_run.not_after(&seen));
        assert!(!other_base.not_after(&seen));
        // Numbered again in a newer continuity (Redis lost the state the
        // seen offsets were assigned in): not seen.
        let renumbered = Position {
            epoch: Epoch {
                base: 5,
                continuity: Continuity {
                    term: C2.term,
                    session: C2.session + 1,
                },
            },
            offset: 6,
        };
        assert!(!renumbered.not_after(&seen));
    }
}
