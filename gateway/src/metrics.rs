//! The gateway's own Prometheus metrics, in one table so names, help texts
//! and label sets can be reviewed together. The listener and relay register
//! theirs (from `pgws-coordinator`) into the same registry.
//!
//! Labels are bounded: modes, refusal reasons and close reasons — never a
//! channel name or a user id.

use crate::auth::Refusal;
use pgws_protocol::close::CloseReason;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Buckets of `pgws_delivery_latency_seconds`: 100 µs to 10 s, so the tail
/// of a large broadcast (p99 1.10 s for 100,000 sockets, docs/benchmarks.md)
/// lands in a bucket rather than in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 7.5, 10.0,
];

/// Why a client message did not become a NOTIFY.
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    /// The socket's mode is `r`.
    ReadOnly,
    /// Frame over `PGWS_MAX_MESSAGE_SIZE`, or envelope over the NOTIFY limit.
    TooLarge,
    /// The NOTIFY queue stayed full.
    QueueFull,
    /// Not valid UTF-8.
    InvalidPayload,
    /// Addressed only to the guarded meta channel.
    MetaChannel,
    /// Sent to Redis; whether it went in is unknown (close 3010).
    OutcomeUnknown,
}

impl Rejection {
    const ALL: [Rejection; 6] = [
        Rejection::ReadOnly,
        Rejection::TooLarge,
        Rejection::QueueFull,
        Rejection::InvalidPayload,
        Rejection::MetaChannel,
        Rejection::OutcomeUnknown,
    ];

    fn label(self) -> &'static str {
        match self {
            Rejection::ReadOnly => "read_only",
            Rejection::TooLarge => "too_large",
            Rejection::QueueFull => "queue_full",
            Rejection::InvalidPayload => "invalid_payload",
            Rejection::MetaChannel => "meta_channel",
            Rejection::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// How a v2 subscription's recovery ended.
#[derive(Debug, Clone, Copy)]
pub enum RecoveryOutcome {
    /// Complete: the missed messages were replayed.
    Recovered,
    /// Not recoverable (another epoch, out of range, trimmed): the client
    /// must resync.
    NotRecovered,
    /// The bus could not answer (Redis unavailable): error 503.
    Failed,
    /// The replay would exceed `PGWS_REPLAY_MAX_BYTES`: answered
    /// `recovered:false`.
    TooLarge,
}

impl RecoveryOutcome {
    const ALL: [RecoveryOutcome; 4] = [
        RecoveryOutcome::Recovered,
        RecoveryOutcome::NotRecovered,
        RecoveryOutcome::Failed,
        RecoveryOutcome::TooLarge,
    ];

    fn label(self) -> &'static str {
        match self {
            RecoveryOutcome::Recovered => "recovered",
            RecoveryOutcome::NotRecovered => "not_recovered",
            RecoveryOutcome::Failed => "failed",
            RecoveryOutcome::TooLarge => "too_large",
        }
    }
}

/// Protocol v2's metrics.
#[derive(Clone)]
pub struct V2Metrics {
    /// Open v2 sockets.
    pub sockets: IntGauge,
    commands: IntCounterVec,
    errors: IntCounterVec,
    /// Live v2 subscriptions.
    pub subscriptions: IntGauge,
    recoveries: IntCounterVec,
    /// Messages replayed from history.
    pub replayed: IntCounter,
    /// Payload bytes replayed from history, counted as written.
    pub replayed_bytes: IntCounter,
}

impl V2Metrics {
    fn register(registry: &Registry) -> prometheus::Result<V2Metrics> {
        let m = V2Metrics {
            sockets: IntGauge::new("pgws_v2_connections", "Open protocol v2 websockets")?,
            commands: IntCounterVec::new(
                Opts::new(
                    "pgws_v2_commands_total",
                    "Protocol v2 commands received, by type",
                ),
                &["command"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "pgws_v2_errors_total",
                    "Protocol v2 commands answered with an error, by code",
                ),
                &["code"],
            )?,
            subscriptions: IntGauge::new(
                "pgws_v2_subscriptions",
                "Protocol v2 subscriptions on this node",
            )?,
            recoveries: IntCounterVec::new(
                Opts::new(
                    "pgws_v2_recoveries_total",
                    "Protocol v2 subscriptions with `since`, by outcome",
                ),
                &["outcome"],
            )?,
            replayed: IntCounter::new(
                "pgws_v2_replayed_messages_total",
                "Messages replayed from history to recovering v2 subscriptions",
            )?,
            replayed_bytes: IntCounter::new(
                "pgws_v2_replayed_bytes_total",
                "Payload bytes replayed from history to recovering v2 subscriptions, counted as written",
            )?,
        };
        registry.register(Box::new(m.sockets.clone()))?;
        registry.register(Box::new(m.commands.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.recoveries.clone()))?;
        registry.register(Box::new(m.replayed.clone()))?;
        registry.register(Box::new(m.replayed_bytes.clone()))?;
        for command in [
            "connect",
            "subscribe",
            "unsubscribe",
            "publish",
            "refresh",
            "ping",
        ] {
            m.commands.with_label_values(&[command]);
        }
        for code in pgws_protocol::v2::ErrorCode::ALL {
            m.errors.with_label_values(&[&code.code().to_string()]);
        }
        for outcome in RecoveryOutcome::ALL {
            m.recoveries.with_label_values(&[outcome.label()]);
        }
        Ok(m)
    }

    /// A command arrived.
    pub fn command(&self, name: &str) {
        self.commands.with_label_values(&[name]).inc();
    }

    /// A command was answered with an error; logged at debug (clients
    /// cause these).
    pub fn error(&self, session: u64, code: pgws_protocol::v2::ErrorCode, reason: &str) {
        tracing::debug!(session, code = code.code(), reason, "v2 command refused");
        self.errors
            .with_label_values(&[&code.code().to_string()])
            .inc();
    }

    /// A recovery ended.
    pub fn recovery(&self, outcome: RecoveryOutcome, replayed: usize) {
        self.recoveries.with_label_values(&[outcome.label()]).inc();
        self.replayed.inc_by(replayed as u64);
    }
}

/// Server-Sent Events' metrics.
#[derive(Clone)]
pub struct SseMetrics {
    /// Open event streams.
    pub streams: IntGauge,
    /// Event streams opened.
    pub accepted: IntCounter,
    /// Message events written (live and replayed).
    pub events: IntCounter,
    /// Message events replayed from history.
    pub replayed: IntCounter,
    /// `pgws-reset` events: a `Last-Event-ID` that could not be recovered.
    pub resets: IntCounter,
    recoveries: IntCounterVec,
}

impl SseMetrics {
    fn register(registry: &Registry) -> prometheus::Result<SseMetrics> {
        let m = SseMetrics {
            streams: IntGauge::new("pgws_sse_streams", "Open Server-Sent Events streams")?,
            accepted: IntCounter::new(
                "pgws_sse_streams_accepted_total",
                "Server-Sent Events streams opened",
            )?,
            events: IntCounter::new(
                "pgws_sse_events_total",
                "Message events written to event streams, live and replayed",
            )?,
            replayed: IntCounter::new(
                "pgws_sse_replayed_events_total",
                "Message events replayed from history after a Last-Event-ID",
            )?,
            resets: IntCounter::new(
                "pgws_sse_resets_total",
                "pgws-reset events: a channel's Last-Event-ID position could not be recovered",
            )?,
            recoveries: IntCounterVec::new(
                Opts::new(
                    "pgws_sse_recoveries_total",
                    "Channels of event streams opened with Last-Event-ID, by outcome",
                ),
                &["outcome"],
            )?,
        };
        for c in [&m.accepted, &m.events, &m.replayed, &m.resets] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(m.streams.clone()))?;
        registry.register(Box::new(m.recoveries.clone()))?;
        for outcome in RecoveryOutcome::ALL {
            m.recoveries.with_label_values(&[outcome.label()]);
        }
        Ok(m)
    }

    /// A channel's recovery ended.
    pub fn recovery(&self, outcome: RecoveryOutcome) {
        self.recoveries.with_label_values(&[outcome.label()]).inc();
    }
}

/// How an HTTP publish was answered.
#[derive(Debug, Clone, Copy)]
pub enum PublishOutcome {
    /// 202, published.
    Accepted,
    /// 202, a retry of an `Idempotency-Key` already used: not published again.
    Replayed,
    /// 401/403: the token.
    Refused,
    /// 400/413/415: the request.
    BadRequest,
    /// 503/504: the bus.
    Unavailable,
}

impl PublishOutcome {
    const ALL: [PublishOutcome; 5] = [
        PublishOutcome::Accepted,
        PublishOutcome::Replayed,
        PublishOutcome::Refused,
        PublishOutcome::BadRequest,
        PublishOutcome::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            PublishOutcome::Accepted => "accepted",
            PublishOutcome::Replayed => "replayed",
            PublishOutcome::Refused => "refused",
            PublishOutcome::BadRequest => "bad_request",
            PublishOutcome::Unavailable => "unavailable",
        }
    }
}

/// HTTP publish's metrics.
#[derive(Clone)]
pub struct PublishMetrics {
    outcomes: IntCounterVec,
    /// Standalone: idempotency keys remembered.
    pub idempotency_keys: IntGauge,
    /// Standalone: keys forgotten before their time (PGWS_IDEMPOTENCY_MAX_KEYS).
    pub idempotency_evicted: IntCounter,
}

impl PublishMetrics {
    fn register(registry: &Registry) -> prometheus::Result<PublishMetrics> {
        let m = PublishMetrics {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "pgws_http_publish_total",
                    "HTTP publish requests (POST), by outcome",
                ),
                &["outcome"],
            )?,
            idempotency_keys: IntGauge::new(
                "pgws_idempotency_keys",
                "Standalone: Idempotency-Keys remembered in memory",
            )?,
            idempotency_evicted: IntCounter::new(
                "pgws_idempotency_evicted_total",
                "Standalone: Idempotency-Keys forgotten before PGWS_IDEMPOTENCY_TTL because PGWS_IDEMPOTENCY_MAX_KEYS were held",
            )?,
        };
        registry.register(Box::new(m.outcomes.clone()))?;
        registry.register(Box::new(m.idempotency_keys.clone()))?;
        registry.register(Box::new(m.idempotency_evicted.clone()))?;
        for outcome in PublishOutcome::ALL {
            m.outcomes.with_label_values(&[outcome.label()]);
        }
        Ok(m)
    }

    /// An HTTP publish was answered; logged at debug (clients cause most).
    pub fn outcome(&self, outcome: PublishOutcome, status: u16, reason: &str) {
        tracing::debug!(
            outcome = outcome.label(),
            status,
            reason,
            "HTTP publish answered"
        );
        self.outcomes.with_label_values(&[outcome.label()]).inc();
    }
}

/// Every gateway metric.
#[derive(Clone)]
pub struct Metrics {
    /// The registry all of the process's metrics live in.
    pub registry: Registry,
    connections: IntGaugeVec,
    accepted: IntCounter,
    refused: IntCounterVec,
    closed: IntCounterVec,
    /// Frames written to sockets.
    pub delivered: IntCounter,
    /// Payload bytes written to sockets.
    pub delivered_bytes: IntCounter,
    /// Messages received from sockets (that became NOTIFYs).
    pub received: IntCounter,
    /// Payload bytes received from sockets.
    pub received_bytes: IntCounter,
    rejected: IntCounterVec,
    /// Notification received → frame written, in seconds.
    pub latency: Histogram,
    /// Sockets cut off because their send queue was full.
    slow_consumers: IntCounter,
    /// Messages that did not fit a socket's send queue.
    queue_drops: IntCounter,
    /// Notifications for channels with no local reader.
    pub unrouted: IntCounter,
    /// Messages not sent to a socket because it published them itself and
    /// asked for no echo.
    pub echo_suppressed: IntCounter,
    /// Channels with at least one local reader.
    pub channels: IntGauge,
    /// Connections accepted and not yet upgraded or closed.
    pub pending: IntGauge,
    /// Open HTTP/2 connections.
    pub http2_connections: IntGauge,
    /// HTTP/2 connections ended with an error (a protocol error, too many
    /// resets, an unanswered ping).
    pub http2_errors: IntCounter,
    /// Protocol v2.
    pub v2: V2Metrics,
    /// Server-Sent Events.
    pub sse: SseMetrics,
    /// HTTP publish.
    pub publish: PublishMetrics,
}

impl Metrics {
    /// Create the registry and register the gateway's metrics.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("pgws_connections", "Open websockets by mode"),
            &["mode"],
        )?;
        let accepted = IntCounter::new(
            "pgws_connections_accepted_total",
            "Websocket upgrades accepted",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "pgws_connections_refused_total",
                "Websocket upgrades, event streams and HTTP publishes refused, by reason",
            ),
            &["reason"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "pgws_connections_closed_total",
                "Websockets and event streams ended, by reason",
            ),
            &["reason"],
        )?;
        let delivered = IntCounter::new(
            "pgws_messages_delivered_total",
            "Messages written to websockets",
        )?;
        let delivered_bytes = IntCounter::new(
            "pgws_bytes_delivered_total",
            "Payload bytes written to websockets",
        )?;
        let received = IntCounter::new(
            "pgws_messages_received_total",
            "Messages from websockets queued for NOTIFY",
        )?;
        let received_bytes = IntCounter::new(
            "pgws_bytes_received_total",
            "Payload bytes received from websockets",
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "pgws_messages_rejected_total",
                "Messages from websockets that did not become a NOTIFY, by reason",
            ),
            &["reason"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "pgws_delivery_latency_seconds",
                "From the notification reaching the gateway's process to the frame written on the socket",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let slow_consumers = IntCounter::new(
            "pgws_slow_consumer_disconnects_total",
            "Websockets closed (3008) because their send queue was full",
        )?;
        let queue_drops = IntCounter::new(
            "pgws_send_queue_drops_total",
            "Messages that did not fit a socket's send queue (that socket is then closed with 3008)",
        )?;
        let unrouted = IntCounter::new(
            "pgws_notifications_unrouted_total",
            "Notifications for a channel with no reader on this node",
        )?;
        let echo_suppressed = IntCounter::new(
            "pgws_echo_suppressed_total",
            "Messages not sent to the socket that published them (subscribe echo:false, v1 ?echo=false)",
        )?;
        let channels = IntGauge::new(
            "pgws_channels",
            "Channels with at least one reader on this node",
        )?;
        let pending = IntGauge::new(
            "pgws_http_pending_connections",
            "Connections accepted and not yet upgraded or closed (TLS handshakes, HTTP requests)",
        )?;
        let http2_connections = IntGauge::new(
            "pgws_http2_connections",
            "Open HTTP/2 connections (TLS listener, ALPN h2)",
        )?;
        let http2_errors = IntCounter::new(
            "pgws_http2_connection_errors_total",
            "HTTP/2 connections ended with an error: a protocol error, too many reset streams, an unanswered ping",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("pgws_build_info", "Build information"),
            &["version", "role"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "gateway"])
            .set(1);

        registry.register(Box::new(connections.clone()))?;
        for c in [
            &accepted,
            &delivered,
            &delivered_bytes,
            &received,
            &received_bytes,
            &slow_consumers,
            &queue_drops,
            &unrouted,
            &echo_suppressed,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        for v in [&refused, &closed, &rejected] {
            registry.register(Box::new(v.clone()))?;
        }
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(channels.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(http2_connections.clone()))?;
        registry.register(Box::new(http2_errors.clone()))?;
        registry.register(Box::new(build_info))?;

        // Create every labelled series up front so dashboards see zeros.
        for mode in ["r", "w", "rw"] {
            connections.with_label_values(&[mode]);
        }
        for refusal in Refusal::all() {
            refused.with_label_values(&[refusal.label()]);
        }
        for reason in CloseReason::ALL {
            closed.with_label_values(&[reason.label()]);
        }
        closed.with_label_values(&["client_closed"]);
        closed.with_label_values(&["connection_lost"]);
        for r in Rejection::ALL {
            rejected.with_label_values(&[r.label()]);
        }

        let v2 = V2Metrics::register(&registry)?;
        let sse = SseMetrics::register(&registry)?;
        let publish = PublishMetrics::register(&registry)?;
        Ok(Metrics {
            registry,
            connections,
            accepted,
            refused,
            closed,
            delivered,
            delivered_bytes,
            received,
            received_bytes,
            rejected,
            latency,
            slow_consumers,
            queue_drops,
            unrouted,
            echo_suppressed,
            channels,
            pending,
            http2_connections,
            http2_errors,
            v2,
            sse,
            publish,
        })
    }

    /// An upgrade was refused; logged at debug (clients cause these).
    pub fn refused(&self, refusal: &Refusal) {
        tracing::debug!(reason = %refusal, status = refusal.status().as_u16(), "websocket refused");
        self.refused.with_label_values(&[refusal.label()]).inc();
    }

    /// An upgrade was accepted.
    pub fn accepted(&self) {
        self.accepted.inc();
    }

    /// The open-connections gauge for `mode`.
    pub fn open(&self, mode: &str) -> IntGauge {
        self.connections.with_label_values(&[mode])
    }

    /// A socket ended for `reason` (a close reason label, `client_closed`
    /// or `connection_lost`).
    pub fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }

    /// A socket's send queue was full: the message is dropped for it and,
    /// the `first` time, the socket is being closed as a slow consumer.
    pub fn queue_full(&self, session: u64, first: bool) {
        self.queue_drops.inc();
        if first {
            self.slow_consumers.inc();
            tracing::info!(session, "send queue full: closing a slow consumer");
        }
    }

    /// A client message did not become a NOTIFY.
    pub fn rejected(&self, rejection: Rejection) {
        self.rejected.with_label_values(&[rejection.label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_latency_buckets_reach_ten_seconds() {
        let metrics = Metrics::new().expect("metrics");
        metrics.latency.observe(8.0);
        let families = metrics.registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "pgws_delivery_latency_seconds")
            .expect("exported");
        let buckets = family.get_metric()[0].get_histogram().get_bucket();
        let last = buckets.last().expect("buckets");
        assert_eq!(last.upper_bound(), 10.0);
        assert_eq!(
            last.cumulative_count(),
            1,
            "8 s lands below 10 s, not in +Inf"
        );
    }
}
