//! `pgws-coordinator`: one of the candidates for the cluster's single LISTEN
//! connection. Reads its configuration, sets up logging and signals, and
//! hands over to [`pgws_coordinator::node::run`].

use clap::Parser;
use pgws_coordinator::config::{self, CoordinatorConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration error (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// The postgres-websockets coordinator: elected through Redis, holds the
/// cluster's only LISTEN connection, republishes notifications on Redis and
/// turns gateways' writes into NOTIFYs. Configured by PGWS_* variables
/// (see docs/configuration.md).
#[derive(Parser)]
#[command(name = "pgws-coordinator", version, about)]
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
    let config = match CoordinatorConfig::from_sources(&sources) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    pgws_coordinator::settings::init_logging(config.log_json, &config.log_level);
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
        match pgws_coordinator::node::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
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
