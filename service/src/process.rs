//! A process's life, the same for both binaries: read the configuration
//! (an error is one line naming the variable, exit 78), set up logging and
//! traces, raise the open-files limit, start the runtime, turn SIGTERM and
//! SIGINT into the shutdown token, bind listeners in the original's host
//! notation.

use crate::config::{ConfigError, Host, ListenAddr, Sources, Var};
use std::net::SocketAddr;
use std::path::Path;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bind a listener for `addr` with the original's host notation.
pub async fn bind(addr: &ListenAddr) -> std::io::Result<TcpListener> {
    let socket_addr = match (&addr.host, addr.host.literal()) {
        (_, Some(ip)) => SocketAddr::new(ip, addr.port),
        (Host::Name(name), None) => tokio::net::lookup_host((name.as_str(), addr.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{name} did not resolve"),
                )
            })?,
        (_, None) => return Err(std::io::Error::other("unresolvable host")),
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(socket_addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if socket_addr.is_ipv6() {
        socket.set_only_v6(addr.host == Host::AnyV6Only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&socket_addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Log a bound listener's address in the one format tests and operators
/// look for: `listening kind="public" addr=127.0.0.1:3000`.
pub fn log_bound(kind: &str, listener: &TcpListener, tls: bool) {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(kind, %addr, tls, "listening"),
        Err(e) => tracing::warn!(kind, error = %e, "listening on an unknown address"),
    }
}

/// Cancel `shutdown` on SIGTERM or SIGINT.
pub async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

/// The `--config FILE` flag both binaries take.
#[derive(clap::Args, Debug)]
pub struct ConfigFileArg {
    /// A TOML file of settings (keys: variable names without PGWS_,
    /// lower-case); the environment overrides it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// Parse the command line of a binary whose `--help` ends with the table
/// of the variables it reads ([`crate::config::help_table`]).
pub fn parse_args<A: clap::Parser>(vars: &'static [Var]) -> A {
    let command = A::command().after_long_help(crate::config::help_table(vars));
    let command = command.after_help("Environment variables: see --help for the full list.");
    let matches = command.get_matches();
    match A::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    }
}

/// Exit code for a configuration error (sysexits' EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// The start-up both binaries share: read the configuration (an error is
/// one line naming the variable, exit 78), set up logging, warn about
/// unknown `PGWS_` variables, start the runtime, turn SIGTERM/SIGINT into
/// the shutdown token, and run `run` to its exit code.
pub fn run_binary<C, Fut>(
    vars: &'static [Var],
    config_file: Option<&Path>,
    parse: impl FnOnce(&Sources) -> Result<C, ConfigError>,
    log: impl FnOnce(&C) -> crate::telemetry::LogConfig,
    service: &str,
    run: impl FnOnce(C, CancellationToken) -> Fut,
) -> std::process::ExitCode
where
    Fut: std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
{
    use std::process::ExitCode;
    let config = match Sources::load(vars, config_file).and_then(|sources| {
        let config = parse(&sources)?;
        let workers = worker_threads(&sources)?;
        Ok(((config, workers), sources.unknown()))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let ((config, workers), unknown) = config;
    let telemetry = crate::telemetry::init(&log(&config), service);
    match raise_open_files_limit() {
        Some(limit) => tracing::debug!(limit, "open-files limit"),
        None => tracing::warn!("cannot read the open-files limit"),
    }
    for name in unknown {
        tracing::warn!(variable = %name, "unknown PGWS_ variable ignored");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        match run(config, shutdown).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    });
    drop(telemetry); // flush traces before exiting
    code
}

/// The variable both binaries read for their runtime's size.
pub const WORKER_THREADS: &str = "PGWS_WORKER_THREADS";

/// `PGWS_WORKER_THREADS`: `None` (0 or unset) lets tokio use one worker per
/// available CPU, which honours a container's CPU quota.
fn worker_threads(sources: &Sources) -> Result<Option<usize>, ConfigError> {
    if sources.get(WORKER_THREADS).is_none() {
        return Ok(None);
    }
    let n: usize = sources.parsed(WORKER_THREADS, "a number of threads (0 = one per CPU)")?;
    Ok((n > 0).then_some(n))
}

/// Raise the open-files soft limit to the hard limit: every websocket is a
/// file descriptor, and the usual soft default (1024) is far too low.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
