//! `pgws-coordinator`: one of the candidates for the cluster's single LISTEN
//! connection. Reads its configuration and hands over to
//! [`pgws_coordinator::node::run`].

use clap::Parser;
use pgws_coordinator::config::{CoordinatorConfig, VARS};
use pgws_service::process::{parse_args, run_binary, ConfigFileArg};
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: the relay paths allocate a few
/// small buffers per message, and glibc spent a third of the drain's CPU in
/// malloc/free (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The postgres-websockets coordinator: elected through Redis, holds the
/// cluster's only LISTEN connection, republishes notifications on Redis and
/// turns gateways' writes into NOTIFYs. Configured by PGWS_* variables
/// (see docs/configuration.md).
#[derive(Parser)]
#[command(name = "pgws-coordinator", version, about)]
struct Args {
    #[command(flatten)]
    file: ConfigFileArg,
}

fn main() -> ExitCode {
    let args: Args = parse_args(VARS);
    run_binary(
        VARS,
        args.file.config.as_deref(),
        CoordinatorConfig::from_sources,
        |c: &CoordinatorConfig| c.log.clone(),
        "pgws-coordinator",
        |config, shutdown| async move {
            pgws_coordinator::node::run(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        },
    )
}
