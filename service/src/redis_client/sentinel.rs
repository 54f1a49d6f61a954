//! A connection to a Sentinel-managed master that follows failovers.
//!
//! The master followed is the one more than half of the answering
//! sentinels name ([`quorum`]), never the first answer alone.
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
use super::quorum::{self, Address, Verdict};
use prometheus::{IntCounterVec, Opts};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::{
    Cmd, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
};
use std::sync::{Arc, LazyLock, RwLock, Weak};
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
        refusals(); // exported from the start, at zero
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

    /// The master in use (`host:port`) and a connection to it alone,
    /// read together: a command sent on that connection reaches this
    /// master or fails — it never follows a failover to the next one.
    pub fn pinned(&self) -> (String, ConnectionManager) {
        let current = self
            .shared
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner());
        (
            format!("{}:{}", current.master.0, current.master.1),
            current.manager.clone(),
        )
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

/// Connections to the sentinels, all asked each time.
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

    /// The master more than half of the answering sentinels name
    /// ([`quorum`]); a refusal is counted and logged.
    async fn master(&mut self) -> RedisResult<Address> {
        let (spec, certificates) = (&self.spec, &self.certificates);
        let asks = self
            .connections
            .iter_mut()
            .zip(&spec.sentinels)
            .map(|(slot, node)| ask(spec, certificates, slot, node));
        let mut answers = Vec::new();
        let mut last_error = None;
        for result in futures_util::future::join_all(asks).await {
            match result {
                Ok(answer) => answers.push(answer),
                Err(e) => last_error = Some(e),
            }
        }
        let verdict = quorum::elect(&answers);
        if let Verdict::Master(master) = &verdict {
            return Ok(master.clone());
        }
        refusals().with_label_values(&[verdict.reason()]).inc();
        let error = match verdict {
            Verdict::NoMajority { answered, votes } => {
                tracing::warn!(
                    master = %spec.master,
                    answered,
                    votes,
                    answers = ?answers,
                    "the sentinels do not agree on the master: none followed"
                );
                RedisError::from((
                    redis::ErrorKind::Client,
                    "no majority of the answering sentinels names one master",
                    format!("{votes} of {answered} agree"),
                ))
            }
            _ => {
                tracing::debug!(master = %spec.master, "no sentinel answered");
                last_error.unwrap_or_else(|| {
                    RedisError::from((redis::ErrorKind::Client, "no sentinel configured"))
                })
            }
        };
        Err(error)
    }
}

/// Ask one sentinel (connecting first if needed; a failed connection is
/// dropped, to be made again next time). A malformed reply counts as an
/// answer naming no master: it can only make a majority harder to reach.
async fn ask(
    spec: &SentinelSpec,
    certificates: &Option<TlsCertificates>,
    slot: &mut Option<MultiplexedConnection>,
    (host, port): &(String, u16),
) -> RedisResult<Option<Address>> {
    let connection = match slot {
        Some(connection) => connection,
        None => {
            let url = spec.node_url(host, *port, true);
            let client = match certificates {
                Some(certs) => redis::Client::build_with_tls(url, certs.clone())?,
                None => redis::Client::open(url)?,
            };
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(ASK_TIMEOUT))
                .set_response_timeout(Some(ASK_TIMEOUT));
            slot.insert(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )
        }
    };
    let reply: RedisResult<Value> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&spec.master)
        .query_async(connection)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => {
            *slot = None;
            return Err(e);
        }
    };
    Ok(quorum::master_address(&reply).unwrap_or_else(|e| {
        tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "a sentinel's reply is unusable");
        None
    }))
}

/// `pgws_redis_sentinel_refusals_total{reason}`: rounds in which no master
/// was followed — `no_majority` (the answering sentinels disagree) or
/// `no_answer`. Registered with the process-wide metrics.
fn refusals() -> &'static IntCounterVec {
    static REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        let counter = IntCounterVec::new(
            Opts::new(
                "pgws_redis_sentinel_refusals_total",
                "Rounds of asking the sentinels that named no master to follow, by reason.",
            ),
            &["reason"],
        )
        .expect("a valid metric");
        let _ = crate::panics::registry().register(Box::new(counter.clone()));
        counter
    });
    &REFUSALS
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
            // Counted and logged by `master`.
            Err(_) => continue,
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
