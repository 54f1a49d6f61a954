//! Static files under `PGWS_ROOT_PATH`: `index.html` for directories, no
//! listings, no dotfiles (`/.env`, `/.git/config`), and nothing outside the
//! root — `..`, `%2e%2e`, absolute paths and symlinks pointing outside are
//! all refused with 404. The decision is made on the canonical path of the
//! very file that will be opened (after `index.html` is appended), so a
//! symlinked `index.html` cannot lead out either.
//!
//! Files are streamed in [`CHUNK`]-byte pieces, so a client that reads
//! slowly holds one chunk of memory, not the whole file.

use percent_encoding::percent_decode_str;
use std::path::{Component, Path, PathBuf};

/// Bytes read from a file at a time.
pub const CHUNK: usize = 64 * 1024;

/// A file found under the root, opened.
pub struct StaticFile {
    /// The open file, to stream.
    pub file: tokio::fs::File,
    /// Its length in bytes.
    pub len: u64,
    /// Its media type.
    pub content_type: &'static str,
}

/// Whether a name is hidden (`.env`, `.git`).
fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// `full` if it is a canonical path inside `root` whose every part below
/// the root is visible.
fn inside(root: &Path, full: PathBuf) -> Option<PathBuf> {
    let rest = full.strip_prefix(root).ok()?;
    let visible = rest.components().all(|c| match c {
        Component::Normal(name) => !hidden(&name.to_string_lossy()),
        _ => false,
    });
    visible.then_some(full)
}

/// Resolve the request `path` under `root` (already canonical) to a file.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let mut full = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            s if hidden(s) => return None, // "..", ".env", ".git"
            s if s.contains('\\') || s.contains('\0') => return None,
            s => full.push(s),
        }
    }
    let mut full = inside(root, full.canonicalize().ok()?)?;
    if full.is_dir() {
        // Canonical again: index.html itself may be a symlink.
        full = inside(root, full.join("index.html").canonicalize().ok()?)?;
    }
    full.is_file().then_some(full)
}

/// Open the file for `path`, if there is one.
pub async fn open(root: &Path, path: &str) -> Option<StaticFile> {
    let path = resolve(root, path)?;
    let file = tokio::fs::File::open(&path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    Some(StaticFile {
        file,
        len,
        content_type: content_type(&path),
    })
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!(
            "pgws-static-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("dirs");
        std::fs::create_dir_all(root.join("empty")).expect("dirs");
        std::fs::write(root.join("index.html"), "home").expect("write");
        std::fs::write(root.join("sub/page.js"), "js").expect("write");
        std::fs::write(base.join("secret.txt"), "secret").expect("write");
        std::fs::write(root.join(".env"), "PASSWORD=x").expect("write");
        std::fs::create_dir_all(root.join(".git")).expect("dirs");
        std::fs::write(root.join(".git/config"), "[core]").expect("write");
        std::fs::create_dir_all(root.join("linkdir")).expect("dirs");
        let _ =
            std::os::unix::fs::symlink(base.join("secret.txt"), root.join("linkdir/index.html"));
        let _ = std::os::unix::fs::symlink(root.join(".env"), root.join("public.txt"));
        (base, root.canonicalize().expect("canonical"))
    }

    #[test]
    fn files_and_directory_indexes_resolve() {
        let (base, root) = tree();
        assert_eq!(resolve(&root, "/"), Some(root.join("index.html")));
        assert_eq!(
            resolve(&root, "/sub/page.js"),
            Some(root.join("sub/page.js"))
        );
        assert_eq!(resolve(&root, "/empty/"), None, "no listing");
        assert_eq!(resolve(&root, "/missing"), None);
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn nothing_outside_the_root() {
        let (base, root) = tree();
        for path in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/sub/../../secret.txt",
            "//etc/passwd",
            "/..%2fsecret.txt",
            "/linkdir/",
            "/linkdir",
            "/.env",
            "/%2eenv",
            "/.git/config",
            "/sub/../.env",
            "/public.txt",
        ] {
            assert_eq!(resolve(&root, path), None, "{path}");
        }
        let _ = std::fs::remove_dir_all(base);
    }
}
