//! `pgws-coordinator` start-up: flags, and configuration errors that name
//! the variable (exit 78).

use std::process::Command;

fn coordinator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgws-coordinator"));
    cmd.env_clear();
    cmd
}

#[test]
fn help_and_version() {
    let out = coordinator().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = coordinator().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(help.contains("--config"));
    for var in pgws_coordinator::config::VARS {
        assert!(
            help.contains(var.name),
            "--help lacks {}:\n{help}",
            var.name
        );
    }
}

#[test]
fn configuration_errors_name_the_variable() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("PGWS_REDIS_URL", "redis://127.0.0.1:6379")],
            "PGWS_DB_URI",
        ),
        (
            &[("PGWS_DB_URI", "postgres://postgres@127.0.0.1/postgres")],
            "PGWS_REDIS_URL",
        ),
        (
            &[
                ("PGWS_DB_URI", "postgres://postgres@127.0.0.1/postgres"),
                ("PGWS_REDIS_URL", "redis://127.0.0.1:6379"),
                ("PGWS_LEADER_TTL", "soon"),
            ],
            "PGWS_LEADER_TTL",
        ),
        (
            &[
                ("PGWS_DB_URI", "postgres://postgres@127.0.0.1/postgres"),
                ("PGWS_REDIS_URL", "redis://127.0.0.1:6379"),
                ("PGWS_REDIS_PREFIX", "{bad}"),
            ],
            "PGWS_REDIS_PREFIX",
        ),
    ];
    for (env, variable) in cases {
        let out = coordinator()
            .envs(env.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{variable}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}
