//! The web console: three static files embedded in the binary (`console/`), and the API routes
//! only it needs (who is logged in, the activity chart, the event log newest first with a
//! search, an event explained by today's config, a pasted event through `dry-run`, the routes as
//! written, the live tail). Everything else it does goes through the API routes the CLI's remote
//! commands use, so an action from the console is the same `ops` call as from the CLI.
//!
//! Why static files and JSON rather than server-rendered pages: the token stays in the browser's
//! `sessionStorage` and goes out only as an `Authorization` header, so no cookie exists for a
//! cross-site request to ride on (no CSRF by construction); the pages build their DOM with
//! `textContent`, never HTML strings, so an attacker-controlled body cannot become markup; and
//! the data has one source, the JSON the API and the CLI already serve. The files are served with
//! a Content-Security-Policy that allows only themselves (no inline script or style).

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{Admin, Body, Pages, Resp, error, ops_error, percent_decode, reply};
use crate::ops::{self, OpsError};
use crate::snapshot::{Event, EventId};
use crate::store::{DeliveryFilter, DeliveryRow, EventDetail, ExportCursor, ExportFilter, Inspect};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// Only the console's own files may run or style the page; it may talk only to this listener.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Events a page of the log shows at most.
const MAX_PAGE: usize = 200;
/// Events one search by a JSONPath value reads at most before it answers (with a cursor to go on).
const MAX_SCANNED: usize = 5_000;
/// How long the tail gathers items after the first before it writes them: a person watching sees
/// no difference, and ingress does not wake the tail (and its connection) for every item.
const TAIL_GATHER: std::time::Duration = std::time::Duration::from_millis(100);
/// Bytes of tail items gathered into one write at most.
const MAX_TAIL_WRITE: usize = 64 * 1024;

/// One tail item as a server-sent event.
fn sse_frame(item: &crate::activity::TailItem) -> String {
    let kind = match item {
        crate::activity::TailItem::Event { .. } => "event",
        crate::activity::TailItem::Delivery { .. } => "delivery",
    };
    let data = serde_json::to_string(item).expect("tail items serialize");
    format!("event: {kind}\ndata: {data}\n\n")
}

/// What a tail that fell behind is told: how many items it missed.
fn lagged_frame(missed: u64) -> String {
    format!("event: lagged\ndata: {{\"missed\":{missed}}}\n\n")
}

/// How often the tail says it is alive (proxies drop a connection silent for a minute).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The console's files (`GET /console/...`); `None` for any other path.
pub fn asset(path: &str) -> Option<Resp> {
    let (body, content_type) = match path {
        "/console" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(http::header::LOCATION, HeaderValue::from_static("/console/"));
            return Some(r);
        }
        "/console/" | "/console/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

/// A query string's pairs, decoded.
fn pairs(query: &str) -> impl Iterator<Item = (&str, String)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k, percent_decode(v))
    })
}

/// `GET /api/v1/events`'s query.
#[derive(Debug, Default)]
struct LogQuery {
    filter: ExportFilter,
    q: Option<String>,
}

fn parse_log_query(query: &str, now: std::time::SystemTime) -> Result<LogQuery, OpsError> {
    let mut out = LogQuery {
        filter: ExportFilter { newest_first: true, deliveries: true, limit: 50, ..Default::default() },
        q: None,
    };
    let f = &mut out.filter;
    const KNOWN: [&str; 9] = ["source", "route", "destination", "status", "since", "until", "q", "cursor", "limit"];
    for (k, v) in pairs(query) {
        if !KNOWN.contains(&k) {
            return Err(OpsError::Invalid(format!("unknown query parameter \"{k}\"")));
        }
        if v.is_empty() {
            continue; // an empty field of the console's filter form
        }
        match k {
            "source" => f.source = Some(v),
            "route" => f.route = Some(v.into()),
            "destination" => f.destination = Some(v.into()),
            "status" => f.status = Some(ops::parse_status(&v)?),
            "since" => f.since_ms = Some(ops::parse_since(&v, now)?),
            "until" => f.until_ms = Some(ops::parse_since(&v, now)?),
            "q" => out.q = Some(v.trim().to_string()),
            "cursor" => f.after = Some(parse_cursor(&v)?),
            "limit" => {
                f.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| OpsError::Invalid(format!("limit must be a number from 1 to {MAX_PAGE}")))?
            }
            _ => unreachable!("every known parameter is matched"),
        }
    }
    Ok(out)
}

/// A page cursor: `<received_at_ms>.<event id>`, the last event of the previous page.
fn parse_cursor(text: &str) -> Result<ExportCursor, OpsError> {
    text.split_once('.')
        .and_then(|(at, id)| Some(ExportCursor { received_at_ms: at.parse().ok()?, id: EventId::from(id) }))
        .filter(|c| !c.id.as_str().is_empty())
        .ok_or_else(|| OpsError::Invalid(format!("cursor \"{text}\" is not one a page of the event log gave")))
}

fn cursor_text(c: &ExportCursor) -> String {
    format!("{}.{}", c.received_at_ms, c.id)
}

/// A search by a value in the body: `$.path=value` (the value as JSON when it reads as JSON,
/// else as text: `$.user.id=42` and `$.name=ada` both work).
struct ValueSearch {
    path: crate::rules::JsonPath,
    want: Value,
}

impl ValueSearch {
    fn parse(q: &str) -> Option<Result<ValueSearch, OpsError>> {
        let (path, value) = q.strip_prefix('$').map(|_| q.split_once('='))??;
        let path = match crate::rules::JsonPath::parse(path.trim()) {
            Ok(p) => p,
            Err(e) => return Some(Err(OpsError::Invalid(format!("q: {e}")))),
        };
        let value = value.trim();
        let want = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        Some(Ok(ValueSearch { path, want }))
    }

    fn holds(&self, body: &[u8]) -> bool {
        serde_json::from_slice::<Value>(body)
            .is_ok_and(|v| self.path.first(&v).is_some_and(|found| *found == self.want))
    }
}

fn delivery_json(d: &DeliveryRow) -> Value {
    json!({"id": d.id, "route": d.route, "destination": d.destination, "status": d.status, "attempts": d.attempts, "last_status": d.last_status})
}

fn log_item(id: &EventId, source: &str, received_at_ms: i64, deliveries: &[DeliveryRow]) -> Value {
    json!({
        "id": id,
        "source": source,
        "received_at_ms": received_at_ms,
        "deliveries": deliveries.iter().map(delivery_json).collect::<Vec<_>>(),
    })
}

fn detail_item(e: &EventDetail) -> Value {
    let rows: Vec<DeliveryRow> = e.deliveries.iter().map(|d| d.delivery.clone()).collect();
    log_item(&e.id, &e.source, e.received_at_ms, &rows)
}

/// Whether an event found by id or `webhook-id` passes the log's other filters.
fn passes(f: &ExportFilter, e: &EventDetail) -> bool {
    let rows = || e.deliveries.iter().map(|d| &d.delivery);
    f.source.as_ref().is_none_or(|s| *s == e.source)
        && f.since_ms.is_none_or(|t| e.received_at_ms >= t)
        && f.until_ms.is_none_or(|t| e.received_at_ms < t)
        && (f.route.is_none() && f.destination.is_none() && f.status.is_none()
            || rows().any(|d| {
                f.route.as_ref().is_none_or(|r| *r == d.route)
                    && f.destination.as_ref().is_none_or(|x| *x == d.destination)
                    && f.status.is_none_or(|s| s == d.status)
            }))
}

impl Admin {
    /// `GET /api/v1/whoami`: the name actions are logged under, and whether a token is needed.
    pub(super) fn whoami(&self, actor: &str) -> Resp {
        let admin = &self.state.snapshot.load().admin;
        reply(StatusCode::OK, json!({"actor": actor, "auth": admin.token.is_some() || !admin.tokens.is_empty()}))
    }

    /// `GET /api/v1/overview`: events and deliveries per 5 s over 5 minutes (this process).
    pub(super) fn overview(&self) -> Resp {
        reply(StatusCode::OK, json!(self.state.dispatcher.activity().series()))
    }

    /// `GET /api/v1/events`: the event log, newest first, filtered; `q` finds an event by id,
    /// by a delivery's `webhook-id`, or by a value in its body (`$.path=value`).
    pub(super) async fn event_log(&self, query: &str) -> Resp {
        let LogQuery { mut filter, q } = match parse_log_query(query, std::time::SystemTime::now()) {
            Ok(q) => q,
            Err(e) => return ops_error(e),
        };
        let store = self.state.dispatcher.store();
        let search = match q.as_deref().map(|q| (q, ValueSearch::parse(q))) {
            None => None,
            Some((_, Some(Ok(search)))) => Some(search),
            Some((_, Some(Err(e)))) => return ops_error(e),
            // an event id or a webhook-id: one event at most
            Some((q, None)) => {
                let found = match store.event(EventId::from(q)).await {
                    Ok(Some(e)) => Some(e),
                    Ok(None) => {
                        let by_msg = DeliveryFilter { msg_id: Some(q.to_string()), limit: 1, ..Default::default() };
                        match store.list_deliveries(by_msg).await {
                            Ok(rows) => match rows.first() {
                                Some(row) => store.event(row.event_id.clone()).await.ok().flatten(),
                                None => None,
                            },
                            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                    Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                };
                let items: Vec<Value> = found.iter().filter(|e| passes(&filter, e)).map(detail_item).collect();
                return reply(StatusCode::OK, json!({"items": items, "next": null}));
            }
        };
        let want = filter.limit;
        let mut items = Vec::new();
        let mut scanned = 0;
        let next = loop {
            if search.is_some() {
                filter.limit = MAX_PAGE.min(MAX_SCANNED - scanned);
            }
            let page = match store.export_events(filter.clone()).await {
                Ok(page) => page,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let full = page.len() == filter.limit;
            scanned += page.len();
            let mut filled_at = None;
            for (i, e) in page.iter().enumerate() {
                if search.as_ref().is_none_or(|s| s.holds(&e.body)) {
                    items.push(log_item(&e.id, &e.source, e.received_at_ms, &e.deliveries));
                    if items.len() == want {
                        filled_at = Some(i);
                        break;
                    }
                }
            }
            // the next page starts after the last event read; none when the log has no more
            match (filled_at, page.last()) {
                (Some(i), _) => break (full || i + 1 < page.len()).then(|| page[i].cursor()),
                (None, Some(last)) if full && scanned < MAX_SCANNED => filter.after = Some(last.cursor()),
                (None, Some(last)) if full => break Some(last.cursor()),
                _ => break None,
            }
        };
        reply(StatusCode::OK, json!({"items": items, "next": next.as_ref().map(cursor_text), "scanned": scanned}))
    }

    /// `GET /api/v1/events/{id}/explain`: the stored event through today's config.
    pub(super) async fn explain(&self, id: &str) -> Resp {
        let snap = self.state.snapshot.load_full();
        match ops::explain(self.state.dispatcher.store(), &snap, &EventId::from(id)).await {
            Ok(v) => reply(StatusCode::OK, v),
            Err(e) => ops_error(e),
        }
    }

    /// `POST /api/v1/dry-run`: a pasted event through today's config.
    pub(super) async fn dry_run(&self, body: &[u8]) -> Resp {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct DryRun {
            source: String,
            #[serde(default)]
            headers: Vec<(String, String)>,
            #[serde(default)]
            body: String,
        }
        let cmd: DryRun = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"source\": .., \"headers\": [[name, value], ..], \"body\": \"..\"}}: {e}"),
                );
            }
        };
        let snap = self.state.snapshot.load_full();
        let Some(source) = snap.source_by_name(&cmd.source) else {
            let names: Vec<&str> = snap.sources.iter().map(|s| &*s.name).collect();
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown source \"{}\"; sources are: {}", cmd.source, names.join(", ")),
            );
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in &cmd.headers {
            let (Ok(n), Ok(v)) = (http::HeaderName::try_from(name.trim()), HeaderValue::try_from(value.trim())) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("header \"{name}\" is not a valid header name and value"),
                );
            };
            headers.append(n, v);
        }
        if !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let event = Event {
            id: EventId::generate(),
            source: source.name.clone(),
            received_at: std::time::SystemTime::now(),
            headers,
            body: Bytes::from(cmd.body),
        };
        reply(StatusCode::OK, crate::dry_run::run(&snap, source, &event).await)
    }

    /// `GET /api/v1/routes`: the routes in force, as written.
    pub(super) fn routes(&self) -> Resp {
        let snap = self.state.snapshot.load();
        let routes: Vec<Value> = snap
            .routes
            .iter()
            .map(|r| {
                let source = snap.sources.iter().find(|s| s.routes.iter().any(|i| *snap.routes[*i].name == *r.name));
                let name = |i: usize| snap.destinations[i].name.to_string();
                json!({
                    "name": &*r.name,
                    "source": source.map(|s| &*s.name),
                    "yaml": r.written,
                    "to": r.destinations.iter().map(|i| name(*i)).collect::<Vec<_>>(),
                    "then": r.steps.iter().map(|s| json!({"destination": name(s.destination), "after": name(s.after)})).collect::<Vec<_>>(),
                    "transforms": r.plugins.iter().map(|p| p.name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        reply(StatusCode::OK, json!({"config_version": snap.version, "file": snap.file, "routes": routes}))
    }

    /// `GET /api/v1/tail`: server-sent events, one per accepted event and per attempt, from now
    /// until the client leaves or the gateway shuts down.
    pub(super) fn tail(&self) -> Response<Body> {
        let mut items = self.state.dispatcher.activity().subscribe();
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(16);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut quiet = std::time::Duration::ZERO;
            let mut backlog = false;
            if tx.send(Ok(Bytes::from_static(b": tailing\n\n"))).await.is_err() {
                return;
            }
            loop {
                let mut frame = tokio::select! {
                    item = items.recv() => match item {
                        Ok(item) => {
                            quiet = std::time::Duration::ZERO;
                            sse_frame(&item)
                        }
                        // fell behind: say how much was missed and go on
                        Err(RecvError::Lagged(n)) => lagged_frame(n),
                        Err(RecvError::Closed) => return,
                    },
                    _ = tick.tick() => {
                        if state.shutting_down() {
                            return;
                        }
                        quiet += std::time::Duration::from_secs(1);
                        if quiet < KEEPALIVE {
                            continue;
                        }
                        quiet = std::time::Duration::ZERO;
                        ": keepalive\n\n".to_string()
                    }
                };
                // the items that come in the next moment go in the same write: under load, one
                // wake and one write carry hundreds of items instead of one each (while this
                // sleeps, a send does not wake it)
                if frame.starts_with("event: ") && !backlog {
                    tokio::time::sleep(TAIL_GATHER).await;
                }
                while frame.len() < MAX_TAIL_WRITE {
                    match items.try_recv() {
                        Ok(item) => frame.push_str(&sse_frame(&item)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => frame.push_str(&lagged_frame(n)),
                        Err(_) => break,
                    }
                }
                // a full write leaves items waiting: the next one goes without gathering
                backlog = frame.len() >= MAX_TAIL_WRITE;
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return; // the client left
                }
            }
        });
        let mut r = Response::new(http_body_util::Either::Right(Pages(rx)));
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_query_reads_every_filter_and_refuses_the_rest() {
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10_000);
        let q = parse_log_query(
            "source=app&route=r&destination=crm&status=dead&since=1000&until=2000&q=%24.a%3D1&cursor=5.evt_1&limit=20&ignored=",
            now,
        );
        assert_eq!(q.unwrap_err().to_string(), "unknown query parameter \"ignored\"");
        let q = parse_log_query(
            "source=app&route=r&destination=crm&status=dead&since=1000&until=2000&q=%24.a%3D1&cursor=5.evt_1&limit=20&route=",
            now,
        )
        .unwrap();
        let f = &q.filter;
        assert_eq!(
            (f.source.as_deref(), f.route.as_deref(), f.destination.as_deref()),
            (Some("app"), Some("r"), Some("crm"))
        );
        assert_eq!(
            (f.status, f.since_ms, f.until_ms),
            (Some(crate::store::DeliveryStatus::Dead), Some(1000), Some(2000))
        );
        assert_eq!(f.after, Some(ExportCursor { received_at_ms: 5, id: EventId::from("evt_1") }));
        assert_eq!((f.limit, f.newest_first, f.deliveries), (20, true, true));
        assert_eq!(q.q.as_deref(), Some("$.a=1"));
        assert_eq!(parse_log_query("limit=500", now).unwrap_err().to_string(), "limit must be a number from 1 to 200");
        assert_eq!(
            parse_log_query("cursor=abc", now).unwrap_err().to_string(),
            "cursor \"abc\" is not one a page of the event log gave"
        );
        assert!(parse_log_query("status=lost", now).unwrap_err().to_string().contains("lost"));
    }

    #[test]
    fn a_value_search_compares_json_values_or_text() {
        let s = ValueSearch::parse("$.user.id=42").unwrap().unwrap();
        assert!(s.holds(br#"{"user": {"id": 42}}"#));
        assert!(!s.holds(br#"{"user": {"id": "42"}}"#));
        assert!(!s.holds(b"not json"));
        let s = ValueSearch::parse("$.name = ada lovelace").unwrap().unwrap();
        assert!(s.holds(br#"{"name": "ada lovelace"}"#));
        assert!(ValueSearch::parse("evt_123").is_none(), "an id is not a value search");
        assert!(ValueSearch::parse("$.a[=1").unwrap().is_err());
    }
}
