//! What a `refresh` may change (`docs/protocol.md`, "Refresh").
//!
//! A refresh extends the connection it arrives on; it does not open
//! another. So the new token must name the same identity — the same `sub`
//! and `iss` claims, both absent counting as the same — and may allow the
//! same or less: its mode no wider (`r` stays `r`), its channels a subset
//! of the current ones (a token without channel claims may be followed by
//! any), and an `exp` if the current token has one (earlier or later).
//! Anything else is refused by closing the socket with 3011: the meta
//! channel's `ConnectionOpen` and `ConnectionClose` then always describe
//! one identity, and widening takes a new connection (a new
//! `ConnectionOpen`).

use crate::auth::{Claims, Mode, Permissions};
use serde_json::Value;

/// Who a socket's first token named.
pub struct Identity {
    sub: Option<Value>,
    iss: Option<Value>,
}

impl Identity {
    /// The identity `claims` name.
    pub fn of(claims: &Claims) -> Identity {
        Identity {
            sub: claims.get("sub").cloned(),
            iss: claims.get("iss").cloned(),
        }
    }
}

/// Why a refresh token cannot replace the socket's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another (or no) `sub`.
    Subject,
    /// Another (or no) `iss`.
    Issuer,
    /// A mode the current token does not have.
    Mode,
    /// A channel the current token does not allow.
    Channels,
    /// No `exp`, where the current token has one.
    Expiry,
}

impl Refused {
    /// The close frame's text.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Subject => "Refresh refused: the token names another sub",
            Refused::Issuer => "Refresh refused: the token names another iss",
            Refused::Mode => "Refresh refused: the token allows a wider mode",
            Refused::Channels => "Refresh refused: the token allows more channels",
            Refused::Expiry => "Refresh refused: the token has no exp",
        }
    }
}

/// Whether `new` (with its claims still in it) may replace `current`, the
/// socket's permissions, on a socket opened as `identity`.
pub fn check(identity: &Identity, current: &Permissions, new: &Permissions) -> Result<(), Refused> {
    let named = Identity::of(&new.claims);
    if named.sub != identity.sub {
        return Err(Refused::Subject);
    }
    if named.iss != identity.iss {
        return Err(Refused::Issuer);
    }
    if !mode_within(new.mode, current.mode) {
        return Err(Refused::Mode);
    }
    if !channels_within(new.channels.as_deref(), current.channels.as_deref()) {
        return Err(Refused::Channels);
    }
    if current.expires_at.is_some() && new.expires_at.is_none() {
        return Err(Refused::Expiry);
    }
    Ok(())
}

fn mode_within(new: Mode, current: Mode) -> bool {
    (!new.can_read() || current.can_read()) && (!new.can_write() || current.can_write())
}

/// `None` is every channel (but a guarded meta channel).
fn channels_within(new: Option<&[String]>, current: Option<&[String]>) -> bool {
    match (new, current) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(new), Some(current)) => new.iter().all(|c| current.contains(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn permissions(claims: Value) -> Permissions {
        let Value::Object(claims) = claims else {
            panic!("an object")
        };
        crate::auth::permissions(claims).expect("valid claims")
    }

    fn verdict(current: Value, new: Value) -> Result<(), Refused> {
        let current = permissions(current);
        check(&Identity::of(&current.claims), &current, &permissions(new))
    }

    #[test]
    fn the_same_identity_with_less_or_a_later_exp_is_accepted() {
        let alice = json!({"sub": "alice", "mode": "rw", "channels": ["a", "b"], "exp": 10});
        let narrower = json!({"sub": "alice", "mode": "r", "channels": ["b"], "exp": 99});
        assert_eq!(verdict(alice, narrower), Ok(()));
        let anonymous = json!({"mode": "r"});
        assert_eq!(verdict(anonymous.clone(), anonymous), Ok(()));
    }

    #[test]
    fn another_identity_or_more_is_refused() {
        let alice = json!({"sub": "alice", "iss": "us", "mode": "r", "channels": ["a"], "exp": 10});
        let cases = [
            (
                json!({"sub": "bob", "iss": "us", "mode": "r", "channels": ["a"], "exp": 10}),
                Refused::Subject,
            ),
            (
                json!({"iss": "us", "mode": "r", "channels": ["a"], "exp": 10}),
                Refused::Subject,
            ),
            (
                json!({"sub": "alice", "mode": "r", "channels": ["a"], "exp": 10}),
                Refused::Issuer,
            ),
            (
                json!({"sub": "alice", "iss": "us", "mode": "rw", "channels": ["a"], "exp": 10}),
                Refused::Mode,
            ),
            (
                json!({"sub": "alice", "iss": "us", "mode": "r", "channels": ["a", "b"], "exp": 10}),
                Refused::Channels,
            ),
            (
                json!({"sub": "alice", "iss": "us", "mode": "r", "exp": 10}),
                Refused::Channels,
            ),
            (
                json!({"sub": "alice", "iss": "us", "mode": "r", "channels": ["a"]}),
                Refused::Expiry,
            ),
        ];
        for (new, why) in cases {
            assert_eq!(verdict(alice.clone(), new.clone()), Err(why), "{new}");
        }
        assert_eq!(
            verdict(json!({"mode": "w"}), json!({"mode": "r"})),
            Err(Refused::Mode)
        );
    }
}
