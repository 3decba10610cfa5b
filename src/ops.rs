//! Operations on stored events that both the CLI and the admin API offer: list, inspect, replay,
//! re-route, pause and resume, cancel and purge. One implementation, two front ends.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::snapshot::{Event, Snapshot};
use serde::Serialize;

use crate::store::{
    AttemptRow, DeliveryFilter, DeliveryId, DeliveryRef, DeliveryRow, DeliverySelection, DeliveryStatus,
    DestinationName, EventDetail, EventId, Inspect, MsgId, Purged, Queue, RawEvent, RouteName, Store, StoreError,
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

/// Parses `--since`: a duration back from now (`30m`, `2h`, `7d`) or unix milliseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, OpsError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
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
        let event = Event {
            id: id.clone(),
            source: source.name.clone(),
            received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(received_at as u64),
            headers: header_map(&headers),
            body: Bytes::clone(&body),
        };
        // a new id per re-route, so receivers do not drop them as duplicates of the first routing;
        // stored headers are already filtered, and are filtered again in case the source's list grew
        let reroute_id = format!("{id}.{}", uuid::Uuid::now_v7().simple());
        let routed = snap.route(source, &event, &reroute_id).await;
        for n in &routed.notes {
            tracing::warn!(event_id = %id, route = %n.route, note = %n.note, "re-route");
        }
        planned += store.add_deliveries(id, routed.deliveries).await?;
    }
    Ok(planned)
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
        Purged { deliveries: store.count_dead(destination, before_ms).await?, events: 0 }
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
    /// `cli:<user>`, `api:token <fingerprint>`, `api` (no token) or `operator`.
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
    fn since_accepts_durations_and_millis() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("1h", now).unwrap(), 10_000_000 - 3_600_000);
        assert_eq!(parse_since("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_since("yesterday", now).unwrap_err().to_string(),
            "invalid duration \"yesterday\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\""
        );
    }
}
