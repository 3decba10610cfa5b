//! The ingress listener: one path per source, the source's guards (`guard`: allowed addresses,
//! rate limit), size and time limits, verification, routing, and the hand-off to the delivery
//! engine. The sender gets `202` only once the event's deliveries are queued.
//!
//! Accepting connections and their limits (shared with the admin listener) are in `listener`.
//!
//! Knows nothing of how deliveries are retried.

pub mod guard;
pub mod listener;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tracing::field::Empty;
use tracing::{debug, info, warn};

use crate::app::State;
use crate::metrics;
use crate::snapshot::{Event, EventId, Snapshot, Source};
use crate::store::{Accepted, NewEvent, Queue, to_ms};
use crate::telemetry::{self, EventTrace};
use crate::verify::{HandshakeOutcome, Inbound};
use tracing::Instrument;

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    json(status, format!("{{\"error\":\"{message}\"}}"))
}

/// The trace `id` joins: the sender's, if it sent one valid `traceparent` that the source stores
/// with the event (a delivery rebuilds the trace from the stored headers, so one the source never
/// forwards is not followed here either).
fn sender_trace(source: &Source, id: &EventId, headers: &http::HeaderMap) -> EventTrace {
    const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");
    let one = |h: &http::HeaderName| {
        let mut values = headers.get_all(h).iter();
        match (values.next(), values.next()) {
            (Some(v), None) if !source.never_forward.contains(h) => v.to_str().ok(),
            _ => None,
        }
    };
    // a tracestate means nothing without a traceparent
    let traceparent = one(&telemetry::TRACEPARENT);
    EventTrace::new(&id.0, traceparent, traceparent.and_then(|_| one(&TRACESTATE)))
}

/// The ingress side of the live state: one request in, one response out.
impl State {
    /// Handles one request from `peer` against one snapshot, read once at the start.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let started = std::time::Instant::now();
        let snap = self.snapshot.load_full();
        let Some(source) = snap.source_by_path(req.uri().path()) else {
            debug!(path = req.uri().path(), "no source at this path");
            return error(StatusCode::NOT_FOUND, "not found");
        };
        // made here, before the spans: the event's trace (and whether it is exported) comes
        // from it
        let id = EventId::generate();
        let trace = telemetry::exporting().then(|| sender_trace(source, &id, req.headers()));
        let mut otel = telemetry::Span::event(trace.as_ref());
        otel.set("source", &source.name);
        otel.set("event_id", &id.0);
        let span = tracing::info_span!("event", source = %source.name, event_id = Empty);
        let cx = otel.context();
        let resp =
            telemetry::in_span(cx, self.handle_source(&snap, source, req, peer, id, &mut otel)).instrument(span).await;
        otel.set("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            otel.fail(&resp.status().canonical_reason().unwrap_or("server error"));
        }
        drop(otel);
        metrics::event_received(&source.name, resp.status().as_u16(), started.elapsed().as_secs_f64());
        resp
    }

    async fn handle_source(
        &self,
        snap: &Snapshot,
        source: &Source,
        req: Request<Incoming>,
        peer: SocketAddr,
        id: EventId,
        otel: &mut telemetry::Span,
    ) -> Resp {
        // the guards come first: a refused request costs neither its body nor a verification
        if let Some(allow) = &source.allow_ips {
            let client = guard::client_addr(peer.ip(), req.headers(), &snap.trusted_proxies);
            if !allow.contains(client) {
                warn!(source = %source.name, %client, %peer, "client address not in allow_ips; refused with 403");
                metrics::ingress_refused(&source.name, metrics::REFUSED_ALLOW_IPS);
                return body_unread(error(StatusCode::FORBIDDEN, "client address not allowed"));
            }
        }
        if let Some(limit) = &source.rate_limit
            && let Err(refused) = limit.check()
        {
            if refused.first {
                warn!(source = %source.name, per_second = limit.per_second, burst = limit.burst, "source rate limit reached; refusing with 429");
            } else {
                debug!(source = %source.name, %peer, "source rate limit: refused with 429");
            }
            metrics::ingress_refused(&source.name, metrics::REFUSED_RATE_LIMIT);
            let mut r = body_unread(error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded"));
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(refused.retry_after_secs()));
            return r;
        }
        // a provider's handshake that comes before any body: a GET (Meta, X, Dropbox) or
        // Graph's POST ?validationToken=; only a source whose preset declares one answers it
        if let Some(outcome) = source.verifier.handshake_by_query(req.method(), req.uri().query()) {
            return body_unread(handshake_response(&source.name, outcome));
        }
        if req.method() != Method::POST {
            let allow = match source.verifier.handshake() {
                Some(h) if h.is_get() => "GET, POST",
                _ => "POST",
            };
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            return r;
        }
        let limit = snap.server.max_body_bytes;
        let declared =
            req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return too_large(&source.name, limit);
        }
        let (parts, body) = req.into_parts();
        let body = match tokio::time::timeout(snap.server.request_timeout.0, Limited::new(body, limit).collect()).await
        {
            Err(_) => {
                warn!(source = %source.name, "request body not received within server.request_timeout");
                let mut r = error(StatusCode::REQUEST_TIMEOUT, "request timeout");
                r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return too_large(&source.name, limit);
            }
            Ok(Err(e)) => {
                warn!(source = %source.name, error = %e, "could not read request body");
                return error(StatusCode::BAD_REQUEST, "could not read body");
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let inbound =
            Inbound { method: parts.method.as_str(), query: parts.uri.query(), headers: &parts.headers, body: &body };
        if let Err(e) = source.verifier.verify_request(&inbound, SystemTime::now()) {
            warn!(source = %source.name, reason = e.reason(), error = %e, "verification failed");
            metrics::verify_failed(&source.name, e.reason());
            return error(StatusCode::UNAUTHORIZED, "unauthorized");
        }
        // Slack's and Zoom's handshakes are signed POSTs: answered once verified, never stored
        if let Some(answer) = source.verifier.handshake_by_body(&parts.headers, &body) {
            return handshake_response(&source.name, HandshakeOutcome::Answer(answer));
        }
        let event =
            Event { id, source: source.name.clone(), received_at: SystemTime::now(), headers: parts.headers, body };
        tracing::Span::current().record("event_id", tracing::field::display(&event.id));
        if tracing::enabled!(tracing::Level::DEBUG) {
            debug!(body = %snap.loggable_body(&event.body), "event body");
        }
        let routed = snap.route(source, &event, &event.id.0).await;
        for n in &routed.notes {
            warn!(route = %n.route, note = %n.note, "transform");
        }
        let count = routed.deliveries.len();
        if let Err(full) = self.dispatcher.check_capacity(count) {
            warn!(source = %source.name, error = %full, "refusing event: delivery queue full");
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "delivery queue full, retry later");
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        let routes = routed.matched;
        let deliveries = routed.deliveries;
        // deliveries awaiting a batch are not due: the batcher is told of them
        let batched: Vec<crate::store::DestinationName> =
            deliveries.iter().filter(|d| d.batch).map(|d| d.destination.clone()).collect();
        let pending = deliveries.iter().filter(|d| d.failed.is_none()).count();
        let record = NewEvent {
            id: event.id.clone(),
            source: source.name.to_string(),
            received_at_ms: to_ms(event.received_at),
            headers: routed.stored_headers,
            body: event.body.clone(),
            dedupe_key: routed.dedupe_key,
        };
        let window = source.dedupe.as_ref().map(|d| d.window);
        let mut commit = telemetry::Span::child("store.commit");
        commit.set("deliveries", count);
        // the 202 goes out only after this commit returned
        let accepted = self.dispatcher.store().accept(record, deliveries, window).await;
        if let Err(e) = &accepted {
            commit.fail(e);
        }
        drop(commit);
        match accepted {
            Ok(Accepted::Stored(due)) => {
                let names: Vec<&str> = routes.iter().map(|r| &*snap.routes[*r].name).collect();
                if otel.is_recording() {
                    otel.set("routes", names.join(","));
                }
                names.iter().for_each(|n| metrics::route_matched(n));
                self.dispatcher.activity().accepted(|| crate::activity::TailItem::Event {
                    id: event.id.to_string(),
                    source: source.name.to_string(),
                    received_at_ms: to_ms(event.received_at),
                    routes: names.iter().map(|n| n.to_string()).collect(),
                    deliveries: count,
                });
                if count == 0 {
                    info!(event_id = %event.id, source = %source.name, bytes = event.body.len(), "event accepted; no route matched (unrouted)");
                } else {
                    info!(event_id = %event.id, source = %source.name, bytes = event.body.len(), routes = ?names, deliveries = count, "event accepted");
                }
                // ordered deliveries waiting for their turn, batched ones and later steps of chains are
                // pending, not due
                self.dispatcher.waiting(pending.saturating_sub(due.len()));
                self.dispatcher.submit(due);
                if !batched.is_empty() {
                    self.dispatcher.batched(&batched);
                }
                json(StatusCode::ACCEPTED, format!("{{\"id\":\"{}\"}}", event.id))
            }
            Ok(Accepted::Duplicate { original }) => {
                info!(event_id = %original, source = %source.name, "duplicate event acknowledged; not delivered again");
                json(StatusCode::ACCEPTED, format!("{{\"id\":\"{original}\",\"duplicate\":true}}"))
            }
            Err(e) => {
                tracing::error!(source = %source.name, error = %e, "could not store the event; answering 503 so the sender retries");
                let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "could not store the event, retry later");
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
        }
    }
}

/// The response to a provider handshake: its answer (a text echo is `text/plain` with
/// `nosniff`, so a browser never renders it), or 401 when it fails the provider's check.
fn handshake_response(source: &str, outcome: HandshakeOutcome) -> Resp {
    match outcome {
        HandshakeOutcome::Answer(answer) => {
            info!(source, handshake = answer.handshake.name(), "handshake answered");
            metrics::handshake(source, answer.handshake.name(), "answered");
            let text = answer.is_text();
            let mut r = Response::new(Full::new(answer.body));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
            if text {
                r.headers_mut().insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            }
            r
        }
        HandshakeOutcome::Refused { handshake, why } => {
            warn!(source, handshake = handshake.name(), reason = why, "handshake refused with 401");
            metrics::handshake(source, handshake.name(), "refused");
            error(StatusCode::UNAUTHORIZED, "unauthorized")
        }
    }
}

/// `r` for a request whose body is left unread: the connection cannot be reused.
fn body_unread(mut r: Resp) -> Resp {
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

fn too_large(source: &str, limit: usize) -> Resp {
    warn!(source, limit, "request body larger than server.max_body_bytes");
    let mut r = error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
    // the rest of the body is not read, so the connection cannot be reused
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Binds `addr` (port 0 picks a free port) with a [`listener::LISTEN_BACKLOG`]-long accept queue.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    listener::bind(addr)
}

impl listener::Handler for State {
    type Body = http_body_util::Full<bytes::Bytes>;
    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = Resp> + Send {
        State::handle(self, req, peer)
    }
}

/// Serves ingress with at most `max_connections` connections (see
/// [`listener::ConnectionBudget`]) until `shutdown` resolves, then stops accepting and gives
/// in-flight requests the grace period it resolves with to finish.
pub async fn serve(
    tcp: TcpListener,
    state: Arc<State>,
    max_connections: usize,
    shutdown: impl Future<Output = Duration>,
) {
    let server = state.snapshot.load().server.clone();
    let limits = listener::ConnectionLimits {
        listener: "ingress",
        max_connections,
        header_timeout: server.request_timeout.0,
        max_header_bytes: server.max_header_bytes,
    };
    listener::serve(tcp, limits, state, shutdown).await;
}
