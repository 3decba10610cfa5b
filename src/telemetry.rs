//! Traces over OTLP (`telemetry.otlp`): the `tracing` spans the gateway already makes (`event`,
//! `delivery`, and, while exporting, `plugin` and `store.commit`) are bridged to OpenTelemetry
//! (tracing-opentelemetry) and sent in batches over OTLP/HTTP with protobuf bodies to
//! `<endpoint>/v1/traces`. The subscriber is the process's, so `hookyard run` installs this
//! (`cli/run.rs`) and shuts it down last, flushing what is queued; a reload cannot change it.
//!
//! One trace from sender to destination: an event's trace is its sender's (a valid W3C
//! `traceparent`), else derived from the event id (`evt_` + a UUIDv7: its 16 bytes *are* the trace
//! id, so an operator finds an event's trace by its id). The event span's own id is derived from
//! the event id too. A delivery runs later, maybe after a restart, knowing only the stored event
//! (its id and its stored headers, which keep the sender's `traceparent` and `tracestate`), so it
//! rebuilds the same two ids and makes its span a child of the event span with no schema change.
//! Outgoing requests then carry the delivery span as their `traceparent`.
//!
//! Must not: make any span, or do any work per event, beyond one atomic load when not exporting.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::OtlpConfig;

/// The W3C trace context header an outgoing request carries.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// How long one export may take (connect, send, answer); the SDK's batch thread waits no longer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is read no further than this (an OTLP answer is a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Spans are being exported: set while a [`Tracing`] runs. The subscriber is process-wide, and so
/// is this; everything per event asks it first.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported now (one atomic load).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp: {0}")]
pub struct TelemetryError(String);

/// The running exporter: a tracer provider with a batch span processor.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Sets up the exporter for `config`. Exports run on `runtime` (the SDK's batch thread hands
    /// each to it), so the HTTP client is the tokio one every other client here is.
    pub fn start(config: &OtlpConfig, runtime: tokio::runtime::Handle) -> Result<Tracing, TelemetryError> {
        let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
        let headers = config.headers.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers)
            .with_http_client(OtlpClient::new(runtime)?)
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
        // the SDK's defaults: a queue of 2048 spans (a collector that cannot keep up loses spans,
        // never slows an event), batches of 512, sent every 5 s (`OTEL_BSP_*` change them)
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_id_generator(EventIds::default())
            .with_sampler(ByTraceId(config.sample_ratio))
            .with_resource(resource)
            .build();
        SAMPLE_RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Tracing { provider })
    }

    /// The layer that turns `hookyard`'s spans into OpenTelemetry spans. No context activation
    /// (nothing here reads OpenTelemetry's current context; it would cost a thread-local push at
    /// every poll of an instrumented future), no code locations or thread names, no idle timings.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("hookyard"))
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    /// Sends what is queued and stops (at shutdown, after the last attempts ended, so their
    /// spans are not lost). Blocks on the SDK's thread, so off the runtime's workers.
    pub async fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(EXPORT_TIMEOUT)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not send the last spans to the OTLP collector"),
            Err(e) => tracing::warn!(error = %e, "could not send the last spans to the OTLP collector"),
        }
    }
}

/// The ids of an event's trace, known at ingress and rebuilt for each delivery from the stored
/// event alone.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTrace {
    /// The sender's, else the event id's 16 bytes.
    pub trace_id: TraceId,
    /// The event span's id, derived from the event id.
    pub span_id: SpanId,
    /// The sender's span (a valid `traceparent`, with its `tracestate`): the event span's parent.
    pub sender: Option<SpanContext>,
}

impl EventTrace {
    /// The trace of event `event_id` whose sender sent these `traceparent` and `tracestate`
    /// values (an invalid `traceparent` is ignored: the event starts a trace of its own).
    pub fn new(event_id: &str, traceparent: Option<&str>, tracestate: Option<&str>) -> EventTrace {
        let sender = traceparent.and_then(parse_traceparent).map(|(trace_id, span_id, flags)| {
            let state = tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
            SpanContext::new(trace_id, span_id, flags, true, state)
        });
        let trace_id = match &sender {
            Some(s) => s.trace_id(),
            None => derived_trace_id(event_id),
        };
        EventTrace { trace_id, span_id: derived_span_id(event_id), sender }
    }

    /// [`EventTrace::new`] from headers as stored (`name`, `value`; names in lower case). A
    /// header given more than once is taken as not given, as at ingress.
    pub fn from_headers<'a>(event_id: &str, headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> EventTrace {
        let (mut parent, mut state) = ((0, None), (0, None));
        for (k, v) in headers {
            let seen = match k {
                "traceparent" => &mut parent,
                "tracestate" => &mut state,
                _ => continue,
            };
            *seen = (seen.0 + 1, Some(v));
        }
        let once = |(n, v): (usize, Option<&'a str>)| if n == 1 { v } else { None };
        EventTrace::new(event_id, once(parent), once(state))
    }

    /// The event span's context, as its children (the deliveries) see it from afar.
    fn event_span(&self) -> SpanContext {
        let (flags, state) = match &self.sender {
            Some(s) => (s.trace_flags(), s.trace_state().clone()),
            None => (TraceFlags::SAMPLED, TraceState::default()),
        };
        SpanContext::new(self.trace_id, self.span_id, flags, true, state)
    }
}

/// Makes `span` (an `event` span just created, not yet entered) the event's span in its trace:
/// a child of the sender's span, with the derived ids. tracing-opentelemetry takes a span's ids
/// from the SDK's id generator when it starts the span, and has no way to be handed them; so the
/// ids are left for [`EventIds`] in a thread-local and the span is started at once, here, on this
/// thread (`context()` starts it). A remote parent made of the derived ids would give the trace
/// a parent that is never exported; this way the event span is the trace's real root.
pub fn begin_event(span: &Span, trace: &EventTrace) {
    if !exporting() {
        return;
    }
    span.record("otel.kind", "server");
    if let Some(sender) = &trace.sender {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sender.clone()));
    }
    NEXT_IDS.with(|n| n.set(Some((trace.trace_id, trace.span_id))));
    let _ = span.context();
    NEXT_IDS.with(|n| n.set(None));
}

/// Makes `span` (a `delivery` span just created) a child of its event's span.
pub fn begin_delivery(span: &Span, trace: &EventTrace) {
    if !exporting() {
        return;
    }
    span.record("otel.kind", "client");
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(trace.event_span()));
}

/// The `traceparent` of an outgoing request made in the current span (a delivery's): its trace
/// and its id. `None` when not exporting: the sender's own `traceparent`, if it sent one, is then
/// forwarded as it came, as by any proxy that takes no part in tracing.
///
/// A delivery of a trace left out by `sample_ratio` has no exported span: it names its event's
/// span (`trace()`) with the sampled flag off, so the destination's tracing leaves it out too.
pub fn traceparent(trace: impl FnOnce() -> EventTrace) -> Option<HeaderValue> {
    if !exporting() {
        return None;
    }
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        let t = trace();
        return HeaderValue::from_str(&format!("00-{}-{}-00", t.trace_id, t.span_id)).ok();
    }
    let value =
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), (sc.trace_flags() & TraceFlags::SAMPLED).to_u8());
    HeaderValue::from_str(&value).ok()
}

/// Marks the current span as failed (OpenTelemetry status `ERROR`) with `why`.
pub fn fail(span: &Span, why: &str) {
    if exporting() {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", why);
    }
}

/// A W3C `traceparent` (version `00`, or a later version read as `00`, as the spec says):
/// lower-case hex, ids not all zero, version not `ff`.
fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let s = s.trim();
    let lower_hex = |p: &str| p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let (version, rest) = s.split_once('-')?;
    let (trace, rest) = rest.split_once('-')?;
    let (parent, rest) = rest.split_once('-')?;
    let flags = match version {
        "00" if rest.len() == 2 => rest,
        "00" | "ff" => return None,
        // a later version may append fields after a '-'
        v if v.len() == 2 && lower_hex(v) && rest.len() >= 2 && (rest.len() == 2 || rest.as_bytes()[2] == b'-') => {
            &rest[..2]
        }
        _ => return None,
    };
    if trace.len() != 32
        || parent.len() != 16
        || flags.len() != 2
        || ![trace, parent, flags].iter().all(|p| lower_hex(p))
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok().filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(parent).ok().filter(|s| *s != SpanId::INVALID)?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
    Some((trace_id, span_id, flags))
}

/// The event id's UUID (`evt_` + 32 hex digits) as a trace id; an id of another form, hashed.
fn derived_trace_id(event_id: &str) -> TraceId {
    let uuid = event_id.strip_prefix("evt_").filter(|h| h.len() == 32).and_then(|h| u128::from_str_radix(h, 16).ok());
    match uuid {
        Some(n) if n != 0 => TraceId::from(n),
        _ => TraceId::from(u128::from_be_bytes(digest(event_id)[..16].try_into().expect("16 bytes"))),
    }
}

/// The event span's id: 8 bytes of a hash of the event id, never zero.
fn derived_span_id(event_id: &str) -> SpanId {
    let n = u64::from_be_bytes(digest(event_id)[16..24].try_into().expect("8 bytes"));
    SpanId::from(n.max(1))
}

fn digest(event_id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(event_id.as_bytes()).into()
}

thread_local! {
    /// The ids [`begin_event`] wants for the span it is starting on this thread.
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// Random ids, except for the event span [`begin_event`] starts.
#[derive(Debug, Default)]
struct EventIds(RandomIdGenerator);

impl IdGenerator for EventIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(Cell::get).map(|(t, _)| t).unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(Cell::get).map(|(_, s)| s).unwrap_or_else(|| self.0.new_span_id())
    }
}

/// The exporter's HTTP client: hyper with rustls (webpki roots), HTTP/1.1. The SDK calls it from
/// its own thread; each export is run on the gateway's runtime. The collector is the operator's
/// choice, so `egress:` (which guards destinations) does not apply to it.
struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

impl OtlpClient {
    fn new(runtime: tokio::runtime::Handle) -> Result<OtlpClient, TelemetryError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(EXPORT_TIMEOUT));
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TelemetryError(format!("TLS setup: {e}")))?
            .with_root_certificates(crate::tls::TlsRoots::webpki().0.clone())
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(OtlpClient { client, runtime })
    }
}

impl HttpClient for OtlpClient {
    // `async fn` in the trait, written out (the trait is declared with `async_trait`)
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let task = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let exchange = async {
                let answer = client.request(Request::from_parts(parts, Full::new(body))).await?;
                let (parts, body) = answer.into_parts();
                let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}").into()),
            }
        });
        Box::pin(async move { task.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

/// `telemetry.otlp.sample_ratio`: keeps a trace when a hash of its id falls below the ratio. By
/// the trace id alone (not the parent's flag), so an event's spans and its deliveries' (made
/// later from the stored event, with the same trace id) are kept or left out together. Not the
/// SDK's `TraceIdRatioBased`, which reads the id's low 63 bits as random: an event's trace id is
/// its UUIDv7, whose variant bits and sub-millisecond counter sit there, so a ratio under 0.75
/// kept no event at all. The hash (splitmix64's finalizer over both halves) spreads any id.
#[derive(Debug, Clone)]
struct ByTraceId(f64);

/// Whether `ratio` keeps the trace `trace_id` (see [`ByTraceId`]).
fn keeps(ratio: f64, trace_id: TraceId) -> bool {
    let id = u128::from_be_bytes(trace_id.to_bytes());
    let mut x = (id >> 64) as u64 ^ (id as u64);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^= x >> 31;
    ((x >> 11) as f64) < ratio * (1u64 << 53) as f64
}

/// `sample_ratio` of the exporter in force (as `f64` bits).
static SAMPLE_RATIO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Whether the next `event` or `delivery` span made on this thread is exported: decided
    /// by [`decide`] just before the span is made, read once by [`span_filter`].
    static ROOT_KEPT: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Decides whether the trace of `trace` is exported, before its `event` or `delivery` span is
/// made on this thread: a trace left out then costs no OpenTelemetry work at all (its spans are
/// not seen by the exporter's layer, and with logs at `warn` not made either).
/// The decision stands until the returned guard is dropped (right after the span is made), so a
/// span the filter was not asked about cannot leave it to another.
#[must_use = "the decision holds until the guard is dropped, after the span is made"]
pub fn decide(trace: &EventTrace) -> Decided {
    let ratio = f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed));
    ROOT_KEPT.with(|k| k.set(Some(keeps(ratio, trace.trace_id))));
    Decided(())
}

/// Clears [`decide`]'s decision when dropped.
pub struct Decided(());

impl Drop for Decided {
    fn drop(&mut self) {
        ROOT_KEPT.with(|k| k.set(None));
    }
}

/// The exporter layer's filter: `hookyard`'s spans at `info` (never log lines: a log line inside
/// a span stays in the logs), of the traces [`decide`] kept. An `event` or `delivery` span takes
/// the decision made just before it; any other span is kept when the span it is made in is.
pub fn span_filter<S>(m: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if !m.is_span() || !m.target().starts_with("hookyard") || *m.level() > tracing::Level::INFO {
        return false;
    }
    if let Some(kept) = ROOT_KEPT.with(|k| k.take()) {
        return kept;
    }
    cx.lookup_current().is_some()
}

impl opentelemetry_sdk::trace::ShouldSample for ByTraceId {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        _name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        use opentelemetry_sdk::trace::SamplingDecision;
        let keep = keeps(self.0, trace_id);
        opentelemetry_sdk::trace::SamplingResult {
            decision: if keep { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
            attributes: Vec::new(),
            trace_state: parent.map(|c| c.span().span_context().trace_state().clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event trace ids are UUIDv7s: their fixed variant bits must not bias the sampling.
    #[test]
    fn the_sample_ratio_keeps_its_share_of_uuid_v7_traces() {
        use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};
        let kept = |ratio: f64| {
            (0..10_000)
                .filter(|_| {
                    let id = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
                    let r = ByTraceId(ratio).should_sample(
                        None,
                        id,
                        "event",
                        &opentelemetry::trace::SpanKind::Server,
                        &[],
                        &[],
                    );
                    r.decision == SamplingDecision::RecordAndSample
                })
                .count()
        };
        assert_eq!(kept(0.0), 0);
        assert_eq!(kept(1.0), 10_000);
        for (ratio, around) in [(0.1, 1_000), (0.5, 5_000)] {
            let n = kept(ratio);
            assert!(n.abs_diff(around) < 400, "{n} of 10,000 kept at {ratio}");
        }
    }

    #[test]
    fn traceparent_is_read_strictly() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(ok).unwrap();
        assert_eq!(
            (t.to_string().as_str(), s.to_string().as_str()),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        );
        assert!(f.is_sampled());
        assert!(!parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().2.is_sampled());
        // a later version: read as 00, fields after the flags ignored
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever").is_some());
        for bad in [
            "",
            "garbage",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_event_without_a_sender_trace_has_one_from_its_id() {
        let id = "evt_0190f5a2b3c47d8e9f00112233445566";
        let t = EventTrace::new(id, None, None);
        assert_eq!(t.trace_id.to_string(), "0190f5a2b3c47d8e9f00112233445566");
        assert_eq!(t, EventTrace::new(id, Some("00-zz"), None), "an invalid traceparent is ignored");
        assert_eq!(t.sender, None);
        // what a delivery rebuilds from the stored headers is the same
        assert_eq!(t, EventTrace::from_headers(id, [("content-type", "application/json")]));
        assert_ne!(t.span_id, EventTrace::new("evt_0190f5a2b3c47d8e9f00112233445567", None, None).span_id);
        // an id of another form still gives a valid, stable trace
        let other = EventTrace::new("evt_1", None, None);
        assert!(other.event_span().is_valid());
        assert_eq!(other, EventTrace::new("evt_1", None, None));
    }

    #[test]
    fn an_event_with_a_sender_trace_joins_it() {
        let id = "evt_0190f5a2b3c47d8e9f00112233445566";
        let headers =
            [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("tracestate", "vendor=x")];
        let t = EventTrace::from_headers(id, headers);
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sender = t.sender.clone().unwrap();
        assert_eq!(sender.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sender.trace_state().header(), "vendor=x");
        // the event span is its own (the same as without a sender), in the sender's trace
        assert_eq!(t.span_id, EventTrace::new(id, None, None).span_id);
        assert_eq!(t.event_span().trace_id(), sender.trace_id());
    }
}
