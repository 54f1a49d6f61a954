//! The handle itself: connecting by topology, sharded pub/sub on a
//! cluster, and the `ConnectionLike` that makes commands, pipelines and
//! scripts run on every kind unchanged.

use super::config::{RedisConfig, Topology};
use super::push::{push_sender, PushHandler};
use super::sentinel::{self, SentinelConnection};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisError, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// A connected handle; cheap to clone (clones share the connection).
#[derive(Clone)]
pub enum RedisClient {
    /// A single Redis (or a primary behind a proxy).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The master named by Sentinel.
    Sentinel(SentinelConnection),
}

/// How long a command may take. Blocking reads pass their own, longer one.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

fn resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl RedisClient {
    /// Connect; pub/sub messages go to the `pushes` handler when given. `response_timeout`
    /// `None` allows blocking commands (`XREAD BLOCK`).
    pub async fn connect(
        config: &RedisConfig,
        pushes: Option<PushHandler>,
        response_timeout: Option<Duration>,
    ) -> RedisResult<RedisClient> {
        let certificates = config.certificates().map_err(|e| {
            RedisError::from((redis::ErrorKind::InvalidClientConfig, "TLS", e.to_string()))
        })?;
        match &config.topology {
            Topology::Cluster(urls) => {
                let urls: Vec<String> = urls.iter().map(|u| resp3(u)).collect();
                let mut builder = ClusterClientBuilder::new(urls)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .connection_timeout(Duration::from_secs(2))
                    .retries(2)
                    .response_timeout(response_timeout.unwrap_or(Duration::from_secs(3600)));
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                if let Some(handler) = pushes {
                    builder = builder.push_sender(push_sender(handler));
                }
                let client = builder.build()?;
                Ok(RedisClient::Cluster(client.get_async_connection().await?))
            }
            Topology::Single(url) => {
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(resp3(url), certs)?,
                    None => redis::Client::open(resp3(url))?,
                };
                let manager = manager_config(pushes, response_timeout);
                Ok(RedisClient::Single(
                    client.get_connection_manager_with_config(manager).await?,
                ))
            }
            Topology::Sentinel(spec) => {
                let recipe = sentinel::Recipe {
                    spec: (**spec).clone(),
                    certificates,
                    manager: manager_config(pushes.clone(), response_timeout),
                    pushes,
                };
                Ok(RedisClient::Sentinel(
                    SentinelConnection::connect(recipe).await?,
                ))
            }
        }
    }

    /// Behind Sentinel, the master in use (`host:port`); `None` otherwise.
    /// It changes when the handle follows a failover.
    pub fn master(&self) -> Option<String> {
        match self {
            RedisClient::Sentinel(s) => Some(s.master()),
            _ => None,
        }
    }

    /// This handle fixed to the master in use now, with that master's
    /// address (behind Sentinel; any other handle is returned as it is,
    /// with `None`). What is sent on it reaches that master or fails: a
    /// writer that decided what to write for one master (the publisher's
    /// continuity) cannot have it land, after a failover, on another.
    pub fn pinned(&self) -> (Option<String>, RedisClient) {
        match self {
            RedisClient::Sentinel(s) => {
                let (master, manager) = s.pinned();
                (Some(master), RedisClient::Single(manager))
            }
            other => (None, other.clone()),
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster(_))
    }

    /// Subscribe to `channels` (sharded on a cluster, one call per channel:
    /// channels in different slots cannot share an `SSUBSCRIBE`).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            RedisClient::Single(c) => c.subscribe(channels).await,
            RedisClient::Sentinel(c) => c.subscribe(channels).await,
            RedisClient::Cluster(c) => {
                for channel in channels {
                    c.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// Unsubscribe from `channels`.
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            RedisClient::Single(c) => c.unsubscribe(channels).await,
            RedisClient::Sentinel(c) => c.unsubscribe(channels).await,
            RedisClient::Cluster(c) => {
                for channel in channels {
                    c.sunsubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// The command that publishes to a channel: `SPUBLISH` (sharded) on a
    /// cluster, `PUBLISH` otherwise.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

/// A Redis error for a log line, with a plain-words hint when a
/// certificate was refused (the redis crate reports rustls' terse name).
pub fn describe_error(error: &RedisError) -> String {
    let text = error.to_string();
    let hint = if text.contains("UnknownIssuer") {
        Some("the server's certificate is not signed by a CA in PGWS_REDIS_CA_FILE or the system's roots")
    } else if text.contains("NotValidForName") {
        Some("the server's certificate does not name the host in PGWS_REDIS_URL")
    } else if text.contains("Expired") && text.contains("certificate") {
        Some("the server's certificate has expired")
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

/// The connection manager's settings for a single node (or the master).
fn manager_config(
    pushes: Option<PushHandler>,
    response_timeout: Option<Duration>,
) -> ConnectionManagerConfig {
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    match pushes {
        Some(handler) => manager
            .set_push_sender(push_sender(handler))
            .set_automatic_resubscription(),
        None => manager,
    }
}

/// The channel and payload of a pub/sub push message, if it is one.
pub fn message_of(push: &PushInfo) -> Option<(&[u8], &[u8])> {
    use redis::PushKind;
    if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
        return None;
    }
    match push.data.as_slice() {
        [Value::BulkString(channel), Value::BulkString(payload)] => Some((channel, payload)),
        _ => None,
    }
}

impl ConnectionLike for RedisClient {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisClient::Single(c) => c.req_packed_command(cmd),
            RedisClient::Cluster(c) => c.req_packed_command(cmd),
            RedisClient::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisClient::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisClient::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisClient::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisClient::Single(c) => c.get_db(),
            RedisClient::Cluster(c) => c.get_db(),
            RedisClient::Sentinel(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_switched_to_resp3() {
        assert_eq!(resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            resp3("redis://h:1/0?x=y"),
            "redis://h:1/0?x=y&protocol=resp3"
        );
        assert_eq!(
            resp3("redis://h?protocol=resp3"),
            "redis://h?protocol=resp3"
        );
    }
}
