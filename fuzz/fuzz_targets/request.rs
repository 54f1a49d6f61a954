//! What an upgrade request says: path, query, Authorization and
//! Sec-WebSocket-Protocol (four lines of the input), and the static-file
//! path resolution against a fixed tree with a dotfile and symlinks that
//! point out. Properties: nothing panics; a resolved file is inside the
//! root and no part of it below the root is hidden.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_gateway::http::request::{looks_like_jwt, parse, RequestParts};
use pgws_gateway::http::static_files::resolve;
use std::path::PathBuf;
use std::sync::OnceLock;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("pgws-fuzz-site-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("dirs");
        std::fs::create_dir_all(root.join("linkdir")).expect("dirs");
        std::fs::write(root.join("index.html"), "home").expect("write");
        std::fs::write(root.join("sub/a.js"), "js").expect("write");
        std::fs::write(root.join(".env"), "secret").expect("write");
        std::fs::write(base.join("outside.txt"), "outside").expect("write");
        let _ =
            std::os::unix::fs::symlink(base.join("outside.txt"), root.join("linkdir/index.html"));
        let _ = std::os::unix::fs::symlink(root.join(".env"), root.join("innocent.txt"));
        let _ = std::os::unix::fs::symlink(&base, root.join("up"));
        root.canonicalize().expect("canonical")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let path = lines.next().unwrap_or("");
    let parts = RequestParts {
        path,
        query: lines.next(),
        authorization: lines.next(),
        protocols: lines.next(),
    };
    if let Ok(target) = parse(parts) {
        if let Some(channel) = &target.channel {
            assert!(!channel.contains('/') || path.contains("%2F") || path.contains("%2f"));
        }
    }
    let _ = looks_like_jwt(path);
    if let Some(file) = resolve(root(), path) {
        let rest = file.strip_prefix(root()).expect("inside the root");
        for part in rest.components() {
            let name = part.as_os_str().to_string_lossy();
            assert!(
                !name.starts_with('.'),
                "served a hidden file: {}",
                file.display()
            );
        }
    }
});
