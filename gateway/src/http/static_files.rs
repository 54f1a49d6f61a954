//! Static files under `PGWS_ROOT_PATH`: `index.html` for directories, no
//! listings, and no way out of the root (`..`, `%2e%2e`, absolute paths and
//! symlinks pointing outside are all refused with 404).

use bytes::Bytes;
use percent_encoding::percent_decode_str;
use std::path::{Path, PathBuf};

/// A file found under the root.
pub struct StaticFile {
    /// Its bytes.
    pub body: Bytes,
    /// Its media type.
    pub content_type: &'static str,
}

/// Resolve the request `path` under `root` (already canonical) to a file.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let mut full = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return None,
            s if s.contains('\\') || s.contains('\0') => return None,
            s => full.push(s),
        }
    }
    let mut full = full.canonicalize().ok()?;
    if !full.starts_with(root) {
        return None; // a symlink pointing out of the root
    }
    if full.is_dir() {
        full.push("index.html");
        if !full.is_file() {
            return None;
        }
    }
    full.is_file().then_some(full)
}

/// Read the file for `path`, if there is one.
pub async fn load(root: &Path, path: &str) -> Option<StaticFile> {
    let file = resolve(root, path)?;
    let body = tokio::fs::read(&file).await.ok()?;
    Some(StaticFile {
        body: Bytes::from(body),
        content_type: content_type(&file),
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
        ] {
            assert_eq!(resolve(&root, path), None, "{path}");
        }
        let _ = std::fs::remove_dir_all(base);
    }
}
