//! `pgws-gateway`: reads the configuration, sets up logging and signals, and
//! hands over to [`pgws_gateway::server::run`].

use clap::Parser;
use pgws_gateway::config::{self, Config};
use pgws_gateway::server::{self, Exit};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration error (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// postgres-websockets in Rust: websockets over PostgreSQL LISTEN/NOTIFY,
/// authorised by JWT. Configured by PGWS_* environment variables (see
/// docs/configuration.md).
#[derive(Parser)]
#[command(name = "pgws-gateway", version, about)]
struct Args {
    /// A TOML file of settings (keys: variable names without PGWS_,
    /// lower-case); the environment overrides it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sources = match config::load_sources(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let config = match Config::from_sources(&sources) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    init_logging(&config);
    for name in sources.unknown() {
        tracing::warn!(variable = %name, "unknown PGWS_ variable ignored");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(pgws_coordinator::settings::on_signal(shutdown.clone()));
        match server::run(config, shutdown).await {
            Ok(Exit::Clean) => ExitCode::SUCCESS,
            Ok(Exit::ListenerLost) => ExitCode::FAILURE,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn init_logging(config: &Config) {
    pgws_coordinator::settings::init_logging(config.log.json, &config.log.level);
}
