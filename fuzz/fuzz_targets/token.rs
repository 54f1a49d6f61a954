//! A token as it arrives: verification against HMAC keys and a JWK set,
//! the `crit` rule, expiry. Properties: nothing panics; a token whose
//! header names critical extensions never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgws_gateway::auth::Keys;
use std::sync::OnceLock;

fn keys() -> &'static [Keys; 2] {
    static KEYS: OnceLock<[Keys; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [
            Keys::from_secret(b"reallyreallyreallyreallyverysafe", false).expect("hmac"),
            Keys::from_secret(
                br#"{"keys":[{"kty":"oct","kid":"a","k":"cmVhbGx5cmVhbGx5cmVhbGx5cmVhbGx5dmVyeXNhZmU"},
                             {"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
                false,
            )
            .expect("jwks"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    for keys in keys() {
        if keys.verify(&token).is_ok() {
            assert!(
                pgws_gateway::auth::refuse_critical_extensions(&token).is_ok(),
                "a token with crit verified"
            );
        }
    }
});
