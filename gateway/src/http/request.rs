//! Where the channel and the token come from in an upgrade request.
//!
//! * `/<channel>/<jwt>` — one channel.
//! * `/<jwt>` — every channel in the token's claims.
//! * the token may instead come from `?token=`, `Authorization: Bearer`, or
//!   an entry of `Sec-WebSocket-Protocol` that looks like a JWT, so it need
//!   not sit in proxy logs; then `/<channel>` or `/` name the channels.
//!
//! Precedence when several are given: path, query, Authorization, protocol.
//!
//! A client that offers the subprotocol `pgws.v2` speaks protocol v2: the
//! server answers with `pgws.v2`, the token may be absent (it then comes in
//! the first frame), and a channel in the path is ignored — a v2 socket
//! starts with no subscriptions.

use percent_encoding::percent_decode_str;

/// What an upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    /// The channel named in the path, if any.
    pub channel: Option<String>,
    /// The token, from wherever it was found.
    pub token: Option<String>,
    /// The `Sec-WebSocket-Protocol` value to echo, when the client sent any.
    pub subprotocol: Option<String>,
    /// The client offered `pgws.v2`.
    pub v2: bool,
}

/// The request's parts that matter here.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestParts<'a> {
    /// The URL path.
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `Sec-WebSocket-Protocol` header.
    pub protocols: Option<&'a str>,
}

/// The path does not have the shape of a websocket URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFound;

/// Whether `s` has the shape of a compact JWS (three base64url parts).
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Work out channel, token and subprotocol.
pub fn parse(parts: RequestParts<'_>) -> Result<Target, NotFound> {
    let segments: Vec<String> = parts
        .path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let (subprotocol, protocol_token) = from_protocols(parts.protocols);
    let v2 = subprotocol.as_deref() == Some(pgws_protocol::v2::SUBPROTOCOL);
    let elsewhere = query_token(parts.query)
        .or_else(|| bearer(parts.authorization))
        .or(protocol_token);
    let (channel, token) = match segments.as_slice() {
        [] => (None, elsewhere),
        [one] if elsewhere.is_some() => (Some(one.clone()), elsewhere),
        [one] if looks_like_jwt(one) => (None, Some(one.clone())),
        [one] => (Some(one.clone()), None),
        [channel, token] => (Some(channel.clone()), Some(token.clone())),
        _ => return Err(NotFound),
    };
    Ok(Target {
        channel,
        token,
        subprotocol,
        v2,
    })
}

/// Whether a v1 socket asked not to receive its own messages
/// (`?echo=false`).
pub fn no_echo(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "echo=false"))
}

fn query_token(query: Option<&str>) -> Option<String> {
    query_value(query, "token")
}

/// The first non-empty value of `name` in a query string, decoded.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty())
            .then(|| percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

fn bearer(authorization: Option<&str>) -> Option<String> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| token.trim().to_string())
}

/// The subprotocol to echo and the token among the offered protocols.
/// Browsers fail the handshake unless the server picks one of the offered
/// values: we echo the first that is not the token (e.g. `pgws`), or the
/// token itself when it is the only one.
fn from_protocols(header: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(header) = header else {
        return (None, None);
    };
    let offered: Vec<&str> = header
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let token = offered
        .iter()
        .find(|p| looks_like_jwt(p))
        .map(|t| t.to_string());
    let v2 = offered
        .iter()
        .find(|p| **p == pgws_protocol::v2::SUBPROTOCOL);
    let echo = v2
        .or_else(|| offered.iter().find(|p| !looks_like_jwt(p)))
        .or(offered.first())
        .map(|p| p.to_string());
    (echo, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJtb2RlIjoiciJ9.c2ln";

    fn at(path: &str) -> RequestParts<'_> {
        RequestParts {
            path,
            ..Default::default()
        }
    }

    #[test]
    fn channel_and_token_in_the_path() {
        let t = parse(at(&format!("/chat/{JWT}"))).expect("ok");
        assert_eq!(
            (t.channel.as_deref(), t.token.as_deref()),
            (Some("chat"), Some(JWT))
        );
    }

    #[test]
    fn token_only_path() {
        let t = parse(at(&format!("/{JWT}"))).expect("ok");
        assert_eq!((t.channel, t.token.as_deref()), (None, Some(JWT)));
    }

    #[test]
    fn percent_encoded_channels_are_decoded() {
        let t = parse(at(&format!("/my%20room/{JWT}"))).expect("ok");
        assert_eq!(t.channel.as_deref(), Some("my room"));
    }

    #[test]
    fn token_from_query_header_or_protocol() {
        let q = format!("token={JWT}");
        let t = parse(RequestParts {
            path: "/chat",
            query: Some(&q),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(
            (t.channel.as_deref(), t.token.as_deref()),
            (Some("chat"), Some(JWT))
        );

        let auth = format!("Bearer {JWT}");
        let t = parse(RequestParts {
            path: "/",
            authorization: Some(&auth),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!((t.channel, t.token.as_deref()), (None, Some(JWT)));

        let protocols = format!("pgws, {JWT}");
        let t = parse(RequestParts {
            path: "/chat",
            protocols: Some(&protocols),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(t.token.as_deref(), Some(JWT));
        assert_eq!(t.subprotocol.as_deref(), Some("pgws"));

        let t = parse(RequestParts {
            path: "/chat",
            protocols: Some(JWT),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(
            t.subprotocol.as_deref(),
            Some(JWT),
            "the only offer is echoed"
        );
    }

    #[test]
    fn path_token_wins_and_a_jwt_shaped_channel_needs_another_token_source() {
        let auth = "Bearer other.token.here";
        let t = parse(RequestParts {
            path: &format!("/c/{JWT}"),
            authorization: Some(auth),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(t.token.as_deref(), Some(JWT));
        let t = parse(RequestParts {
            path: "/a.b.c",
            authorization: Some(auth),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(t.channel.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn missing_token_and_bad_shapes() {
        let t = parse(at("/chat")).expect("ok");
        assert_eq!((t.channel.as_deref(), t.token), (Some("chat"), None));
        assert_eq!(parse(at("/a/b/c")), Err(NotFound));
        assert!(!looks_like_jwt("chat"));
        assert!(!looks_like_jwt("a..b"));
        assert!(looks_like_jwt(JWT));
    }
}
