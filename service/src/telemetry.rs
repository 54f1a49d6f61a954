//! Logs and traces for both binaries.
//!
//! Logs: `tracing` to stderr, text or JSON (`PGWS_LOG_FORMAT`), filtered by
//! `PGWS_LOG_LEVEL` (`RUST_LOG` wins).
//!
//! Traces: OpenTelemetry over OTLP/HTTP, on only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set and `OTEL_SDK_DISABLED` is not `true`. The exporter reads the other
//! standard variables itself (`OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf`
//! or `http/json`, `…_HEADERS`, `…_TIMEOUT`; `OTEL_SERVICE_NAME`;
//! `OTEL_BSP_*` for batching). Spans cover the websocket handshake and token
//! check, the coordinator's publish, each gateway's fan-out and the write
//! relay; the W3C trace context travels inside the Redis messages, so one
//! NOTIFY and all its deliveries form one trace.
//!
//! Per-message spans cost time on the hot path, so code creates them only
//! when [`enabled`] says traces are on.

use crate::config::{err, ConfigError, Sources};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log output settings (`PGWS_LOG_FORMAT`, `PGWS_LOG_LEVEL`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Emit JSON lines instead of text.
    pub json: bool,
    /// The tracing filter.
    pub level: String,
}

impl LogConfig {
    /// Read `PGWS_LOG_FORMAT` and `PGWS_LOG_LEVEL`.
    pub fn from_sources(sources: &Sources) -> Result<LogConfig, ConfigError> {
        const FORMAT: &str = "PGWS_LOG_FORMAT";
        const LEVEL: &str = "PGWS_LOG_LEVEL";
        Ok(LogConfig {
            json: match sources.required(FORMAT)?.as_str() {
                "text" => false,
                "json" => true,
                other => return Err(err(FORMAT, format!("expected text or json, got {other:?}"))),
            },
            level: sources.required(LEVEL)?,
        })
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (so per-message spans are worth making).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Keeps the trace exporter alive; flushes it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: flushing traces failed: {e}");
            }
        }
    }
}

fn otlp_configured() -> bool {
    let set = |name: &str| {
        std::env::var(name)
            .map(|v| !v.trim().is_empty())
            .unwrap_or(false)
    };
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Set up logging, and tracing export when configured. `service` is the
/// default `service.name` (`OTEL_SERVICE_NAME` wins).
pub fn init(log: &LogConfig, service: &str) -> Telemetry {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| log.level.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if log.json {
        fmt.json().boxed()
    } else {
        fmt.with_ansi(false).boxed()
    };
    let fmt = fmt.with_filter(filter);

    let mut provider = None;
    let mut otel_error = None;
    let otel = if otlp_configured() {
        match build_provider(service) {
            Ok(p) => {
                let tracer = p.tracer("pgws");
                provider = Some(p);
                // Spans of ours only, at info and above, whatever the log filter.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(EnvFilter::new("pgws_gateway=info,pgws_coordinator=info"));
                Some(layer)
            }
            Err(e) => {
                otel_error = Some(e);
                None
            }
        }
    } else {
        None
    };
    tracing_subscriber::registry().with(fmt).with(otel).init();
    crate::panics::install_hook();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "OTLP trace export is configured but could not start: traces are off");
    } else if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { provider }
}

fn build_provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build())
}

/// The W3C `traceparent` of `span`, to carry across Redis.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Make `span` a child of the remote span described by `traceparent`.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
