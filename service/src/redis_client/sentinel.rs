//! A connection to a Sentinel-managed master that follows failovers.
//!
//! The redis crate's connection manager reconnects to the address it was
//! built for; after a failover that address is dead, or worse, alive as a
//! replica that accepts subscriptions and never delivers a message. So a
//! watcher asks the sentinels for the master's address every
//! [`WATCH_EVERY`]; when it changes, it connects to the new master (which
//! must answer `ROLE` as a master), swaps the handle every clone uses, and
//! tells the push receiver with a `Disconnection` push, so subscribers
//! re-subscribe on the new master. The watcher ends with the last clone.

use super::config::SentinelSpec;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    Cmd, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// How often the sentinels are asked where the master is.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long one question to a sentinel may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connection needs to be rebuilt after a failover.
#[derive(Clone)]
pub struct Recipe {
    /// The deployment.
    pub spec: SentinelSpec,
    /// Certificates for `rediss+sentinel://`.
    pub certificates: Option<TlsCertificates>,
    /// The connection manager's settings (timeouts, push sender).
    pub manager: ConnectionManagerConfig,
    /// Where pushes go, to announce a switch.
    pub pushes: Option<super::push::PushHandler>,
}

struct Current {
    manager: ConnectionManager,
    master: (String, u16),
}

struct Shared {
    current: RwLock<Current>,
}

/// A master connection that follows Sentinel; cheap to clone.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

impl SentinelConnection {
    /// Find the master, connect, and start following it.
    pub async fn connect(recipe: Recipe) -> RedisResult<SentinelConnection> {
        let mut sentinels = Sentinels::new(&recipe);
        let master = sentinels.master().await?;
        let manager = connect_master(&recipe, &master).await?;
        tracing::info!(master = %format!("{}:{}", master.0, master.1), name = %recipe.spec.master, "connected to the Redis master named by Sentinel");
        let shared = Arc::new(Shared {
            current: RwLock::new(Current { manager, master }),
        });
        tokio::spawn(watch(Arc::downgrade(&shared), sentinels, recipe));
        Ok(SentinelConnection { shared })
    }

    fn manager(&self) -> ConnectionManager {
        self.shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .manager
            .clone()
    }

    /// The master in use, `host:port`.
    pub fn master(&self) -> String {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner());
        format!("{}:{}", current.master.0, current.master.1)
    }

    /// Subscribe on the current master.
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<()> {
        self.manager().subscribe(channels).await
    }

    /// Unsubscribe on the current master.
    pub async fn unsubscribe(&self, channels: &[String]) -> RedisResult<()> {
        self.manager().unsubscribe(channels).await
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut manager = self.manager();
        Box::pin(async move { manager.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

/// Connections to the sentinels, asked in order until one answers.
struct Sentinels {
    spec: SentinelSpec,
    certificates: Option<TlsCertificates>,
    connections: Vec<Option<MultiplexedConnection>>,
}

impl Sentinels {
    fn new(recipe: &Recipe) -> Sentinels {
        Sentinels {
            connections: vec![None; recipe.spec.sentinels.len()],
            spec: recipe.spec.clone(),
            certificates: recipe.certificates.clone(),
        }
    }

    /// The master's address, from the first sentinel that knows it.
    async fn master(&mut self) -> RedisResult<(String, u16)> {
        let mut last = None;
        for i in 0..self.spec.sentinels.len() {
            match self.ask(i).await {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    last = Some(RedisError::from((
                        redis::ErrorKind::Client,
                        "the sentinel does not know this master",
                        self.spec.master.clone(),
                    )))
                }
                Err(e) => {
                    self.connections[i] = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((redis::ErrorKind::Client, "no sentinel configured"))
        }))
    }

    async fn ask(&mut self, i: usize) -> RedisResult<Option<(String, u16)>> {
        if self.connections[i].is_none() {
            let (host, port) = &self.spec.sentinels[i];
            let url = self.spec.node_url(host, *port, true);
            let client = match &self.certificates {
                Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
                None => redis::Client::open(url)?,
            };
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(ASK_TIMEOUT))
                .set_response_timeout(Some(ASK_TIMEOUT));
            self.connections[i] = Some(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        let Some(connection) = self.connections[i].as_mut() else {
            return Ok(None);
        };
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.spec.master)
            .query_async(connection)
            .await?;
        Ok(reply)
    }
}

/// A connection manager on `master`, which must say it is one.
async fn connect_master(recipe: &Recipe, master: &(String, u16)) -> RedisResult<ConnectionManager> {
    let url = format!(
        "{}?protocol=resp3",
        recipe.spec.node_url(&master.0, master.1, false)
    );
    let client = match &recipe.certificates {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
        None => redis::Client::open(url)?,
    };
    let mut manager = client
        .get_connection_manager_with_config(recipe.manager.clone())
        .await?;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut manager).await?;
    match role.first() {
        Some(Value::BulkString(r)) if r == b"master" => Ok(manager),
        Some(Value::SimpleString(r)) if r == "master" => Ok(manager),
        _ => Err(RedisError::from((
            redis::ErrorKind::Client,
            "the node Sentinel names is not a master (yet)",
            format!("{}:{}", master.0, master.1),
        ))),
    }
}

/// Follow the master until the last connection handle is dropped.
async fn watch(shared: Weak<Shared>, mut sentinels: Sentinels, recipe: Recipe) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(current) = shared.upgrade().map(|s| {
            s.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .master
                .clone()
        }) else {
            return;
        };
        let master = match sentinels.master().await {
            Ok(master) => master,
            Err(e) => {
                tracing::debug!(error = %e, "no sentinel answered");
                continue;
            }
        };
        if master == current {
            continue;
        }
        let manager = match connect_master(&recipe, &master).await {
            Ok(manager) => manager,
            Err(e) => {
                tracing::warn!(error = %e, to = %format!("{}:{}", master.0, master.1), "the Redis master moved, and the new one is not reachable yet");
                continue;
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        *shared.current.write().unwrap_or_else(|p| p.into_inner()) = Current {
            manager,
            master: master.clone(),
        };
        tracing::warn!(
            from = %format!("{}:{}", current.0, current.1),
            to = %format!("{}:{}", master.0, master.1),
            "the Redis master moved (Sentinel failover): switched"
        );
        if let Some(pushes) = &recipe.pushes {
            pushes(PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            });
        }
    }
}
