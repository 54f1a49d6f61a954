//! What a connection string means: libpq keywords and libpq's environment
//! defaults turned into a typed, validated [`PgConfig`].
//!
//! Precedence is libpq's: a keyword in the string, else its environment
//! variable (`PGHOST`, `PGSSLMODE`, …), else the built-in default. Keywords
//! that would change security and that we cannot honour (`sslcrl`,
//! `sslpassword`, `requirepeer`, `gssencmode=require`, `service`, …) are
//! refused with a message naming them, never silently ignored; keywords
//! that change nothing here (`sslcompression`, `krbsrvname`, …) are
//! accepted. An unknown keyword is an error, as in libpq.

use super::conninfo::{self, ConninfoError, Pairs};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the environment is read (the process environment in production, a
/// map in tests).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Why a connection string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The string does not parse.
    #[error(transparent)]
    Syntax(#[from] ConninfoError),
    /// A keyword libpq does not know.
    #[error("invalid connection option {0:?}")]
    Unknown(String),
    /// A keyword libpq knows and we cannot honour safely.
    #[error("{keyword}: {reason}")]
    Unsupported {
        /// The keyword.
        keyword: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A value out of its keyword's domain.
    #[error("invalid {keyword} value {value:?}: {expected}")]
    Invalid {
        /// The keyword.
        keyword: String,
        /// The value given.
        value: String,
        /// What it may be.
        expected: String,
    },
    /// A file the settings name cannot be used.
    #[error("{keyword}: {reason}")]
    File {
        /// The keyword naming the file.
        keyword: String,
        /// What is wrong.
        reason: String,
    },
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// Plain first; TLS if the server insists.
    Allow,
    /// TLS first; plain if TLS fails (libpq's default).
    Prefer,
    /// TLS; the chain is verified only when a root certificate is given.
    Require,
    /// TLS with a verified chain.
    VerifyCa,
    /// TLS with a verified chain and host name.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// None given (and no `~/.postgresql/root.crt`): nothing is verified.
    None,
    /// A PEM file (`sslrootcert=<file>`).
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// TLS settings, libpq's way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub roots: Roots,
    /// `sslcert` + `sslkey`, when a client certificate is presented.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `sslsni`: send the host name in the handshake.
    pub sni: bool,
    /// `ssl_max_protocol_version=TLSv1.2` (TLS 1.3 is used otherwise).
    pub tls12_only: bool,
    /// `ssl_min_protocol_version=TLSv1.3`.
    pub tls13_only: bool,
    /// `sslnegotiation=direct` (PostgreSQL 17): TLS without the SSLRequest.
    pub direct: bool,
}

impl TlsSettings {
    /// Whether the server's chain is checked against [`TlsSettings::roots`].
    pub fn verifies_chain(&self) -> bool {
        self.mode >= SslMode::VerifyCa || self.roots != Roots::None
    }
}

/// Where to connect: one entry of libpq's host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A host name or IP address, or a Unix socket directory.
    pub host: HostKind,
    /// `hostaddr`: the address to connect to, skipping name resolution.
    pub hostaddr: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

/// A TCP host or a socket directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// Name or address (used for TLS verification too).
    Tcp(String),
    /// A directory holding `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            HostKind::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            HostKind::Tcp(h) => write!(f, "{h}:{}", self.port),
            HostKind::Unix(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    /// Any server.
    Any,
    /// A server that accepts writes (`transaction_read_only = off`).
    ReadWrite,
    /// A server that refuses writes.
    ReadOnly,
    /// A server not in recovery.
    Primary,
    /// A server in recovery.
    Standby,
    /// A standby if there is one, else any.
    PreferStandby,
}

impl SessionAttrs {
    fn parse(value: &str) -> Option<SessionAttrs> {
        Some(match value {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// TCP keepalive settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalives {
    /// `keepalives` (default on).
    pub enabled: bool,
    /// `keepalives_idle` (default 30 s here: a vanished server is noticed
    /// within a minute, not after the kernel's two hours).
    pub idle: Duration,
    /// `keepalives_interval`.
    pub interval: Option<Duration>,
    /// `keepalives_count`.
    pub count: Option<u32>,
}

/// Everything needed to open connections to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// Hosts to try, in order.
    pub targets: Vec<Target>,
    /// `user`.
    pub user: String,
    /// `password` (or `PGPASSWORD`); else the password file is consulted.
    pub password: Option<String>,
    /// `passfile` (or `PGPASSFILE`, or `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// `dbname`.
    pub dbname: String,
    /// `options` (server settings, `-c name=value`).
    pub options: Option<String>,
    /// `application_name`: when set it wins over our own names.
    pub application_name: Option<String>,
    /// `connect_timeout`, per host.
    pub connect_timeout: Duration,
    /// `tcp_user_timeout`.
    pub tcp_user_timeout: Option<Duration>,
    /// `keepalives*`.
    pub keepalives: Keepalives,
    /// `target_session_attrs`.
    pub session_attrs: SessionAttrs,
    /// `load_balance_hosts=random`.
    pub load_balance: bool,
    /// `channel_binding`.
    pub channel_binding: ChannelBinding,
    /// `sslmode` and friends.
    pub tls: TlsSettings,
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the server and TLS allow it (default).
    Prefer,
    /// Always; fail otherwise.
    Require,
}

/// Default connect timeout when none is given (libpq waits forever; a
/// gateway must notice an unreachable host).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keywords and the environment variable that supplies their default.
const ENV_DEFAULTS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslnegotiation", "PGSSLNEGOTIATION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslsni", "PGSSLSNI"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("client_encoding", "PGCLIENTENCODING"),
];

/// Keywords that are read and acted on.
const SUPPORTED: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "options",
    "application_name",
    "fallback_application_name",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "target_session_attrs",
    "load_balance_hosts",
    "channel_binding",
    "client_encoding",
    "sslmode",
    "sslnegotiation",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

/// Keywords that change nothing for this program, accepted for
/// compatibility.
const IGNORED: &[&str] = &[
    "sslcompression",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "sslkeylogfile",
    "min_protocol_version",
    "max_protocol_version",
];

/// Keywords refused unless given their harmless value.
fn refused(keyword: &str, value: &str) -> Option<&'static str> {
    let harmless = value.is_empty();
    Some(match keyword {
        "gssencmode" if matches!(value, "disable" | "prefer") => return None,
        "gssencmode" => "GSSAPI encryption is not supported: use TLS (sslmode) instead",
        "sslcertmode" if matches!(value, "allow" | "disable") => return None,
        "sslcertmode" => "sslcertmode=require is not supported",
        "replication" if matches!(value, "" | "0" | "false" | "off" | "no") => return None,
        "replication" => "replication connections are not used by this program",
        "sslcrl" | "sslcrldir" if harmless => return None,
        "sslcrl" | "sslcrldir" => {
            "certificate revocation lists are not supported: rotate the server certificate instead"
        }
        "sslpassword" if harmless => return None,
        "sslpassword" => {
            "encrypted client keys are not supported: give sslkey an unencrypted PEM key"
        }
        "requirepeer" if harmless => return None,
        "requirepeer" => "requirepeer is not supported",
        "require_auth" if harmless => return None,
        "require_auth" => "require_auth is not supported",
        "service" | "servicefile" if harmless => return None,
        "service" | "servicefile" => {
            "connection service files are not supported: put the settings in the connection string"
        }
        "scram_client_key" | "scram_server_key" if harmless => return None,
        "scram_client_key" | "scram_server_key" => "SCRAM pass-through keys are not supported",
        _ => return None,
    })
}

fn is_known(keyword: &str) -> bool {
    SUPPORTED.contains(&keyword)
        || IGNORED.contains(&keyword)
        || matches!(
            keyword,
            "gssencmode"
                | "sslcertmode"
                | "replication"
                | "sslcrl"
                | "sslcrldir"
                | "sslpassword"
                | "requirepeer"
                | "require_auth"
                | "service"
                | "servicefile"
                | "scram_client_key"
                | "scram_server_key"
        )
}

/// The settings after precedence: the string's last word on a keyword,
/// else the environment.
struct Settings<'a> {
    pairs: Pairs,
    env: Env<'a>,
}

impl Settings<'_> {
    fn get(&self, keyword: &str) -> Option<String> {
        if let Some((_, v)) = self.pairs.iter().rev().find(|(k, _)| k == keyword) {
            return Some(v.clone());
        }
        ENV_DEFAULTS
            .iter()
            .find(|(k, _)| *k == keyword)
            .and_then(|(_, var)| (self.env)(var))
    }

    /// Set and not empty.
    fn value(&self, keyword: &str) -> Option<String> {
        self.get(keyword).filter(|v| !v.is_empty())
    }

    fn given_in_string(&self, keyword: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == keyword)
    }

    fn home(&self) -> Option<PathBuf> {
        (self.env)("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
    }
}

fn invalid(keyword: &str, value: &str, expected: &str) -> OptionsError {
    OptionsError::Invalid {
        keyword: keyword.into(),
        value: value.into(),
        expected: expected.into(),
    }
}

fn seconds(s: &Settings<'_>, keyword: &str) -> Result<Option<Duration>, OptionsError> {
    let Some(v) = s.value(keyword) else {
        return Ok(None);
    };
    v.trim()
        .parse::<u64>()
        .map(|n| Some(Duration::from_secs(n)))
        .map_err(|_| invalid(keyword, &v, "a whole number of seconds"))
}

fn boolean(s: &Settings<'_>, keyword: &str, default: bool) -> Result<bool, OptionsError> {
    match s.value(keyword).as_deref() {
        None => Ok(default),
        Some("1" | "on" | "true" | "yes") => Ok(true),
        Some("0" | "off" | "false" | "no") => Ok(false),
        Some(other) => Err(invalid(keyword, other, "0 or 1")),
    }
}

impl PgConfig {
    /// Parse a libpq connection string, taking defaults from `env`.
    pub fn parse(text: &str, env: Env<'_>) -> Result<PgConfig, OptionsError> {
        let pairs = conninfo::parse(text)?;
        for (keyword, value) in &pairs {
            if !is_known(keyword) {
                return Err(OptionsError::Unknown(keyword.clone()));
            }
            if let Some(reason) = refused(keyword, value) {
                return Err(OptionsError::Unsupported {
                    keyword: keyword.clone(),
                    reason: reason.into(),
                });
            }
        }
        let s = Settings { pairs, env };
        let user = s.value("user").or_else(|| os_user(env)).ok_or_else(|| {
            invalid(
                "user",
                "",
                "required: no user given and none could be found",
            )
        })?;
        let keepalives = Keepalives {
            enabled: boolean(&s, "keepalives", true)?,
            idle: seconds(&s, "keepalives_idle")?.unwrap_or(Duration::from_secs(30)),
            interval: seconds(&s, "keepalives_interval")?,
            count: match s.value("keepalives_count") {
                None => None,
                Some(v) => Some(
                    v.trim()
                        .parse()
                        .map_err(|_| invalid("keepalives_count", &v, "a whole number"))?,
                ),
            },
        };
        if let Some(encoding) = s.value("client_encoding") {
            if !matches!(
                encoding.to_ascii_lowercase().as_str(),
                "utf8" | "utf-8" | "unicode" | "auto"
            ) {
                return Err(invalid(
                    "client_encoding",
                    &encoding,
                    "UTF8 (websocket messages are UTF-8)",
                ));
            }
        }
        let tls = tls_settings(&s)?;
        Ok(PgConfig {
            targets: targets(&s)?,
            dbname: s.value("dbname").unwrap_or_else(|| user.clone()),
            user,
            password: s.get("password").filter(|p| !p.is_empty()),
            passfile: s
                .value("passfile")
                .map(PathBuf::from)
                .or_else(|| s.home().map(|h| h.join(".pgpass"))),
            options: s.value("options"),
            application_name: s.value("application_name"),
            connect_timeout: match seconds(&s, "connect_timeout")? {
                // libpq: 0 (or unset) waits forever; 1 is raised to 2.
                None | Some(Duration::ZERO) => DEFAULT_CONNECT_TIMEOUT,
                Some(d) => d.max(Duration::from_secs(2)),
            },
            tcp_user_timeout: match s.value("tcp_user_timeout") {
                None => None,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(0) => None,
                    Ok(ms) => Some(Duration::from_millis(ms)),
                    Err(_) => return Err(invalid("tcp_user_timeout", &v, "milliseconds")),
                },
            },
            keepalives,
            session_attrs: match s.value("target_session_attrs") {
                None => SessionAttrs::Any,
                Some(v) => SessionAttrs::parse(&v).ok_or_else(|| {
                    invalid(
                        "target_session_attrs",
                        &v,
                        "any, read-write, read-only, primary, standby or prefer-standby",
                    )
                })?,
            },
            load_balance: match s.value("load_balance_hosts").as_deref() {
                None | Some("disable") => false,
                Some("random") => true,
                Some(other) => {
                    return Err(invalid("load_balance_hosts", other, "disable or random"))
                }
            },
            channel_binding: match s.value("channel_binding").as_deref() {
                None | Some("prefer") => ChannelBinding::Prefer,
                Some("disable") => ChannelBinding::Disable,
                Some("require") => ChannelBinding::Require,
                Some(other) => {
                    return Err(invalid(
                        "channel_binding",
                        other,
                        "disable, prefer or require",
                    ))
                }
            },
            tls,
        })
    }

    /// A one-line description for logs: where, as whom, how (no password).
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.targets.iter().map(Target::to_string).collect();
        format!(
            "host={} dbname={} user={} sslmode={} target_session_attrs={}",
            hosts.join(","),
            self.dbname,
            self.user,
            self.tls.mode.as_str(),
            self.session_attrs.as_str()
        )
    }
}

/// The OS user name, libpq's default `user`.
fn os_user(env: Env<'_>) -> Option<String> {
    if let Some(name) = ["USER", "LOGNAME"]
        .iter()
        .find_map(|var| env(var).filter(|n| !n.is_empty()))
    {
        return Some(name);
    }
    // SAFETY: getpwuid returns a pointer into static storage or null; the
    // name is copied out before anything else can call it on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

/// libpq's default socket directory when no host is given.
fn default_socket_dir() -> HostKind {
    for dir in ["/var/run/postgresql", "/tmp"] {
        if std::path::Path::new(dir).join(".s.PGSQL.5432").exists() {
            return HostKind::Unix(PathBuf::from(dir));
        }
    }
    HostKind::Tcp("localhost".into())
}

fn targets(s: &Settings<'_>) -> Result<Vec<Target>, OptionsError> {
    let list = |keyword: &str| -> Vec<String> {
        s.get(keyword)
            .map(|v| v.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default()
    };
    let hosts = list("host");
    let addrs = list("hostaddr");
    let ports = list("port");
    let count = hosts.len().max(addrs.len()).max(1);
    for (keyword, n) in [("hostaddr", addrs.len()), ("host", hosts.len())] {
        if n > 1 && n != count {
            return Err(invalid(
                keyword,
                &s.get(keyword).unwrap_or_default(),
                &format!("{count} comma-separated entries, one per host"),
            ));
        }
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(invalid(
            "port",
            &s.get("port").unwrap_or_default(),
            "a single port, or one per host",
        ));
    }
    (0..count)
        .map(|i| {
            let hostaddr = match addrs.get(i).filter(|a| !a.is_empty()) {
                None => None,
                Some(a) => Some(
                    a.parse::<IpAddr>()
                        .map_err(|_| invalid("hostaddr", a, "an IP address"))?,
                ),
            };
            let host = match hosts.get(i).filter(|h| !h.is_empty()) {
                Some(h) if h.starts_with('/') => HostKind::Unix(PathBuf::from(h)),
                Some(h) => HostKind::Tcp(h.clone()),
                // hostaddr alone: the address is also what TLS verifies.
                None => match hostaddr {
                    Some(ip) => HostKind::Tcp(ip.to_string()),
                    None => default_socket_dir(),
                },
            };
            let port_text = ports
                .get(i)
                .or(ports.first())
                .filter(|p| !p.is_empty())
                .map(String::as_str)
                .unwrap_or("5432");
            let port = port_text
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("port", port_text, "a port number"))?;
            Ok(Target {
                host,
                hostaddr,
                port,
            })
        })
        .collect()
}

fn tls_settings(s: &Settings<'_>) -> Result<TlsSettings, OptionsError> {
    let home_file = |name: &str| {
        s.home()
            .map(|h| h.join(".postgresql").join(name))
            .filter(|p| p.is_file())
    };
    let explicit_mode = match s.value("sslmode") {
        Some(v) => Some(SslMode::parse(&v).ok_or_else(|| {
            invalid(
                "sslmode",
                &v,
                "disable, allow, prefer, require, verify-ca or verify-full",
            )
        })?),
        // The deprecated requiressl=1 means sslmode=require.
        None if s.value("requiressl").as_deref() == Some("1") => Some(SslMode::Require),
        None => None,
    };
    let roots = match s.value("sslrootcert") {
        Some(v) if v == "system" => Roots::System,
        Some(v) => {
            let path = PathBuf::from(&v);
            if !path.is_file() {
                return Err(OptionsError::File {
                    keyword: "sslrootcert".into(),
                    reason: format!("root certificate file {v:?} does not exist"),
                });
            }
            Roots::File(path)
        }
        None => home_file("root.crt").map_or(Roots::None, Roots::File),
    };
    let mode = match (explicit_mode, &roots) {
        // libpq 16: the system store only makes sense with host names checked.
        (None, Roots::System) => SslMode::VerifyFull,
        (Some(m), Roots::System) if m != SslMode::VerifyFull && m != SslMode::Disable => {
            return Err(invalid(
                "sslmode",
                m.as_str(),
                "verify-full with sslrootcert=system (weaker modes would not check the host name)",
            ))
        }
        (Some(m), _) => m,
        (None, _) => SslMode::Prefer,
    };
    if mode >= SslMode::VerifyCa && roots == Roots::None {
        return Err(OptionsError::File {
            keyword: "sslrootcert".into(),
            reason: format!(
                "sslmode={} needs the CA that signed the server's certificate: give sslrootcert=<PEM file>, or sslrootcert=system for the operating system's trusted roots",
                mode.as_str()
            ),
        });
    }
    let explicit_file = |keyword: &str| -> Result<Option<PathBuf>, OptionsError> {
        match s.value(keyword) {
            None => Ok(None),
            Some(v) => {
                let path = PathBuf::from(&v);
                if path.is_file() {
                    Ok(Some(path))
                } else {
                    Err(OptionsError::File {
                        keyword: keyword.into(),
                        reason: format!("file {v:?} does not exist"),
                    })
                }
            }
        }
    };
    // libpq's defaults are ~/.postgresql/postgresql.crt and .key, used
    // when both exist; a file named explicitly must exist.
    let cert = explicit_file("sslcert")?.or_else(|| home_file("postgresql.crt"));
    let key = explicit_file("sslkey")?.or_else(|| home_file("postgresql.key"));
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ if s.value("sslcert").is_some() || s.value("sslkey").is_some() => {
            return Err(OptionsError::File {
                keyword: "sslcert/sslkey".into(),
                reason: "a client certificate needs both sslcert and sslkey".into(),
            })
        }
        _ => None,
    };
    let version = |keyword: &str| -> Result<Option<String>, OptionsError> {
        match s.value(keyword) {
            None => Ok(None),
            Some(v) if matches!(v.as_str(), "TLSv1" | "TLSv1.1" | "TLSv1.2" | "TLSv1.3") => {
                Ok(Some(v))
            }
            Some(v) => Err(invalid(keyword, &v, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
        }
    };
    let min = version("ssl_min_protocol_version")?;
    let max = version("ssl_max_protocol_version")?;
    if matches!(max.as_deref(), Some("TLSv1" | "TLSv1.1")) {
        return Err(invalid(
            "ssl_max_protocol_version",
            max.as_deref().unwrap_or_default(),
            "TLSv1.2 or TLSv1.3 (older versions are not supported)",
        ));
    }
    let tls12_only = max.as_deref() == Some("TLSv1.2");
    let tls13_only = min.as_deref() == Some("TLSv1.3");
    if tls12_only && tls13_only {
        return Err(invalid(
            "ssl_min_protocol_version",
            "TLSv1.3",
            "not above ssl_max_protocol_version",
        ));
    }
    let direct = match s.value("sslnegotiation").as_deref() {
        None | Some("postgres") => false,
        Some("direct") => true,
        Some(other) => return Err(invalid("sslnegotiation", other, "postgres or direct")),
    };
    if direct && mode < SslMode::Require && s.given_in_string("sslnegotiation") {
        return Err(invalid(
            "sslmode",
            mode.as_str(),
            "require or stronger with sslnegotiation=direct",
        ));
    }
    Ok(TlsSettings {
        mode,
        roots,
        client_cert,
        sni: boolean(s, "sslsni", true)?,
        tls12_only,
        tls13_only,
        direct,
    })
}

#[cfg(test)]
mod tests;
