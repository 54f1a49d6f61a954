//! OpenTelemetry traces: with the standard OTEL_EXPORTER_OTLP_* variables
//! set, both binaries export spans over OTLP/HTTP, and one NOTIFY with its
//! deliveries (and one write with its relay) form one trace across
//! processes. The receiver is a real HTTP server inside the test.

mod common;

use common::cluster::*;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One exported span.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP (JSON) trace receiver.
struct Receiver {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn collect(body: &Value, out: &mut Vec<Span>) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| text(&a["value"]["stringValue"]))
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: text(&s["name"]),
                    trace_id: text(&s["traceId"]),
                    span_id: text(&s["spanId"]),
                    parent_span_id: text(&s["parentSpanId"]),
                });
            }
        }
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let sink = sink.clone();
                            async move {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                    collect(&v, &mut sink.lock().expect("lock"));
                                }
                                let mut ok = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from_static(b"{}"),
                                ));
                                ok.headers_mut().insert(
                                    "content-type",
                                    hyper::header::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, std::convert::Infallible>(ok)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { port, spans, task }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/json".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    /// Wait until `found` picks something out of the spans received so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(t) = found(&self.spans.lock().expect("lock")) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never exported: {:#?}",
                self.spans.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_notify_and_its_deliveries_form_one_trace_and_so_does_a_write() {
    let receiver = Receiver::start().await;
    let c = Cluster::start_full(&redis_url(), false, receiver.env(), 1, 2).await;
    let chat = unique("chat");
    let mut readers = c.readers(&chat).await;
    receiver
        .wait_for("the handshake span", |spans| {
            spans
                .iter()
                .find(|s| s.name == "pgws.handshake" && s.service == "pgws-gateway")
                .cloned()
        })
        .await;

    let db = db().await;
    c.notify(&db, &chat, "traced").await;
    for r in readers.iter_mut() {
        assert_eq!(payload_of(&next_text(r).await), "traced");
    }
    let (publish, fanouts) = receiver
        .wait_for("publish with two fan-outs", |spans| {
            spans
                .iter()
                .filter(|s| s.name == "pgws.publish" && s.service == "pgws-coordinator")
                .find_map(|p| {
                    let children: Vec<Span> = spans
                        .iter()
                        .filter(|s| {
                            s.name == "pgws.fanout"
                                && s.trace_id == p.trace_id
                                && s.parent_span_id == p.span_id
                        })
                        .cloned()
                        .collect();
                    (children.len() == 2).then(|| (p.clone(), children))
                })
        })
        .await;
    assert!(fanouts.iter().all(|f| f.service == "pgws-gateway"));
    assert!(!publish.trace_id.is_empty());

    let mut writer = connect(&c.url(0, &format!("{chat}/{}", token(json!({"mode":"w"}))))).await;
    send(&mut writer, "write me").await;
    receiver
        .wait_for("write with its relay", |spans| {
            spans
                .iter()
                .filter(|s| s.name == "pgws.write" && s.service == "pgws-gateway")
                .find_map(|w| {
                    spans
                        .iter()
                        .find(|s| {
                            s.name == "pgws.relay"
                                && s.trace_id == w.trace_id
                                && s.service == "pgws-coordinator"
                        })
                        .cloned()
                })
        })
        .await;
}

#[tokio::test]
async fn otel_sdk_disabled_turns_export_off() {
    let receiver = Receiver::start().await;
    let gw = receiver
        .env()
        .into_iter()
        .fold(Server::gateway(), |b, (k, v)| b.env(&k, v))
        .env("OTEL_SDK_DISABLED", "true")
        .start()
        .await;
    let mut ws = connect(&gw.url(&format!("chat/{}", token(json!({"mode":"rw"}))))).await;
    send(&mut ws, "untraced").await;
    next_text(&mut ws).await;
    drop(ws);
    let mut gw = gw;
    gw.signal("TERM");
    gw.wait_exit(WAIT).await; // exiting flushes any pending export
    assert!(
        !gw.log_text().contains("exporting traces"),
        "{}",
        gw.log_text()
    );
    assert!(receiver.spans.lock().expect("lock").is_empty());
}
