//! Opening one connection the way libpq would: the hosts in order (or
//! shuffled with `load_balance_hosts=random`), each with its own password
//! from the password file, libpq's `allow`/`prefer` fallbacks, and
//! `target_session_attrs` checked before the connection is handed over.

use super::options::{ChannelBinding, HostKind, PgConfig, SessionAttrs, SslMode, Target};
use super::{passfile, tls};
use std::future::Future;
use std::task::Poll;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS-or-plain stream under every connection.
pub type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// A connection's driver: it must be polled (spawned, or polled for
/// messages) for its [`Client`] to make progress.
pub type Connection = tokio_postgres::Connection<Socket, Stream>;

/// Why one host could not be used.
#[derive(Debug)]
pub enum Cause {
    /// PostgreSQL (or the network, or TLS) refused.
    Postgres(tokio_postgres::Error),
    /// Connected, but the server is not what `target_session_attrs` asks.
    WrongRole(&'static str),
    /// The TLS configuration could not be built (a file went missing).
    Tls(tls::TlsConfigError),
    /// The connection ended before it was ready.
    Closed,
    /// No answer within `connect_timeout`.
    Timeout,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Postgres(e) => f.write_str(&error_chain(e)),
            Cause::WrongRole(why) => f.write_str(why),
            Cause::Tls(e) => write!(f, "{e}"),
            Cause::Closed => f.write_str("the server closed the connection"),
            Cause::Timeout => f.write_str("no answer within connect_timeout"),
        }
    }
}

/// Every host failed; each attempt's reason, in order.
#[derive(Debug)]
pub struct ConnectError {
    /// `(host, why)` per attempt.
    pub attempts: Vec<(String, Cause)>,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (host, cause)) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{host}: {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {}

/// `error: cause: cause…` — tokio-postgres' own `Display` stops at the
/// first level ("error performing TLS handshake"), which names no cause.
/// A refused certificate also gets a plain-words explanation.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut hint = None;
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            hint = hint.or_else(|| tls::explain(r));
        }
        if let Some(r) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            hint = hint.or_else(|| tls::explain(r));
        }
        source = e.source();
    }
    if let Some(hint) = hint {
        text.push_str(" (");
        text.push_str(hint);
        text.push(')');
    }
    text
}

/// Open one connection named `app_name` (unless the settings name one).
pub async fn connect(
    config: &PgConfig,
    app_name: &str,
) -> Result<(Client, Connection), ConnectError> {
    let mut order: Vec<&Target> = config.targets.iter().collect();
    if config.load_balance {
        shuffle(&mut order);
    }
    let passes = match config.session_attrs {
        // First a standby anywhere; failing that, any server.
        SessionAttrs::PreferStandby => vec![SessionAttrs::Standby, SessionAttrs::Any],
        attrs => vec![attrs],
    };
    let mut attempts = Vec::new();
    for attrs in passes {
        for target in &order {
            match connect_target(config, target, app_name, attrs).await {
                Ok(pair) => return Ok(pair),
                Err(cause) => attempts.push((target.to_string(), cause)),
            }
        }
    }
    Err(ConnectError { attempts })
}

fn shuffle<T>(items: &mut [T]) {
    use std::hash::{BuildHasher, RandomState};
    for i in (1..items.len()).rev() {
        let j = (RandomState::new().hash_one(i) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The TLS attempts libpq makes, in order, for `mode`.
fn tls_attempts(mode: SslMode, unix: bool) -> &'static [tokio_postgres::config::SslMode] {
    use tokio_postgres::config::SslMode as Wire;
    if unix {
        // PostgreSQL has no TLS over Unix sockets; libpq connects plainly.
        return &[Wire::Disable];
    }
    match mode {
        SslMode::Disable => &[Wire::Disable],
        SslMode::Allow => &[Wire::Disable, Wire::Require],
        SslMode::Prefer => &[Wire::Prefer, Wire::Disable],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[Wire::Require],
    }
}

/// Whether libpq would retry the next way after `error` (the server said
/// no, or TLS failed) rather than give up on the host (unreachable).
fn worth_a_fallback(error: &tokio_postgres::Error) -> bool {
    if error.as_db_error().is_some() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return true;
        }
        source = e.source();
    }
    error
        .to_string()
        .starts_with("error performing TLS handshake")
}

async fn connect_target(
    config: &PgConfig,
    target: &Target,
    app_name: &str,
    attrs: SessionAttrs,
) -> Result<(Client, Connection), Cause> {
    let base = wire_config(config, target, app_name);
    let unix = matches!(target.host, HostKind::Unix(_));
    let tls = tls::client_config(&config.tls).map_err(Cause::Tls)?;
    let attempts = tls_attempts(config.tls.mode, unix);
    let mut last = None;
    for (i, &mode) in attempts.iter().enumerate() {
        let mut wire = base.clone();
        wire.ssl_mode(mode);
        let attempt = tokio::time::timeout(
            config.connect_timeout + std::time::Duration::from_secs(1),
            wire.connect(MakeRustlsConnect::new(tls.clone())),
        )
        .await;
        match attempt {
            Err(_) => return Err(Cause::Timeout),
            Ok(Ok((client, mut connection))) => {
                check_attrs(&client, &mut connection, attrs, config.connect_timeout).await?;
                return Ok((client, connection));
            }
            Ok(Err(e)) => {
                let retry = i + 1 < attempts.len() && worth_a_fallback(&e);
                last = Some(e);
                if !retry {
                    break;
                }
            }
        }
    }
    Err(last.map_or(Cause::Closed, Cause::Postgres))
}

/// The single-host tokio-postgres configuration for `target`.
fn wire_config(config: &PgConfig, target: &Target, app_name: &str) -> tokio_postgres::Config {
    let mut wire = tokio_postgres::Config::new();
    let passfile_host = match &target.host {
        HostKind::Tcp(host) => {
            wire.host(host);
            host.clone()
        }
        HostKind::Unix(dir) => {
            wire.host_path(dir);
            // libpq looks up "localhost" for its default socket directory.
            if dir.as_os_str() == "/var/run/postgresql" || dir.as_os_str() == "/tmp" {
                "localhost".to_string()
            } else {
                dir.display().to_string()
            }
        }
    };
    if let Some(addr) = target.hostaddr {
        wire.hostaddr(addr);
    }
    wire.port(target.port)
        .user(&config.user)
        .dbname(&config.dbname)
        .application_name(config.application_name.as_deref().unwrap_or(app_name))
        .connect_timeout(config.connect_timeout)
        .keepalives(config.keepalives.enabled)
        .keepalives_idle(config.keepalives.idle)
        .channel_binding(match config.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    if config.tls.direct {
        wire.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    }
    if let Some(interval) = config.keepalives.interval {
        wire.keepalives_interval(interval);
    }
    if let Some(count) = config.keepalives.count {
        wire.keepalives_retries(count);
    }
    if let Some(timeout) = config.tcp_user_timeout {
        wire.tcp_user_timeout(timeout);
    }
    if let Some(options) = &config.options {
        wire.options(options);
    }
    let password = config.password.clone().or_else(|| {
        let file = config.passfile.as_deref()?;
        passfile::find(
            file,
            passfile::Lookup {
                host: &passfile_host,
                port: target.port,
                dbname: &config.dbname,
                user: &config.user,
            },
        )
    });
    if let Some(password) = password {
        wire.password(password);
    }
    wire
}

/// Refuse a server that is not what `attrs` asks for.
async fn check_attrs(
    client: &Client,
    connection: &mut Connection,
    attrs: SessionAttrs,
    timeout: std::time::Duration,
) -> Result<(), Cause> {
    let (sql, wanted, refusal) = match attrs {
        SessionAttrs::Any | SessionAttrs::PreferStandby => return Ok(()),
        SessionAttrs::ReadWrite => (
            "SHOW transaction_read_only",
            "off",
            "the server is read-only (target_session_attrs=read-write)",
        ),
        SessionAttrs::ReadOnly => (
            "SHOW transaction_read_only",
            "on",
            "the server accepts writes (target_session_attrs=read-only)",
        ),
        SessionAttrs::Primary => (
            "SELECT pg_is_in_recovery()",
            "f",
            "the server is a standby (target_session_attrs=primary)",
        ),
        SessionAttrs::Standby => (
            "SELECT pg_is_in_recovery()",
            "t",
            "the server is not a standby (target_session_attrs=standby)",
        ),
    };
    let answer = tokio::time::timeout(timeout, drive(client.simple_query(sql), connection))
        .await
        .map_err(|_| Cause::Timeout)??
        .map_err(Cause::Postgres)?;
    let value = answer.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    if value.as_deref() == Some(wanted) {
        Ok(())
    } else {
        Err(Cause::WrongRole(refusal))
    }
}

/// Await `future` while polling `connection` (a query only progresses
/// while its connection is driven).
pub async fn drive<F: Future>(future: F, connection: &mut Connection) -> Result<F::Output, Cause> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| loop {
        match connection.poll_message(cx) {
            Poll::Ready(Some(Ok(_))) => continue, // notices: nothing to do yet
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Cause::Postgres(e))),
            Poll::Ready(None) => return Poll::Ready(Err(Cause::Closed)),
            Poll::Pending => return future.as_mut().poll(cx).map(Ok),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode as Wire;

    #[test]
    fn libpq_fallbacks_by_mode() {
        assert_eq!(
            tls_attempts(SslMode::Prefer, false),
            &[Wire::Prefer, Wire::Disable]
        );
        assert_eq!(
            tls_attempts(SslMode::Allow, false),
            &[Wire::Disable, Wire::Require]
        );
        assert_eq!(tls_attempts(SslMode::VerifyFull, false), &[Wire::Require]);
        assert_eq!(tls_attempts(SslMode::VerifyFull, true), &[Wire::Disable]);
    }

    #[test]
    fn the_error_chain_names_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error performing TLS handshake")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let inner = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let text = error_chain(&Outer(inner));
        assert!(
            text.starts_with("error performing TLS handshake: invalid peer certificate"),
            "{text}"
        );
        assert!(text.contains("not signed by a CA in sslrootcert"), "{text}");
    }
}
