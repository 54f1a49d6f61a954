//! What the sentinels say, and what they agree on: the parsing of a
//! `SENTINEL get-master-addr-by-name` reply, and the majority rule that
//! decides which master the process follows.
//!
//! One sentinel is not trusted alone: it may be stale, partitioned, or
//! hostile, and the data nodes' credentials are sent to whatever master is
//! chosen. Every configured sentinel is asked; a master is followed only
//! when more than half of the sentinels that answered name it (a sentinel
//! that does not know the master counts as answering and naming none).
//! Sentinels that do not answer are left out, so one reachable sentinel
//! still suffices when the others are down — the rule defends against a
//! minority that lies, not against a majority that does.

use redis::Value;

/// The longest host name a sentinel may name (DNS allows 253).
const MAX_HOST: usize = 255;

/// A master's address, `(host, port)`.
pub type Address = (String, u16);

/// Why a sentinel's reply is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not nil and not a two-element array.
    #[error("not a master address: {0}")]
    Shape(String),
    /// The host is empty, too long, not UTF-8, or has spaces or controls.
    #[error("not a host name")]
    Host,
    /// The port is not a number from 1 to 65535.
    #[error("not a port")]
    Port,
}

/// Parse a reply: `Some((host, port))`, `None` when the sentinel does not
/// know the master (nil).
pub fn master_address(reply: &Value) -> Result<Option<Address>, ReplyError> {
    let items = match reply {
        Value::Nil => return Ok(None),
        Value::Array(items) => items,
        other => return Err(ReplyError::Shape(kind(other).into())),
    };
    let [host, port] = items.as_slice() else {
        return Err(ReplyError::Shape(format!("{} elements", items.len())));
    };
    let host = text(host).ok_or(ReplyError::Host)?;
    if host.is_empty()
        || host.len() > MAX_HOST
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ReplyError::Host);
    }
    let port: u16 = match port {
        Value::Int(n) => u16::try_from(*n).map_err(|_| ReplyError::Port)?,
        other => text(other)
            .and_then(|t| t.parse().ok())
            .ok_or(ReplyError::Port)?,
    };
    if port == 0 {
        return Err(ReplyError::Port);
    }
    Ok(Some((host.to_string(), port)))
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) => "a string",
        Value::ServerError(_) => "an error",
        _ => "another type",
    }
}

/// What the answers decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// More than half of the answering sentinels name this master.
    Master(Address),
    /// No sentinel answered.
    NoAnswer,
    /// The answering sentinels do not agree: the most named master (if
    /// any) had `votes` of `answered`.
    NoMajority {
        /// Sentinels that answered.
        answered: usize,
        /// The most votes one master got.
        votes: usize,
    },
}

impl Verdict {
    /// The reason a refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Master(_) => "none",
            Verdict::NoAnswer => "no_answer",
            Verdict::NoMajority { .. } => "no_majority",
        }
    }
}

/// Decide from the answers of the sentinels that answered (`None`: this
/// sentinel does not know the master).
pub fn elect(answers: &[Option<Address>]) -> Verdict {
    if answers.is_empty() {
        return Verdict::NoAnswer;
    }
    let mut best: Option<(&Address, usize)> = None;
    for candidate in answers.iter().flatten() {
        let votes = answers
            .iter()
            .filter(|a| a.as_ref() == Some(candidate))
            .count();
        if best.is_none_or(|(_, most)| votes > most) {
            best = Some((candidate, votes));
        }
    }
    match best {
        Some((master, votes)) if votes * 2 > answers.len() => Verdict::Master(master.clone()),
        best => Verdict::NoMajority {
            answered: answers.len(),
            votes: best.map_or(0, |(_, votes)| votes),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(host: &str, port: u16) -> Option<Address> {
        Some((host.to_string(), port))
    }

    #[test]
    fn replies_parse_to_an_address_or_nothing() {
        let reply = Value::Array(vec![
            Value::BulkString(b"10.0.0.1".to_vec()),
            Value::BulkString(b"6379".to_vec()),
        ]);
        assert_eq!(master_address(&reply), Ok(addr("10.0.0.1", 6379)));
        assert_eq!(master_address(&Value::Nil), Ok(None));
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::BulkString(b"h".to_vec())]),
            Value::Array(vec![
                Value::BulkString(b"h".to_vec()),
                Value::BulkString(b"0".to_vec()),
            ]),
            Value::Array(vec![Value::BulkString(b"h".to_vec()), Value::Int(70000)]),
            Value::Array(vec![Value::BulkString(b"".to_vec()), Value::Int(1)]),
            Value::Array(vec![Value::BulkString(b"a b".to_vec()), Value::Int(1)]),
            Value::Array(vec![Value::BulkString(vec![0xff]), Value::Int(1)]),
        ] {
            assert!(master_address(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_master_needs_more_than_half_of_the_answers() {
        let (a, b) = (addr("a", 1), addr("b", 1));
        assert_eq!(
            elect(std::slice::from_ref(&a)),
            Verdict::Master(("a".into(), 1))
        );
        assert_eq!(
            elect(&[a.clone(), a.clone(), b.clone()]),
            Verdict::Master(("a".into(), 1))
        );
        assert_eq!(
            elect(&[a.clone(), b.clone(), b.clone()]),
            Verdict::Master(("b".into(), 1))
        );
        assert_eq!(
            elect(&[a.clone(), b.clone()]),
            Verdict::NoMajority {
                answered: 2,
                votes: 1
            }
        );
        assert_eq!(
            elect(&[a.clone(), None, None]),
            Verdict::NoMajority {
                answered: 3,
                votes: 1
            }
        );
        assert_eq!(
            elect(&[None]),
            Verdict::NoMajority {
                answered: 1,
                votes: 0
            }
        );
        assert_eq!(elect(&[]), Verdict::NoAnswer);
        assert_eq!(
            elect(&[a.clone(), a.clone(), b.clone(), addr("a", 2)]),
            Verdict::NoMajority {
                answered: 4,
                votes: 2
            }
        );
    }
}
