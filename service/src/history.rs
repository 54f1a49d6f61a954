//! The history variables both binaries read: the gateway keeps history in
//! memory in standalone mode, the leader writes it to Redis in cluster
//! mode, and both must mean the same by them.

use crate::config::{err, ConfigError, Sources};
use std::time::Duration;

/// Largest `PGWS_HISTORY_SIZE`.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// The names of the history variables.
#[derive(Debug, Clone, Copy)]
pub struct HistoryVars {
    /// `PGWS_HISTORY_SIZE`.
    pub size: &'static str,
    /// `PGWS_HISTORY_TTL`.
    pub ttl: &'static str,
    /// `PGWS_CHANNEL_STATE_TTL`.
    pub state_ttl: &'static str,
}

/// How much history each channel keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per channel; 0 turns history (not offsets) off.
    pub size: usize,
    /// No message older than this is replayed.
    pub ttl: Duration,
    /// A channel's offsets and epoch are forgotten this long after its
    /// last message (its next message then starts a new epoch).
    pub state_ttl: Duration,
}

impl HistoryVars {
    /// The names both binaries use.
    pub const STANDARD: HistoryVars = HistoryVars {
        size: "PGWS_HISTORY_SIZE",
        ttl: "PGWS_HISTORY_TTL",
        state_ttl: "PGWS_CHANNEL_STATE_TTL",
    };

    /// Read and check them; errors name the variable.
    pub fn read(&self, sources: &Sources) -> Result<HistoryConfig, ConfigError> {
        let size: usize = sources.parsed(self.size, "a number of messages")?;
        if size > MAX_HISTORY_SIZE {
            return Err(err(
                self.size,
                format!("at most {MAX_HISTORY_SIZE} messages per channel"),
            ));
        }
        let ttl: u64 = sources.parsed(self.ttl, "a number of seconds")?;
        if ttl == 0 && size > 0 {
            return Err(err(
                self.ttl,
                "must be at least 1 second (PGWS_HISTORY_SIZE=0 turns history off)",
            ));
        }
        let state_ttl: u64 = sources.parsed(self.state_ttl, "a number of seconds")?;
        if state_ttl < ttl.max(1) {
            return Err(err(
                self.state_ttl,
                format!("must be at least {} ({}) seconds", self.ttl, ttl.max(1)),
            ));
        }
        Ok(HistoryConfig {
            size,
            ttl: Duration::from_secs(ttl),
            state_ttl: Duration::from_secs(state_ttl),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Var;

    const VARS: &[Var] = &[
        Var {
            name: "PGWS_HISTORY_SIZE",
            default: Some("100"),
            doc: "",
        },
        Var {
            name: "PGWS_HISTORY_TTL",
            default: Some("300"),
            doc: "",
        },
        Var {
            name: "PGWS_CHANNEL_STATE_TTL",
            default: Some("86400"),
            doc: "",
        },
    ];

    fn read(pairs: &[(&str, &str)]) -> Result<HistoryConfig, ConfigError> {
        HistoryVars::STANDARD.read(&Sources::from_pairs(VARS, pairs.to_vec()))
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(
            read(&[]).expect("defaults"),
            HistoryConfig {
                size: 100,
                ttl: Duration::from_secs(300),
                state_ttl: Duration::from_secs(86_400),
            }
        );
        assert_eq!(
            read(&[("PGWS_HISTORY_SIZE", "0"), ("PGWS_HISTORY_TTL", "0")])
                .expect("history off")
                .size,
            0
        );
        for (name, value) in [
            ("PGWS_HISTORY_SIZE", "-1"),
            ("PGWS_HISTORY_SIZE", "100001"),
            ("PGWS_HISTORY_TTL", "0"),
            ("PGWS_CHANNEL_STATE_TTL", "10"),
        ] {
            assert_eq!(read(&[(name, value)]).expect_err(name).variable, name);
        }
    }
}
