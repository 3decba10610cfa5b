//! Traces as docs/operations.md ("Traces") promises them: with `telemetry.otlp`, the `event`,
//! `store.commit`, `transform`/`plugin` and `delivery` spans reach a real OTLP/HTTP receiver
//! (decoded with the protocol's own protobuf types) as one trace per event, the sender's when it
//! sent a valid `traceparent`; the destination gets a `traceparent` naming the delivery span; an
//! invalid one is ignored; the last spans are sent at shutdown. Without the section nothing is
//! sent and a sender's `traceparent` passes through as it came. Runs the binary: the exporter is
//! part of the process's logging.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use crate::harness::admin_api::AdminApi;
use crate::harness::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SENDER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attrs: HashMap<String, String>,
    error: bool,
    service: String,
    /// The export request's `x-tenant` header (`telemetry.otlp.headers` in the tests that set it).
    tenant: Option<String>,
}

/// How a [`Receiver`] answers each export.
#[derive(Debug, Clone, Copy)]
enum Answering {
    /// Takes every span (an empty `ExportTraceServiceResponse`).
    All,
    /// Takes the spans but says it rejected this many (`partial_success`).
    Rejecting(i64),
    /// Decodes the spans, then answers `503` with a text body.
    Failing,
    /// Takes every span, answering the first export after this long (the others at once).
    SlowFirst(Duration),
}

/// An OTLP/HTTP receiver on loopback: `POST /v1/traces` with a protobuf body, decoded with the
/// protocol's generated types; anything else fails the test.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Exports answered so far.
    answered: Arc<AtomicUsize>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::answering(Answering::All).await
    }

    async fn answering(how: Answering) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let slowed = Arc::new(AtomicBool::new(false));
        let (s, f, a) = (spans.clone(), failures.clone(), answered.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, f, a, slowed) = (s.clone(), f.clone(), a.clone(), slowed.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (s, f, a, slowed) = (s.clone(), f.clone(), a.clone(), slowed.clone());
                        async move {
                            let tenant = req.headers().get("x-tenant").map(|v| v.to_str().unwrap_or("?").to_string());
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers().get("content-type").is_some_and(|v| v == "application/x-protobuf");
                            if !ok {
                                f.lock().unwrap().push(format!(
                                    "unexpected {} {} {:?}",
                                    req.method(),
                                    req.uri(),
                                    req.headers()
                                ));
                            }
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(export) => s.lock().unwrap().extend(
                                    flatten(export).into_iter().map(|got| Got { tenant: tenant.clone(), ..got }),
                                ),
                                Err(e) => f.lock().unwrap().push(format!("not an ExportTraceServiceRequest: {e}")),
                            }
                            let mut answer = ExportTraceServiceResponse::default();
                            match how {
                                Answering::All => {}
                                Answering::Rejecting(n) => {
                                    answer.partial_success = Some(ExportTracePartialSuccess {
                                        rejected_spans: n,
                                        error_message: "too old".into(),
                                    })
                                }
                                Answering::Failing => {
                                    a.fetch_add(1, Ordering::SeqCst);
                                    let mut resp = http::Response::new(Full::new(Bytes::from("overloaded")));
                                    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                    return Ok::<_, Infallible>(resp);
                                }
                                Answering::SlowFirst(wait) => {
                                    if a.load(Ordering::SeqCst) == 0 && !slowed.swap(true, Ordering::SeqCst) {
                                        tokio::time::sleep(wait).await
                                    }
                                }
                            }
                            a.fetch_add(1, Ordering::SeqCst);
                            let mut resp = http::Response::new(Full::new(Bytes::from(answer.encode_to_vec())));
                            resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { addr, spans, failures, answered, _accept: accept }
    }

    fn spans(&self) -> Vec<Got> {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "the OTLP receiver saw: {failures:?}");
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for the spans received.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(start.elapsed() < WAIT, "no {what} within {WAIT:?}; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Got {
                    name: s.name,
                    trace: hex::encode(&s.trace_id),
                    id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    attrs: s
                        .attributes
                        .into_iter()
                        .map(|kv| (kv.key, text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                        .collect(),
                    error: s.status.is_some_and(|st| st.code == StatusCode::Error as i32),
                    service: service.clone(),
                    tenant: None,
                });
            }
        }
    }
    out
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn config(sink: &Sink, telemetry: &str) -> String {
    let noop = manifest_dir().join("plugins/dist/noop.wasm");
    assert!(noop.exists(), "{} is missing: run plugins/build.sh first", noop.display());
    format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
{telemetry}
sources:
  in: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  out: {{ url: "{url}", sign: {{ secret: {SECRET} }} }}
routes:
  - {{ name: all, source: in, to: [out], transform: [ {{ plugin: "{noop}" }} ] }}
"#,
        url = sink.url("/out"),
        noop = noop.display(),
    )
}

/// The one span named `name` whose `event_id` is `id` (or, for spans without it, in `trace`).
fn one<'a>(spans: &'a [Got], name: &str, trace: &str) -> &'a Got {
    let found: Vec<&Got> = spans.iter().filter(|s| s.name == name && s.trace == trace).collect();
    assert_eq!(found.len(), 1, "one {name} span in trace {trace}: {spans:#?}");
    found[0]
}

/// The destination's request for event `id`.
fn delivered(sink: &Sink, body: &str) -> Recorded {
    sink.requests().into_iter().find(|r| r.body == body.as_bytes()).unwrap_or_else(|| panic!("no delivery of {body}"))
}

#[tokio::test]
async fn one_trace_from_sender_through_the_gateway_to_the_destination() {
    let receiver = Receiver::start().await;
    let sink = Sink::start().await;
    let telemetry = format!(
        "telemetry:\n  otlp: {{ endpoint: \"http://{}/\", service_name: gw-under-test, headers: {{ x-tenant: t1 }} }}",
        receiver.addr
    );
    let mut gw = Gateway::start(&config(&sink, &telemetry)).await;

    let sender = format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01");
    let a = gw.post("/in", &[("traceparent", &sender), ("tracestate", "vendor=x")], r#"{"n":"a"}"#).await;
    let b = gw.post("/in", &[], r#"{"n":"b"}"#).await;
    let c = gw.post("/in", &[("traceparent", "00-ZZ-not-a-trace-01")], r#"{"n":"c"}"#).await;
    for answer in [&a, &b, &c] {
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    let (a, b, c) = (a.accepted_id(), b.accepted_id(), c.accepted_id());
    sink.wait_for(3, WAIT).await;
    gw.wait_for_log_lines(&["delivered"], 3, WAIT).await;
    // the batch is sent every 5 s: what these spans reach the receiver by is the flush at shutdown
    assert!(gw.terminate(WAIT).await.success(), "{}", gw.logs());
    let spans = receiver
        .wait_until("delivery spans of the three events", |s| s.iter().filter(|s| s.name == "delivery").count() >= 3)
        .await;
    assert!(spans.iter().all(|s| s.service == "gw-under-test"), "{spans:#?}");
    assert!(spans.iter().all(|s| s.tenant.as_deref() == Some("t1")), "the configured headers go with every export");

    // a: the sender's trace; the event span is the sender span's child
    let event = one(&spans, "event", SENDER_TRACE);
    assert_eq!(event.parent, SENDER_SPAN);
    assert_eq!(event.attrs["event_id"], a);
    assert_eq!(event.attrs["source"], "in");
    assert_eq!(event.attrs["routes"], "all");
    assert_eq!(event.attrs["http.response.status_code"], "202");
    assert!(!event.error);
    let commit = one(&spans, "store.commit", SENDER_TRACE);
    assert_eq!(commit.parent, event.id, "the commit is in the event span");
    let transform = one(&spans, "transform", SENDER_TRACE);
    assert_eq!((transform.parent.as_str(), transform.attrs["route"].as_str()), (event.id.as_str(), "all"));
    let plugin = one(&spans, "plugin", SENDER_TRACE);
    assert_eq!(plugin.parent, transform.id);
    assert_eq!(plugin.attrs["outcome"], "emit 1");
    assert!(plugin.attrs["plugin"].contains("noop"), "{plugin:?}");
    let delivery = one(&spans, "delivery", SENDER_TRACE);
    assert_eq!(delivery.parent, event.id, "the delivery is the event span's child");
    for (k, v) in [
        ("event_id", a.as_str()),
        ("destination", "out"),
        ("route", "all"),
        ("attempt", "1"),
        ("outcome", "delivered"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(delivery.attrs[k], v, "{k} of {delivery:?}");
    }
    assert!(!delivery.attrs["delivery"].is_empty());
    // the destination's parent is the delivery span; the signature still holds
    let got = delivered(&sink, r#"{"n":"a"}"#);
    assert_eq!(got.must("traceparent"), format!("00-{SENDER_TRACE}-{}-01", delivery.id));
    assert_eq!(got.must("tracestate"), "vendor=x");
    assert_standard_webhooks(&got, SECRET);

    // b: no traceparent: the trace id is the event id's UUID, the event span its root
    let trace_b = b.strip_prefix("evt_").unwrap();
    let event = one(&spans, "event", trace_b);
    assert_eq!((event.parent.as_str(), event.attrs["event_id"].as_str()), ("", b.as_str()));
    let delivery = one(&spans, "delivery", trace_b);
    assert_eq!(delivery.parent, event.id);
    assert_eq!(one(&spans, "store.commit", trace_b).parent, event.id);
    let got = delivered(&sink, r#"{"n":"b"}"#);
    assert_eq!(got.must("traceparent"), format!("00-{trace_b}-{}-01", delivery.id));
    assert_standard_webhooks(&got, SECRET);

    // c: an invalid traceparent is ignored: a trace of its own, as b's
    let trace_c = c.strip_prefix("evt_").unwrap();
    let event = one(&spans, "event", trace_c);
    assert_eq!(event.parent, "");
    assert_eq!(one(&spans, "delivery", trace_c).parent, event.id);
    let got = delivered(&sink, r#"{"n":"c"}"#);
    assert!(got.must("traceparent").starts_with(&format!("00-{trace_c}-")), "{:?}", got.must("traceparent"));
}

#[tokio::test]
async fn a_failed_attempt_is_a_failed_span_and_its_retry_joins_the_same_trace() {
    let receiver = Receiver::start().await;
    let sink = Sink::with_script(vec![Reply::status(503)]).await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\" }}", receiver.addr);
    let yaml = config(&sink, &telemetry).replace(
        &format!("sign: {{ secret: {SECRET} }}"),
        "sign: { scheme: none }, retry: { schedule: [200ms], jitter: 0 }",
    );
    let mut gw = Gateway::start(&yaml).await;
    let id = gw.post("/in", &[], "{}").await.accepted_id();
    sink.wait_for(2, WAIT).await;
    gw.wait_for_log("delivered", WAIT).await;
    assert!(gw.terminate(WAIT).await.success());
    let trace = id.strip_prefix("evt_").unwrap().to_string();
    let spans = receiver
        .wait_until("two delivery spans", |s| {
            s.iter().filter(|s| s.name == "delivery" && s.trace == trace).count() == 2
        })
        .await;
    assert!(spans.iter().all(|s| s.service == "hookyard"), "the default service name");
    let event = one(&spans, "event", &trace);
    let mut attempts: Vec<&Got> = spans.iter().filter(|s| s.name == "delivery").collect();
    attempts.sort_by_key(|s| s.attrs["attempt"].clone());
    assert_eq!(attempts[0].attrs["http.response.status_code"], "503");
    assert_eq!(attempts[0].attrs["outcome"], "retry");
    assert!(attempts[0].error, "a failed attempt is an error: {:?}", attempts[0]);
    assert_eq!(attempts[1].attrs["outcome"], "delivered");
    assert!(!attempts[1].error);
    assert!(attempts.iter().all(|s| s.parent == event.id), "{attempts:#?}");
    let sent: Vec<String> = sink.requests().iter().map(|r| r.must("traceparent").to_string()).collect();
    assert_eq!(sent, [format!("00-{trace}-{}-01", attempts[0].id), format!("00-{trace}-{}-01", attempts[1].id)]);
}

#[tokio::test]
async fn without_telemetry_nothing_is_exported_and_a_traceparent_passes_through() {
    let receiver = Receiver::start().await;
    let sink = Sink::start().await;
    let mut gw = Gateway::start(&config(&sink, "")).await;
    let sender = format!("00-{SENDER_TRACE}-{SENDER_SPAN}-01");
    assert_eq!(gw.post("/in", &[("traceparent", &sender)], "{}").await.status, 202);
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    let got = sink.wait_for(2, WAIT).await;
    let mut seen: Vec<Option<&str>> = got.iter().map(|r| r.header("traceparent")).collect();
    seen.sort();
    assert_eq!(seen, [None, Some(sender.as_str())], "forwarded as it came, none added");
    assert!(gw.terminate(WAIT).await.success());
    assert!(receiver.spans().is_empty());
    assert!(!gw.logs_contain("OTLP"), "{}", gw.logs());
}

/// `sample_ratio` keeps or leaves out whole traces, decided by the trace id: an event's spans and
/// its deliveries' together. With 0.5, of 40 events about half are exported, each with all of its
/// spans; the others export nothing, and every event is still delivered.
#[tokio::test]
async fn a_sample_ratio_keeps_or_leaves_out_whole_traces() {
    let receiver = Receiver::start().await;
    let sink = Sink::start().await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\", sample_ratio: 0.5 }}", receiver.addr);
    let mut gw = Gateway::start(&config(&sink, &telemetry)).await;
    let mut traces = Vec::new();
    for n in 0..40 {
        let id = gw.post("/in", &[], format!("{{\"n\":{n}}}")).await.accepted_id();
        traces.push(id.strip_prefix("evt_").unwrap().to_string());
    }
    sink.wait_for(40, WAIT).await;
    gw.wait_for_log_lines(&["delivered"], 40, WAIT).await;
    assert!(gw.terminate(WAIT).await.success(), "{}", gw.logs());
    // every span the flush sent has arrived once the delivery spans match the event spans
    let spans = receiver
        .wait_until("a delivery span for every exported event span", |s| {
            let events = s.iter().filter(|s| s.name == "event").count();
            events > 0 && s.iter().filter(|s| s.name == "delivery").count() == events
        })
        .await;
    let kept: Vec<&String> = traces.iter().filter(|t| spans.iter().any(|s| s.trace == **t)).collect();
    assert!((8..=32).contains(&kept.len()), "{} of 40 traces kept at 0.5", kept.len());
    for t in &kept {
        for name in ["event", "store.commit", "delivery"] {
            assert_eq!(spans.iter().filter(|s| s.trace == **t && s.name == name).count(), 1, "{name} of trace {t}");
        }
    }
    // every delivery still names its event's trace; the flags say whether it was kept
    for r in sink.requests() {
        let parent = r.must("traceparent").to_string();
        let trace =
            traces.iter().find(|t| parent.starts_with(&format!("00-{t}-"))).unwrap_or_else(|| panic!("{parent}"));
        let flags = if kept.contains(&trace) { "01" } else { "00" };
        assert!(parent.ends_with(&format!("-{flags}")), "{parent}: kept {}", kept.contains(&trace));
    }
}

/// Spans go out while the gateway runs, every `OTEL_BSP_SCHEDULE_DELAY` (here 100 ms), not only
/// at shutdown; `hookyard_otlp_spans_total{result="exported"}` counts what the collector took.
#[tokio::test]
async fn spans_are_sent_while_running_every_schedule_delay_and_counted() {
    let receiver = Receiver::start().await;
    let sink = Sink::start().await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\" }}", receiver.addr);
    let gw = Gateway::start_env(&config(&sink, &telemetry), &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    let id = gw.post("/in", &[], "{}").await.accepted_id();
    let trace = id.strip_prefix("evt_").unwrap().to_string();
    sink.wait_for(1, WAIT).await;
    let spans = receiver
        .wait_until("the event's five spans, the gateway still running", |s| {
            s.iter().filter(|s| s.trace == trace).count() == 5
        })
        .await;
    for name in ["event", "store.commit", "transform", "plugin", "delivery"] {
        one(&spans, name, &trace);
    }
    let admin = AdminApi::of(&gw).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let exported = admin.metrics().await.get("hookyard_otlp_spans_total", &[("result", "exported")]);
        if exported == 5.0 {
            break;
        }
        assert!(Instant::now() < deadline, "hookyard_otlp_spans_total{{result=\"exported\"}} is {exported}, not 5");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A collector that fails loses spans, never events: every event is still accepted and delivered;
/// the failure is logged (with the collector's answer, at most every 30 s) and counted.
#[tokio::test]
async fn a_failing_collector_loses_spans_never_events() {
    let receiver = Receiver::answering(Answering::Failing).await;
    let sink = Sink::start().await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\" }}", receiver.addr);
    let mut gw = Gateway::start_env(&config(&sink, &telemetry), &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    // three events, each exported (and refused) before the next
    for n in 0..3 {
        assert_eq!(gw.post("/in", &[], format!("{{\"n\":{n}}}")).await.status, 202);
        sink.wait_for(n + 1, WAIT).await;
        let deadline = Instant::now() + WAIT;
        while receiver.answered.load(Ordering::SeqCst) <= n {
            assert!(Instant::now() < deadline, "no export of event {n}'s spans");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let line = gw
        .wait_for_log(
            "could not export spans to the OTLP collector: the collector answered 503 Service Unavailable: overloaded",
            WAIT,
        )
        .await;
    assert!(line.contains(&format!("http://{}/v1/traces", receiver.addr)), "{line}");
    let admin = AdminApi::of(&gw).await;
    let deadline = Instant::now() + WAIT;
    while admin.metrics().await.get("hookyard_otlp_spans_total", &[("result", "failed")]) < 15.0 {
        assert!(Instant::now() < deadline, "the 15 spans of 3 events not counted as failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.terminate(WAIT).await.success(), "{}", gw.logs());
    // three exports or more refused, one warning: at most one every 30 s
    let warnings = gw.log_lines_with(&["could not export spans"]);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
}

/// A collector that takes a batch but rejects part of it (`partial_success`): what it rejected is
/// logged with its reason and counted apart from what it took.
#[tokio::test]
async fn spans_a_collector_rejects_are_logged_and_counted() {
    let receiver = Receiver::answering(Answering::Rejecting(2)).await;
    let sink = Sink::start().await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\" }}", receiver.addr);
    let gw = Gateway::start_env(&config(&sink, &telemetry), &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    sink.wait_for(1, WAIT).await;
    gw.wait_for_log("could not export spans to the OTLP collector: the collector rejected them: too old", WAIT).await;
    let admin = AdminApi::of(&gw).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let m = admin.metrics().await;
        let (exported, rejected) = (
            m.get("hookyard_otlp_spans_total", &[("result", "exported")]),
            m.get("hookyard_otlp_spans_total", &[("result", "rejected")]),
        );
        // the five spans of the event may come in more than one batch, each rejecting 2
        if exported + rejected == 5.0 && rejected >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "exported {exported}, rejected {rejected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A collector too slow to keep up never slows an event: with a queue of 5 spans
/// (`OTEL_BSP_MAX_QUEUE_SIZE`) and a collector that takes 5 s to answer the first export, ten
/// events are all accepted and delivered while that export still waits for its answer; the spans
/// that did not fit are dropped, logged and counted.
#[tokio::test]
async fn a_slow_collector_drops_spans_never_slows_events() {
    let receiver = Receiver::answering(Answering::SlowFirst(Duration::from_secs(5))).await;
    let sink = Sink::start().await;
    let telemetry = format!("telemetry:\n  otlp: {{ endpoint: \"http://{}\" }}", receiver.addr);
    let mut gw = Gateway::start_env(&config(&sink, &telemetry), &[("OTEL_BSP_MAX_QUEUE_SIZE", "5")]).await;
    for n in 0..10 {
        assert_eq!(gw.post("/in", &[], format!("{{\"n\":{n}}}")).await.status, 202);
    }
    sink.wait_for(10, WAIT).await;
    assert_eq!(receiver.answered.load(Ordering::SeqCst), 0, "every event was delivered before the first export ended");
    gw.wait_for_log("could not export spans to the OTLP collector: the queue of 5 spans was full", WAIT).await;
    // drops are counted when the exporter next takes from the queue: after the slow export
    let admin = AdminApi::of(&gw).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let dropped = admin.metrics().await.get("hookyard_otlp_spans_total", &[("result", "dropped")]);
        // of 50 spans, at most 5 in the queue and 10 in the exports under way (a full batch
        // and the one after it)
        if dropped >= 35.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{dropped} of 50 spans dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.terminate(WAIT).await.success(), "{}", gw.logs());
}

/// An `OTEL_BSP_*` variable that is not a positive whole number stops `hookyard run` with an
/// error naming it, rather than batching by a default the operator did not ask for.
#[tokio::test]
async fn a_bad_batching_variable_stops_the_gateway_naming_it() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let telemetry = "telemetry:\n  otlp: { endpoint: \"http://127.0.0.1:4318\" }";
    std::fs::write(&path, config(&sink, telemetry) + "\nadmin: { listen: \"127.0.0.1:0\" }\n").unwrap();
    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&path).env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "lots");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert!(
        out.stderr.contains(r#"telemetry.otlp: OTEL_BSP_MAX_EXPORT_BATCH_SIZE="lots" is not a positive whole number"#),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("listening on"), "{}", out.stdout);
}
