use super::*;
use pgws_service::redis_client::RedisVars;

const DB: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut all = vec![
        (DB_URI, DB),
        (JWT_SECRET, "reallyreallyreallyreallyverysafe"),
    ];
    all.extend_from_slice(pairs);
    Config::from_sources(&Sources::from_pairs(VARS, all))
}

#[test]
fn defaults_match_the_original() {
    let c = load(&[]).expect("valid");
    assert_eq!(c.public.host, Host::AnyV4);
    assert_eq!(c.public.port, 3000);
    assert_eq!(c.listen_channel, "postgres-websockets-listener");
    let Backend::Standalone(db) = &c.backend else {
        panic!("standalone without PGWS_REDIS_URL")
    };
    assert_eq!(db.pool_size, 10);
    assert_eq!(db.retries, 5);
    assert_eq!(db.check_listener_interval, None);
    assert!(c.meta.name.is_none() && !c.meta.public && c.root_path.is_none() && c.tls.is_none());
    assert!(!c.jwt.base64);
}

#[test]
fn a_zero_check_interval_means_disabled_as_in_the_original() {
    let c = load(&[(CHECK_LISTENER_INTERVAL, "0")]).expect("0 is valid");
    let Backend::Standalone(db) = &c.backend else {
        panic!("standalone")
    };
    assert_eq!(db.check_listener_interval, None);
}

#[test]
fn libpq_settings_are_accepted() {
    for uri in [
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=system",
        "host=a,b port=5432 user=u dbname=d target_session_attrs=read-write sslmode=require",
    ] {
        load(&[(DB_URI, uri)]).expect(uri);
    }
    let e = load(&[(DB_URI, "host=h sslmode=verify-full")]).expect_err("no root");
    assert_eq!(e.variable, DB_URI);
    assert!(e.to_string().contains("sslrootcert"), "{e}");
}

#[test]
fn base64_flag_accepts_haskell_spellings() {
    for (text, want) in [
        ("True", true),
        ("true", true),
        ("False", false),
        ("false", false),
    ] {
        assert_eq!(
            load(&[(JWT_SECRET_BASE64, text)])
                .expect("valid")
                .jwt
                .base64,
            want
        );
    }
    let e = load(&[(JWT_SECRET_BASE64, "yes please")]).expect_err("invalid");
    assert_eq!(e.variable, JWT_SECRET_BASE64);
}

#[test]
fn errors_name_the_variable() {
    for (name, value) in [
        (PORT, "abc"),
        (PORT, "70000"),
        (POOL_SIZE, "0"),
        (RETRIES, "-1"),
        (CHECK_LISTENER_INTERVAL, "soon"),
        (ADMIN_PORT, "x"),
        (LOG_FORMAT, "xml"),
        (DB_URI, "postgres://h:port/db"),
    ] {
        let e = load(&[(name, value)]).expect_err(name);
        assert_eq!(e.variable, name, "{e}");
        assert!(e.to_string().starts_with(name), "{e}");
    }
}

#[test]
fn missing_required_values_are_reported() {
    let e =
        Config::from_sources(&Sources::from_pairs(VARS, [(DB_URI, DB)])).expect_err("no secret");
    assert_eq!(e.variable, JWT_SECRET);
    let e =
        Config::from_sources(&Sources::from_pairs(VARS, [(JWT_SECRET, "s")])).expect_err("no db");
    assert_eq!(e.variable, DB_URI);
}

#[test]
fn tls_needs_both_files() {
    let e = load(&[(CERTIFICATE_FILE, "/tmp/c.pem")]).expect_err("half tls");
    assert!(e.variable.contains(CERTIFICATE_FILE) && e.variable.contains(KEY_FILE));
    assert!(load(&[(CERTIFICATE_FILE, "c"), (KEY_FILE, "k")])
        .expect("ok")
        .tls
        .is_some());
}

#[test]
fn host_notations() {
    use pgws_service::config::Host;
    for (text, want) in [
        ("*", Host::AnyDualStack),
        ("*6", Host::AnyDualStack),
        ("*4", Host::AnyV4),
        ("!4", Host::AnyV4),
        ("!6", Host::AnyV6Only),
        ("127.0.0.1", Host::Ip("127.0.0.1".parse().expect("ip"))),
        ("[::1]", Host::Ip("::1".parse().expect("ip"))),
        ("localhost", Host::Name("localhost".into())),
    ] {
        assert_eq!(Host::parse(HOST, text).expect("valid"), want, "{text}");
    }
}

#[test]
fn at_path_reads_a_file() {
    let dir = std::env::temp_dir().join(format!("pgws-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("secret");
    std::fs::write(&file, "from-a-file\n").expect("write");
    let at = format!("@{}", file.display());
    let c = load(&[(JWT_SECRET, &at)]).expect("valid");
    assert_eq!(c.jwt.secret, b"from-a-file");
    let e = load(&[(JWT_SECRET, "@/nonexistent/secret")]).expect_err("missing file");
    assert_eq!(e.variable, JWT_SECRET);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn environment_wins_over_the_toml_file() {
    let dir = std::env::temp_dir().join(format!("pgws-config-toml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("pgws.toml");
    std::fs::write(&file, "port = 4000\npool_size = 3\njwt_secret = 'file'\n").expect("write");
    let env = [("PGWS_PORT", "5000"), ("PGWS_DB_URI", DB), ("OTHER", "x")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let sources = Sources::merge(VARS, Some(&file), env).expect("merged");
    let c = Config::from_sources(&sources).expect("valid");
    assert_eq!(c.public.port, 5000);
    let Backend::Standalone(db) = &c.backend else {
        panic!("standalone")
    };
    assert_eq!(db.pool_size, 3);
    assert_eq!(c.jwt.secret, b"file");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn jwk_json_in_the_environment_stays_text() {
    let jwk = r#"{"kty":"oct","k":"c2VjcmV0"}"#;
    let env = [("PGWS_JWT_SECRET", jwk), ("PGWS_DB_URI", DB)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let c = Config::from_sources(&Sources::merge(VARS, None, env).expect("merged")).expect("valid");
    assert_eq!(c.jwt.secret, jwk.as_bytes());
}

#[test]
fn unknown_variables_are_listed() {
    let s = Sources::from_pairs(VARS, [("PGWS_PROT", "1"), (PORT, "1")]);
    assert_eq!(s.unknown(), vec!["PGWS_PROT".to_string()]);
}

#[test]
fn every_variable_is_documented() {
    let docs = include_str!("../../../docs/configuration.md");
    for var in VARS {
        assert!(
            docs.contains(var.name),
            "{} missing from docs/configuration.md",
            var.name
        );
    }
}

#[test]
fn a_redis_url_selects_cluster_mode_without_database() {
    let c = Config::from_sources(&Sources::from_pairs(
        VARS,
        [
            (JWT_SECRET, "s"),
            (REDIS_URL, "redis://127.0.0.1:6379"),
            (REDIS_PREFIX, "test"),
        ],
    ))
    .expect("valid without PGWS_DB_URI");
    let Backend::Cluster(cluster) = c.backend else {
        panic!("cluster mode")
    };
    assert_eq!(cluster.keys.prefix(), "test");
    assert_eq!(cluster.stream_max_len, 100_000);
    assert_eq!(
        cluster.subscription_queue,
        crate::bus::redis::DEFAULT_SUBSCRIPTION_QUEUE
    );
    let e = load(&[(REDIS_URL, "localhost:6379")]).expect_err("not a URL");
    assert_eq!(e.variable, REDIS_URL);
}

#[test]
fn the_shared_variables_are_the_standard_names() {
    let s = RedisVars::STANDARD;
    for (standard, declared) in [
        (s.url, REDIS_URL),
        (s.cluster, REDIS_CLUSTER),
        (s.ca_file, REDIS_CA_FILE),
        (s.ca_only, REDIS_CA_ONLY),
        (s.cert_file, REDIS_CERT_FILE),
        (s.key_file, REDIS_KEY_FILE),
        (s.prefix, REDIS_PREFIX),
    ] {
        assert_eq!(standard, declared);
    }
    let h = pgws_service::history::HistoryVars::STANDARD;
    for (standard, declared) in [
        (h.size, HISTORY_SIZE),
        (h.ttl, HISTORY_TTL),
        (h.state_ttl, CHANNEL_STATE_TTL),
    ] {
        assert_eq!(standard, declared);
    }
}
