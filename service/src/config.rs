//! How both binaries read their `PGWS_*` settings.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file
//! (`--config`; keys are variable names without `PGWS_`, lower-cased), then
//! the environment. The merge is figment's; values are taken as text and
//! parsed by the caller through [`Sources`], so every error names the
//! variable. Each binary declares its own table of [`Var`]s with [`vars!`],
//! and reads its variables in one module of its own.

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

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
        pub const VARS: &[$crate::config::Var] = &[$($crate::config::Var { name: $name, default: $default, doc: $doc }),*];
    };
}

/// The variables of `vars` as `--help` lists them: name, default, meaning.
pub fn help_table(vars: &[Var]) -> String {
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut out = String::from("Environment variables (docs/configuration.md):\n");
    for var in vars {
        let default = var
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        out.push_str(&format!("  {:width$}  {}{default}\n", var.name, var.doc));
    }
    out
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

/// A [`ConfigError`] for `variable`.
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
