//! Operations on stored events that both the CLI and the admin API offer: list, inspect, export,
//! replay, re-route (by id or a time range), pause and resume, cancel and purge. One
//! implementation, two front ends.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::snapshot::{Event, Snapshot};
use serde::Serialize;

use crate::store::{
    AttemptRow, DeliveryFilter, DeliveryId, DeliveryRef, DeliveryRow, DeliverySelection, DeliveryStatus,
    DestinationName, EventDetail, EventId, ExportFilter, ExportedEvent, Inspect, MsgId, NewDelivery, Purged, Queue,
    RawEvent, RouteName, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("no event {0}")]
    NoEvent(EventId),
}

/// The delivery status a filter names (`pending`, `delivered`, `failed`, `dead`, `cancelled`).
pub fn parse_status(name: &str) -> Result<DeliveryStatus, OpsError> {
    DeliveryStatus::parse(name).ok_or_else(|| {
        let names: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        OpsError::Invalid(format!("unknown status \"{name}\"; use one of {}", names.join(", ")))
    })
}

/// Parses `--since` and `--until`: a duration back from now (`30m`, `2h`, `7d`), an RFC 3339
/// timestamp (`2026-12-04T10:00:00Z`, `2026-12-04T11:00:00+01:00`) or unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, OpsError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    // a date first (`YYYY-`): a timestamp, whose errors say what a timestamp must be
    if text.len() > 4 && text.as_bytes()[..4].iter().all(u8::is_ascii_digit) && text.as_bytes()[4] == b'-' {
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|e| {
            OpsError::Invalid(format!(
                "invalid time \"{text}\": {e}; expected an RFC 3339 timestamp with its offset, e.g. \"2026-12-04T10:00:00Z\""
            ))
        })?;
        return Ok((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let back = crate::config::parse_duration(text).map_err(OpsError::Invalid)?;
    Ok(crate::store::to_ms(now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// Lists deliveries, newest first. `limit` is capped at 1000 per page.
pub async fn list(store: &Store, mut filter: DeliveryFilter) -> Result<Vec<DeliveryView>, OpsError> {
    filter.limit = filter.limit.clamp(1, 1000);
    Ok(store.list_deliveries(filter).await?.into_iter().map(DeliveryView::from).collect())
}

pub async fn event(store: &Store, id: &EventId) -> Result<EventView, OpsError> {
    let detail = store.event(id.clone()).await?.ok_or_else(|| OpsError::NoEvent(id.clone()))?;
    Ok(detail.into())
}

/// Re-sends deliveries as they were planned (same body, same `webhook-id`), to the destination's
/// current URL and secret. `ids` are event ids (all their deliveries) or delivery ids.
pub async fn replay(store: &Store, ids: Vec<DeliveryRef>) -> Result<usize, OpsError> {
    if ids.is_empty() {
        return Err(OpsError::Invalid("name at least one event or delivery id".into()));
    }
    Ok(store.replay(ids).await?)
}

/// Lets held heads of ordered keys (dead or failed under `on_dead: block`) go: they stay as they
/// are, and the next delivery of each key is sent. Returns how many held their key.
pub async fn skip(store: &Store, ids: Vec<DeliveryId>) -> Result<usize, OpsError> {
    if ids.is_empty() {
        return Err(OpsError::Invalid("name at least one delivery id".into()));
    }
    Ok(store.skip(ids).await?)
}

/// Re-sends dead letters, optionally of one destination and since a time.
pub async fn replay_dead(
    store: &Store,
    destination: Option<DestinationName>,
    since_ms: Option<i64>,
) -> Result<usize, OpsError> {
    Ok(store.replay_dead(destination, since_ms).await?)
}

/// Routes stored events again with the current config and plans new deliveries for every route
/// that matches now (new `webhook-id`s, since these are new deliveries). Verification is not
/// repeated: the event was verified when it arrived.
pub async fn reroute(store: &Store, snap: &Snapshot, ids: Vec<EventId>) -> Result<usize, OpsError> {
    let mut planned = 0;
    for id in ids {
        let RawEvent { source: source_name, received_at_ms: received_at, headers, body } =
            store.raw_event(id.clone()).await?.ok_or_else(|| OpsError::NoEvent(id.clone()))?;
        let source = snap.source_by_name(&source_name).ok_or_else(|| {
            OpsError::Invalid(format!("event {id}: source \"{source_name}\" is not in the current config"))
        })?;
        let event = routing_event(id.clone(), source.name.clone(), received_at, &headers, &body);
        // stored headers are already filtered, and are filtered again in case the source's list grew
        let reroute_id = reroute_key(&id);
        let routed = snap.route(source, &event, &reroute_id).await;
        for n in &routed.notes {
            tracing::warn!(event_id = %id, route = %n.route, note = %n.note, "re-route");
        }
        planned += store.add_deliveries(id, routed.deliveries).await?;
    }
    Ok(planned)
}

/// A stored event through today's config, nothing stored or sent ([`crate::dry_run::run`]):
/// which routes match it now, why the others do not, what the transforms make of it and what
/// would be sent. The console's event page shows it beside what was done when it arrived.
pub async fn explain(store: &Store, snap: &Snapshot, id: &EventId) -> Result<serde_json::Value, OpsError> {
    let RawEvent { source: source_name, received_at_ms, headers, body } =
        store.raw_event(id.clone()).await?.ok_or_else(|| OpsError::NoEvent(id.clone()))?;
    let source = snap.source_by_name(&source_name).ok_or_else(|| {
        OpsError::Invalid(format!("event {id}: source \"{source_name}\" is not in the current config"))
    })?;
    let event = routing_event(id.clone(), source.name.clone(), received_at_ms, &headers, &body);
    Ok(crate::dry_run::run(snap, source, &event).await)
}

/// The `webhook-id` seed of a re-route of `id`: new per re-route, so receivers do not drop the new
/// deliveries as duplicates of the first routing's.
fn reroute_key(id: &EventId) -> String {
    format!("{id}.{}", uuid::Uuid::now_v7().simple())
}

/// A stored event as routing takes it.
fn routing_event(
    id: EventId,
    source: std::sync::Arc<str>,
    received_at_ms: i64,
    headers: &[(String, String)],
    body: &Bytes,
) -> Event {
    Event {
        id,
        source,
        received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(received_at_ms.max(0) as u64),
        headers: header_map(headers),
        body: Bytes::clone(body),
    }
}

/// Most events an export or a ranged re-route holds in memory at once (a page of the store).
pub const EXPORT_PAGE: usize = 500;
/// Most body bytes a page may hold: with large bodies allowed (`server.max_body_bytes`), pages
/// are shorter, so memory stays bounded by this, not by the log's size (see [`page_size`]).
pub const EXPORT_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// Events per page when a body may be `max_body_bytes` long: [`EXPORT_PAGE`], fewer for large
/// bodies (64 at the default 1 MiB), at least 1.
pub fn page_size(max_body_bytes: usize) -> usize {
    (EXPORT_PAGE_BYTES / max_body_bytes.max(1)).clamp(1, EXPORT_PAGE)
}

/// What to export: events of a source, received in `[since, until)`, that a route delivered (or
/// planned); with their deliveries or not.
#[derive(Debug, Clone, Default)]
pub struct ExportQuery {
    pub source: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub route: Option<RouteName>,
    pub deliveries: bool,
}

impl ExportQuery {
    /// Refuses a range that ends before it starts (an empty range is fine).
    pub fn check(&self) -> Result<(), OpsError> {
        check_range(self.since_ms, self.until_ms)
    }
}

fn check_range(since_ms: Option<i64>, until_ms: Option<i64>) -> Result<(), OpsError> {
    match (since_ms, until_ms) {
        (Some(since), Some(until)) if until < since => Err(OpsError::Invalid(format!(
            "until ({}) is before since ({}): the range would be empty",
            rfc3339(until),
            rfc3339(since)
        ))),
        _ => Ok(()),
    }
}

/// A walk of the event log for export, a page at a time in accept order: the CLI writes each page
/// to stdout, the admin API sends it as a chunk of its response; neither holds more than a page.
pub struct Export {
    store: Store,
    filter: ExportFilter,
    done: bool,
}

impl Export {
    pub fn new(store: Store, q: ExportQuery, page: usize) -> Result<Export, OpsError> {
        q.check()?;
        let filter = ExportFilter {
            source: q.source,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            route: q.route,
            deliveries: q.deliveries,
            limit: page.max(1),
            ..Default::default()
        };
        Ok(Export { store, filter, done: false })
    }

    /// Appends the next page to `out` as NDJSON (one event a line, see [`export_line`]) and
    /// returns how many events it held: 0 once the walk is over.
    pub async fn next_page(&mut self, out: &mut Vec<u8>) -> Result<usize, OpsError> {
        if self.done {
            return Ok(0);
        }
        let page = self.store.export_events(self.filter.clone()).await?;
        self.done = page.len() < self.filter.limit;
        self.filter.after = page.last().map(ExportedEvent::cursor);
        for e in &page {
            export_line(e, self.filter.deliveries, out);
        }
        Ok(page.len())
    }
}

/// One exported event as a JSON line: `id`, `source`, `received_at_ms`, `received_at` (RFC
/// 3339, UTC), `headers` as stored (`[[name, value], ...]`), the body as a string when it is
/// UTF-8 (`body`, its exact bytes) or else base64 (`body_base64`), and `deliveries` when asked.
pub fn export_line(e: &ExportedEvent, deliveries: bool, out: &mut Vec<u8>) {
    use base64::Engine as _;
    let text = std::str::from_utf8(&e.body).ok();
    let line = ExportLine {
        id: &e.id,
        source: &e.source,
        received_at_ms: e.received_at_ms,
        received_at: rfc3339(e.received_at_ms),
        headers: &e.headers,
        body: text,
        body_base64: text.is_none().then(|| base64::engine::general_purpose::STANDARD.encode(&e.body)),
        deliveries: deliveries.then(|| e.deliveries.iter().map(ExportedDelivery::from).collect()),
    };
    serde_json::to_writer(&mut *out, &line).expect("an export line serializes");
    out.push(b'\n');
}

#[derive(Serialize)]
struct ExportLine<'a> {
    id: &'a EventId,
    source: &'a str,
    received_at_ms: i64,
    received_at: String,
    headers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<ExportedDelivery<'a>>>,
}

/// A delivery in an export: where it went and how it ended, without its attempts (`hookyard event`
/// has those).
#[derive(Serialize)]
struct ExportedDelivery<'a> {
    id: DeliveryId,
    route: &'a RouteName,
    destination: &'a DestinationName,
    msg_id: &'a MsgId,
    status: DeliveryStatus,
    attempts: u32,
    created_at_ms: i64,
    updated_at_ms: i64,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
}

impl<'a> From<&'a DeliveryRow> for ExportedDelivery<'a> {
    fn from(d: &'a DeliveryRow) -> Self {
        ExportedDelivery {
            id: d.id,
            route: &d.route,
            destination: &d.destination,
            msg_id: &d.msg_id,
            status: d.status,
            attempts: d.attempts,
            created_at_ms: d.created_at_ms,
            updated_at_ms: d.updated_at_ms,
            last_status: d.last_status,
            last_error: d.last_error.as_deref(),
        }
    }
}

/// Unix milliseconds as an RFC 3339 UTC timestamp (`2026-12-04T10:00:00.123Z`).
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Default pace of a ranged re-route, in events a second: a downstream built from history gets
/// it at a rate a small service takes, and the gateway's own traffic keeps its share of the store.
pub const DEFAULT_REROUTE_RATE: u32 = 50;

/// Events at most between two progress reports of a ranged re-route.
pub const REROUTE_PROGRESS_EVERY: usize = 1000;

/// A time range of history to route again (`replay --reroute --since`).
#[derive(Debug, Clone)]
pub struct RerouteRange {
    pub since_ms: i64,
    /// Exclusive; the caller fixes it (now, by default) before the walk starts, so events that
    /// arrive during the walk, already routed by ingress, are not routed twice.
    pub until_ms: i64,
    pub source: Option<String>,
    /// Only this route of today's config is matched and planned (a new downstream fed from
    /// history without re-sending to the others).
    pub route: Option<RouteName>,
    /// One delivery per event straight to this destination instead of routing (no transform).
    pub to: Option<DestinationName>,
    /// Events a second that plan deliveries; 0: as fast as the store takes them.
    pub rate: u32,
    /// Count only: route every event of the range, plan nothing.
    pub dry_run: bool,
}

/// What a ranged re-route did, or (a dry run) would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RerouteSummary {
    pub dry_run: bool,
    /// Events of the range read.
    pub events: usize,
    /// Deliveries planned (due now), or that would be.
    pub planned: usize,
    /// Events no route of today's config matches (or that `--route` does not match): nothing planned.
    pub unmatched: usize,
    /// Events whose source is no longer in the config: not routed (`--to` needs no source).
    pub skipped: usize,
}

impl std::fmt::Display for RerouteSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        let planned = if self.planned == 1 { "delivery" } else { "deliveries" };
        if self.dry_run {
            write!(
                f,
                "dry run: {} event{} in range would plan {} {planned}",
                self.events,
                s(self.events),
                self.planned
            )?;
        } else {
            write!(f, "{} event{} in range planned {} {planned}", self.events, s(self.events), self.planned)?;
        }
        write!(f, "; {} matched no route; {} skipped (source not in the config)", self.unmatched, self.skipped)
    }
}

impl RerouteRange {
    /// Checks the range against the config: `to` names one of its destinations (one that does
    /// not read a chain step's answer, which only a chain has), `route` one of its routes, not
    /// both; `until` not before `since`.
    pub fn check(&self, snap: &Snapshot) -> Result<(), OpsError> {
        check_range(Some(self.since_ms), Some(self.until_ms))?;
        if self.to.is_some() && self.route.is_some() {
            return Err(OpsError::Invalid(
                "--to sends to one destination without routing; --route routes through one route: give one".into(),
            ));
        }
        if let Some(to) = &self.to
            && snap.destination(to).is_none()
        {
            let names: Vec<&str> = snap.destinations.iter().map(|d| &*d.name).collect();
            return Err(OpsError::Invalid(format!(
                "unknown destination \"{to}\"; destinations are: {}",
                names.join(", ")
            )));
        }
        if let Some(step) = self
            .to
            .as_ref()
            .and_then(|to| snap.destination(to))
            .and_then(|d| d.templates.steps().first().map(|s| s.to_string()))
        {
            return Err(OpsError::Invalid(format!(
                "destination \"{}\" reads the answer of step \"{step}\", which only a chain has: use --route with the route whose then: sends to it",
                self.to.as_deref().unwrap_or_default()
            )));
        }
        if let Some(route) = &self.route
            && !snap.routes.iter().any(|r| *r.name == **route)
        {
            let names: Vec<&str> = snap.routes.iter().map(|r| &*r.name).collect();
            return Err(OpsError::Invalid(format!("unknown route \"{route}\"; routes are: {}", names.join(", "))));
        }
        Ok(())
    }
}

/// Routes the events of a time range again, in accept order, with today's config (all its
/// routes, or only `route`), or plans one delivery of each straight to `to`; at most `rate`
/// events a second, so a downstream built from history is not flooded. New `webhook-id`s, as
/// [`reroute`]. An event whose source left the config is skipped (warned once per source) and
/// counted; a store error stops the walk, and what was planned before it stays planned.
/// `progress` hears the running totals after each page.
pub async fn reroute_range(
    store: &Store,
    snap: &Snapshot,
    range: RerouteRange,
    mut progress: impl FnMut(&RerouteSummary) + Send,
) -> Result<RerouteSummary, OpsError> {
    range.check(snap)?;
    let mut summary = RerouteSummary { dry_run: range.dry_run, ..Default::default() };
    let mut filter = ExportFilter {
        source: range.source.clone(),
        since_ms: Some(range.since_ms),
        until_ms: Some(range.until_ms),
        limit: page_size(snap.server.max_body_bytes).min(100),
        ..Default::default()
    };
    let mut warned: Vec<String> = Vec::new();
    let period = (range.rate > 0).then(|| Duration::from_secs_f64(1.0 / range.rate as f64));
    let mut next_slot = tokio::time::Instant::now();
    loop {
        let page = store.export_events(filter.clone()).await?;
        let last_page = page.len() < filter.limit;
        filter.after = page.last().map(ExportedEvent::cursor);
        for e in page {
            summary.events += 1;
            let key = reroute_key(&e.id);
            let deliveries: Vec<NewDelivery> = if let Some(to) = &range.to {
                let event =
                    routing_event(e.id.clone(), e.source.as_str().into(), e.received_at_ms, &e.headers, &e.body);
                vec![snap.plan_to(&event, &e.headers, &key, to)]
            } else {
                let Some(source) = snap.source_by_name(&e.source) else {
                    summary.skipped += 1;
                    if !warned.contains(&e.source) {
                        tracing::warn!(source = %e.source, event_id = %e.id, "re-route: the event's source is not in the current config; its events are skipped");
                        warned.push(e.source.clone());
                    }
                    continue;
                };
                let event = routing_event(e.id.clone(), source.name.clone(), e.received_at_ms, &e.headers, &e.body);
                let routed = snap.route_only(source, &event, &key, range.route.as_deref()).await;
                for n in &routed.notes {
                    tracing::warn!(event_id = %e.id, route = %n.route, note = %n.note, "re-route");
                }
                routed.deliveries
            };
            if deliveries.is_empty() {
                summary.unmatched += 1;
                continue;
            }
            summary.planned += deliveries.len();
            if range.dry_run {
                continue;
            }
            if let Some(period) = period {
                // one event a period; a slot missed (a slow page, a slow commit) is not made up
                // for with a burst afterwards
                tokio::time::sleep_until(next_slot).await;
                next_slot = next_slot.max(tokio::time::Instant::now()) + period;
            }
            store.add_deliveries(e.id, deliveries).await?;
        }
        progress(&summary);
        if last_page {
            return Ok(summary);
        }
    }
}

/// Pauses a destination. The reason (default "paused by an operator") is kept with it: `hookyard
/// events` and `GET /api/v1/destinations` show it while the destination is paused.
pub async fn pause(store: &Store, destination: &DestinationName, reason: Option<String>) -> Result<(), OpsError> {
    let reason = reason.unwrap_or_else(|| "paused by an operator".into());
    store.set_paused(destination, true, Some(reason.clone())).await?;
    tracing::info!(destination = destination.as_str(), reason, "destination paused");
    Ok(())
}

/// Resumes a destination. The reason, if given, is logged and kept in the store in place of the
/// pause's reason.
pub async fn resume(store: &Store, destination: &DestinationName, reason: Option<String>) -> Result<(), OpsError> {
    store.set_paused(destination, false, reason.clone()).await?;
    tracing::info!(destination = destination.as_str(), reason = reason.as_deref().unwrap_or(""), "destination resumed");
    Ok(())
}

/// What a cancel or purge did, or (a dry run) would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome<T> {
    pub dry_run: bool,
    pub result: T,
}

/// Cancels the selected pending deliveries, or with `dry_run` only counts them. `by` says who
/// (`cli:<user>`, `api:token <fingerprint>`, `operator`); both are kept with each delivery.
pub async fn cancel(
    store: &Store,
    selection: DeliverySelection,
    by: String,
    reason: Option<String>,
    dry_run: bool,
) -> Result<Outcome<usize>, OpsError> {
    if let Some(problem) = selection.check() {
        return Err(OpsError::Invalid(problem.into()));
    }
    let reason = reason.filter(|r| !r.trim().is_empty());
    let n = if dry_run {
        store.count_cancellable(selection).await?
    } else {
        let n = store.cancel(selection, by.clone(), reason.clone()).await?;
        tracing::info!(cancelled = n, by = %by, reason = reason.as_deref().unwrap_or(""), "deliveries cancelled");
        n
    };
    Ok(Outcome { dry_run, result: n })
}

/// Deletes dead letters (of one destination, dead for longer than `older_than`, e.g. `7d`), and
/// their events where nothing else is left; with `dry_run` only counts them (`events` is then 0).
pub async fn purge_dead(
    store: &Store,
    destination: Option<DestinationName>,
    older_than: Option<&str>,
    dry_run: bool,
) -> Result<Outcome<Purged>, OpsError> {
    let before_ms = older_than
        .map(|t| {
            let age = crate::config::parse_duration(t).map_err(OpsError::Invalid)?;
            Ok::<_, OpsError>(crate::store::now_ms() - age.as_millis() as i64)
        })
        .transpose()?;
    let result = if dry_run {
        Purged { deliveries: store.count_dead(destination, None, before_ms).await?, events: 0 }
    } else {
        let p = store.purge_dead(destination.clone(), before_ms).await?;
        tracing::info!(
            deliveries = p.deliveries,
            events = p.events,
            destination = destination.as_deref().unwrap_or("*"),
            "dead letters purged"
        );
        p
    };
    Ok(Outcome { dry_run, result })
}

/// A delivery as the admin API and the CLI show it (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub source: String,
    pub route: RouteName,
    pub destination: DestinationName,
    pub msg_id: MsgId,
    pub status: DeliveryStatus,
    /// How many attempts were made (a count; the attempts themselves are a delivery's
    /// `attempt_log` in [`EventView`]).
    pub attempts: u32,
    /// When it is due (pending); `null` while it waits (see `waiting`).
    pub next_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Who cancelled it and why, while it is `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<CancellationView>,
    /// Its order key, when its destination orders its deliveries (`ordering:`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_key: Option<String>,
    /// Pending, but not due by itself: waiting for the deliveries before it in its key's order
    /// (`ordering:`), awaiting (or in) a batch (`batch:`, see `batch_id`), or waiting for the
    /// step before it in a chain (`then:`, see `after`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
    /// Dead or failed, it holds its key (`on_dead: block`) until replayed or skipped.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// The batch that carries it (`batch:`), and that batch's `webhook-id` (what its receiver
    /// saw); `0` with no `batch_msg_id` while it awaits a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_msg_id: Option<MsgId>,
    /// A chain's later step (`then:`): the delivery it follows. While that one is pending it
    /// waits; once it is delivered this one is sent (if its conditions hold), otherwise it is
    /// `skipped` with the reason in `last_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<DeliveryId>,
    /// The URL rendered for it from its destination's `url` template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CancellationView {
    /// `cli:<user>`, `api:<token name>`, `api:token <fingerprint>`, `api` (no token) or `operator`.
    pub by: String,
    pub reason: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub n: u32,
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// The start of the response body, as text (invalid UTF-8 replaced).
    pub response: String,
    pub error: Option<String>,
}

/// One event with its deliveries and every attempt, as shown (JSON).
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub id: EventId,
    pub source: String,
    pub received_at_ms: i64,
    pub routed: bool,
    pub dedupe_key: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body as text if it is UTF-8, else base64 in `body_base64`.
    pub body: Option<String>,
    pub body_base64: Option<String>,
    pub deliveries: Vec<DeliveryDetailView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetailView {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub transformed_body: Option<String>,
    /// Every attempt, oldest first (`attempts` is their count).
    pub attempt_log: Vec<AttemptView>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(r: DeliveryRow) -> Self {
        let waiting = r.waiting();
        DeliveryView {
            id: r.id,
            event_id: r.event_id,
            source: r.source,
            route: r.route,
            destination: r.destination,
            msg_id: r.msg_id,
            status: r.status,
            attempts: r.attempts,
            next_at_ms: (!waiting).then_some(r.next_at_ms),
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            last_status: r.last_status,
            last_error: r.last_error,
            cancelled: r.cancelled.map(|c| CancellationView { by: c.by, reason: c.reason, at_ms: c.at_ms }),
            waiting,
            held: r.held,
            order_key: r.order_key,
            batch_id: r.batch_id,
            batch_msg_id: r.batch_msg_id,
            after: r.after,
            url: r.url,
        }
    }
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        AttemptView {
            n: a.n,
            at_ms: a.at_ms,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            response: String::from_utf8_lossy(&a.response).into_owned(),
            error: a.error,
        }
    }
}

impl From<EventDetail> for EventView {
    fn from(e: EventDetail) -> Self {
        use base64::Engine as _;
        let (body, body_base64) = match std::str::from_utf8(&e.body) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&e.body))),
        };
        EventView {
            id: e.id,
            source: e.source,
            received_at_ms: e.received_at_ms,
            routed: e.routed,
            dedupe_key: e.dedupe_key,
            headers: e.headers,
            body,
            body_base64,
            deliveries: e
                .deliveries
                .into_iter()
                .map(|d| DeliveryDetailView {
                    delivery: d.delivery.into(),
                    transformed_body: d.transformed_body.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    attempt_log: d.attempt_log.into_iter().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            map.append(k, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_keep_bodies_exact_and_times_in_both_forms() {
        let mut e = ExportedEvent {
            id: "evt_1".into(),
            source: "app".into(),
            received_at_ms: 1_700_000_000_123,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from_static(b"{\"a\": \"\xc3\xa9\"} "),
            deliveries: Vec::new(),
        };
        let mut out = Vec::new();
        export_line(&e, false, &mut out);
        e.body = Bytes::from_static(b"\xff\x00");
        export_line(&e, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"id":"evt_1","source":"app","received_at_ms":1700000000123,"received_at":"2023-11-14T22:13:20.123Z","headers":[["content-type","application/json"]],"body":"{\"a\": \"é\"} "}"#,
                r#"{"id":"evt_1","source":"app","received_at_ms":1700000000123,"received_at":"2023-11-14T22:13:20.123Z","headers":[["content-type","application/json"]],"body_base64":"/wA=","deliveries":[]}"#,
            ]
        );
        assert_eq!(page_size(1024 * 1024), 64);
        assert_eq!((page_size(1024), page_size(usize::MAX)), (EXPORT_PAGE, 1));
    }

    #[test]
    fn since_accepts_durations_and_millis() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("1h", now).unwrap(), 10_000_000 - 3_600_000);
        assert_eq!(parse_since("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14T22:13:20Z", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_since("2023-11-14T23:13:20.5+01:00", now).unwrap(), 1_700_000_000_500);
        assert!(
            parse_since("2023-11-14", now)
                .unwrap_err()
                .to_string()
                .ends_with("expected an RFC 3339 timestamp with its offset, e.g. \"2026-12-04T10:00:00Z\""),
        );
        assert_eq!(
            parse_since("yesterday", now).unwrap_err().to_string(),
            "invalid duration \"yesterday\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\""
        );
    }
}
