//! The password file (`PGPASSFILE`, `passfile`, default `~/.pgpass`), read
//! as libpq reads it: at every connection attempt (so a rotated password
//! is picked up), first matching line wins, `*` matches anything, `\:` and
//! `\\` escape, `#` starts a comment. A file that group or others can read
//! is ignored with a warning, as libpq does.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a line is matched against.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// The host as written (a Unix socket directory counts as `localhost`).
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// The database.
    pub dbname: &'a str,
    /// The user.
    pub user: &'a str,
}

/// The password for `lookup` in the file at `path`, if any line matches.
pub fn find(path: &Path, lookup: Lookup<'_>) -> Option<String> {
    let text = match read_private(path) {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(why) => {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(file = %path.display(), "password file ignored: {why}");
            }
            return None;
        }
    };
    find_in(&text, lookup)
}

/// The file's text; `None` when there is no such file.
fn read_private(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(
                "it has group or world access; permissions should be u=rw (0600) or less".into(),
            );
        }
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The first matching line's password.
pub fn find_in(text: &str, lookup: Lookup<'_>) -> Option<String> {
    let port = lookup.port.to_string();
    let wanted = [lookup.host, port.as_str(), lookup.dbname, lookup.user];
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field == "*" || field == want);
            // The password is everything after the fourth separator.
            matches.then(|| fields[4..].join(":"))
        })
}

/// Split on unescaped `:`, resolving `\:` and `\\`.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comment
db.example.com:5432:app:alice:first
*:*:*:bob:b\\:ob\\\\pw
localhost:6543:*:*:with:colons
*:*:*:alice:fallback
";

    fn lookup<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> Lookup<'a> {
        Lookup {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        assert_eq!(
            find_in(FILE, lookup("db.example.com", 5432, "app", "alice")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find_in(FILE, lookup("other", 1, "x", "alice")).as_deref(),
            Some("fallback")
        );
        assert_eq!(
            find_in(FILE, lookup("h", 5432, "d", "bob")).as_deref(),
            Some("b:ob\\pw")
        );
        assert_eq!(
            find_in(FILE, lookup("localhost", 6543, "d", "carol")).as_deref(),
            Some("with:colons")
        );
        assert_eq!(find_in(FILE, lookup("h", 1, "d", "carol")), None);
    }

    #[test]
    fn a_readable_file_is_ignored_and_a_private_one_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("pgws-pgpass-{}", std::process::id()));
        std::fs::write(&path, "*:*:*:*:secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let l = lookup("h", 5432, "d", "u");
        assert_eq!(find(&path, l), None, "world-readable");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(find(&path, l).as_deref(), Some("secret"));
        let _ = std::fs::remove_file(&path);
        assert_eq!(find(&path, l), None, "missing file");
    }
}
