//! Start-up: flags, configuration sources, and configuration errors.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

fn run(builder: ServerBuilder) -> (Option<i32>, String) {
    let out = builder.command().output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let bin = env!("CARGO_BIN_EXE_pgws-gateway");
    let out = Command::new(bin).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(bin).arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(help.contains("--config"));
    for var in pgws_gateway::config::VARS {
        assert!(
            help.contains(var.name),
            "--help lacks {}:\n{help}",
            var.name
        );
    }
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("PGWS_PORT", "not-a-port"),
        ("PGWS_POOL_SIZE", "many"),
        ("PGWS_JWT_SECRET_BASE64", "perhaps"),
        ("PGWS_CHECK_LISTENER_INTERVAL", "5s"),
        ("PGWS_DB_URI", "postgres://x:notaport/db"),
    ] {
        let (code, stderr) = run(Server::gateway().env(var, value));
        assert_eq!(code, Some(78), "{var}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{var}: {stderr}");
        assert!(lines[0].contains(var), "{var}: {stderr}");
    }
}

#[test]
fn missing_required_variables_are_named() {
    let (code, stderr) = run(Server::gateway().unset("PGWS_JWT_SECRET"));
    assert_eq!(code, Some(78));
    assert!(stderr.contains("PGWS_JWT_SECRET: is required"), "{stderr}");
    let (code, stderr) = run(Server::gateway().unset("PGWS_DB_URI"));
    assert_eq!(code, Some(78));
    assert!(stderr.contains("PGWS_DB_URI"), "{stderr}");
}

#[test]
fn half_a_tls_configuration_is_an_error_naming_both() {
    let (code, stderr) = run(Server::gateway().env("PGWS_CERTIFICATE_FILE", "/tmp/cert.pem"));
    assert_eq!(code, Some(78));
    assert!(
        stderr.contains("PGWS_CERTIFICATE_FILE") && stderr.contains("PGWS_KEY_FILE"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_jwk_is_reported_by_name() {
    let (code, stderr) = run(Server::gateway().env("PGWS_JWT_SECRET", r#"{"kty":"nope"}"#));
    assert_eq!(code, Some(1));
    assert!(stderr.contains("PGWS_JWT_SECRET"), "{stderr}");
}

#[tokio::test]
async fn a_toml_file_configures_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(unique("pgws-toml"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pgws.toml");
    let meta = unique("meta");
    std::fs::write(
        &file,
        format!(
            "meta_channel = \"{meta}\"\nmeta_channel_public = true\njwt_secret = \"from-the-file\"\n"
        ),
    )
    .expect("write");
    // The environment's secret (the harness default) overrides the file's.
    let gw = Server::gateway()
        .arg("--config")
        .arg(file.display().to_string())
        .start()
        .await;
    let mut watcher = connect(&gw.url(&format!("{meta}/{}", token(json!({"mode":"r"}))))).await;
    let open: serde_json::Value =
        serde_json::from_str(&next_text(&mut watcher).await).expect("json");
    assert_eq!(
        open["event"], "ConnectionOpen",
        "meta_channel (and meta_channel_public: the token names no channel) came from the file"
    );
    let _ = std::fs::remove_dir_all(dir);
}
