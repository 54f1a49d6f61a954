//! Operator-supplied connection strings: libpq's two forms and settings,
//! and Redis URLs (single, cluster seeds, Sentinel). Properties: nothing
//! panics; a parsed PostgreSQL configuration has at least one host, and
//! its log description does not depend on the password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_postgres::pg::PgConfig;
use pgws_service::redis_client::{RedisConfig, TlsFiles};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = PgConfig::parse(&text, &|_| None) {
        assert!(!config.targets.is_empty());
        let mut other = config.clone();
        other.password = Some("a different password".into());
        assert_eq!(
            config.describe(),
            other.describe(),
            "the description shows the password"
        );
    }
    let _ = RedisConfig::parse(
        &text,
        data.first().is_some_and(|b| b & 1 == 1),
        TlsFiles::default(),
    );
});
