//! Traces over OTLP (`telemetry.otlp`): four kinds of span (`event`, `store.commit`,
//! `transform`/`plugin`, `delivery`) recorded here and sent in batches over OTLP/HTTP, protobuf
//! bodies (written by `wire.rs`, checked against `opentelemetry-proto`'s generated types), to
//! `<endpoint>/v1/traces`. `hookyard run` starts the exporter (`cli/run.rs`) and shuts it down
//! last, sending what is queued; a reload cannot change it.
//!
//! Why not the OpenTelemetry SDK fed by the `tracing` bridge (what 0.1's first exporter was):
//! measured, it cost ×1.27–1.48 CPU per event (registry extensions per span, attribute visitors,
//! a span processor's copies, then a second conversion to the wire types), and the goal is 5%.
//! A span here is one small record made only for a trace that is exported: its ids, two
//! timestamps and its attributes, queued when it ends and turned into protobuf by the exporter's
//! task. The `tracing` spans stay what they were before exporting existed: the logs' context.
//!
//! One trace from sender to destination: an event's trace is its sender's (a valid W3C
//! `traceparent`), else derived from the event id (`evt_` + a UUIDv7: its 16 bytes *are* the trace
//! id, so an operator finds an event's trace by its id). The event span's own id is derived from
//! the event id too. A delivery runs later, maybe after a restart, knowing only the stored event
//! (its id and its stored headers, which keep the sender's `traceparent` and `tracestate`), so it
//! rebuilds the same two ids and makes its span a child of the event span with no schema change.
//! Outgoing requests then carry the delivery span as their `traceparent`.
//!
//! Must not: make any span, or do any work per event, beyond one atomic load when not exporting;
//! ever make an event wait for the collector (a full queue drops spans, counted).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::trace::v1 as otlp;
use prost::Message;
use tokio::sync::Notify;
use tracing::warn;

use crate::config::OtlpConfig;

mod wire;

/// The W3C trace context header an outgoing request carries.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// How long one export may take (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is read no further than this (an OTLP answer is a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// An export failure is logged at most this often (the spans lost meanwhile are counted in it).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Spans are being exported: set while a [`Tracing`] runs. Process-wide, as the exporter is;
/// everything per event asks it first.
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// `sample_ratio` of the exporter in force (as `f64` bits).
static SAMPLE_RATIO: AtomicU64 = AtomicU64::new(0);

/// Whether spans are exported now (one atomic load).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp: {0}")]
pub struct TelemetryError(String);

/// How the exporter batches: the SDKs' defaults, and their `OTEL_BSP_*` variables.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Batching {
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms): a batch is sent at least this often.
    every: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting beyond this are dropped (and counted).
    max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export, and the queue length that sends one
    /// before its time.
    batch: usize,
}

impl Batching {
    /// From the `OTEL_BSP_*` variables `var` gives; one that is set but not a positive whole
    /// number is an error (named), not a default taken silently.
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Batching, TelemetryError> {
        let read = |name: &str, default: u64| -> Result<u64, TelemetryError> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| TelemetryError(format!("{name}={v:?} is not a positive whole number"))),
            }
        };
        let every = Duration::from_millis(read("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        let max_queue = read("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize;
        let batch = (read("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize).min(max_queue);
        Ok(Batching { every, max_queue, batch })
    }
}

/// The running exporter: a task on the gateway's runtime that sends what [`Span`]s queue.
pub struct Tracing {
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracing {
    /// Starts exporting for `config`, on `runtime` (the HTTP client is the tokio one every other
    /// client here is). Batching follows `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE` and
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` when set.
    pub fn start(config: &OtlpConfig, runtime: tokio::runtime::Handle) -> Result<Tracing, TelemetryError> {
        let batching = Batching::from_env(|name| std::env::var(name).ok())?;
        let exporter = Exporter::new(config)?;
        QUEUE_LIMITS.0.store(batching.max_queue, Ordering::Relaxed);
        QUEUE_LIMITS.1.store(batching.batch, Ordering::Relaxed);
        SAMPLE_RATIO.store(config.sample_ratio.to_bits(), Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        let task = runtime.spawn(exporter.run(batching, stop.clone()));
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Tracing { stop, task })
    }

    /// Sends what is queued and stops (at shutdown, after the last attempts ended, so their
    /// spans are not lost), waiting for the collector no longer than one export's timeout in all.
    pub async fn shutdown(mut self) {
        EXPORTING.store(false, Ordering::Relaxed);
        self.stop.notify_one();
        match tokio::time::timeout(EXPORT_TIMEOUT, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the OTLP exporter failed; the last spans were not sent"),
            Err(_) => {
                self.task.abort();
                warn!("the OTLP collector took more than {EXPORT_TIMEOUT:?}; the last spans were not sent");
            }
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
    /// The sender's span (a valid `traceparent`) and its `tracestate`: the event span's parent.
    pub sender: Option<(SpanId, TraceState)>,
}

impl EventTrace {
    /// The trace of event `event_id` whose sender sent these `traceparent` and `tracestate`
    /// values (an invalid `traceparent` is ignored: the event starts a trace of its own).
    pub fn new(event_id: &str, traceparent: Option<&str>, tracestate: Option<&str>) -> EventTrace {
        let uuid = event_uuid(event_id);
        let span_id = derived_span_id(event_id, uuid);
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent)) => {
                let state = tracestate.and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
                EventTrace { trace_id, span_id, sender: Some((parent, state)) }
            }
            None => EventTrace { trace_id: derived_trace_id(event_id, uuid), span_id, sender: None },
        }
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

    /// Whether `sample_ratio` keeps this trace (see [`keeps`]).
    fn kept(&self) -> bool {
        keeps(f64::from_bits(SAMPLE_RATIO.load(Ordering::Relaxed)), self.trace_id)
    }

    /// The event span as the context of work done in it, also when the trace is left out (then
    /// not sampled: no span is made in it, and a delivery's `traceparent` names the event span
    /// with the sampled flag off).
    pub fn context(&self) -> SpanContext {
        SpanContext { trace_id: self.trace_id, span_id: self.span_id, sampled: self.kept() }
    }
}

/// A span's place in its trace: what its children and outgoing requests name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span is recorded and exported (else its trace was left out by `sample_ratio`).
    pub sampled: bool,
}

/// `SpanKind` of the protocol.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Internal = otlp::span::SpanKind::Internal as isize,
    Server = otlp::span::SpanKind::Server as isize,
    Client = otlp::span::SpanKind::Client as isize,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    /// A name from the config or an id, shared rather than copied.
    Shared(Arc<str>),
    Static(&'static str),
    Int(i64),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Shared(s) => Some(s),
            Value::Static(s) => Some(s),
            Value::Int(_) => None,
        }
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}

impl From<&Arc<str>> for Value {
    fn from(v: &Arc<str>) -> Value {
        Value::Shared(v.clone())
    }
}

impl From<&'static str> for Value {
    fn from(v: &'static str) -> Value {
        Value::Static(v)
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as i64)
            }
        }
    )*};
}
int_value!(u16, u32, u64, usize, i64);

/// What a span records; queued for export when the span ends.
#[derive(Debug)]
struct Record {
    trace_id: TraceId,
    span_id: SpanId,
    /// `SpanId::INVALID` for a trace's root.
    parent: SpanId,
    /// The parent is another process's span (the sender's), or this process's from afar (a
    /// delivery's event span, maybe before a restart).
    remote_parent: bool,
    trace_state: String,
    name: &'static str,
    kind: Kind,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    /// Failed, with this description.
    error: Option<String>,
}

impl Record {
    fn has_parent(&self) -> bool {
        self.parent != SpanId::INVALID
    }

    /// `Span.flags`: W3C trace flags (sampled), and that whether the parent is remote is known,
    /// and is it.
    fn flags(&self) -> u32 {
        const HAS_IS_REMOTE: u32 = otlp::SpanFlags::ContextHasIsRemoteMask as u32;
        const IS_REMOTE: u32 = otlp::SpanFlags::ContextIsRemoteMask as u32;
        1 | HAS_IS_REMOTE | if self.has_parent() && self.remote_parent { IS_REMOTE } else { 0 }
    }
}

/// A span being recorded, or nothing (not exporting, or a trace `sample_ratio` leaves out): every
/// method is then a no-op. It ends when dropped, and is queued for export.
#[derive(Debug, Default)]
#[must_use = "a span ends when dropped"]
pub struct Span(Option<Record>);

impl Span {
    /// No span.
    pub const fn none() -> Span {
        Span(None)
    }

    fn start(
        trace_id: TraceId,
        span_id: SpanId,
        parent: SpanId,
        name: &'static str,
        kind: Kind,
        attributes: usize,
    ) -> Span {
        Span(Some(Record {
            trace_id,
            span_id,
            parent,
            remote_parent: false,
            trace_state: String::new(),
            name,
            kind,
            start_ns: now_ns(),
            end_ns: 0,
            attributes: Vec::with_capacity(attributes),
            error: None,
        }))
    }

    /// The `event` span of an event whose trace is `trace` (`None`: not exporting), with the
    /// derived span id: a child of the sender's span, else the trace's root.
    pub fn event(trace: Option<&EventTrace>) -> Span {
        let Some(trace) = trace.filter(|t| exporting() && t.kept()) else {
            return Span::none();
        };
        let parent = trace.sender.as_ref().map_or(SpanId::INVALID, |(s, _)| *s);
        let mut span = Span::start(trace.trace_id, trace.span_id, parent, "event", Kind::Server, 4);
        if let (Some(r), Some((_, state))) = (&mut span.0, &trace.sender) {
            r.remote_parent = true;
            r.trace_state = state.header();
        }
        span
    }

    /// The span of one delivery attempt of an event whose trace is `trace`: a child of the
    /// event's span, rebuilt from the stored event.
    pub fn delivery(trace: Option<&EventTrace>) -> Span {
        let Some(trace) = trace.filter(|t| exporting() && t.kept()) else {
            return Span::none();
        };
        let mut span = Span::start(trace.trace_id, new_span_id(), trace.span_id, "delivery", Kind::Client, 7);
        if let Some(r) = &mut span.0 {
            r.remote_parent = true;
        }
        span
    }

    /// A span named `name` in the span current on this thread ([`in_span`]); none when there is
    /// none (not exporting, a trace left out, or outside any).
    pub fn child(name: &'static str) -> Span {
        match current().filter(|cx| cx.sampled && exporting()) {
            Some(cx) => Span::start(cx.trace_id, new_span_id(), cx.span_id, name, Kind::Internal, 3),
            None => Span::none(),
        }
    }

    /// Whether this span is recorded (and exported).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Its place in the trace, for its children ([`in_span`]); `None` when not recorded.
    pub fn context(&self) -> Option<SpanContext> {
        self.0.as_ref().map(|r| SpanContext { trace_id: r.trace_id, span_id: r.span_id, sampled: true })
    }

    /// Sets attribute `key` (made into a [`Value`] only when recorded).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(r) = &mut self.0 {
            r.attributes.push((key, value.into()));
        }
    }

    /// Marks the span as failed (OpenTelemetry status `ERROR`) with `why`.
    pub fn fail(&mut self, why: &dyn std::fmt::Display) {
        if let Some(r) = &mut self.0 {
            r.error = Some(why.to_string());
        }
    }

    /// Drops the span unexported: what it stood for did not happen after all (a delivery taken
    /// but not attempted: its destination paused, its breaker open, the gateway stopping).
    pub fn discard(mut self) {
        self.0 = None;
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut r) = self.0.take() {
            r.end_ns = now_ns();
            enqueue(r);
        }
    }
}

thread_local! {
    /// The span the code running on this thread is in ([`in_span`]): recorded, or the event span
    /// of a trace left out (not sampled).
    static CURRENT: Cell<Option<SpanContext>> = const { Cell::new(None) };
}

/// The span the code running now is in (see [`CURRENT`]).
pub fn current() -> Option<SpanContext> {
    CURRENT.with(Cell::get)
}

/// Runs `fut` in span `cx` (its [`Span::context`]): each of its polls sees it as [`current`], so
/// the spans it makes are its children. With `None`, `fut` as it is.
pub fn in_span<F: Future>(cx: Option<SpanContext>, fut: F) -> InSpan<F> {
    InSpan { cx, fut }
}

pin_project_lite::pin_project! {
    /// [`in_span`]'s future.
    pub struct InSpan<F> {
        cx: Option<SpanContext>,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(cx) = *this.cx else {
            return this.fut.poll(task);
        };
        /// Puts back the span that was current, also when the poll panics.
        struct Restore(Option<SpanContext>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Some(cx))));
        this.fut.poll(task)
    }
}

/// The `traceparent` of an outgoing request made in the current span (a delivery's): its trace
/// and its id. `None` when not exporting: the sender's own `traceparent`, if it sent one, is then
/// forwarded as it came, as by any proxy that takes no part in tracing.
///
/// A delivery of a trace left out by `sample_ratio` has no exported span: it names its event's
/// span ([`EventTrace::context`]) with the sampled flag off, so the destination's tracing leaves
/// it out too.
pub fn traceparent() -> Option<HeaderValue> {
    let cx = current().filter(|_| exporting())?;
    Some(traceparent_value(cx.trace_id, cx.span_id, cx.sampled))
}

/// `00-<trace>-<span>-<flags>`, written without the formatting machinery (once per attempt).
fn traceparent_value(trace: TraceId, span: SpanId, sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex::encode_to_slice(trace.to_bytes(), &mut out[3..35]).expect("32 digits for 16 bytes");
    hex::encode_to_slice(span.to_bytes(), &mut out[36..52]).expect("16 digits for 8 bytes");
    if sampled {
        out[54] = b'1';
    }
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&out)).expect("hex digits and dashes make a header value")
}

/// A W3C `traceparent` (version `00`, or a later version read as `00`, as the spec says):
/// lower-case hex, ids not all zero, version not `ff`. Its trace and parent span (the flags are
/// not used: whether a trace is exported is `sample_ratio`'s decision alone).
fn parse_traceparent(s: &str) -> Option<(TraceId, SpanId)> {
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
    Some((trace_id, span_id))
}

/// The UUID of an event id of the usual form (`evt_` + 32 hex digits), not zero.
fn event_uuid(event_id: &str) -> Option<u128> {
    let mut uuid = [0u8; 16];
    hex::decode_to_slice(event_id.strip_prefix("evt_")?, &mut uuid).ok()?;
    Some(u128::from_be_bytes(uuid)).filter(|n| *n != 0)
}

/// The event id's UUID (`uuid`, [`event_uuid`]) as a trace id; an id of another form, hashed.
fn derived_trace_id(event_id: &str, uuid: Option<u128>) -> TraceId {
    match uuid {
        Some(n) => TraceId::from(n),
        None => TraceId::from(u128::from_be_bytes(digest(event_id)[..16].try_into().expect("16 bytes"))),
    }
}

/// The event span's id: a hash of the event id, never zero. For the usual form a mix of its
/// UUID's bits (computed for every event and every attempt: no SHA-256 there).
fn derived_span_id(event_id: &str, uuid: Option<u128>) -> SpanId {
    let n = match uuid {
        Some(n) => mix((n >> 64) as u64 ^ mix(n as u64)),
        None => u64::from_be_bytes(digest(event_id)[16..24].try_into().expect("8 bytes")),
    };
    SpanId::from(n.max(1))
}

fn digest(event_id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(event_id.as_bytes()).into()
}

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// A random span id (not zero).
fn new_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

/// Now, in nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// `telemetry.otlp.sample_ratio`: keeps a trace when a hash of its id falls below the ratio. By
/// the trace id alone (not the sender's flags), so an event's spans and its deliveries' (made
/// later from the stored event, with the same trace id) are kept or left out together. Not the
/// OpenTelemetry SDK's `TraceIdRatioBased`, which reads the id's low 63 bits as random: an event's
/// trace id is its UUIDv7, whose variant bits and sub-millisecond counter sit there, so a ratio
/// under 0.75 kept no event at all. The hash (splitmix64's finalizer over both halves) spreads
/// any id.
fn keeps(ratio: f64, trace_id: TraceId) -> bool {
    let id = u128::from_be_bytes(trace_id.to_bytes());
    let x = mix((id >> 64) as u64 ^ (id as u64));
    ((x >> 11) as f64) < ratio * (1u64 << 53) as f64
}

// ------------------------------------------------------------------------ the queue

/// Spans ended and not yet exported, and how many were dropped since the last export.
struct Queue {
    spans: Vec<Record>,
    dropped: u64,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue { spans: Vec::new(), dropped: 0 });
/// [`Batching::max_queue`] and [`Batching::batch`] of the exporter in force.
static QUEUE_LIMITS: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(2048), AtomicUsize::new(512));
/// Wakes the exporter when a batch is full.
static BATCH_FULL: Notify = Notify::const_new();

fn enqueue(r: Record) {
    let (max, batch) = (QUEUE_LIMITS.0.load(Ordering::Relaxed), QUEUE_LIMITS.1.load(Ordering::Relaxed));
    let mut q = QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
    if q.spans.len() >= max {
        q.dropped += 1;
        return;
    }
    q.spans.push(r);
    if q.spans.len() == batch {
        drop(q);
        BATCH_FULL.notify_one();
    }
}

/// Up to `n` queued spans (the oldest), and the count dropped since the last call. The queue
/// keeps room for as many as it held (up to a batch): under load it does not grow again, span by
/// span, after each export.
fn take(n: usize) -> (Vec<Record>, u64) {
    let mut q = QUEUE.lock().unwrap_or_else(PoisonError::into_inner);
    let dropped = std::mem::take(&mut q.dropped);
    let spans = if q.spans.len() <= n {
        let room = q.spans.len();
        std::mem::replace(&mut q.spans, Vec::with_capacity(room))
    } else {
        q.spans.drain(..n).collect()
    };
    (spans, dropped)
}

// ------------------------------------------------------------------------ the exporter

/// Sends batches to the collector.
struct Exporter {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    service_name: String,
    /// When a failure was last logged, and the spans lost since then that were not yet logged.
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Exporter {
    fn new(config: &OtlpConfig) -> Result<Exporter, TelemetryError> {
        let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
        let uri = endpoint.parse::<Uri>().map_err(|e| TelemetryError(format!("endpoint {endpoint:?}: {e}")))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| TelemetryError(format!("headers: {k:?} is not a header name")))?;
            let mut value = HeaderValue::from_str(&v.0)
                .map_err(|_| TelemetryError(format!("headers: the value of {k:?} is not a header value")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        Ok(Exporter {
            client: client()?,
            uri,
            headers,
            service_name: config.service_name.clone(),
            last_warning: None,
            unreported: 0,
        })
    }

    /// Sends a batch when one is full, every `every`, and what is left when `stop` is notified.
    async fn run(mut self, batching: Batching, stop: Arc<Notify>) {
        loop {
            let stopping = tokio::select! {
                _ = BATCH_FULL.notified() => false,
                _ = tokio::time::sleep(batching.every) => false,
                _ = stop.notified() => true,
            };
            loop {
                let (spans, dropped) = take(batching.batch);
                if dropped > 0 {
                    crate::metrics::otlp_spans("dropped", dropped);
                    self.failed(dropped, &format!("the queue of {} spans was full", batching.max_queue));
                }
                let full = spans.len() == batching.batch;
                if !spans.is_empty() {
                    self.export(spans).await;
                }
                if !full {
                    break;
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn export(&mut self, spans: Vec<Record>) {
        let n = spans.len() as u64;
        let body = self.encode(spans);
        let mut request = Request::post(self.uri.clone()).body(Full::new(body)).expect("a valid request");
        *request.headers_mut() = self.headers.clone();
        let exchange = async {
            let answer = self.client.request(request).await.map_err(|e| format!("{e:#}"))?;
            let (parts, body) = answer.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes();
            if !parts.status.is_success() {
                let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(format!("the collector answered {}: {excerpt}", parts.status));
            }
            // a collector may take part of a batch and say so
            let rejected = ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|a| a.partial_success)
                .filter(|p| p.rejected_spans > 0)
                .map(|p| (p.rejected_spans as u64, p.error_message));
            Ok(rejected)
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
            Ok(Ok(None)) => crate::metrics::otlp_spans("exported", n),
            Ok(Ok(Some((rejected, why)))) => {
                crate::metrics::otlp_spans("exported", n.saturating_sub(rejected));
                crate::metrics::otlp_spans("rejected", rejected);
                self.failed(rejected, &format!("the collector rejected them: {why}"));
            }
            Ok(Err(e)) => {
                crate::metrics::otlp_spans("failed", n);
                self.failed(n, &e);
            }
            Err(_) => {
                crate::metrics::otlp_spans("failed", n);
                self.failed(n, &format!("no answer within {EXPORT_TIMEOUT:?}"));
            }
        }
    }

    /// `lost` spans were not exported because of `why`: logged at most every [`WARN_EVERY`].
    fn failed(&mut self, lost: u64, why: &str) {
        self.unreported += lost;
        if self.last_warning.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        warn!(
            endpoint = %self.uri,
            spans = self.unreported,
            "could not export spans to the OTLP collector: {why} (logged at most every {}s)",
            WARN_EVERY.as_secs()
        );
        self.last_warning = Some(Instant::now());
        self.unreported = 0;
    }

    /// One export request of `spans`, encoded.
    fn encode(&self, spans: Vec<Record>) -> Bytes {
        Bytes::from(wire::export_request(&self.service_name, env!("CARGO_PKG_VERSION"), &spans))
    }
}

/// The exporter's HTTP client: hyper with rustls (webpki roots), HTTP/1.1. The collector is the
/// operator's choice, so `egress:` (which guards destinations) does not apply to it.
fn client() -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, TelemetryError> {
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
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Event trace ids are UUIDv7s: their fixed variant bits must not bias the sampling.
    #[test]
    fn the_sample_ratio_keeps_its_share_of_uuid_v7_traces() {
        let kept = |ratio: f64| {
            (0..10_000).filter(|_| keeps(ratio, TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes()))).count()
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
        let (t, s) = parse_traceparent(ok).unwrap();
        assert_eq!(
            (t.to_string().as_str(), s.to_string().as_str()),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
        );
        // the flags do not decide whether the trace is exported: an unsampled one is read too
        assert!(parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
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
    fn a_traceparent_is_written_as_the_spec_spells_it() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        assert_eq!(traceparent_value(trace, span, true), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(traceparent_value(trace, span, false), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        // and read back as it was written
        let written = traceparent_value(trace, span, true);
        assert_eq!(parse_traceparent(written.to_str().unwrap()), Some((trace, span)));
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
        // ids one bit apart get unrelated span ids
        let next = EventTrace::new("evt_0190f5a2b3c47d8e9f00112233445567", None, None).span_id;
        assert_ne!(t.span_id, next);
        assert!((u64::from_be_bytes(t.span_id.to_bytes()) ^ u64::from_be_bytes(next.to_bytes())).count_ones() > 16);
        // an id of another form still gives a valid, stable trace
        let other = EventTrace::new("evt_1", None, None);
        assert!(other.trace_id != TraceId::INVALID && other.span_id != SpanId::INVALID);
        assert_eq!(other, EventTrace::new("evt_1", None, None));
    }

    #[test]
    fn an_event_with_a_sender_trace_joins_it() {
        let id = "evt_0190f5a2b3c47d8e9f00112233445566";
        let headers =
            [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("tracestate", "vendor=x")];
        let t = EventTrace::from_headers(id, headers);
        assert_eq!(t.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (parent, state) = t.sender.clone().unwrap();
        assert_eq!(parent.to_string(), "00f067aa0ba902b7");
        assert_eq!(state.header(), "vendor=x");
        // the event span is its own (the same as without a sender), in the sender's trace
        assert_eq!(t.span_id, EventTrace::new(id, None, None).span_id);
        // a header given twice is taken as not given, as at ingress
        let twice = EventTrace::from_headers(id, [headers[0], headers[0]]);
        assert_eq!(twice, EventTrace::new(id, None, None));
    }

    #[test]
    fn batching_follows_the_otel_bsp_variables_and_names_a_bad_one() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            Batching::from_env(env(&[])).unwrap(),
            Batching { every: Duration::from_secs(5), max_queue: 2048, batch: 512 }
        );
        assert_eq!(
            Batching::from_env(env(&[
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512")
            ]))
            .unwrap(),
            Batching { every: Duration::from_millis(200), max_queue: 100, batch: 100 },
            "a batch is never larger than the queue"
        );
        for (name, value) in [("OTEL_BSP_SCHEDULE_DELAY", "5s"), ("OTEL_BSP_MAX_QUEUE_SIZE", "0")] {
            let vars: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(name, value)]));
            let e = Batching::from_env(env(vars)).unwrap_err().to_string();
            assert_eq!(e, format!("telemetry.otlp: {name}={value:?} is not a positive whole number"));
        }
    }
}
