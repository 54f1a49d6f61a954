//! How both binaries read their `PGWS_*` settings.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file
//! (`--config`; keys are variable names without `PGWS_`, lower-cased), then
//! the environment. The merge is figment's; values are taken as text and
//! parsed by the caller through [`Sources`], so every error names the
//! variable. Each binary declares its own table of [`Var`]s with [`vars!`].
//!
//! This lives in the coordinator library because the gateway already
//! embeds it (standalone mode) and both processes must read variables the
//! same way.

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One configuration variable: its name, default (as text) and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    /// The environment variable's name.
    pub name: &'static str,
    /// The default, as it would be written in the environment; `None`: unset.
    pub default: Option<&'static str>,
    /// A one-line description, mirrored in `docs/configuration.md`.
    pub doc: &'static str,
}

/// Declare a binary's variables: one constant per name, and the table.
#[macro_export]
macro_rules! vars {
    ($($id:ident = $name:literal, $default:expr, $doc:literal;)*) => {
        $(#[doc = $doc] pub const $id: &str = $name;)*
        /// Every variable this binary reads.
        pub const VARS: &[$crate::settings::Var] = &[$($crate::settings::Var { name: $name, default: $default, doc: $doc }),*];
    };
}

/// A configuration error: always names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The offending variable.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

pub fn err(variable: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_string(),
        message: message.into(),
    }
}

/// A listen address in the original's notation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `*`, `*6`: every address, IPv6 and IPv4 (dual stack).
    AnyDualStack,
    /// `*4`, `!4`: every IPv4 address.
    AnyV4,
    /// `!6`: every IPv6 address, IPv6 only.
    AnyV6Only,
    /// A literal address.
    Ip(IpAddr),
    /// A name to resolve.
    Name(String),
}

impl Host {
    /// Parse the original's notation; errors name `variable`.
    pub fn parse(variable: &str, text: &str) -> Result<Host, ConfigError> {
        Ok(match text.trim() {
            "*" | "*6" => Host::AnyDualStack,
            "*4" | "!4" => Host::AnyV4,
            "!6" => Host::AnyV6Only,
            "" => return Err(err(variable, "must not be empty")),
            other => match other
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(other.to_string()),
            },
        })
    }

    /// The IP to bind when no name resolution is needed.
    pub fn literal(&self) -> Option<IpAddr> {
        match self {
            Host::AnyDualStack | Host::AnyV6Only => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            Host::AnyV4 => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// The host preference.
    pub host: Host,
    /// The port; 0 picks a free one.
    pub port: u16,
}

/// The raw, merged sources: variable name → text.
#[derive(Debug)]
pub struct Sources {
    values: BTreeMap<String, String>,
    vars: &'static [Var],
}

impl Sources {
    /// Merge the optional TOML file with the process environment.
    pub fn load(vars: &'static [Var], config_file: Option<&Path>) -> Result<Sources, ConfigError> {
        Sources::merge(vars, config_file, std::env::vars())
    }

    /// Merge the optional TOML file with `env` (environment wins).
    pub fn merge(
        vars: &'static [Var],
        config_file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Sources, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(err("--config", format!("no such file: {}", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Environment values are kept as text (figment's own Env provider
        // would parse `{"kty":…}` JWKs into dictionaries).
        let env: BTreeMap<String, String> = env
            .filter_map(|(k, v)| {
                k.strip_prefix("PGWS_")
                    .map(|rest| (rest.to_ascii_lowercase(), v))
            })
            .collect();
        figment = figment.merge(Serialized::defaults(env));
        let merged: BTreeMap<String, Value> = figment
            .extract()
            .map_err(|e| err("--config", format!("cannot read the configuration: {e}")))?;
        let mut out = BTreeMap::new();
        for (key, value) in merged {
            let name = format!("PGWS_{}", key.to_ascii_uppercase());
            let text = match value {
                Value::String(_, s) => s,
                Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
                    (Some(u), _, _) => u.to_string(),
                    (_, Some(i), _) => i.to_string(),
                    (_, _, Some(f)) => f.to_string(),
                    _ => return Err(err(&name, "is not a usable number")),
                },
                Value::Bool(_, b) => b.to_string(),
                _ => return Err(err(&name, "must be a string, number or boolean")),
            };
            out.insert(name, text);
        }
        Ok(Sources { values: out, vars })
    }

    /// Build from explicit pairs (tests).
    pub fn from_pairs<'a>(
        vars: &'static [Var],
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Sources {
        Sources {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vars,
        }
    }

    /// Variables that look like ours but are not known: likely typos.
    pub fn unknown(&self) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !self.vars.iter().any(|v| v.name == k.as_str()))
            .cloned()
            .collect()
    }

    /// The value, or the variable's default; `None` when neither is set.
    pub fn get(&self, name: &str) -> Option<String> {
        let set = self.values.get(name).filter(|v| !v.is_empty()).cloned();
        set.or_else(|| {
            self.vars
                .iter()
                .find(|v| v.name == name)
                .and_then(|v| v.default)
                .map(str::to_string)
        })
    }

    /// The value or default, or an error naming the variable.
    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| err(name, "is required"))
    }

    /// Parse the value with `FromStr`; `expected` describes it in errors.
    pub fn parsed<T: std::str::FromStr>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let text = self.required(name)?;
        text.trim()
            .parse()
            .map_err(|_| err(name, format!("expected {expected}, got {text:?}")))
    }

    /// A boolean (`true`/`True`/`1`, `false`/`False`/`0`).
    pub fn flag(&self, name: &str) -> Result<bool, ConfigError> {
        let text = self.required(name)?;
        match text.trim() {
            "true" | "True" | "TRUE" | "1" => Ok(true),
            "false" | "False" | "FALSE" | "0" => Ok(false),
            _ => Err(err(name, format!("expected true or false, got {text:?}"))),
        }
    }

    /// A duration in milliseconds, when set.
    pub fn millis(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => {
                let ms: u64 = self.parsed(name, "a number of milliseconds")?;
                Ok(Some(Duration::from_millis(ms)))
            }
        }
    }

    /// Read a value that may be `@path` (contents of the file, trailing
    /// newline trimmed).
    pub fn file_or_value(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            Some(v) => match v.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
                    .map_err(|e| err(name, format!("cannot read {path}: {e}"))),
                None => Ok(Some(v)),
            },
            None => Ok(None),
        }
    }
}

/// `n`, unless it is 0.
pub fn positive(n: usize, name: &str) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(err(name, "must be at least 1"))
    } else {
        Ok(n)
    }
}

/// Log output settings (`PGWS_LOG_FORMAT`, `PGWS_LOG_LEVEL`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Emit JSON lines instead of text.
    pub json: bool,
    /// The tracing filter.
    pub level: String,
}

impl LogConfig {
    /// Read `PGWS_LOG_FORMAT` and `PGWS_LOG_LEVEL`.
    pub fn from_sources(sources: &Sources) -> Result<LogConfig, ConfigError> {
        const FORMAT: &str = "PGWS_LOG_FORMAT";
        const LEVEL: &str = "PGWS_LOG_LEVEL";
        Ok(LogConfig {
            json: match sources.required(FORMAT)?.as_str() {
                "text" => false,
                "json" => true,
                other => return Err(err(FORMAT, format!("expected text or json, got {other:?}"))),
            },
            level: sources.required(LEVEL)?,
        })
    }
}

/// Parse a listen address from a host and a port variable; a port of `off`
/// (or `disabled`, `none`) means no listener.
pub fn listen_addr(
    sources: &Sources,
    host_var: &str,
    port_var: &str,
) -> Result<Option<ListenAddr>, ConfigError> {
    let port = sources.required(port_var)?;
    if matches!(port.trim(), "off" | "disabled" | "none") {
        return Ok(None);
    }
    Ok(Some(ListenAddr {
        host: Host::parse(host_var, &sources.required(host_var)?)?,
        port: sources.parsed(port_var, "a port number (0-65535) or off")?,
    }))
}

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
    log: impl FnOnce(&C) -> LogConfig,
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
