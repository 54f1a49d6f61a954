//! Where Redis is and how to reach it: one URL, a cluster's seed URLs, or
//! a Sentinel-managed master; TLS certificates for `rediss://`.
//!
//! A Sentinel deployment is named by one URL:
//!
//! ```text
//! redis+sentinel://[user[:password]@]sentinel1[:26379],sentinel2[:26379]/<master name>[/<db>]
//!     [?sentinel_username=…&sentinel_password=…]
//! ```
//!
//! `rediss+sentinel://` uses TLS to the sentinels and to the master. The
//! user and password in the URL are the data nodes' (the master's); the
//! sentinels' own credentials, when they have any, are the query
//! parameters.

use crate::config::{err, ConfigError, Sources};
use percent_encoding::percent_decode_str;
use pgws_protocol::keys::KeySpace;
use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;

/// The default Sentinel port.
pub const SENTINEL_PORT: u16 = 26379;

/// How the Redis nodes are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (or a proxy in front of a primary): `redis://…`.
    Single(String),
    /// A Redis Cluster, given by seed URLs.
    Cluster(Vec<String>),
    /// A master found through Sentinel.
    Sentinel(Box<SentinelSpec>),
}

/// A Sentinel-managed master.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSpec {
    /// The sentinels, `(host, port)`.
    pub sentinels: Vec<(String, u16)>,
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// TLS to sentinels and master (`rediss+sentinel://`).
    pub tls: bool,
    /// The data nodes' ACL user.
    pub username: Option<String>,
    /// The data nodes' password.
    pub password: Option<String>,
    /// The database number.
    pub db: i64,
    /// The sentinels' ACL user.
    pub sentinel_username: Option<String>,
    /// The sentinels' password.
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for SentinelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSpec")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("tls", &self.tls)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl SentinelSpec {
    /// The URL of one node (a sentinel, or the master at `host:port`).
    pub fn node_url(&self, host: &str, port: u16, sentinel: bool) -> String {
        let (user, password) = if sentinel {
            (&self.sentinel_username, &self.sentinel_password)
        } else {
            (&self.username, &self.password)
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (user, password) {
            (None, None) => String::new(),
            (user, password) => format!(
                "{}:{}@",
                encode(user.as_deref().unwrap_or("")),
                encode(password.as_deref().unwrap_or(""))
            ),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        if sentinel {
            format!("{scheme}://{auth}{host}:{port}")
        } else {
            format!("{scheme}://{auth}{host}:{port}/{}", self.db)
        }
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Certificate files for `rediss://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra trusted roots (PEM), added to the operating system's.
    pub ca: Option<PathBuf>,
    /// Trust only `ca`, not the operating system's roots
    /// (`PGWS_REDIS_CA_ONLY`): a publicly trusted certificate for a host a
    /// sentinel names then does not pass.
    pub ca_only: bool,
    /// A client certificate and its key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The nodes.
    pub topology: Topology,
    /// TLS material (used with `rediss://`).
    pub tls: TlsFiles,
}

/// Why the Redis settings are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisConfigError {
    /// The URL is not one.
    #[error("{0}")]
    Url(String),
    /// A certificate file is unusable.
    #[error("{0}")]
    Tls(String),
}

fn url_error(message: impl Into<String>) -> RedisConfigError {
    RedisConfigError::Url(message.into())
}

impl RedisConfig {
    /// Parse `PGWS_REDIS_URL` (one URL, comma-separated cluster seeds, or a
    /// `redis+sentinel://` URL) with the cluster flag and TLS files.
    pub fn parse(
        urls: &str,
        cluster: bool,
        tls: TlsFiles,
    ) -> Result<RedisConfig, RedisConfigError> {
        let trimmed = urls.trim();
        let topology = if let Some(rest) = trimmed
            .strip_prefix("redis+sentinel://")
            .map(|r| (r, false))
            .or_else(|| {
                trimmed
                    .strip_prefix("rediss+sentinel://")
                    .map(|r| (r, true))
            }) {
            if cluster {
                return Err(url_error(
                    "a Sentinel URL cannot be used with PGWS_REDIS_CLUSTER=true",
                ));
            }
            Topology::Sentinel(Box::new(parse_sentinel(rest.0, rest.1)?))
        } else {
            let list: Vec<String> = trimmed
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            if list.is_empty() {
                return Err(url_error("no URL given"));
            }
            for url in &list {
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    return Err(url_error(format!(
                        "not a redis://, rediss:// or redis+sentinel:// URL: {}",
                        redact(url)
                    )));
                }
                redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| url_error(format!("{}: {e}", redact(url))))?;
            }
            if cluster {
                Topology::Cluster(list)
            } else if list.len() > 1 {
                return Err(url_error(
                    "several URLs need PGWS_REDIS_CLUSTER=true (for Sentinel use one redis+sentinel:// URL)",
                ));
            } else {
                Topology::Single(list.into_iter().next().unwrap_or_default())
            }
        };
        let config = RedisConfig { topology, tls };
        if config.tls.ca_only && config.tls.ca.is_none() {
            return Err(RedisConfigError::Tls(
                "trusting only the given CA needs PGWS_REDIS_CA_FILE".into(),
            ));
        }
        if (config.tls.ca.is_some() || config.tls.client.is_some()) && !config.uses_tls() {
            return Err(RedisConfigError::Tls(
                "certificate files are set but the URL is not rediss:// (TLS would not be used)"
                    .into(),
            ));
        }
        // Read them once now, so a bad file stops start-up.
        config.certificates()?;
        Ok(config)
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        match &self.topology {
            Topology::Single(url) => url.starts_with("rediss://"),
            Topology::Cluster(urls) => urls.iter().any(|u| u.starts_with("rediss://")),
            Topology::Sentinel(spec) => spec.tls,
        }
    }

    /// The certificates to hand the client, read from the files now (so a
    /// rotated CA or client certificate is picked up at the next
    /// connection). `None` when only the system roots are needed.
    pub fn certificates(&self) -> Result<Option<TlsCertificates>, RedisConfigError> {
        if self.tls.ca.is_none() && self.tls.client.is_none() {
            return Ok(None);
        }
        let root_cert = match &self.tls.ca {
            None => None,
            Some(path) => Some(roots(path, !self.tls.ca_only)?),
        };
        let client_tls = match &self.tls.client {
            None => None,
            Some((cert, key)) => {
                let client_cert = std::fs::read(cert)
                    .map_err(|e| RedisConfigError::Tls(format!("{}: {e}", cert.display())))?;
                let client_key = std::fs::read(key)
                    .map_err(|e| RedisConfigError::Tls(format!("{}: {e}", key.display())))?;
                if CertificateDer::pem_slice_iter(&client_cert)
                    .next()
                    .is_none()
                {
                    return Err(RedisConfigError::Tls(format!(
                        "{}: no PEM certificate",
                        cert.display()
                    )));
                }
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                    RedisConfigError::Tls(format!(
                        "{}: {e} (an unencrypted PEM key is needed)",
                        key.display()
                    ))
                })?;
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// For logs: the nodes, without credentials.
    pub fn describe(&self) -> String {
        match &self.topology {
            Topology::Single(url) => redact(url),
            Topology::Cluster(urls) => {
                let list: Vec<String> = urls.iter().map(|u| redact(u)).collect();
                format!("cluster {}", list.join(","))
            }
            Topology::Sentinel(spec) => {
                let list: Vec<String> = spec
                    .sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect();
                format!(
                    "sentinel {} master {:?}{}",
                    list.join(","),
                    spec.master,
                    if spec.tls { " (TLS)" } else { "" }
                )
            }
        }
    }
}

/// The names of the Redis variables (the same in both binaries).
pub struct RedisVars {
    /// `PGWS_REDIS_URL`.
    pub url: &'static str,
    /// `PGWS_REDIS_CLUSTER`.
    pub cluster: &'static str,
    /// `PGWS_REDIS_CA_FILE`.
    pub ca_file: &'static str,
    /// `PGWS_REDIS_CA_ONLY`.
    pub ca_only: &'static str,
    /// `PGWS_REDIS_CERT_FILE`.
    pub cert_file: &'static str,
    /// `PGWS_REDIS_KEY_FILE`.
    pub key_file: &'static str,
    /// `PGWS_REDIS_PREFIX`.
    pub prefix: &'static str,
}

impl RedisVars {
    /// The names both binaries use.
    pub const STANDARD: RedisVars = RedisVars {
        url: "PGWS_REDIS_URL",
        cluster: "PGWS_REDIS_CLUSTER",
        ca_file: "PGWS_REDIS_CA_FILE",
        ca_only: "PGWS_REDIS_CA_ONLY",
        cert_file: "PGWS_REDIS_CERT_FILE",
        key_file: "PGWS_REDIS_KEY_FILE",
        prefix: "PGWS_REDIS_PREFIX",
    };

    /// Read the Redis settings; `None` when the URL variable is unset.
    /// Errors name the variable at fault.
    pub fn read(&self, sources: &Sources) -> Result<Option<RedisConfig>, ConfigError> {
        let Some(urls) = sources.get(self.url) else {
            return Ok(None);
        };
        let client = match (sources.get(self.cert_file), sources.get(self.key_file)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            _ => {
                return Err(err(
                    &format!("{}/{}", self.cert_file, self.key_file),
                    "both must be set for a client certificate, or neither",
                ))
            }
        };
        let tls = TlsFiles {
            ca: sources.get(self.ca_file).map(Into::into),
            ca_only: sources.flag(self.ca_only)?,
            client,
        };
        if tls.ca_only && tls.ca.is_none() {
            return Err(err(self.ca_only, format!("needs {}", self.ca_file)));
        }
        let blame = match (&tls.ca, &tls.client) {
            (Some(_), _) => self.ca_file,
            (None, Some(_)) => self.cert_file,
            _ => self.url,
        };
        RedisConfig::parse(&urls, sources.flag(self.cluster)?, tls)
            .map(Some)
            .map_err(|e| match e {
                RedisConfigError::Url(message) => err(self.url, message),
                RedisConfigError::Tls(message) => err(blame, message),
            })
    }

    /// The key layout under the prefix: non-empty, no braces (they are hash
    /// tags on a Redis Cluster).
    pub fn keys(&self, sources: &Sources) -> Result<KeySpace, ConfigError> {
        let prefix = sources.required(self.prefix)?;
        if prefix.contains(['{', '}']) || prefix.trim().is_empty() {
            return Err(err(self.prefix, "must be non-empty and contain no braces"));
        }
        Ok(KeySpace::new(&prefix))
    }
}

/// `url` with any password replaced.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The roots to hand the redis crate, which replaces the system roots when
/// it is given any: the file's, and with `system` the system's too.
fn roots(path: &std::path::Path, system: bool) -> Result<Vec<u8>, RedisConfigError> {
    let extra = std::fs::read(path)
        .map_err(|e| RedisConfigError::Tls(format!("{}: {e}", path.display())))?;
    let parsed: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&extra)
        .collect::<Result<_, _>>()
        .map_err(|e| RedisConfigError::Tls(format!("{}: {e}", path.display())))?;
    if parsed.is_empty() {
        return Err(RedisConfigError::Tls(format!(
            "{}: no PEM certificate",
            path.display()
        )));
    }
    let mut bundle = extra;
    bundle.push(b'\n');
    if !system {
        return Ok(bundle);
    }
    for cert in rustls_native_certs::load_native_certs().certs {
        bundle.extend_from_slice(&pem_certificate(cert.as_ref()));
    }
    Ok(bundle)
}

fn pem_certificate(der: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}

fn parse_sentinel(rest: &str, tls: bool) -> Result<SentinelSpec, RedisConfigError> {
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| url_error("invalid percent-encoding in the Sentinel URL"))
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').ok_or_else(|| {
        url_error("a Sentinel URL names the master: redis+sentinel://host:26379/<master>")
    })?;
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            let u = decode(u)?;
            let p = decode(p)?;
            ((!u.is_empty()).then_some(u), (!p.is_empty()).then_some(p))
        }
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let (name, port) = if let Some(v6) = host.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| url_error(format!("bad IPv6 sentinel address {host:?}")))?;
            (addr.to_string(), after.strip_prefix(':'))
        } else {
            match host.rsplit_once(':') {
                Some((n, p)) => (n.to_string(), Some(p)),
                None => (host.to_string(), None),
            }
        };
        let port = match port {
            None | Some("") => SENTINEL_PORT,
            Some(p) => p
                .parse()
                .map_err(|_| url_error(format!("bad sentinel port in {host:?}")))?,
        };
        sentinels.push((name, port));
    }
    if sentinels.is_empty() {
        return Err(url_error("a Sentinel URL needs at least one sentinel host"));
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = decode(parts.next().unwrap_or(""))?;
    if master.is_empty() {
        return Err(url_error(
            "a Sentinel URL names the master: redis+sentinel://host:26379/<master>",
        ));
    }
    let db = match parts.next() {
        None => 0,
        Some(n) => n
            .parse()
            .map_err(|_| url_error(format!("bad database number {n:?}")))?,
    };
    let mut spec = SentinelSpec {
        sentinels,
        master,
        tls,
        username,
        password,
        db,
        sentinel_username: None,
        sentinel_password: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sentinel_username" => spec.sentinel_username = Some(decode(v)?),
            "sentinel_password" => spec.sentinel_password = Some(decode(v)?),
            other => {
                return Err(url_error(format!(
                "unknown Sentinel URL parameter {other:?} (sentinel_username, sentinel_password)"
            )))
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisConfig, RedisConfigError> {
        RedisConfig::parse(url, false, TlsFiles::default())
    }

    #[test]
    fn single_cluster_and_errors() {
        assert_eq!(
            parse("redis://h:1").expect("single").topology,
            Topology::Single("redis://h:1".into())
        );
        let c = RedisConfig::parse("redis://a:1, redis://b:2", true, TlsFiles::default())
            .expect("cluster");
        assert_eq!(
            c.topology,
            Topology::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!(parse("http://x").is_err());
        assert!(
            parse("redis://a:1,redis://b:2").is_err(),
            "several without cluster"
        );
        assert!(parse("").is_err());
        assert!(parse("rediss://u:secret@h:6380").expect("tls").uses_tls());
    }

    #[test]
    fn sentinel_urls() {
        let c = parse(
            "redis+sentinel://app:p%40ss@s1,s2:26380,[::1]:7/mymaster/3?sentinel_password=sp",
        )
        .expect("sentinel");
        let Topology::Sentinel(spec) = &c.topology else {
            panic!("{:?}", c.topology)
        };
        assert_eq!(
            spec.sentinels,
            vec![
                ("s1".to_string(), SENTINEL_PORT),
                ("s2".to_string(), 26380),
                ("::1".to_string(), 7)
            ]
        );
        assert_eq!(spec.master, "mymaster");
        assert_eq!(spec.db, 3);
        assert_eq!(spec.username.as_deref(), Some("app"));
        assert_eq!(spec.password.as_deref(), Some("p@ss"));
        assert_eq!(spec.sentinel_password.as_deref(), Some("sp"));
        assert!(!spec.tls);
        assert_eq!(
            spec.node_url("10.0.0.5", 6379, false),
            "redis://app:p%40ss@10.0.0.5:6379/3"
        );
        assert_eq!(spec.node_url("s1", 26379, true), "redis://:sp@s1:26379");
        assert!(parse("rediss+sentinel://s1/m").expect("tls").uses_tls());
        for bad in [
            "redis+sentinel://s1",
            "redis+sentinel://s1/",
            "redis+sentinel:///m",
            "redis+sentinel://s1:x/m",
            "redis+sentinel://s1/m?password=x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(RedisConfig::parse("redis+sentinel://s/m", true, TlsFiles::default()).is_err());
    }

    #[test]
    fn certificate_files_need_tls_and_must_be_readable() {
        let files = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ca_only: false,
            client: None,
        };
        assert!(
            RedisConfig::parse("redis://h", false, files.clone()).is_err(),
            "not rediss"
        );
        let e = RedisConfig::parse("rediss://h", false, files).expect_err("missing file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("rediss://user:secret@h:1/0"),
            "rediss://user:***@h:1/0"
        );
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        let c = parse("redis+sentinel://u:secret@s1/m").expect("sentinel");
        assert!(!c.describe().contains("secret"));
    }

    /// `PGWS_REDIS_CA_ONLY`: the bundle handed to the client holds the
    /// file's roots and nothing else (the redis crate then trusts only
    /// those); without it the system's are added. It needs a CA file.
    #[test]
    fn trusting_only_the_given_ca_leaves_the_system_roots_out() {
        let dir = std::env::temp_dir().join(format!("pgws-ca-only-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let roots = |ca_only| {
            let files = TlsFiles {
                ca: Some(ca.clone()),
                ca_only,
                client: None,
            };
            let config = RedisConfig::parse("rediss+sentinel://s1/m", false, files).expect("parse");
            let bundle = config
                .certificates()
                .expect("read")
                .and_then(|c| c.root_cert)
                .expect("roots");
            String::from_utf8_lossy(&bundle)
                .matches("BEGIN CERTIFICATE")
                .count()
        };
        assert_eq!(roots(true), 1, "only the file's root");
        let system = rustls_native_certs::load_native_certs().certs.len();
        assert_eq!(roots(false), 1 + system, "the file's and the system's");
        let alone = TlsFiles {
            ca: None,
            ca_only: true,
            client: None,
        };
        let e = RedisConfig::parse("rediss://h", false, alone).expect_err("no CA file");
        assert!(e.to_string().contains("PGWS_REDIS_CA_FILE"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
