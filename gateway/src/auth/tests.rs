use super::*;
use hyper::StatusCode;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"reallyreallyreallyreallyverysafe";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs(alg: Algorithm, claims: Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .expect("sign")
}

fn claims(v: Value) -> Claims {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("test claims are objects"),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn hmac_algorithms_verify_with_a_raw_secret() {
    let keys = Keys::from_secret(SECRET, false).expect("keys");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let got = keys.verify(&hs(alg, json!({"mode":"r"}))).expect("valid");
        assert_eq!(got["mode"], "r");
    }
}

#[test]
fn base64_secrets_are_decoded() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let keys = Keys::from_secret(b64.as_bytes(), true).expect("keys");
    assert!(keys
        .verify(&hs(Algorithm::HS256, json!({"mode":"r"})))
        .is_ok());
    assert!(Keys::from_secret(b"***not base64***", true).is_err());
}

#[test]
fn wrong_secret_and_garbage_are_invalid_tokens() {
    let keys = Keys::from_secret(b"another secret", false).expect("keys");
    let e = keys
        .verify(&hs(Algorithm::HS256, json!({"mode":"r"})))
        .expect_err("bad sig");
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    assert!(matches!(e, Refusal::InvalidToken(_)));
    assert!(matches!(
        keys.verify("not.a.jwt"),
        Err(Refusal::InvalidToken(_))
    ));
    assert!(matches!(keys.verify(""), Err(Refusal::InvalidToken(_))));
}

#[test]
fn alg_none_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let keys = Keys::from_secret(SECRET, false).expect("keys");
    let token = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(r#"{"mode":"rw"}"#)
    );
    assert!(matches!(keys.verify(&token), Err(Refusal::InvalidToken(_))));
}

#[test]
fn exp_and_nbf_are_checked_without_leeway() {
    let keys = Keys::from_secret(SECRET, false).expect("keys");
    let expired = hs(Algorithm::HS256, json!({"mode":"r","exp": now() - 1}));
    assert_eq!(keys.verify(&expired), Err(Refusal::TokenExpired));
    assert_eq!(Refusal::TokenExpired.to_string(), "Token expired");
    let early = hs(Algorithm::HS256, json!({"mode":"r","nbf": now() + 600}));
    assert!(matches!(keys.verify(&early), Err(Refusal::InvalidToken(_))));
    let fine = hs(
        Algorithm::HS256,
        json!({"mode":"r","exp": now() + 600, "aud": "whatever"}),
    );
    assert!(keys.verify(&fine).is_ok(), "aud is not required to match");
}

#[test]
fn a_hmac_secret_does_not_verify_asymmetric_tokens() {
    let keys = Keys::from_secret(SECRET, false).expect("keys");
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).expect("rsa");
    let token = encode(&Header::new(Algorithm::RS256), &json!({"mode":"r"}), &rsa).expect("sign");
    assert!(matches!(keys.verify(&token), Err(Refusal::InvalidToken(_))));
}

fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).expect("json")
}

#[test]
fn asymmetric_algorithms_verify_through_a_jwks_by_kid() {
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa.pem")).expect("rsa");
    let ec256 = EncodingKey::from_ec_pem(&fixture("ec256.pem")).expect("ec256");
    let ec384 = EncodingKey::from_ec_pem(&fixture("ec384.pem")).expect("ec384");
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.pem")).expect("ed");
    let set = json!({"keys": [
        public_jwk(&rsa, Algorithm::RS256, "rsa"),
        public_jwk(&ec256, Algorithm::ES256, "ec256"),
        public_jwk(&ec384, Algorithm::ES384, "ec384"),
        public_jwk(&ed, Algorithm::EdDSA, "ed"),
    ]});
    // The JWK's own "alg" would pin RS256; drop it so PS/RS variants share the key.
    let mut set = set;
    if let Some(k) = set["keys"][0].as_object_mut() {
        k.remove("alg");
    }
    let keys = Keys::from_secret(set.to_string().as_bytes(), false).expect("jwks");
    let cases: [(Algorithm, &EncodingKey, &str); 8] = [
        (Algorithm::RS256, &rsa, "rsa"),
        (Algorithm::RS384, &rsa, "rsa"),
        (Algorithm::RS512, &rsa, "rsa"),
        (Algorithm::PS256, &rsa, "rsa"),
        (Algorithm::PS512, &rsa, "rsa"),
        (Algorithm::ES256, &ec256, "ec256"),
        (Algorithm::ES384, &ec384, "ec384"),
        (Algorithm::EdDSA, &ed, "ed"),
    ];
    for (alg, key, kid) in cases {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = encode(&header, &json!({"mode":"rw"}), key).expect("sign");
        assert!(keys.verify(&token).is_ok(), "{alg:?}");
        header.kid = Some("unknown".into());
        let token = encode(&header, &json!({"mode":"rw"}), key).expect("sign");
        assert!(keys.verify(&token).is_err(), "{alg:?} with an unknown kid");
    }
}

#[test]
fn a_single_oct_jwk_is_an_hmac_key() {
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
    let jwk = json!({"kty":"oct","k":k}).to_string();
    let keys = Keys::from_secret(jwk.as_bytes(), false).expect("jwk");
    assert!(keys
        .verify(&hs(Algorithm::HS512, json!({"mode":"w"})))
        .is_ok());
    assert!(Keys::from_secret(br#"{"kty":"nonsense"}"#, false).is_err());
    assert!(Keys::from_secret(br#"{"keys":[]}"#, false).is_err());
}

#[test]
fn channels_merge_channel_first_without_duplicates() {
    let g = authorize(
        claims(json!({"mode":"rw","channel":"a","channels":["b","a","c"]})),
        None,
        &MetaChannel::default(),
    )
    .expect("grant");
    assert_eq!(g.channels, vec!["a", "b", "c"]);
    assert_eq!(g.mode, Mode::ReadWrite);
}

#[test]
fn requested_channel_rules() {
    // No channel claims: any requested channel.
    let g = authorize(
        claims(json!({"mode":"r"})),
        Some("chat"),
        &MetaChannel::default(),
    )
    .expect("grant");
    assert_eq!(g.channels, vec!["chat"]);
    // With claims: only a listed one.
    let g = authorize(
        claims(json!({"mode":"r","channels":["x","chat"]})),
        Some("chat"),
        &MetaChannel::default(),
    )
    .expect("grant");
    assert_eq!(g.channels, vec!["chat"]);
    assert_eq!(
        authorize(
            claims(json!({"mode":"r","channel":"x"})),
            Some("chat"),
            &MetaChannel::default()
        )
        .expect_err("not listed"),
        Refusal::NoAllowedChannels
    );
    // Token-only path needs a channel claim.
    assert_eq!(
        authorize(claims(json!({"mode":"r"})), None, &MetaChannel::default()).expect_err("none"),
        Refusal::NoAllowedChannels
    );
}

#[test]
fn mode_rules() {
    assert_eq!(
        authorize(
            claims(json!({"channel":"c"})),
            None,
            &MetaChannel::default()
        )
        .expect_err("missing"),
        Refusal::MissingMode
    );
    assert_eq!(
        authorize(
            claims(json!({"mode":"x","channel":"c"})),
            None,
            &MetaChannel::default()
        )
        .expect_err("bad"),
        Refusal::InvalidMode
    );
    assert_eq!(
        authorize(
            claims(json!({"mode":1,"channel":"c"})),
            None,
            &MetaChannel::default()
        )
        .expect_err("bad"),
        Refusal::InvalidMode
    );
    for (m, read, write) in [("r", true, false), ("w", false, true), ("rw", true, true)] {
        let g = authorize(
            claims(json!({"mode":m,"channel":"c"})),
            None,
            &MetaChannel::default(),
        )
        .expect("grant");
        assert_eq!(
            (g.mode.can_read(), g.mode.can_write()),
            (read, write),
            "{m}"
        );
    }
    assert_eq!(Refusal::MissingMode.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        Refusal::NoAllowedChannels.to_string(),
        "No allowed channels"
    );
}

#[test]
fn malformed_channel_claims_are_refused() {
    for bad in [
        json!({"mode":"r","channel":1}),
        json!({"mode":"r","channels":"a"}),
        json!({"mode":"r","channels":["a",2]}),
    ] {
        assert_eq!(
            authorize(claims(bad), None, &MetaChannel::default()).expect_err("bad"),
            Refusal::InvalidChannelsClaim
        );
    }
}

#[test]
fn refusal_labels_are_distinct() {
    let mut labels: Vec<&str> = Refusal::all().iter().map(Refusal::label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Refusal::all().len());
}

/// A token with a hand-made header (jsonwebtoken cannot write `crit`).
fn with_header(header: Value, claims: Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{h}.{c}");
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{sig}")
}

#[test]
fn critical_header_extensions_are_refused() {
    let keys = Keys::from_secret(SECRET, false).expect("keys");
    let ok = with_header(json!({"alg":"HS256","typ":"JWT"}), json!({"mode":"r"}));
    assert!(keys.verify(&ok).is_ok(), "the hand-made token is valid");
    for header in [
        json!({"alg":"HS256","crit":["b64"],"b64":false}),
        json!({"alg":"HS256","crit":["x"],"x":1}),
        json!({"alg":"HS256","crit":[]}),
        json!({"alg":"HS256","crit":"b64"}),
    ] {
        let token = with_header(header.clone(), json!({"mode":"r"}));
        let e = keys.verify(&token).expect_err(&header.to_string());
        assert!(
            matches!(&e, Refusal::InvalidToken(why) if why.contains("crit") || why.contains("critical")),
            "{e}"
        );
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    }
}

#[test]
fn empty_hmac_keys_are_refused_and_short_ones_reported() {
    assert!(matches!(
        Keys::from_secret(b" ", true),
        Err(KeyError::Empty)
    ));
    assert!(matches!(
        Keys::from_secret(b"", false),
        Err(KeyError::Empty)
    ));
    assert!(Keys::from_secret(br#"{"kty":"oct","k":""}"#, false).is_err());
    assert_eq!(
        Keys::from_secret(b"short", false)
            .expect("keys")
            .weakest_hmac_key(),
        Some(5)
    );
    assert_eq!(
        Keys::from_secret(SECRET, false)
            .expect("keys")
            .weakest_hmac_key(),
        None
    );
    let jwk =
        json!({"kty":"oct","k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"tiny")});
    assert_eq!(
        Keys::from_secret(jwk.to_string().as_bytes(), false)
            .expect("keys")
            .weakest_hmac_key(),
        Some(4)
    );
}

#[test]
fn the_meta_channel_is_read_only_by_tokens_that_name_it_unless_public() {
    let guarded = MetaChannel {
        name: Some("server-info".into()),
        public: false,
    };
    let no_claims = || claims(json!({"mode":"r"}));
    assert_eq!(
        authorize(no_claims(), Some("server-info"), &guarded).expect_err("guarded"),
        Refusal::NoAllowedChannels
    );
    assert!(
        authorize(no_claims(), Some("chat"), &guarded).is_ok(),
        "other channels as before"
    );
    let named = claims(json!({"mode":"r","channels":["chat","server-info"]}));
    let g = authorize(named, Some("server-info"), &guarded).expect("named explicitly");
    assert_eq!(g.channels, vec!["server-info"]);
    let public = MetaChannel {
        name: Some("server-info".into()),
        public: true,
    };
    assert!(
        authorize(no_claims(), Some("server-info"), &public).is_ok(),
        "the original's behaviour"
    );
}
