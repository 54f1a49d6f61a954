//! Configuration: every `PGWS_*` variable is read here and nowhere else.
//!
//! Sources, later ones winning: built-in defaults, an optional TOML file given
//! with `--config` (keys are the variable names without the `PGWS_` prefix,
//! lower-cased: `db_uri = "…"`), then the environment. The merge is figment's;
//! values are taken as text and parsed here so that every error names the
//! variable (`PGWS_PORT: expected a port number (0-65535), got "abc"`).
//!
//! Variables whose value starts with `@` are read from that file where the
//! original allowed it (`PGWS_DB_URI`, `PGWS_JWT_SECRET`).

use crate::bus::local::LocalConfig;
use crate::bus::redis::RedisBusConfig;
use pgws_service::config::{err, listen_addr, positive};
pub use pgws_service::config::{ConfigError, Host, ListenAddr, Sources};
use pgws_service::history::HistoryVars;
use pgws_service::redis_client::RedisVars;
pub use pgws_service::telemetry::LogConfig;
use std::path::PathBuf;
use std::time::Duration;

pgws_service::vars! {
    DB_URI = "PGWS_DB_URI", None, "libpq URI or key/value string of the database; `@path` reads it from a file. Required in standalone mode.";
    JWT_SECRET = "PGWS_JWT_SECRET", None, "HMAC secret, a JWK or a JWKS (`{\"keys\":[…]}`); `@path` reads it from a file. Required.";
    JWT_SECRET_BASE64 = "PGWS_JWT_SECRET_BASE64", Some("false"), "The secret is base64-encoded (`true`/`True`/`false`/`False`).";
    HOST = "PGWS_HOST", Some("*4"), "Public listen address: `*`, `*4`, `!4`, `*6`, `!6`, an IP or a host name.";
    PORT = "PGWS_PORT", Some("3000"), "Public listen port (`0` picks a free one and logs it).";
    LISTEN_CHANNEL = "PGWS_LISTEN_CHANNEL", Some("postgres-websockets-listener"), "The one database channel the gateway LISTENs and NOTIFYs on.";
    META_CHANNEL = "PGWS_META_CHANNEL", None, "When set, ConnectionOpen/ConnectionClose events are sent on this websocket channel.";
    META_CHANNEL_PUBLIC = "PGWS_META_CHANNEL_PUBLIC", Some("false"), "`true`: any token may read the meta channel (its events carry every user's claims) and writers may post on it, as in the original.";
    ROOT_PATH = "PGWS_ROOT_PATH", None, "Directory of static files served on plain HTTP GET (index.html, no listings).";
    POOL_SIZE = "PGWS_POOL_SIZE", Some("10"), "Number of PostgreSQL connections sending NOTIFY.";
    RETRIES = "PGWS_RETRIES", Some("5"), "Retries of the first listener connection (backoff 1, 2, 4 … 32 s).";
    CHECK_LISTENER_INTERVAL = "PGWS_CHECK_LISTENER_INTERVAL", None, "Milliseconds; set: probe and self-heal the listener; unset: exit non-zero when it dies.";
    CERTIFICATE_FILE = "PGWS_CERTIFICATE_FILE", None, "PEM certificate chain; with PGWS_KEY_FILE enables TLS (wss/https).";
    KEY_FILE = "PGWS_KEY_FILE", None, "PEM private key; with PGWS_CERTIFICATE_FILE enables TLS.";
    ADMIN_HOST = "PGWS_ADMIN_HOST", Some("127.0.0.1"), "Admin listen address (/healthz, /readyz, /metrics); same forms as PGWS_HOST.";
    ADMIN_PORT = "PGWS_ADMIN_PORT", Some("3001"), "Admin listen port; `off` disables the admin listener.";
    MAX_MESSAGE_SIZE = "PGWS_MAX_MESSAGE_SIZE", Some("65536"), "Largest websocket message accepted from a client, in bytes; larger: close 1009.";
    MAX_CONNECTIONS = "PGWS_MAX_CONNECTIONS", Some("0"), "Most open websockets per process; `0` is unlimited. Beyond it: HTTP 503.";
    MAX_PENDING_CONNECTIONS = "PGWS_MAX_PENDING_CONNECTIONS", Some("1024"), "Most connections open and not yet upgraded (TLS handshakes, HTTP requests); beyond it: 503 and close.";
    SEND_QUEUE_SIZE = "PGWS_SEND_QUEUE_SIZE", Some("1024"), "Messages queued for one socket before it is closed as a slow consumer (3008).";
    WRITE_QUEUE_SIZE = "PGWS_WRITE_QUEUE_SIZE", Some("10000"), "Client messages queued for NOTIFY per pool connection before writers wait.";
    SOCKET_SEND_BUFFER = "PGWS_SOCKET_SEND_BUFFER", Some("0"), "Bytes of kernel send buffer per accepted connection (SO_SNDBUF; Linux doubles it); `0` leaves the kernel's autotuning (up to net.ipv4.tcp_wmem's maximum).";
    SEND_TIMEOUT = "PGWS_SEND_TIMEOUT", Some("10000"), "Milliseconds one frame may take to write to a socket before it is dropped as stuck.";
    WRITE_TIMEOUT = "PGWS_WRITE_TIMEOUT", Some("5000"), "Milliseconds a writer waits for room in a full NOTIFY queue before close 1013.";
    PING_INTERVAL = "PGWS_PING_INTERVAL", Some("30"), "Seconds between pings; a peer silent for two intervals is dropped. `0` disables.";
    ALLOWED_ORIGINS = "PGWS_ALLOWED_ORIGINS", None, "Comma-separated Origin allow-list for websocket upgrades; unset allows any.";
    SHUTDOWN_TIMEOUT = "PGWS_SHUTDOWN_TIMEOUT", Some("10000"), "Milliseconds allowed for the graceful drain after SIGTERM.";
    WORKER_THREADS = "PGWS_WORKER_THREADS", Some("0"), "Runtime worker threads; `0` = one per available CPU (a container's CPU quota is honoured).";
    LOG_FORMAT = "PGWS_LOG_FORMAT", Some("text"), "`text` or `json`.";
    LOG_LEVEL = "PGWS_LOG_LEVEL", Some("info"), "A tracing filter: `info`, `debug`, `pgws_gateway=debug,info` …";
    CONNECT_TIMEOUT = "PGWS_CONNECT_TIMEOUT", Some("5000"), "Protocol v2: milliseconds a socket opened without a token has to send its `connect` frame; then close 4408.";
    MAX_SUBSCRIPTIONS = "PGWS_MAX_SUBSCRIPTIONS", Some("128"), "Protocol v2: most channels one socket may subscribe to; beyond it, error 429.";
    REPLAY_MAX_BYTES = "PGWS_REPLAY_MAX_BYTES", Some("1048576"), "Protocol v2: replay payload bytes one socket may be owed at once (over its recovering subscriptions); a recovery that would exceed it answers `recovered:false`.";
    COMMAND_RATE = "PGWS_COMMAND_RATE", Some("100"), "Protocol v2: commands per second one socket may send (bursts of as many); beyond it, error 429.";
    SSE_KEEP_ALIVE = "PGWS_SSE_KEEP_ALIVE", Some("15"), "Server-Sent Events: seconds between keep-alive comments on an idle stream (proxies close silent connections); at least 1.";
    HTTP2_MAX_STREAMS = "PGWS_HTTP2_MAX_STREAMS", Some("100"), "TLS listener, HTTP/2: most streams (event streams, publishes, files) open at once on one connection; a client waits for one to end before it opens another, and a stream over it is refused (RST_STREAM REFUSED_STREAM). At least 1.";
    SSE_RETRY = "PGWS_SSE_RETRY", Some("2000"), "Server-Sent Events: milliseconds a browser is told to wait before reconnecting (`retry:`).";
    IDEMPOTENCY_TTL = "PGWS_IDEMPOTENCY_TTL", Some("300"), "HTTP publish: seconds an `Idempotency-Key` is remembered (a retry within it is not published again); at least 1.";
    IDEMPOTENCY_MAX_KEYS = "PGWS_IDEMPOTENCY_MAX_KEYS", Some("100000"), "Standalone: most idempotency keys remembered in memory; beyond it the oldest is forgotten early (counted). In cluster mode keys live in Redis.";
    HISTORY_SIZE = "PGWS_HISTORY_SIZE", Some("100"), "Standalone: messages of history kept per channel in memory, for recovery (protocol v2); `0` keeps offsets but no history. In cluster mode the coordinator's setting applies.";
    HISTORY_TTL = "PGWS_HISTORY_TTL", Some("300"), "Standalone: seconds a message stays in history. In cluster mode the coordinator's setting applies.";
    CHANNEL_STATE_TTL = "PGWS_CHANNEL_STATE_TTL", Some("86400"), "Standalone: seconds a channel's offsets and epoch are kept after its last message. In cluster mode the coordinator's setting applies.";
    HISTORY_MAX_CHANNELS = "PGWS_HISTORY_MAX_CHANNELS", Some("100000"), "Standalone: most channels whose offsets and history are kept; beyond it empty states go first, then a message (never a subscription) forgets the least recently active (their next message starts a new epoch).";
    OUTBOX = "PGWS_OUTBOX", Some("false"), "Standalone: also read the durable outbox (`SELECT pgws.send(payload)` in the application's transaction); in cluster mode the coordinator's setting applies.";
    OUTBOX_MIGRATE = "PGWS_OUTBOX_MIGRATE", Some("true"), "With PGWS_OUTBOX: create the `pgws` schema when missing; `false` only checks and refuses to start, naming postgres/sql/outbox.sql for a DBA to apply.";
    OUTBOX_RETENTION = "PGWS_OUTBOX_RETENTION", Some("3600"), "With PGWS_OUTBOX: seconds a delivered outbox row is kept (the history a restart recovers from); at least 1.";
    OUTBOX_POLL_INTERVAL = "PGWS_OUTBOX_POLL_INTERVAL", Some("1000"), "With PGWS_OUTBOX: milliseconds the reader waits for a doorbell before polling anyway.";
    REDIS_URL = "PGWS_REDIS_URL", None, "Cluster mode: the Redis URL (`redis://`, `rediss://`; comma-separated seeds for a Redis Cluster; `redis+sentinel://host:26379,…/<master>` behind Sentinel). Unset: standalone mode.";
    REDIS_CLUSTER = "PGWS_REDIS_CLUSTER", Some("false"), "The Redis is a Redis Cluster (sharded pub/sub).";
    REDIS_CA_FILE = "PGWS_REDIS_CA_FILE", None, "PEM file of CA certificates trusted for `rediss://`, in addition to the system's.";
    REDIS_CA_ONLY = "PGWS_REDIS_CA_ONLY", Some("false"), "Trust only PGWS_REDIS_CA_FILE for `rediss://` (and `rediss+sentinel://`), not the system's roots.";
    REDIS_CERT_FILE = "PGWS_REDIS_CERT_FILE", None, "PEM client certificate for `rediss://` (with PGWS_REDIS_KEY_FILE).";
    REDIS_KEY_FILE = "PGWS_REDIS_KEY_FILE", None, "PEM private key of PGWS_REDIS_CERT_FILE.";
    REDIS_PREFIX = "PGWS_REDIS_PREFIX", Some("pgws"), "Prefix of every Redis key and channel.";
    REDIS_SUBSCRIPTION_QUEUE = "PGWS_REDIS_SUBSCRIPTION_QUEUE", Some("10000"), "Cluster mode: most channels whose Redis subscription may wait to be applied; beyond it a new channel's first reader is refused (v2 error 503, v1 HTTP 503).";
    PRESENCE = "PGWS_PRESENCE", Some("false"), "`true`: keep presence — v2 subscriptions as members of their channels, `presence`/`presence_stats` queries (for tokens with `\"presence\":true`), `join`/`leave` frames for subscriptions that ask. Cluster mode keeps it in Redis.";
    PRESENCE_TTL = "PGWS_PRESENCE_TTL", Some("15000"), "Cluster mode, with PGWS_PRESENCE: milliseconds a gateway's presence entries outlive its last heartbeat (sent every third of it); a gateway that dies leaves presence, with leave events, within 4/3 of it.";
    PRESENCE_MAX_LIST = "PGWS_PRESENCE_MAX_LIST", Some("1000"), "Most members a `presence` answer lists; a larger channel answers 413 (ask `presence_stats`).";
    PRESENCE_INFO_MAX_BYTES = "PGWS_PRESENCE_INFO_MAX_BYTES", Some("512"), "Largest `presence_info` claim (a JSON object, serialised) listed as a member's `info`; a larger one is left out and counted.";
    OCCUPANCY_EVENTS = "PGWS_OCCUPANCY_EVENTS", Some("false"), "`true` (needs PGWS_PRESENCE and PGWS_META_CHANNEL): send `ChannelOccupied` on the meta channel when a channel gets its first presence member (v2 subscription), `ChannelVacated` when it has had none for PGWS_OCCUPANCY_GRACE — cluster-wide in cluster mode.";
    OCCUPANCY_GRACE = "PGWS_OCCUPANCY_GRACE", Some("2000"), "With PGWS_OCCUPANCY_EVENTS: milliseconds a channel must stay empty before `ChannelVacated`; a reader joining within it cancels both events (at most one occupied/vacated pair per channel per grace).";
    WRITE_STREAM_MAX_LEN = "PGWS_WRITE_STREAM_MAX_LEN", Some("100000"), "Cluster mode: most writes waiting in the Redis stream; beyond it writers get 1013.";
}

/// The Redis variables, by the names both binaries use.
const REDIS: RedisVars = RedisVars::STANDARD;

/// The JWT key material, before it is turned into keys by `auth`.
#[derive(Debug, Clone)]
pub struct JwtSecret {
    /// The raw secret text or bytes (a JWK/JWKS is JSON text).
    pub secret: Vec<u8>,
    /// Whether `secret` is base64 to decode.
    pub base64: bool,
}

/// TLS certificate and key files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Server-Sent Events.
#[derive(Debug, Clone, Copy)]
pub struct SseSettings {
    /// `PGWS_SSE_KEEP_ALIVE`: a comment after this long without an event.
    pub keep_alive: Duration,
    /// `PGWS_SSE_RETRY`: the reconnection delay advised to browsers.
    pub retry: Duration,
}

/// HTTP publish's `Idempotency-Key`.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencySettings {
    /// `PGWS_IDEMPOTENCY_TTL`: how long a key is remembered.
    pub ttl: Duration,
    /// `PGWS_IDEMPOTENCY_MAX_KEYS`: the standalone map's bound.
    pub max_keys: usize,
}

/// Websocket session limits.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Largest message from a client.
    pub max_message_size: usize,
    /// Per-socket send queue length.
    pub send_queue: usize,
    /// Ping period; `None` disables pings.
    pub ping_interval: Option<Duration>,
    /// How long a writer waits for room in the NOTIFY queue.
    pub write_timeout: Duration,
    /// How long one frame may take to write before the socket is dropped.
    pub send_timeout: Duration,
    /// v2: how long a socket without a token has to send `connect`.
    pub connect_timeout: Duration,
    /// v2: most subscriptions per socket.
    pub max_subscriptions: usize,
    /// v2: commands per second per socket.
    pub command_rate: u32,
    /// v2: replay payload bytes one socket may be owed at once.
    pub replay_max_bytes: usize,
}

/// Where notifications come from and writes go.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One process: the embedded listener and NOTIFY relay.
    Standalone(Box<LocalConfig>),
    /// Redis, with coordinators elsewhere.
    Cluster(RedisBusConfig),
}

/// The whole gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Standalone (database) or cluster (Redis).
    pub backend: Backend,
    /// JWT key material.
    pub jwt: JwtSecret,
    /// Public listener.
    pub public: ListenAddr,
    /// Admin listener; `None` when disabled.
    pub admin: Option<ListenAddr>,
    /// TLS for the public listener.
    pub tls: Option<TlsFiles>,
    /// The database channel.
    pub listen_channel: String,
    /// Meta events channel and who may use it.
    pub meta: crate::auth::MetaChannel,
    /// Static files directory.
    pub root_path: Option<PathBuf>,
    /// Most open websockets; 0 is unlimited.
    pub max_connections: usize,
    /// Most connections not yet upgraded.
    pub max_pending_connections: usize,
    /// `PGWS_HTTP2_MAX_STREAMS`: streams at once on one HTTP/2 connection.
    pub http2_max_streams: u32,
    /// SO_SNDBUF of accepted connections; `None`: the kernel's autotuning.
    pub socket_send_buffer: Option<usize>,
    /// Origin allow-list; `None` allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Per-socket limits.
    pub session: SessionLimits,
    /// Presence.
    pub presence: crate::presence::PresenceConfig,
    /// `PGWS_SSE_*`.
    pub sse: SseSettings,
    /// `PGWS_IDEMPOTENCY_*`.
    pub idempotency: IdempotencySettings,
    /// Graceful drain budget.
    pub shutdown_timeout: Duration,
    /// Logging.
    pub log: LogConfig,
}

impl Config {
    /// Validate and type every variable. `standalone` requires the database.
    pub fn from_sources(sources: &Sources) -> Result<Config, ConfigError> {
        let backend = match REDIS.read(sources)? {
            Some(redis) => Backend::Cluster(RedisBusConfig {
                redis,
                keys: REDIS.keys(sources)?,
                stream_max_len: positive(
                    sources.parsed(WRITE_STREAM_MAX_LEN, "a number of messages")?,
                    WRITE_STREAM_MAX_LEN,
                )?,
                subscription_queue: positive(
                    sources.parsed(REDIS_SUBSCRIPTION_QUEUE, "a number of channels")?,
                    REDIS_SUBSCRIPTION_QUEUE,
                )?,
            }),
            None => Backend::Standalone(Box::new(database_config(sources)?)),
        };
        let secret = sources
            .file_or_value(JWT_SECRET)?
            .ok_or_else(|| err(JWT_SECRET, "is required"))?;
        let jwt = JwtSecret {
            secret: secret.into_bytes(),
            base64: sources.flag(JWT_SECRET_BASE64)?,
        };
        let listen_channel = listen_channel(sources)?;
        Ok(Config {
            backend,
            jwt,
            public: ListenAddr {
                host: Host::parse(HOST, &sources.required(HOST)?)?,
                port: sources.parsed(PORT, "a port number (0-65535)")?,
            },
            admin: listen_addr(sources, ADMIN_HOST, ADMIN_PORT)?,
            tls: tls_files(sources)?,
            listen_channel,
            meta: crate::auth::MetaChannel {
                name: sources.get(META_CHANNEL),
                public: sources.flag(META_CHANNEL_PUBLIC)?,
            },
            root_path: root_path(sources)?,
            max_connections: sources.parsed(MAX_CONNECTIONS, "a number of connections")?,
            max_pending_connections: positive(
                sources.parsed(MAX_PENDING_CONNECTIONS, "a number of connections")?,
                MAX_PENDING_CONNECTIONS,
            )?,
            http2_max_streams: u32::try_from(positive(
                sources.parsed(HTTP2_MAX_STREAMS, "a number of streams")?,
                HTTP2_MAX_STREAMS,
            )?)
            .unwrap_or(u32::MAX),
            socket_send_buffer: match sources
                .parsed::<usize>(SOCKET_SEND_BUFFER, "a number of bytes")?
            {
                0 => None,
                bytes => Some(bytes),
            },
            allowed_origins: sources.get(ALLOWED_ORIGINS).map(|list| {
                list.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            }),
            session: SessionLimits {
                max_message_size: positive(
                    sources.parsed(MAX_MESSAGE_SIZE, "a number of bytes")?,
                    MAX_MESSAGE_SIZE,
                )?,
                send_queue: positive(
                    sources.parsed(SEND_QUEUE_SIZE, "a number of messages")?,
                    SEND_QUEUE_SIZE,
                )?,
                ping_interval: match sources.parsed::<u64>(PING_INTERVAL, "a number of seconds")? {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                },
                write_timeout: sources.millis(WRITE_TIMEOUT)?.unwrap_or_default(),
                send_timeout: sources.millis(SEND_TIMEOUT)?.unwrap_or_default(),
                connect_timeout: sources.millis(CONNECT_TIMEOUT)?.unwrap_or_default(),
                max_subscriptions: positive(
                    sources.parsed(MAX_SUBSCRIPTIONS, "a number of channels")?,
                    MAX_SUBSCRIPTIONS,
                )?,
                command_rate: positive(
                    sources.parsed(COMMAND_RATE, "a number of commands per second")?,
                    COMMAND_RATE,
                )? as u32,
                replay_max_bytes: positive(
                    sources.parsed(REPLAY_MAX_BYTES, "a number of bytes")?,
                    REPLAY_MAX_BYTES,
                )?,
            },
            presence: presence_config(sources)?,
            sse: SseSettings {
                keep_alive: Duration::from_secs(positive(
                    sources.parsed(SSE_KEEP_ALIVE, "a number of seconds")?,
                    SSE_KEEP_ALIVE,
                )? as u64),
                retry: sources.millis(SSE_RETRY)?.unwrap_or_default(),
            },
            idempotency: IdempotencySettings {
                ttl: Duration::from_secs(positive(
                    sources.parsed(IDEMPOTENCY_TTL, "a number of seconds")?,
                    IDEMPOTENCY_TTL,
                )? as u64),
                max_keys: positive(
                    sources.parsed(IDEMPOTENCY_MAX_KEYS, "a number of keys")?,
                    IDEMPOTENCY_MAX_KEYS,
                )?,
            },
            shutdown_timeout: sources.millis(SHUTDOWN_TIMEOUT)?.unwrap_or_default(),
            log: LogConfig::from_sources(sources)?,
        })
    }
}

fn presence_config(sources: &Sources) -> Result<crate::presence::PresenceConfig, ConfigError> {
    let ttl = sources.millis(PRESENCE_TTL)?.unwrap_or_default();
    if ttl < Duration::from_millis(300) {
        return Err(err(PRESENCE_TTL, "must be at least 300 (milliseconds)"));
    }
    Ok(crate::presence::PresenceConfig {
        enabled: sources.flag(PRESENCE)?,
        ttl,
        max_list: positive(
            sources.parsed(PRESENCE_MAX_LIST, "a number of members")?,
            PRESENCE_MAX_LIST,
        )?,
        info_max_bytes: sources.parsed(PRESENCE_INFO_MAX_BYTES, "a number of bytes")?,
        occupancy_grace: occupancy_grace(sources)?,
    })
}

/// `PGWS_OCCUPANCY_GRACE` when `PGWS_OCCUPANCY_EVENTS` is on.
fn occupancy_grace(sources: &Sources) -> Result<Option<Duration>, ConfigError> {
    if !sources.flag(OCCUPANCY_EVENTS)? {
        return Ok(None);
    }
    if !sources.flag(PRESENCE)? {
        return Err(err(OCCUPANCY_EVENTS, "needs PGWS_PRESENCE=true"));
    }
    if sources.get(META_CHANNEL).is_none() {
        return Err(err(OCCUPANCY_EVENTS, "needs PGWS_META_CHANNEL"));
    }
    Ok(Some(sources.millis(OCCUPANCY_GRACE)?.unwrap_or_default()))
}

fn database_config(sources: &Sources) -> Result<LocalConfig, ConfigError> {
    let db_uri = sources
        .file_or_value(DB_URI)?
        .ok_or_else(|| err(DB_URI, "is required"))?;
    let db = pgws_postgres::pg::parse_with_process_env(&db_uri)
        .map_err(|e| err(DB_URI, format!("not a valid connection string: {e}")))?;
    let outbox = pgws_postgres::outbox::read_config(sources, &db)?;
    let database = LocalConfig {
        db,
        outbox,
        listen_channel: listen_channel(sources)?,
        pool_size: positive(
            sources.parsed(POOL_SIZE, "a number of connections")?,
            POOL_SIZE,
        )?,
        retries: sources.parsed(RETRIES, "a number of retries")?,
        // 0 means disabled, as the original's help says.
        check_listener_interval: sources
            .millis(CHECK_LISTENER_INTERVAL)?
            .filter(|d| !d.is_zero()),
        write_queue_size: positive(
            sources.parsed(WRITE_QUEUE_SIZE, "a number of messages")?,
            WRITE_QUEUE_SIZE,
        )?,
        history: HistoryVars::STANDARD.read(sources)?,
        history_max_channels: positive(
            sources.parsed(HISTORY_MAX_CHANNELS, "a number of channels")?,
            HISTORY_MAX_CHANNELS,
        )?,
    };
    Ok(database)
}

fn listen_channel(sources: &Sources) -> Result<String, ConfigError> {
    let channel = sources.required(LISTEN_CHANNEL)?;
    if channel.len() > pgws_protocol::limits::PG_IDENTIFIER_MAX {
        return Err(err(
            LISTEN_CHANNEL,
            "longer than PostgreSQL's 63-byte identifier limit",
        ));
    }
    Ok(channel)
}

fn tls_files(sources: &Sources) -> Result<Option<TlsFiles>, ConfigError> {
    match (sources.get(CERTIFICATE_FILE), sources.get(KEY_FILE)) {
        (None, None) => Ok(None),
        (Some(certificate), Some(key)) => Ok(Some(TlsFiles {
            certificate: PathBuf::from(certificate),
            key: PathBuf::from(key),
        })),
        _ => Err(err(
            "PGWS_CERTIFICATE_FILE/PGWS_KEY_FILE",
            "both must be set to enable TLS, or neither",
        )),
    }
}

fn root_path(sources: &Sources) -> Result<Option<PathBuf>, ConfigError> {
    match sources.get(ROOT_PATH) {
        None => Ok(None),
        Some(path) => {
            let path = PathBuf::from(path);
            let canonical = path
                .canonicalize()
                .map_err(|e| err(ROOT_PATH, format!("{}: {e}", path.display())))?;
            if !canonical.is_dir() {
                return Err(err(
                    ROOT_PATH,
                    format!("{} is not a directory", path.display()),
                ));
            }
            Ok(Some(canonical))
        }
    }
}

#[cfg(test)]
mod tests;
