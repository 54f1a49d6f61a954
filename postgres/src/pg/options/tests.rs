use super::*;
use std::collections::HashMap;

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<PgConfig, OptionsError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    PgConfig::parse(text, &move |k| env.get(k).cloned())
}

fn parse(text: &str) -> Result<PgConfig, OptionsError> {
    parse_env(text, &[("USER", "osuser")])
}

fn ca_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("pgws-options-ca-{}.pem", std::process::id()));
    std::fs::write(&path, "not read at parse time").expect("write");
    path
}

#[test]
fn the_string_wins_over_the_environment_which_wins_over_defaults() {
    let env = [
        ("PGHOST", "envhost"),
        ("PGPORT", "6000"),
        ("PGUSER", "envuser"),
        ("PGDATABASE", "envdb"),
        ("PGPASSWORD", "envpw"),
        ("PGAPPNAME", "myapp"),
        ("PGSSLMODE", "disable"),
        ("PGCONNECT_TIMEOUT", "3"),
    ];
    let c = parse_env("dbname=app", &env).expect("valid");
    assert_eq!(c.targets[0].host, HostKind::Tcp("envhost".into()));
    assert_eq!(c.targets[0].port, 6000);
    assert_eq!((c.user.as_str(), c.dbname.as_str()), ("envuser", "app"));
    assert_eq!(c.password.as_deref(), Some("envpw"));
    assert_eq!(c.application_name.as_deref(), Some("myapp"));
    assert_eq!(c.tls.mode, SslMode::Disable);
    assert_eq!(c.connect_timeout, Duration::from_secs(3));
    let c = parse_env("postgres://u@h:1/d?sslmode=require", &env).expect("valid");
    assert_eq!(c.tls.mode, SslMode::Require);
    assert_eq!(c.targets[0].port, 1);
}

#[test]
fn libpq_defaults() {
    let c = parse("host=h").expect("valid");
    assert_eq!(c.user, "osuser");
    assert_eq!(c.dbname, "osuser", "dbname defaults to the user");
    assert_eq!(c.targets[0].port, 5432);
    assert_eq!(c.tls.mode, SslMode::Prefer, "libpq's default sslmode");
    assert_eq!(c.session_attrs, SessionAttrs::Any);
    assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(
        parse("host=h connect_timeout=1")
            .expect("valid")
            .connect_timeout,
        Duration::from_secs(2)
    );
    assert!(
        c.passfile.is_none(),
        "no HOME, no PGPASSFILE: no password file"
    );
    let c = parse_env("host=h", &[("USER", "u"), ("HOME", "/home/u")]).expect("valid");
    assert_eq!(c.passfile, Some(PathBuf::from("/home/u/.pgpass")));
}

#[test]
fn several_hosts_ports_and_addresses() {
    let c = parse("postgresql://a:1,b:2/db?target_session_attrs=read-write").expect("valid");
    let hosts: Vec<String> = c.targets.iter().map(Target::to_string).collect();
    assert_eq!(hosts, vec!["a:1", "b:2"]);
    assert_eq!(c.session_attrs, SessionAttrs::ReadWrite);
    let c = parse("host=a,b port=7").expect("one port for all");
    assert!(c.targets.iter().all(|t| t.port == 7));
    let c = parse("hostaddr=10.0.0.1").expect("address only");
    assert_eq!(c.targets[0].host, HostKind::Tcp("10.0.0.1".into()));
    let c = parse("host=/var/run/postgresql").expect("socket");
    assert_eq!(
        c.targets[0].host,
        HostKind::Unix("/var/run/postgresql".into())
    );
    assert!(parse("host=a,b,c port=1,2").is_err());
    assert!(parse("host=a,b hostaddr=1.2.3.4,x").is_err());
    assert!(parse("host=a port=0").is_err());
}

#[test]
fn verification_needs_a_root_certificate() {
    let e = parse("host=h sslmode=verify-full").expect_err("no root");
    assert!(e.to_string().contains("sslrootcert"), "{e}");
    let e = parse("host=h sslmode=verify-ca sslrootcert=/nonexistent/ca.pem").expect_err("missing");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let ca = ca_file();
    let c = parse(&format!(
        "host=h sslmode=verify-ca sslrootcert={}",
        ca.display()
    ))
    .expect("valid");
    assert_eq!(c.tls.roots, Roots::File(ca.clone()));
    assert!(c.tls.verifies_chain());
    // libpq: require with a root certificate verifies the chain.
    let c = parse(&format!(
        "host=h sslmode=require sslrootcert={}",
        ca.display()
    ))
    .expect("valid");
    assert!(c.tls.verifies_chain());
    assert!(!parse("host=h sslmode=require")
        .expect("valid")
        .tls
        .verifies_chain());
}

#[test]
fn the_system_store_means_verify_full() {
    let c = parse("host=h sslrootcert=system").expect("valid");
    assert_eq!(
        (c.tls.mode, c.tls.roots),
        (SslMode::VerifyFull, Roots::System)
    );
    assert!(parse("host=h sslrootcert=system sslmode=require").is_err());
    assert!(parse("host=h sslrootcert=system sslmode=verify-full").is_ok());
}

#[test]
fn client_certificates_need_both_files() {
    let ca = ca_file();
    let c = parse(&format!("host=h sslcert={0} sslkey={0}", ca.display())).expect("valid");
    assert_eq!(c.tls.client_cert, Some((ca.clone(), ca.clone())));
    assert!(parse(&format!("host=h sslcert={}", ca.display())).is_err());
    assert!(parse("host=h sslcert=/nonexistent sslkey=/nonexistent").is_err());
}

#[test]
fn keywords_we_cannot_honour_are_refused_by_name() {
    for (text, keyword) in [
        ("host=h sslcrl=/x.crl", "sslcrl"),
        ("host=h sslpassword=x", "sslpassword"),
        ("host=h gssencmode=require", "gssencmode"),
        ("host=h service=prod", "service"),
        ("host=h requirepeer=postgres", "requirepeer"),
        ("host=h replication=database", "replication"),
        ("host=h bogus=1", "bogus"),
        ("host=h sslmode=verify", "sslmode"),
        ("host=h target_session_attrs=leader", "target_session_attrs"),
        ("host=h client_encoding=LATIN1", "client_encoding"),
        (
            "host=h ssl_max_protocol_version=TLSv1.1",
            "ssl_max_protocol_version",
        ),
    ] {
        let e = parse(text).expect_err(text);
        assert!(e.to_string().contains(keyword), "{text}: {e}");
    }
    for harmless in [
        "host=h gssencmode=disable",
        "host=h sslcompression=0 krbsrvname=postgres",
        "host=h sslcrl=",
        "host=h fallback_application_name=x",
        "host=h requiressl=1",
        "host=h client_encoding=UTF8",
    ] {
        parse(harmless).expect(harmless);
    }
    assert_eq!(
        parse("host=h requiressl=1").expect("valid").tls.mode,
        SslMode::Require
    );
}

#[test]
fn the_description_has_no_password() {
    let c = parse("postgresql://u:hunter2@a:1,b:2/db?sslmode=require").expect("valid");
    let d = c.describe();
    assert!(!d.contains("hunter2"), "{d}");
    assert!(
        d.contains("host=a:1,b:2") && d.contains("sslmode=require"),
        "{d}"
    );
}
