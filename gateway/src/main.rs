//! `pgws-gateway`: reads the configuration and hands over to
//! [`pgws_gateway::server::run`].

use clap::Parser;
use pgws_gateway::config::{Config, VARS};
use pgws_gateway::server::{self, Exit};
use pgws_service::process::{parse_args, run_binary, ConfigFileArg};
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: the relay paths allocate a few
/// small buffers per message, and glibc spent a third of the drain's CPU in
/// malloc/free (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// postgres-websockets in Rust: websockets over PostgreSQL LISTEN/NOTIFY,
/// authorised by JWT. Standalone by default; with PGWS_REDIS_URL a
/// stateless gateway of a cluster. Configured by PGWS_* environment
/// variables (see docs/configuration.md).
#[derive(Parser)]
#[command(name = "pgws-gateway", version, about)]
struct Args {
    #[command(flatten)]
    file: ConfigFileArg,
}

fn main() -> ExitCode {
    let args: Args = parse_args(VARS);
    run_binary(
        VARS,
        args.file.config.as_deref(),
        Config::from_sources,
        |c: &Config| c.log.clone(),
        "pgws-gateway",
        |config, shutdown| async move {
            Ok(match server::run(config, shutdown).await? {
                Exit::Clean => ExitCode::SUCCESS,
                Exit::BusFailed => ExitCode::FAILURE,
            })
        },
    )
}
