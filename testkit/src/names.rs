//! What every test needs to be on its own: the shared secret, the wait
//! bound, unique names, tokens.

use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const SECRET: &str = "reallyreallyreallyreallyverysafe";
pub const WAIT: Duration = Duration::from_secs(15);

/// A name no other test (or concurrent test run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An HS256 token over `claims`, signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    token_with(claims, SECRET.as_bytes())
}

pub fn token_with(claims: Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}
