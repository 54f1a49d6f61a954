//! The coordinator's `PGWS_*` variables, read here and nowhere else.

use pgws_protocol::keys::KeySpace;
use pgws_service::config::{err, listen_addr, ConfigError, ListenAddr, Sources};
use pgws_service::history::{HistoryConfig, HistoryVars};
use pgws_service::redis_client::{RedisConfig, RedisVars};
use pgws_service::telemetry::LogConfig;
use std::time::Duration;

pgws_service::vars! {
    DB_URI = "PGWS_DB_URI", None, "libpq URI of the database; `@path` reads it from a file. Required.";
    REDIS_URL = "PGWS_REDIS_URL", None, "Redis URL (`redis://` or `rediss://host:6379`); for a cluster, comma-separated seed URLs; behind Sentinel, `redis+sentinel://host:26379,…/<master>`. Required.";
    REDIS_CLUSTER = "PGWS_REDIS_CLUSTER", Some("false"), "Talk to a Redis Cluster (sharded pub/sub, hash-tagged keys).";
    REDIS_CA_FILE = "PGWS_REDIS_CA_FILE", None, "PEM file of CA certificates trusted for `rediss://`, in addition to the system's.";
    REDIS_CA_ONLY = "PGWS_REDIS_CA_ONLY", Some("false"), "Trust only PGWS_REDIS_CA_FILE for `rediss://` (and `rediss+sentinel://`), not the system's roots.";
    REDIS_CERT_FILE = "PGWS_REDIS_CERT_FILE", None, "PEM client certificate for `rediss://` (with PGWS_REDIS_KEY_FILE).";
    REDIS_KEY_FILE = "PGWS_REDIS_KEY_FILE", None, "PEM private key of PGWS_REDIS_CERT_FILE.";
    REDIS_PREFIX = "PGWS_REDIS_PREFIX", Some("pgws"), "Prefix of every Redis key and channel; clusters with different prefixes share a Redis safely.";
    NODE_ID = "PGWS_NODE_ID", None, "This coordinator's name in the election; default: host name and pid.";
    LEADER_TTL = "PGWS_LEADER_TTL", Some("5000"), "Milliseconds the leader lock lives without renewal (renewed every third of it).";
    LISTEN_CHANNEL = "PGWS_LISTEN_CHANNEL", Some("postgres-websockets-listener"), "The database channel LISTENed and NOTIFYed on.";
    RETRIES = "PGWS_RETRIES", Some("5"), "Retries of the listener connection when a term starts (backoff 1, 2, 4 … 32 s).";
    CHECK_LISTENER_INTERVAL = "PGWS_CHECK_LISTENER_INTERVAL", Some("1000"), "Milliseconds between listener liveness probes; a lost listener is re-established within the term.";
    HISTORY_SIZE = "PGWS_HISTORY_SIZE", Some("100"), "Messages of history kept per channel in Redis, for recovery (protocol v2); `0` keeps offsets but no history.";
    HISTORY_TTL = "PGWS_HISTORY_TTL", Some("300"), "Seconds a message stays in history; a channel quiet this long has none.";
    CHANNEL_STATE_TTL = "PGWS_CHANNEL_STATE_TTL", Some("86400"), "Seconds a channel's offsets and epoch are kept after its last message; its next message then starts a new epoch.";
    STANDBY_LISTEN = "PGWS_STANDBY_LISTEN", Some("false"), "`true`: standby coordinators LISTEN too and keep what they hear, so a new leader publishes what its predecessor did not — a failover that loses no notification (one more LISTEN backend per standby). All coordinators of a cluster must agree.";
    STANDBY_BUFFER = "PGWS_STANDBY_BUFFER", Some("100000"), "With PGWS_STANDBY_LISTEN: notifications a standby keeps; the takeover is gapless only if the buffer reaches back to the leader's last publish.";
    MARKER_INTERVAL = "PGWS_MARKER_INTERVAL", Some("100"), "With PGWS_STANDBY_LISTEN: milliseconds between the leader's stream markers (on `<PGWS_LISTEN_CHANNEL>.markers`).";
    OUTBOX = "PGWS_OUTBOX", Some("false"), "The leader also reads the durable outbox (`SELECT pgws.send(payload)` in the application's transaction) and publishes it at the offsets PostgreSQL assigned.";
    OUTBOX_MIGRATE = "PGWS_OUTBOX_MIGRATE", Some("true"), "With PGWS_OUTBOX: create the `pgws` schema when missing; `false` only checks and refuses to lead, naming postgres/sql/outbox.sql.";
    OUTBOX_RETENTION = "PGWS_OUTBOX_RETENTION", Some("3600"), "With PGWS_OUTBOX: seconds a delivered outbox row is kept; at least 1.";
    OUTBOX_POLL_INTERVAL = "PGWS_OUTBOX_POLL_INTERVAL", Some("1000"), "With PGWS_OUTBOX: milliseconds the reader waits for a doorbell before polling anyway.";
    POOL_SIZE = "PGWS_POOL_SIZE", Some("10"), "Accepted for compatibility; the leader sends NOTIFYs on one connection, in stream order.";
    ADMIN_HOST = "PGWS_ADMIN_HOST", Some("127.0.0.1"), "Admin listen address (/healthz, /readyz, /metrics).";
    ADMIN_PORT = "PGWS_ADMIN_PORT", Some("3002"), "Admin listen port; `off` disables it.";
    SHUTDOWN_TIMEOUT = "PGWS_SHUTDOWN_TIMEOUT", Some("10000"), "Milliseconds allowed for stepping down on SIGTERM.";
    WORKER_THREADS = "PGWS_WORKER_THREADS", Some("0"), "Runtime worker threads; `0` = one per available CPU (a container's CPU quota is honoured).";
    LOG_FORMAT = "PGWS_LOG_FORMAT", Some("text"), "`text` or `json`.";
    LOG_LEVEL = "PGWS_LOG_LEVEL", Some("info"), "A tracing filter.";
}

/// The coordinator's whole configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The database.
    pub db: pgws_postgres::pg::PgConfig,
    /// Redis.
    pub redis: RedisConfig,
    /// Key layout under the prefix.
    pub keys: KeySpace,
    /// Name in the election.
    pub node_id: String,
    /// Lock time-to-live.
    pub leader_ttl: Duration,
    /// The database channel.
    pub listen_channel: String,
    /// Listener connection retries.
    pub retries: u32,
    /// Listener probe interval.
    pub check_listener_interval: Option<Duration>,
    /// Admin listener.
    pub admin: Option<ListenAddr>,
    /// Step-down budget.
    pub shutdown_timeout: Duration,
    /// `PGWS_OUTBOX*`: `Some` makes the leader read the durable outbox.
    pub outbox: Option<pgws_postgres::outbox::OutboxConfig>,
    /// History in Redis.
    pub history: HistoryConfig,
    /// Standby listening, when on.
    pub standby: Option<StandbyConfig>,
    /// Logging.
    pub log: LogConfig,
}

/// Standby listening (`PGWS_STANDBY_LISTEN=true`).
#[derive(Debug, Clone)]
pub struct StandbyConfig {
    /// Notifications a standby keeps.
    pub buffer: usize,
    /// Time between the leader's stream markers.
    pub marker_interval: Duration,
    /// The channel markers are notified on.
    pub marker_channel: String,
}

/// The Redis variables, by the names both binaries use.
const REDIS: RedisVars = RedisVars::STANDARD;

fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".into());
    format!("{host}-{}", std::process::id())
}

impl CoordinatorConfig {
    /// Validate and type every variable.
    pub fn from_sources(sources: &Sources) -> Result<CoordinatorConfig, ConfigError> {
        let db_uri = sources
            .file_or_value(DB_URI)?
            .ok_or_else(|| err(DB_URI, "is required"))?;
        let db = pgws_postgres::pg::parse_with_process_env(&db_uri)
            .map_err(|e| err(DB_URI, format!("not a valid connection string: {e}")))?;
        let redis = REDIS
            .read(sources)?
            .ok_or_else(|| err(REDIS_URL, "is required"))?;
        let ttl: u64 = sources.parsed(LEADER_TTL, "a number of milliseconds")?;
        if ttl < 300 {
            return Err(err(LEADER_TTL, "must be at least 300 ms"));
        }
        let listen_channel = sources.required(LISTEN_CHANNEL)?;
        if listen_channel.len() > pgws_protocol::limits::PG_IDENTIFIER_MAX {
            return Err(err(
                LISTEN_CHANNEL,
                "longer than PostgreSQL's 63-byte identifier limit",
            ));
        }
        let _: usize = sources.parsed(POOL_SIZE, "a number of connections")?;
        let standby = if sources.flag(STANDBY_LISTEN)? {
            let marker_channel = crate::standby::marker_channel(&listen_channel);
            if marker_channel.len() > pgws_protocol::limits::PG_IDENTIFIER_MAX {
                return Err(err(
                    LISTEN_CHANNEL,
                    format!(
                        "with PGWS_STANDBY_LISTEN, at most {} bytes (the marker channel {marker_channel:?} must fit PostgreSQL's 63)",
                        pgws_protocol::limits::PG_IDENTIFIER_MAX - (marker_channel.len() - listen_channel.len())
                    ),
                ));
            }
            let interval: u64 = sources.parsed(MARKER_INTERVAL, "a number of milliseconds")?;
            if interval == 0 {
                return Err(err(MARKER_INTERVAL, "must be at least 1 ms"));
            }
            Some(StandbyConfig {
                buffer: pgws_service::config::positive(
                    sources.parsed(STANDBY_BUFFER, "a number of notifications")?,
                    STANDBY_BUFFER,
                )?,
                marker_interval: Duration::from_millis(interval),
                marker_channel,
            })
        } else {
            None
        };
        let outbox = pgws_postgres::outbox::read_config(sources, &db)?;
        Ok(CoordinatorConfig {
            outbox,
            db,
            redis,
            keys: REDIS.keys(sources)?,
            node_id: sources.get(NODE_ID).unwrap_or_else(default_node_id),
            leader_ttl: Duration::from_millis(ttl),
            listen_channel,
            retries: sources.parsed(RETRIES, "a number of retries")?,
            check_listener_interval: sources
                .millis(CHECK_LISTENER_INTERVAL)?
                .filter(|d| !d.is_zero()),
            admin: listen_addr(sources, ADMIN_HOST, ADMIN_PORT)?,
            shutdown_timeout: sources.millis(SHUTDOWN_TIMEOUT)?.unwrap_or_default(),
            history: HistoryVars::STANDARD.read(sources)?,
            standby,
            log: LogConfig::from_sources(sources)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<CoordinatorConfig, ConfigError> {
        let mut all = vec![
            (DB_URI, "postgres://postgres@127.0.0.1/postgres"),
            (REDIS_URL, "redis://127.0.0.1:6379"),
        ];
        all.extend_from_slice(pairs);
        CoordinatorConfig::from_sources(&Sources::from_pairs(VARS, all))
    }

    #[test]
    fn defaults() {
        let c = load(&[]).expect("valid");
        assert_eq!(c.keys.prefix(), "pgws");
        assert_eq!(c.leader_ttl, Duration::from_secs(5));
        assert_eq!(
            c.redis.topology,
            pgws_service::redis_client::Topology::Single("redis://127.0.0.1:6379".into())
        );
        assert!(c.node_id.ends_with(&format!("-{}", std::process::id())));
    }

    #[test]
    fn errors_name_the_variable() {
        for (name, value) in [
            (REDIS_URL, "http://x"),
            (LEADER_TTL, "10"),
            (REDIS_PREFIX, "{x}"),
            (REDIS_CLUSTER, "maybe"),
            (REDIS_CA_FILE, "/nonexistent/ca.pem"),
            (REDIS_URL, "redis+sentinel://s1"),
            (DB_URI, "postgres://h:port/db"),
            (STANDBY_LISTEN, "yes"),
        ] {
            assert_eq!(load(&[(name, value)]).expect_err(name).variable, name);
        }
    }

    #[test]
    fn standby_listening_checks_its_settings() {
        assert!(load(&[]).expect("valid").standby.is_none());
        let c = load(&[(STANDBY_LISTEN, "true")]).expect("valid");
        let standby = c.standby.expect("on");
        assert_eq!(
            standby.marker_channel,
            "postgres-websockets-listener.markers"
        );
        assert_eq!(standby.marker_interval, Duration::from_millis(100));
        for (name, value) in [
            (MARKER_INTERVAL, "0"),
            (STANDBY_BUFFER, "0"),
            (LISTEN_CHANNEL, &"x".repeat(60)),
        ] {
            let e = load(&[(STANDBY_LISTEN, "true"), (name, value)]).expect_err(name);
            assert_eq!(e.variable, name);
        }
    }

    #[test]
    fn cluster_seed_lists() {
        let c = load(&[
            (REDIS_URL, "redis://a:1, redis://b:2"),
            (REDIS_CLUSTER, "true"),
        ])
        .expect("valid");
        assert_eq!(
            c.redis.topology,
            pgws_service::redis_client::Topology::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])
        );
    }

    #[test]
    fn the_shared_variables_are_the_standard_names() {
        let s = RedisVars::STANDARD;
        for (standard, declared) in [
            (s.url, REDIS_URL),
            (s.cluster, REDIS_CLUSTER),
            (s.ca_file, REDIS_CA_FILE),
            (s.ca_only, REDIS_CA_ONLY),
            (s.cert_file, REDIS_CERT_FILE),
            (s.key_file, REDIS_KEY_FILE),
            (s.prefix, REDIS_PREFIX),
        ] {
            assert_eq!(standard, declared);
        }
        let h = HistoryVars::STANDARD;
        for (standard, declared) in [
            (h.size, HISTORY_SIZE),
            (h.ttl, HISTORY_TTL),
            (h.state_ttl, CHANNEL_STATE_TTL),
        ] {
            assert_eq!(standard, declared);
        }
    }

    #[test]
    fn every_variable_is_documented() {
        let docs = include_str!("../../docs/configuration.md");
        for var in VARS {
            assert!(
                docs.contains(var.name),
                "{} missing from docs/configuration.md",
                var.name
            );
        }
    }
}
