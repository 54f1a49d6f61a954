//! libpq's two connection-string forms, parsed into keyword/value pairs.
//!
//! * URI: `postgresql://[user[:password]@][host[:port][,host[:port]…]][/dbname][?k=v&…]`
//!   (also `postgres://`), percent-decoded; several hosts become
//!   comma-joined `host` and `port` values, exactly as libpq stores them.
//! * key/value: `host=a port=5432 password='it''s'`, values optionally
//!   single-quoted, `\'` and `\\` escaped (quoted or not).
//!
//! Nothing here knows what a keyword means: [`super::options`] does. The
//! output keeps libpq's rule that a later setting of a keyword wins.

use percent_encoding::percent_decode_str;

/// Why a connection string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    /// A `key=value` string broke its grammar.
    #[error("{0}")]
    Syntax(String),
    /// A URI broke its grammar.
    #[error("invalid URI: {0}")]
    Uri(String),
    /// A percent escape did not decode to UTF-8.
    #[error("invalid percent-encoding in URI: {0:?}")]
    Encoding(String),
}

/// Keyword/value pairs in the order given (later ones win).
pub type Pairs = Vec<(String, String)>;

/// Parse either form.
pub fn parse(text: &str) -> Result<Pairs, ConninfoError> {
    let trimmed = text.trim();
    if let Some(rest) = trimmed
        .strip_prefix("postgresql://")
        .or_else(|| trimmed.strip_prefix("postgres://"))
    {
        parse_uri(rest)
    } else {
        parse_key_values(trimmed)
    }
}

fn decode(s: &str) -> Result<String, ConninfoError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ConninfoError::Encoding(s.to_string()))
}

/// The part after the scheme.
fn parse_uri(rest: &str) -> Result<Pairs, ConninfoError> {
    let mut pairs = Pairs::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    // The user info ends at the last '@' (a password may contain '@' only
    // percent-encoded, but be lenient as libpq is).
    let hosts = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                pairs.push(("user".into(), decode(user)?));
            }
            if let Some(p) = password {
                pairs.push(("password".into(), decode(p)?));
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let (host_list, port_list) = split_hosts(hosts)?;
        if host_list.iter().any(|h| !h.is_empty()) {
            pairs.push(("host".into(), host_list.join(",")));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            pairs.push(("port".into(), port_list.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        pairs.push(("dbname".into(), decode(db)?));
    }
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let Some((key, value)) = param.split_once('=') else {
            return Err(ConninfoError::Uri(format!(
                "missing \"=\" in query parameter {param:?}"
            )));
        };
        let (key, value) = (decode(key)?, decode(value)?);
        // JDBC's spelling, which libpq accepts too.
        if key == "ssl" {
            if value == "true" {
                pairs.push(("sslmode".into(), "require".into()));
                continue;
            }
            return Err(ConninfoError::Uri(format!(
                "invalid ssl parameter value {value:?} (only \"true\")"
            )));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// `h1:p1,[::1]:p2,h3` → hosts and ports, both percent-decoded, one entry
/// per host (an empty port where none was given).
fn split_hosts(spec: &str) -> Result<(Vec<String>, Vec<String>), ConninfoError> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for part in spec.split(',') {
        let (host, port) = if let Some(rest) = part.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(ConninfoError::Uri(format!(
                    "missing \"]\" in IPv6 host address {part:?}"
                )));
            };
            let after = &rest[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "",
                None => {
                    return Err(ConninfoError::Uri(format!(
                        "unexpected {after:?} after IPv6 host address"
                    )))
                }
            };
            (rest[..end].to_string(), port)
        } else {
            match part.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, p),
                None => (decode(part)?, ""),
            }
        };
        hosts.push(host);
        ports.push(decode(port)?);
    }
    Ok((hosts, ports))
}

/// `key = value key2='quoted \' value'`.
fn parse_key_values(text: &str) -> Result<Pairs, ConninfoError> {
    let mut pairs = Pairs::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConninfoError::Syntax(format!(
                "missing \"=\" after {key:?} in connection info string"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConninfoError::Syntax(
                            "unterminated quoted string in connection info string".into(),
                        ))
                    }
                    Some('\'') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn uris_with_everything() {
        let p = parse("postgresql://al%40ice:p%3Ass@db.example.com:6543/my%20db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").expect("uri");
        assert_eq!(get(&p, "user"), Some("al@ice"));
        assert_eq!(get(&p, "password"), Some("p:ss"));
        assert_eq!(get(&p, "host"), Some("db.example.com"));
        assert_eq!(get(&p, "port"), Some("6543"));
        assert_eq!(get(&p, "dbname"), Some("my db"));
        assert_eq!(get(&p, "sslmode"), Some("verify-full"));
        assert_eq!(get(&p, "sslrootcert"), Some("/etc/ca.pem"));
    }

    #[test]
    fn several_hosts_keep_one_port_per_host() {
        let p =
            parse("postgres://u@a:1,[::1]:2,c/db?target_session_attrs=read-write").expect("uri");
        assert_eq!(get(&p, "host"), Some("a,::1,c"));
        assert_eq!(get(&p, "port"), Some("1,2,"));
        assert_eq!(get(&p, "target_session_attrs"), Some("read-write"));
    }

    #[test]
    fn unix_sockets_and_empty_parts() {
        let p = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app").expect("uri");
        assert_eq!(get(&p, "host"), Some("/var/run/postgresql"));
        assert_eq!(get(&p, "dbname"), Some("app"));
        let p = parse("postgresql:///app?host=/tmp").expect("uri");
        assert_eq!(get(&p, "host"), Some("/tmp"));
        assert!(parse("postgresql://").expect("empty").is_empty());
        assert_eq!(
            get(&parse("postgres://h?ssl=true").expect("ssl"), "sslmode"),
            Some("require")
        );
    }

    #[test]
    fn key_value_strings_with_quotes_and_escapes() {
        let p = parse(r"host=h port = 5432  password='it\'s a \\ secret' dbname=''  user=a\ b")
            .expect("kv");
        assert_eq!(get(&p, "host"), Some("h"));
        assert_eq!(get(&p, "port"), Some("5432"));
        assert_eq!(get(&p, "password"), Some(r"it's a \ secret"));
        assert_eq!(get(&p, "dbname"), Some(""));
        assert_eq!(get(&p, "user"), Some("a b"));
        // A later setting wins, as in libpq.
        assert_eq!(get(&parse("host=a host=b").expect("kv"), "host"), Some("b"));
    }

    #[test]
    fn malformed_strings_are_errors() {
        for bad in [
            "host",
            "host=a port",
            "password='open",
            "postgresql://[::1/db",
            "postgresql://h/db?x",
            "postgresql://h/db?ssl=false",
            "postgresql://h/%ff",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
