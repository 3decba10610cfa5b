//! The admin listener: health, readiness, Prometheus metrics and the JSON admin API, on its own
//! address (loopback by default). Every route except `/healthz` requires the bearer token when
//! `admin.token` or `admin.tokens` is set; one must be when the listener is not on loopback.
//!
//! The API calls the same `ops` functions as the CLI.
//!
//! It must not be a way to stop ingress: it has its own connection limit (`admin.max_connections`,
//! never more than ingress leaves of the open-file limit) and `admin.request_timeout` for a
//! request's head and body and for idle connections, so neither a flood of connections nor a
//! half-sent request holds descriptors for long (the shared accept loop is `server::listener`).
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/healthz` | process up (no token) |
//! | GET | `/readyz` | config loaded, store taking events, not shutting down (503 otherwise, with a `reason` and `store_error`; answered until the attempts in flight at shutdown have finished) |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/api/v1/status` | active config version, load time, last reload error, needs-restart settings; with PostgreSQL, `cluster`: every instance sharing the store (live, dead, stopped) and config drift |
//! | POST | `/api/v1/reload` | reload the config now (with PostgreSQL, every instance sharing the store reloads its own file) |
//! | GET | `/api/v1/deliveries?status=&destination=&source=&since=&until=&before=&limit=` | newest first; `next` is the cursor for `before` |
//! | GET | `/api/v1/events/{id}` | one event, its deliveries and every attempt |
//! | GET | `/api/v1/export?source=&since=&until=&route=&deliveries=true` | stored events in accept order as NDJSON (`application/x-ndjson`, one event a line, as `hookyard export`), streamed a page at a time; an error midway cuts the response short (no clean end) |
//! | POST | `/api/v1/replay` | body `{"ids": [...]}` (as planned), `{"dead": true, "destination": "d", "since": "1d"}` (with `"dry_run": true`: `{"would_replay": n}`, nothing replayed), `{"reroute": [...]}`, or `{"reroute": {"since": "1d", "until": .., "source": .., "route": .., "to": .., "rate": 50, "dry_run": false}}` (a time range of history; counts only unless `"dry_run": false`); 409 for a later step of a chain never sent |
//! | POST | `/api/v1/skip` | body `{"ids": [delivery ids]}`: ordered keys held by these dead or failed heads move on; answers `{"released": n}` |
//! | GET | `/api/v1/destinations` | each destination: paused, breaker state, queue depth, oldest due, dead letters, keys held (ordered) |
//! | POST | `/api/v1/destinations/{name}/pause` | body `{"reason": "..."}` optional |
//! | POST | `/api/v1/destinations/{name}/resume` | |
//! | POST | `/api/v1/cancel` | body `{"ids": [...]}`, `{"destination": "d", "source": "s", "since": "1h"}` or `{"all": true}`, with `"reason"`; counts only unless `"dry_run": false` |
//! | GET | `/console/` | the web console (static files; every call it makes needs the token) |
//! | GET | `/api/v1/whoami` | the name this token's actions are logged under, and whether a token is needed |
//! | GET | `/api/v1/overview` | events accepted, delivered and failed attempts per 5 s over the last 5 minutes (this process), success rate |
//! | GET | `/api/v1/events?source=&route=&destination=&status=&since=&until=&q=&cursor=&limit=` | the event log newest first; `q` is an event id, a `webhook-id` or `$.path=value`; `next` is the cursor |
//! | GET | `/api/v1/events/{id}/explain` | the stored event through today's config: routes matched, why the others did not, transforms, requests (nothing sent) |
//! | POST | `/api/v1/dry-run` | body `{"source": "s", "headers": [["Name", "value"]], "body": "..."}`: as `hookyard dry-run` |
//! | GET | `/api/v1/routes` | the routes in force, each as written in the file |
//! | GET | `/api/v1/tail` | server-sent events: `event` per accepted event, `delivery` per attempt, `lagged` when the client fell behind |
//! | POST | `/api/v1/purge` | delete dead letters: body `{"destination": "d", "older_than": "7d"}` (both optional); counts only unless `"dry_run": false` |

mod console;

use std::sync::Arc;

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::warn;

use crate::app::State;
use crate::ops::{self, OpsError};
use crate::reload::Reloader;
use crate::store::cluster::Signal;
use crate::store::{DeliveryFilter, DeliveryId, DeliveryRef, DestinationName, EventId, Inspect, Queue, RouteName};

/// Largest admin request body (JSON commands are small).
const MAX_ADMIN_BODY: usize = 64 * 1024;
/// Largest admin request head (`431` beyond): a request line, a token and a few headers.
const MAX_ADMIN_HEAD: usize = 16 * 1024;

pub struct Admin {
    pub state: Arc<State>,
    pub reloader: Arc<Reloader>,
    pub metrics: Option<PrometheusHandle>,
}

type Resp = Response<Full<Bytes>>;

/// What the admin listener answers with: a whole JSON body, or an export's pages as they come.
pub type Body = http_body_util::Either<Full<Bytes>, Pages>;

/// A response body fed page by page through a bounded channel by the task that reads the store:
/// at most one page waits in the channel while the next is read, so memory follows the page, not
/// the export. A client that goes away drops this, which stops the task at its next page. A page
/// that failed to be read ends the body with an error: the response stops short (no clean end
/// of the chunked body), so a client cannot take a cut export for a whole one.
pub struct Pages(tokio::sync::mpsc::Receiver<Result<Bytes, String>>);

impl hyper::body::Body for Pages {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|page| page.map(|p| p.map(hyper::body::Frame::data).map_err(Into::into)))
    }
}

fn reply(status: StatusCode, body: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    reply(status, json!({"error": message.into()}))
}

fn ops_error(e: OpsError) -> Resp {
    match e {
        OpsError::Invalid(m) => error(StatusCode::BAD_REQUEST, m),
        OpsError::NoEvent(id) => error(StatusCode::NOT_FOUND, format!("no event {id}")),
        OpsError::Store(crate::store::StoreError::NotFound(m)) => error(StatusCode::NOT_FOUND, m),
        OpsError::Store(crate::store::StoreError::Refused(m)) => error(StatusCode::CONFLICT, m),
        OpsError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

impl Admin {
    /// Every request: an authorized export streams its pages; everything else is answered whole.
    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::GET && self.authorized(&req).is_some() && self.refusal(&req).is_none() {
            match req.uri().path() {
                "/api/v1/export" => return self.export(req.uri().query().unwrap_or("")),
                "/api/v1/tail" => return self.tail(),
                _ => {}
            }
        }
        self.handle(req).await.map(http_body_util::Either::Left)
    }

    /// `GET /api/v1/export`: the same lines as `hookyard export`, a page at a time.
    fn export(&self, query: &str) -> Response<Body> {
        let left = |r: Resp| r.map(http_body_util::Either::Left);
        let query = match parse_export(query) {
            Ok(q) => q,
            Err(e) => return left(ops_error(e)),
        };
        let page = ops::page_size(self.state.snapshot.load().server.max_body_bytes);
        let mut export = match ops::Export::new(self.state.dispatcher.store().clone(), query, page) {
            Ok(export) => export,
            Err(e) => return left(ops_error(e)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut events = 0;
            loop {
                let mut page = Vec::new();
                match export.next_page(&mut page).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok(Bytes::from(page))).await.is_err() {
                            tracing::info!(events, "export: the client went away; stopped");
                            break;
                        }
                        events += n;
                    }
                    Err(e) => {
                        warn!(error = %e, events, "export failed; the response was cut short");
                        let _ = tx.send(Err(e.to_string())).await;
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(http_body_util::Either::Right(Pages(rx)));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        r
    }

    /// Who the request is, if it may use the API: the actor its actions are logged under
    /// ([`Admin::actor`]); `None` without a valid bearer token. Every configured token is compared
    /// (as SHA-256 digests, in constant time, none skipped), so the time taken says neither which
    /// token nor how long.
    fn authorized(&self, req: &Request<Incoming>) -> Option<String> {
        use sha2::{Digest, Sha256};
        let snap = self.state.snapshot.load();
        let admin = &snap.admin;
        if admin.token.is_none() && admin.tokens.is_empty() {
            return Some("api".to_string());
        }
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))?;
        let given = Sha256::digest(given.as_bytes());
        let mut found = None;
        let candidates = admin.token.iter().map(|t| (None, t)).chain(admin.tokens.iter().map(|(n, t)| (Some(n), t)));
        for (name, token) in candidates {
            if bool::from(given.ct_eq(&Sha256::digest(token.0.as_bytes()))) {
                found = Some(actor(name.map(String::as_str), &token.0));
            }
        }
        found
    }

    /// Why a request that a browser may have sent on another site's behalf is refused:
    /// - a request that changes something (not GET) from another origin (`Origin` that is not
    ///   this listener, or `Sec-Fetch-Site` other than `same-origin`/`none`): cross-site request
    ///   forgery, which matters most with no token;
    /// - with no token, a request addressed to a name that is not loopback (`Host`): a page of
    ///   another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) would
    ///   otherwise be same-origin with the API.
    ///
    /// Clients that are not browsers (the CLI, curl, probes) send neither header, or a loopback
    /// `Host`, and pass.
    fn refusal(&self, req: &Request<Incoming>) -> Option<&'static str> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let host = header("host");
        if req.method() != Method::GET && req.method() != Method::HEAD {
            if header("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
                return Some("cross-site request refused");
            }
            if let Some(origin) = header("origin") {
                let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
                if host.is_none_or(|h| !h.eq_ignore_ascii_case(origin_host)) {
                    return Some("cross-origin request refused");
                }
            }
        }
        let open = {
            let a = &self.state.snapshot.load().admin;
            a.token.is_none() && a.tokens.is_empty()
        };
        if open && host.is_some_and(|h| !loopback_host(h)) {
            return Some("the admin listener has no token, so it answers only requests addressed to a loopback host");
        }
        None
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return reply(StatusCode::OK, json!({"status": "ok"}));
        }
        if let Some(why) = self.refusal(&req) {
            warn!(path = %path, reason = why, "admin request refused");
            return error(StatusCode::FORBIDDEN, why);
        }
        if req.method() == Method::GET
            && let Some(asset) = console::asset(&path)
        {
            return asset;
        }
        let Some(actor) = self.authorized(&req) else {
            warn!(path = %path, "admin request without a valid bearer token");
            let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
            r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        };
        let method = req.method().clone();
        let query = req.uri().query().unwrap_or("").to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body = if method == Method::POST {
            let timeout = self.state.snapshot.load().admin.request_timeout.0;
            match tokio::time::timeout(timeout, Limited::new(req.into_body(), MAX_ADMIN_BODY).collect()).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "admin request body too large"),
                Err(_) => {
                    warn!(path = %path, "admin request body not received within admin.request_timeout");
                    let mut r = error(StatusCode::REQUEST_TIMEOUT, "request timeout");
                    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                    return r;
                }
            }
        } else {
            Bytes::new()
        };
        let store = self.state.dispatcher.store();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["readyz"]) => self.ready(),
            (&Method::GET, ["metrics"]) => self.metrics().await,
            (&Method::GET, ["api", "v1", "status"]) => {
                let mut status = json!(self.reloader.status());
                let cluster = self.state.cluster.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(cluster) = cluster {
                    status["cluster"] = json!(cluster);
                }
                reply(StatusCode::OK, status)
            }
            (&Method::GET, ["api", "v1", "whoami"]) => self.whoami(&actor),
            (&Method::GET, ["api", "v1", "overview"]) => self.overview(),
            (&Method::GET, ["api", "v1", "events"]) => self.event_log(&query).await,
            (&Method::GET, ["api", "v1", "events", id, "explain"]) => self.explain(id).await,
            (&Method::POST, ["api", "v1", "dry-run"]) => self.dry_run(&body).await,
            (&Method::GET, ["api", "v1", "routes"]) => self.routes(),
            (&Method::POST, ["api", "v1", "reload"]) => {
                self.audit(&actor, "reload", "");
                let outcome = self.reloader.reload("admin api").await;
                // every instance sharing the store reloads its own file too
                if let Some(me) = store.node()
                    && let Err(e) = store.signal(&Signal::Reload { from: me.to_string() }).await
                {
                    warn!(error = %e, "could not ask the other instances to reload");
                }
                let status = if matches!(outcome, crate::reload::ReloadOutcome::Failed { .. }) {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::OK
                };
                reply(status, json!(outcome))
            }
            (&Method::GET, ["api", "v1", "deliveries"]) => match parse_filter(&query) {
                Ok(filter) => {
                    let limit = filter.limit;
                    match ops::list(store, filter).await {
                        Ok(items) => {
                            let next =
                                if items.len() == limit.clamp(1, 1000) { items.last().map(|r| r.id) } else { None };
                            reply(StatusCode::OK, json!({"items": items, "next": next}))
                        }
                        Err(e) => ops_error(e),
                    }
                }
                Err(e) => ops_error(e),
            },
            (&Method::GET, ["api", "v1", "events", id]) => match ops::event(store, &EventId::from(*id)).await {
                Ok(ev) => reply(StatusCode::OK, json!(ev)),
                Err(e) => ops_error(e),
            },
            (&Method::POST, ["api", "v1", "replay"]) => self.replay(&actor, &body).await,
            (&Method::POST, ["api", "v1", "cancel"]) => self.cancel(&actor, &body).await,
            (&Method::POST, ["api", "v1", "skip"]) => self.skip(&actor, &body).await,
            (&Method::POST, ["api", "v1", "purge"]) => self.purge(&actor, &body).await,
            (&Method::GET, ["api", "v1", "destinations"]) => self.destinations().await,
            (&Method::POST, ["api", "v1", "destinations", name, action @ ("pause" | "resume")]) => {
                if self.state.snapshot.load().destination(name).is_none() {
                    return error(StatusCode::NOT_FOUND, format!("no destination {name}"));
                }
                let reason = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("reason")?.as_str().map(str::to_string));
                let destination = DestinationName::from(*name);
                self.audit(
                    &actor,
                    action,
                    &format!("destination={name} reason={}", reason.as_deref().unwrap_or("(none)")),
                );
                let r = if *action == "pause" {
                    ops::pause(store, &destination, reason).await
                } else {
                    ops::resume(store, &destination, reason).await
                };
                match r {
                    Ok(()) => {
                        self.state.dispatcher.set_paused(&destination, *action == "pause");
                        self.state.dispatcher.wake();
                        reply(StatusCode::OK, json!({"destination": name, "paused": *action == "pause"}))
                    }
                    Err(e) => ops_error(e),
                }
            }
            (_, ["readyz" | "metrics"] | ["api", "v1", ..]) => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    fn ready(&self) -> Resp {
        let shutting_down = self.state.shutting_down();
        // the store's state as its writer last saw it, and its file checked now: never waits for
        // the writer, which may itself be waiting for a lock
        let store = self.state.dispatcher.store().health();
        let ready = !shutting_down && store.is_ok();
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let mut body = json!({"ready": ready, "config_loaded": true, "config_version": self.state.snapshot.load().version, "store_writable": store.is_ok(), "store_error": store.as_ref().err(), "shutting_down": shutting_down});
        // why not ready, in words, for whoever reads a probe's log
        if shutting_down {
            body["reason"] = json!("shutting down");
        } else if store.is_err() {
            body["reason"] = json!("the store is not writable");
        }
        reply(status, body)
    }

    async fn metrics(&self) -> Resp {
        let Some(handle) = &self.metrics else {
            return error(StatusCode::NOT_FOUND, "metrics are not enabled in this process");
        };
        self.refresh_gauges().await;
        let mut r = Response::new(Full::new(Bytes::from(handle.render())));
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
        r
    }

    /// Per-destination gauges are computed from the store at scrape time.
    async fn refresh_gauges(&self) {
        let Ok(rows) = self.destination_rows().await else { return };
        for r in rows {
            let gauges = crate::metrics::DestinationGauges {
                pending: r.pending,
                oldest_due_ms: r.oldest_due_ms,
                dead: r.dead,
                held_keys: r.held_keys,
                breaker: r.breaker,
                paused: r.paused,
            };
            crate::metrics::destination_gauges(&r.name, gauges);
        }
    }

    async fn destination_rows(&self) -> Result<Vec<DestinationRow>, crate::store::StoreError> {
        let store = self.state.dispatcher.store();
        let stats = store.destination_stats(crate::store::now_ms()).await?;
        let paused = store.paused().await?;
        let breakers = self.state.dispatcher.breaker_states();
        let snap = self.state.snapshot.load();
        Ok(snap
            .destinations
            .iter()
            .map(|d| {
                let s = stats.iter().find(|s| s.destination == *d.name);
                let p = paused.iter().find(|(n, _)| *n == *d.name);
                DestinationRow {
                    health: self.state.dispatcher.activity().health(&d.name),
                    rate_limit: d.rate.as_ref().map(|r| format!("{}/s", r.per_second())),
                    name: d.name.to_string(),
                    paused: p.is_some(),
                    pause_reason: p.and_then(|(_, r)| r.clone()),
                    breaker: breakers.iter().find(|(n, _)| *n == d.name).map_or("closed", |(_, b)| b),
                    pending: s.map_or(0, |s| s.pending),
                    oldest_due_ms: s.map_or(0, |s| s.oldest_due_ms),
                    dead: s.map_or(0, |s| s.dead),
                    failed: s.map_or(0, |s| s.failed),
                    held_keys: s.map_or(0, |s| s.held),
                }
            })
            .collect())
    }

    async fn destinations(&self) -> Resp {
        match self.destination_rows().await {
            Ok(rows) => reply(StatusCode::OK, json!({"items": rows})),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn replay(&self, actor: &str, body: &[u8]) -> Resp {
        self.audit(actor, "replay", &String::from_utf8_lossy(body));
        let Ok(cmd) = serde_json::from_slice::<ReplayCommand>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"ids\": [..]}, {\"dead\": true, \"destination\": .., \"since\": ..}, {\"reroute\": [..]} \
                 or {\"reroute\": {\"since\": .., \"until\": .., \"source\": .., \"route\": .., \"to\": .., \"rate\": .., \"dry_run\": ..}}",
            );
        };
        if let ReplayCommand {
            ids: None,
            dead: None | Some(false),
            reroute: Some(Reroute::Range(range)),
            dry_run: None,
            ..
        } = cmd
        {
            return self.reroute_range(range).await;
        }
        let store = self.state.dispatcher.store();
        let result = match cmd {
            ReplayCommand { ids: Some(ids), dead: None | Some(false), reroute: None, dry_run: None, .. } => {
                ops::replay(store, ids).await
            }
            ReplayCommand { ids: None, dead: Some(true), reroute: None, destination, since, dry_run } => {
                let since = match since.map(|s| ops::parse_since(&s, SystemTime::now())).transpose() {
                    Ok(s) => s,
                    Err(e) => return ops_error(e),
                };
                if dry_run == Some(true) {
                    return match store.count_dead(destination, since, None).await {
                        Ok(n) => reply(StatusCode::OK, json!({"dry_run": true, "would_replay": n})),
                        Err(e) => ops_error(OpsError::Store(e)),
                    };
                }
                ops::replay_dead(store, destination, since).await
            }
            ReplayCommand {
                ids: None,
                dead: None | Some(false),
                reroute: Some(Reroute::Ids(ids)),
                dry_run: None,
                ..
            } => {
                let snap = self.state.snapshot.load_full();
                ops::reroute(store, &snap, ids).await
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "give exactly one of ids, dead or reroute (and dry_run only with dead)",
                );
            }
        };
        match result {
            Ok(n) => {
                self.state.dispatcher.wake();
                reply(StatusCode::OK, json!({"queued": n}))
            }
            Err(e) => ops_error(e),
        }
    }
}

impl Admin {
    /// A time range of history routed again. It runs in a task of its own, so a client that
    /// gives up waiting does not stop it half way: it runs to its end and logs its summary.
    async fn reroute_range(&self, cmd: RerouteRangeCommand) -> Resp {
        let now = SystemTime::now();
        let time = |t: &str| ops::parse_since(t, now);
        let range = match (time(&cmd.since), cmd.until.as_deref().map(time).transpose()) {
            (Ok(since_ms), Ok(until_ms)) => ops::RerouteRange {
                since_ms,
                until_ms: until_ms.unwrap_or_else(|| crate::store::to_ms(now)),
                source: cmd.source,
                route: cmd.route,
                to: cmd.to,
                rate: cmd.rate.unwrap_or(ops::DEFAULT_REROUTE_RATE),
                dry_run: cmd.dry_run.unwrap_or(true),
            },
            (Err(e), _) | (_, Err(e)) => return ops_error(e),
        };
        let snap = self.state.snapshot.load_full();
        if let Err(e) = range.check(&snap) {
            return ops_error(e);
        }
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            let store = state.dispatcher.store().clone();
            let mut reported = 0;
            let result = ops::reroute_range(&store, &snap, range, |s| {
                // the gateway sends what each page planned without waiting for its poll
                state.dispatcher.wake();
                if s.events >= reported + ops::REROUTE_PROGRESS_EVERY {
                    reported = s.events;
                    tracing::info!(events = s.events, planned = s.planned, "re-route of a range: progress");
                }
            })
            .await;
            match &result {
                Ok(s) => tracing::info!(
                    dry_run = s.dry_run,
                    events = s.events,
                    planned = s.planned,
                    unmatched = s.unmatched,
                    skipped = s.skipped,
                    "re-route of a range done"
                ),
                Err(e) => warn!(error = %e, "re-route of a range failed; what it planned before stays planned"),
            }
            result
        });
        match task.await {
            Ok(Ok(summary)) => reply(StatusCode::OK, json!(summary)),
            Ok(Err(e)) => ops_error(e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the re-route stopped: {e}")),
        }
    }

    async fn skip(&self, actor: &str, body: &[u8]) -> Resp {
        self.audit(actor, "skip", &String::from_utf8_lossy(body));
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SkipCommand {
            ids: Vec<DeliveryId>,
        }
        let Ok(cmd) = serde_json::from_slice::<SkipCommand>(body) else {
            return error(StatusCode::BAD_REQUEST, "expected {\"ids\": [delivery ids]}");
        };
        match ops::skip(self.state.dispatcher.store(), cmd.ids).await {
            Ok(n) => {
                self.state.dispatcher.wake();
                reply(StatusCode::OK, json!({"released": n}))
            }
            Err(e) => ops_error(e),
        }
    }
}

impl Admin {
    /// Logs an action taken through the API (the console's buttons included): who (the token's
    /// name, see [`Admin::actor`]) and what. Target `hookyard::audit`, so a log pipeline can keep
    /// these apart.
    fn audit(&self, actor: &str, action: &str, what: &str) {
        // a command is at most 64 KiB: its first 500 characters say what it was
        let what = match what.char_indices().nth(500) {
            Some((cut, _)) => &what[..cut],
            None => what,
        };
        tracing::info!(target: "hookyard::audit", actor = %actor, action = %action, what, "admin action");
    }

    async fn cancel(&self, actor: &str, body: &[u8]) -> Resp {
        self.audit(actor, "cancel", &String::from_utf8_lossy(body));
        let Ok(cmd) = serde_json::from_slice::<CancelCommand>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"ids\": [..]}, {\"destination\": .., \"source\": .., \"since\": ..} or {\"all\": true}, \
                 with \"reason\" and \"dry_run\" (default true) optional",
            );
        };
        let since_ms = match cmd.since.map(|s| ops::parse_since(&s, SystemTime::now())).transpose() {
            Ok(s) => s,
            Err(e) => return ops_error(e),
        };
        let selection = crate::store::DeliverySelection {
            ids: cmd.ids.unwrap_or_default(),
            destination: cmd.destination,
            source: cmd.source,
            since_ms,
            all: cmd.all.unwrap_or(false),
        };
        let by = actor.to_string();
        let store = self.state.dispatcher.store();
        match ops::cancel(store, selection, by.clone(), cmd.reason, cmd.dry_run.unwrap_or(true)).await {
            Ok(done) if done.dry_run => reply(StatusCode::OK, json!({"dry_run": true, "would_cancel": done.result})),
            Ok(done) => {
                // the queue's count is read again at the next poll
                self.state.dispatcher.wake();
                reply(StatusCode::OK, json!({"dry_run": false, "cancelled": done.result, "by": by}))
            }
            Err(e) => ops_error(e),
        }
    }

    async fn purge(&self, actor: &str, body: &[u8]) -> Resp {
        self.audit(actor, "purge", &String::from_utf8_lossy(body));
        let body = if body.is_empty() { b"{}".as_slice() } else { body };
        let Ok(cmd) = serde_json::from_slice::<PurgeCommand>(body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected {\"destination\": .., \"older_than\": ..} (both optional), with \"dry_run\" (default true)",
            );
        };
        let store = self.state.dispatcher.store();
        match ops::purge_dead(store, cmd.destination, cmd.older_than.as_deref(), cmd.dry_run.unwrap_or(true)).await {
            Ok(done) if done.dry_run => {
                reply(StatusCode::OK, json!({"dry_run": true, "would_purge": done.result.deliveries}))
            }
            Ok(done) => reply(
                StatusCode::OK,
                json!({"dry_run": false, "purged": done.result.deliveries, "events_deleted": done.result.events}),
            ),
            Err(e) => ops_error(e),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelCommand {
    ids: Option<Vec<DeliveryRef>>,
    destination: Option<DestinationName>,
    source: Option<String>,
    since: Option<String>,
    all: Option<bool>,
    reason: Option<String>,
    dry_run: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeCommand {
    destination: Option<DestinationName>,
    older_than: Option<String>,
    dry_run: Option<bool>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayCommand {
    ids: Option<Vec<DeliveryRef>>,
    dead: Option<bool>,
    reroute: Option<Reroute>,
    destination: Option<DestinationName>,
    since: Option<String>,
    /// With `dead`: only count what would be replayed.
    dry_run: Option<bool>,
}

/// `"reroute"`: event ids, or a time range of history.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Reroute {
    Ids(Vec<EventId>),
    Range(RerouteRangeCommand),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RerouteRangeCommand {
    since: String,
    until: Option<String>,
    source: Option<String>,
    route: Option<RouteName>,
    to: Option<DestinationName>,
    rate: Option<u32>,
    /// Default true: a range may be large, so the API counts unless told to act.
    dry_run: Option<bool>,
}

#[derive(serde::Serialize)]
struct DestinationRow {
    name: String,
    paused: bool,
    pause_reason: Option<String>,
    breaker: &'static str,
    pending: u64,
    oldest_due_ms: u64,
    dead: u64,
    failed: u64,
    /// Ordered keys held by a dead or failed head (`on_dead: block`).
    held_keys: u64,
    /// This process's attempts in the last 5 minutes: success rate, latency p50/p99.
    #[serde(flatten)]
    health: crate::activity::Health,
    /// `rate_limit:` (per second, for all instances together).
    rate_limit: Option<String>,
}

fn parse_filter(query: &str) -> Result<DeliveryFilter, OpsError> {
    let mut f = DeliveryFilter { limit: 50, ..Default::default() };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let int = |v: &str| v.parse::<i64>().map_err(|_| OpsError::Invalid(format!("{k} must be a number")));
        match k {
            "status" => f.status = Some(ops::parse_status(&v)?),
            "destination" => f.destination = Some(v.into()),
            "source" => f.source = Some(v),
            "since" => f.since_ms = Some(ops::parse_since(&v, SystemTime::now())?),
            "until" => f.until_ms = Some(ops::parse_since(&v, SystemTime::now())?),
            "before" => f.before_id = Some(DeliveryId(int(&v)?)),
            "webhook_id" => f.msg_id = Some(v),
            "limit" => f.limit = int(&v)? as usize,
            other => return Err(OpsError::Invalid(format!("unknown query parameter \"{other}\""))),
        }
    }
    Ok(f)
}

fn parse_export(query: &str) -> Result<ops::ExportQuery, OpsError> {
    let mut q = ops::ExportQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "source" => q.source = Some(v),
            "since" => q.since_ms = Some(ops::parse_since(&v, SystemTime::now())?),
            "until" => q.until_ms = Some(ops::parse_since(&v, SystemTime::now())?),
            "route" => q.route = Some(v.into()),
            "deliveries" => {
                q.deliveries = match v.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(OpsError::Invalid(format!("deliveries must be true or false, not \"{v}\""))),
                }
            }
            other => return Err(OpsError::Invalid(format!("unknown query parameter \"{other}\""))),
        }
    }
    q.check()?;
    Ok(q)
}

/// Who a request with this token is, for the log of its actions and the record a cancel keeps:
/// `api:<name>` for a token of `admin.tokens`, `api:token <first 8 hex digits of its SHA-256>`
/// for `admin.token` (which token, without the token).
fn actor(name: Option<&str>, token: &str) -> String {
    use sha2::{Digest, Sha256};
    match name {
        Some(name) => format!("api:{name}"),
        None => {
            let digest = Sha256::digest(token.as_bytes());
            let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("api:token {hex}")
        }
    }
}

/// Whether a `Host` header names this machine: `localhost`, or a loopback address, with or
/// without a port.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => {
            host.rsplit_once(':').map_or(host, |(name, port)| if port.parse::<u16>().is_ok() { name } else { host })
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) =>
            {
                out.push(h * 16 + l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl crate::server::listener::Handler for Admin {
    type Body = Body;
    fn handle(
        &self,
        req: Request<Incoming>,
        _peer: std::net::SocketAddr,
    ) -> impl std::future::Future<Output = Response<Body>> + Send {
        Admin::respond(self, req)
    }
}

/// Serves the admin API with at most `max_connections` connections, apart from ingress's (see
/// [`crate::server::listener::ConnectionBudget`]), until `shutdown` resolves.
pub async fn serve(
    tcp: TcpListener,
    admin: Arc<Admin>,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = std::time::Duration>,
) {
    let limits = crate::server::listener::ConnectionLimits {
        listener: "admin",
        max_connections,
        header_timeout: admin.state.snapshot.load().admin.request_timeout.0,
        max_header_bytes: MAX_ADMIN_HEAD,
    };
    crate::server::listener::serve(tcp, limits, admin, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client of an export sees when a page fails to be read: the pages before it, then
    /// the connection closes without the chunked body's last chunk, so no client takes the cut
    /// export for a whole one.
    #[tokio::test]
    async fn a_failed_page_cuts_the_response_short() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    tx.send(Ok(Bytes::from_static(b"{\"id\":\"evt_1\"}\n"))).await.unwrap();
                    tx.send(Err("database error: gone".to_string())).await.unwrap();
                });
                Ok::<_, std::convert::Infallible>(Response::new(Pages(rx)))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /api/v1/export HTTP/1.1\r\nhost: admin\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_to_end(&mut answer))
            .await
            .expect("the connection closes")
            .unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.contains("transfer-encoding: chunked\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nF\r\n{\"id\":\"evt_1\"}\n\r\n"), "the page, then nothing: {answer:?}");
    }

    #[test]
    fn filters_from_query_strings() {
        let f = parse_filter("status=dead&destination=chat%20ops&limit=5&before=99").unwrap();
        assert_eq!(f.status, Some(crate::store::DeliveryStatus::Dead));
        assert_eq!(f.destination.as_deref(), Some("chat ops"));
        assert_eq!((f.limit, f.before_id), (5, Some(DeliveryId(99))));
        assert_eq!(parse_filter("colour=red").unwrap_err().to_string(), "unknown query parameter \"colour\"");
        assert_eq!(parse_filter("limit=x").unwrap_err().to_string(), "limit must be a number");
        assert_eq!(percent_decode("a%2Fb+c%zz"), "a/b c%zz");
        let q = parse_export("source=app&route=new%20one&since=1000&until=2000&deliveries=true").unwrap();
        assert_eq!(
            (q.source.as_deref(), q.route.as_deref(), q.since_ms, q.until_ms, q.deliveries),
            (Some("app"), Some("new one"), Some(1000), Some(2000), true)
        );
        assert_eq!(
            parse_export("deliveries=yes").unwrap_err().to_string(),
            "deliveries must be true or false, not \"yes\""
        );
        assert!(parse_export("since=2000&until=1000").unwrap_err().to_string().starts_with("until ("));
    }
}
