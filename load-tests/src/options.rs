//! The options every scenario takes.

use std::net::SocketAddr;

/// Options every scenario takes.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Gateway address (host:port); repeat to spread sockets round-robin.
    #[arg(long = "url", global = true, default_value = "127.0.0.1:3000")]
    pub urls: Vec<SocketAddr>,
    /// HS256 secret of the gateways.
    #[arg(
        long,
        global = true,
        default_value = "reallyreallyreallyreallyverysafe"
    )]
    pub secret: String,
    /// Database to pg_notify / LISTEN on.
    #[arg(
        long,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub db: String,
    /// The gateways' PGWS_LISTEN_CHANNEL.
    #[arg(long, global = true, default_value = "postgres-websockets-listener")]
    pub listen_channel: String,
    /// Server process to measure (gateway, coordinator); repeatable.
    #[arg(long = "pid", global = true)]
    pub pids: Vec<u32>,
    /// Label for the report (`standalone`, `cluster`).
    #[arg(long, global = true, default_value = "")]
    pub label: String,
    /// Print one JSON line per run.
    #[arg(long, global = true)]
    pub json: bool,
    /// Connect with TLS (`wss://`), trusting the CA certificates in this
    /// PEM file; the server name is `localhost`.
    #[arg(long, global = true)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Source address of every socket (e.g. `127.0.0.2`): generator
    /// processes with different source addresses do not share one address's
    /// ephemeral ports.
    #[arg(long, global = true)]
    pub bind: Option<std::net::IpAddr>,
    /// Reader sockets speak protocol `v1` (channel in the URL) or `v2`
    /// (subscribe command, message frames with offsets).
    #[arg(long, global = true, default_value = "v1", value_parser = ["v1", "v2"])]
    pub protocol: String,
    /// How notifications are published: `notify` (`pg_notify` on the
    /// listen channel) or `outbox` (`SELECT pgws.send(payload)`, the
    /// durable outbox; the gateway needs `PGWS_OUTBOX=true`).
    #[arg(long, global = true, default_value = "notify", value_parser = ["notify", "outbox"])]
    pub send: String,
    /// Each publishing transaction also inserts one row of its own (into
    /// `pgws_load_app`, made if missing), as an application's transaction
    /// does: its commit then flushes WAL, with `pg_notify` too.
    #[arg(long, global = true)]
    pub with_write: bool,
}

impl Common {
    /// Whether sockets speak protocol v2.
    pub fn v2(&self) -> bool {
        self.protocol == "v2"
    }

    /// Whether notifications go through the durable outbox.
    pub fn outbox(&self) -> bool {
        self.send == "outbox"
    }
}
