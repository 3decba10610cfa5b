//! The durable event log and delivery queue, behind one boundary: the [`Backend`] trait, whose
//! types name no database. [`Store`] is what callers hold: an enum of backends (SQLite,
//! `sqlite/`, the embedded default; PostgreSQL, `postgres/`), cheap to clone, that implements
//! [`Backend`] by matching, so the per-event calls (accept, settle, due ids) are static calls with
//! no boxing. Every backend runs the same behaviours: the conformance suite (`conformance.rs`).
//!
//! An event is acknowledged only after the commit that holds it returned (with `sync: full`,
//! fsynced); a delivery is pending until an attempt's result is committed, so a crash at any point
//! makes it due again.
//!
//! Knows nothing of routing, plugins or HTTP.

pub mod cluster;
#[cfg(test)]
pub(crate) mod conformance;
mod health;
pub mod migrate;
mod postgres;
mod sqlite;

pub use postgres::{PgStore, check as check_postgres, display_url as postgres_display_url};
pub use sqlite::SqliteStore;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::clock::Clock;
pub use crate::clock::{system_now_ms as now_ms, to_ms};
use crate::config::{StorageConfig, SyncMode};
pub use crate::ids::{DeliveryId, DeliveryRef, DestinationName, EventId, MsgId, RouteName};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation (a constraint, a lock, IO); the backend's message.
    #[error("database error: {0}")]
    Backend(String),
    #[error("cannot open the store at {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("commit failed: {0}")]
    Commit(String),
    /// The event waited longer than `storage.commit_timeout` (e.g. for a write lock another
    /// process holds) and was not written.
    #[error("not committed within storage.commit_timeout ({0:?})")]
    Timeout(Duration),
    /// The store refuses events it could not keep (its database file was deleted or replaced).
    #[error("the store cannot take events: {0}")]
    Unwritable(String),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("{0}")]
    NotFound(String),
    /// The operation cannot be done on what it names (the message says why and what to do).
    #[error("{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub type Headers = Vec<(String, String)>;

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Due at its `next_at` (the queue).
    Pending,
    Delivered,
    /// Not retryable (a 4xx, a failed transform, a destination removed): kept for replay.
    Failed,
    /// The retry schedule is exhausted: a dead letter.
    Dead,
    /// An operator cancelled it: never attempted again, replayable.
    Cancelled,
    /// A chain's later step that was never sent: the step before it ended undelivered, or its
    /// conditions on that step's response did not hold (the reason is its `last_error`).
    /// Replaying the step before resumes it.
    Skipped,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
        DeliveryStatus::Dead,
        DeliveryStatus::Cancelled,
        DeliveryStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Skipped => "skipped",
        }
    }

    /// The status named `name` (as [`DeliveryStatus::as_str`] spells it).
    pub fn parse(name: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub source: String,
    pub received_at_ms: i64,
    pub headers: Headers,
    pub body: Bytes,
    /// The sender's own id for deduplication (a header or JSON value), if the source names one.
    pub dedupe_key: Option<String>,
}

/// A delivery to plan for an event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub route: RouteName,
    pub destination: DestinationName,
    pub msg_id: MsgId,
    /// A transformed body; `None` delivers the event's body.
    pub body: Option<Bytes>,
    /// Headers a transform set; `None` for none.
    pub headers: Option<Headers>,
    /// Stored as `failed` with this error instead of pending (a transform failed and the route's
    /// `on_error` is `fail`): kept for `replay --reroute`, never sent as is.
    pub failed: Option<String>,
    /// Its place in an order (the destination's `ordering:`); `None`: unordered.
    pub order: Option<OrderSpec>,
    /// Its destination batches its deliveries (`batch:`): stored awaiting a batch
    /// ([`Queue::form_batch`]), never sent alone.
    pub batch: bool,
    /// The URL rendered from its destination's `url` template; `None`: the destination's URL.
    pub url: Option<String>,
    /// A chain's later step: the index, among the deliveries planned with it, of the one it
    /// follows. Stored waiting (never due) until that one is settled (see [`StepDecision`]).
    pub after: Option<usize>,
}

impl NewDelivery {
    /// A delivery of the event's body as it arrived to `destination` for `route`: no transform
    /// output, not failed, unordered, unbatched, the destination's own URL, not a later step.
    /// Planning sets the rest.
    pub fn new(route: RouteName, destination: DestinationName, msg_id: MsgId) -> NewDelivery {
        NewDelivery {
            route,
            destination,
            msg_id,
            body: None,
            headers: None,
            failed: None,
            order: None,
            batch: false,
            url: None,
            after: None,
        }
    }
}

/// Where an ordered delivery stands in line: its key (per destination), and whether it holds the
/// key when it ends undelivered (`on_dead: block`).
///
/// The order is the store's: of the pending deliveries of one (destination, key), only the first
/// accepted (the *head*) is ever due; the others wait with `next_at` = [`WAITING`], outside every
/// due window, until [`Queue::advance`] makes the next one the head. A head that ended dead or
/// failed with `block` stays *held*: its key advances only once an operator replays or skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSpec {
    pub key: String,
    pub block: bool,
}

/// `next_at` of an ordered delivery waiting for its turn, and of a delivery awaiting or in a
/// batch (the batch has the due time): never due alone.
pub const WAITING: i64 = i64::MAX;

/// `batch_id` of a delivery awaiting a batch.
pub const AWAITING_BATCH: i64 = 0;

/// When a batch of a destination closes: at whichever limit comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_events: usize,
    /// Bodies' bytes (a single larger body goes alone).
    pub max_bytes: u64,
    /// Longest wait of a delivery for its batch, in ms.
    pub max_wait_ms: i64,
}

/// What [`Queue::form_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// A batch was formed of the oldest deliveries awaiting one (more may await).
    Formed { batch: i64, events: usize },
    /// `awaiting` deliveries await a batch that no limit closes yet: the wait of the oldest ends
    /// at `due_at_ms`.
    NotYet { due_at_ms: i64, awaiting: usize },
    /// None awaits a batch.
    Empty,
}

/// A pending batch with what it carries: its pending members, in accept order.
#[derive(Debug, Clone)]
pub struct DueBatch {
    pub id: i64,
    pub destination: DestinationName,
    /// The batch's `webhook-id`, the same for every attempt.
    pub msg_id: MsgId,
    pub attempts: u32,
    pub members: Vec<(DeliveryId, Bytes)>,
    /// As [`DueDelivery::lease_until`].
    pub lease_until: Option<Instant>,
}

/// A pending delivery with everything needed to send it.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub route: RouteName,
    pub destination: DestinationName,
    pub msg_id: MsgId,
    /// Attempts made so far.
    pub attempts: u32,
    /// The event's forwardable headers, then the transform's headers.
    pub headers: Arc<Headers>,
    pub extra_headers: Option<Arc<Headers>>,
    pub body: Bytes,
    /// Its order key, if its destination orders its deliveries (see [`OrderSpec`]).
    pub order_key: Option<String>,
    /// The URL rendered for it from its destination's template.
    pub url: Option<Arc<str>>,
    /// Later steps of a chain wait for it: its final settle decides them
    /// ([`Queue::steps_after`], [`Queue::settle_steps`]).
    pub leads: bool,
    /// The responses of the steps before it (a chain's later step), as its own later steps'
    /// templates read them: JSON `{"<destination>": response_entry, …}`.
    pub context: Option<Bytes>,
    /// Until when this instance holds the delivery's lease (PostgreSQL, where several instances
    /// may share the queue): no other instance attempts it before then. `None`: not leased (SQLite,
    /// one process, whose in-memory claims suffice).
    pub lease_until: Option<Instant>,
}

/// Most operations a backend's writer commits in one transaction. Bounds commit latency under a
/// flood.
pub(crate) const MAX_GROUP: usize = 1024;

/// How much longer than `commit_timeout` an accept waits for the writer's answer before giving
/// up on its own: a writer answers by the deadline unless it is stuck in the disk or the database
/// stopped answering mid-commit, and only then can an event be stored after its caller was told
/// it was not (a duplicate once the sender retries; never a `202` without a commit).
pub(crate) const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// The deliveries of a just committed event that are due now, given the id each planned
/// delivery got and whether it waits for its turn in an order (failed ones are kept in the store,
/// not sent; waiting ones become due when their key advances). For the backends' accepts.
pub(crate) fn due_now(
    ev: NewEvent,
    deliveries: Vec<NewDelivery>,
    ids: Vec<(i64, bool)>,
    lease_until: Option<Instant>,
) -> Vec<DueDelivery> {
    let event_id = ev.id;
    let shared_headers = Arc::new(ev.headers);
    let leads = leaders(&deliveries);
    deliveries
        .into_iter()
        .zip(ids)
        .zip(leads)
        .filter(|((d, (_, waiting)), _)| d.failed.is_none() && !waiting)
        .map(|((d, (id, _)), leads)| DueDelivery {
            id: DeliveryId(id),
            event_id: event_id.clone(),
            route: d.route,
            destination: d.destination,
            msg_id: d.msg_id,
            attempts: 0,
            headers: shared_headers.clone(),
            extra_headers: d.headers.map(Arc::new),
            body: d.body.unwrap_or_else(|| ev.body.clone()),
            order_key: d.order.map(|o| o.key),
            url: d.url.map(Arc::from),
            leads,
            context: None,
            lease_until,
        })
        .collect()
}

/// Which of the planned `deliveries` later steps follow (their `after`).
pub(crate) fn leaders(deliveries: &[NewDelivery]) -> Vec<bool> {
    let mut leads = vec![false; deliveries.len()];
    for i in deliveries.iter().filter_map(|d| d.after) {
        if let Some(l) = leads.get_mut(i) {
            *l = true;
        }
    }
    leads
}

/// A chain's later step waiting for the delivery it follows, as [`Queue::steps_after`] reads it.
#[derive(Debug, Clone)]
pub struct WaitingStep {
    pub id: DeliveryId,
    pub route: RouteName,
    pub destination: DestinationName,
    /// The body it delivers before its templates (a transform's output, else the event's).
    pub body: Bytes,
    /// Headers a transform set.
    pub extra_headers: Option<Headers>,
    /// Rendered already (its step was released before, and it is being replayed): sent as it was.
    pub rendered: bool,
}

/// What becomes of a waiting step once the delivery it follows is settled
/// ([`Queue::settle_steps`]). A step that does not go on takes its own later steps with it.
#[derive(Debug, Clone, PartialEq)]
pub enum StepDecision {
    /// Due now, with its request rendered from the event and the responses before it (`None`
    /// parts keep what is stored) and the responses its own later steps will read.
    Release { id: DeliveryId, url: Option<String>, headers: Option<Headers>, body: Option<Bytes>, context: Bytes },
    /// Never sent: `skipped` with this reason.
    Skip { id: DeliveryId, reason: String },
    /// Its request could not be rendered: `failed` with this reason.
    Fail { id: DeliveryId, reason: String },
}

/// How many of the oldest deliveries awaiting a batch (`(id, body bytes, created)`, at most
/// `max_events`) the batch takes, their bytes, and whether a limit closes it now: it has
/// `max_events`, or the next would pass `max_bytes` (a single larger one goes alone).
pub(crate) fn close_batch(rows: &[(i64, u64, i64)], limits: BatchLimits) -> (usize, u64, bool) {
    let mut bytes = 0u64;
    let mut taken = 0;
    for (_, len, _) in rows {
        if taken > 0 && bytes + len > limits.max_bytes {
            return (taken, bytes, true);
        }
        bytes += len;
        taken += 1;
    }
    (taken, bytes, taken >= limits.max_events || bytes >= limits.max_bytes)
}

/// A batch's `webhook-id`: `msg_` + 24 hex digits of SHA-256 of its destination, its number and
/// its first member's (deterministic, so the same across its retries, and distinct from every
/// delivery's).
pub(crate) fn batch_msg_id(destination: &str, batch: i64, first_member: i64) -> MsgId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"hookyard-batch\0")
        .chain_update(destination.as_bytes())
        .chain_update(batch.to_be_bytes())
        .chain_update(first_member.to_be_bytes())
        .finalize();
    MsgId(format!("msg_{}", hex::encode(&digest[..12])).into())
}

/// Why a later step (`id`, following `parent`) cannot be replayed by itself.
pub(crate) fn step_refusal(id: i64, parent: i64, status: &str) -> String {
    format!(
        "delivery {id} is a later step that was never sent ({status}): it needs the answer of delivery {parent}; replay {parent} to resume the chain"
    )
}

/// What [`Queue::accept`] did.
#[derive(Debug)]
pub enum Accepted {
    /// Committed; these deliveries are due now.
    Stored(Vec<DueDelivery>),
    /// The source's event id was seen within the dedupe window: nothing was stored.
    Duplicate { original: EventId },
}

/// One attempt's record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// The start of the response body (at most [`MAX_RESPONSE_KEPT`] bytes are stored).
    pub response: Bytes,
    pub error: Option<String>,
}

/// Bytes of a response body kept in the attempt log.
pub const MAX_RESPONSE_KEPT: usize = 4096;

/// A delivery's state after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    Delivered,
    /// Due again at this time (unix ms).
    Retry {
        next_at_ms: i64,
    },
    /// Not retryable (e.g. a 4xx): kept as failed, for replay.
    Failed,
    /// The retry schedule is exhausted: a dead letter.
    Dead,
}

impl Settle {
    /// The `next_at` it stores: a retry's due time; 0 for a final state (never read).
    pub fn next_at_ms(&self) -> i64 {
        match self {
            Settle::Retry { next_at_ms } => *next_at_ms,
            _ => 0,
        }
    }

    /// The status the delivery takes (if it is still pending).
    pub fn status(&self) -> DeliveryStatus {
        match self {
            Settle::Delivered => DeliveryStatus::Delivered,
            Settle::Retry { .. } => DeliveryStatus::Pending,
            Settle::Failed => DeliveryStatus::Failed,
            Settle::Dead => DeliveryStatus::Dead,
        }
    }
}

/// Filters for [`Inspect::list_deliveries`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub destination: Option<DestinationName>,
    pub source: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Cursor: only rows with a smaller id (pages go newest first).
    pub before_id: Option<DeliveryId>,
    /// Only the delivery with this `webhook-id` (the console's search box).
    pub msg_id: Option<String>,
    pub limit: usize,
}

/// A delivery as stored. The admin API and the CLI show it as `ops::DeliveryView`.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub source: String,
    pub route: RouteName,
    pub destination: DestinationName,
    pub msg_id: MsgId,
    pub status: DeliveryStatus,
    /// How many attempts were made (a count; the attempts themselves are a delivery's
    /// `attempt_log` in [`EventDetail`]).
    pub attempts: u32,
    pub next_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Who cancelled it and why, while it is `cancelled`.
    pub cancelled: Option<Cancellation>,
    /// Its order key, if its destination orders its deliveries.
    pub order_key: Option<String>,
    /// Dead or failed, it holds its key (`on_dead: block`) until replayed or skipped.
    pub held: bool,
    /// The batch that carries it (`batch:`): [`AWAITING_BATCH`] while it awaits one.
    pub batch_id: Option<i64>,
    /// A chain's later step: the delivery it follows.
    pub after: Option<DeliveryId>,
    /// The URL rendered for it from its destination's template.
    pub url: Option<String>,
    /// That batch's `webhook-id`.
    pub batch_msg_id: Option<MsgId>,
}

impl DeliveryRow {
    /// Pending, but waiting: for the deliveries before it in its key's order, for (or in) a
    /// batch, or for the step before it in a chain.
    pub fn waiting(&self) -> bool {
        self.status == DeliveryStatus::Pending && self.next_at_ms == WAITING
    }
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub n: u32,
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// The start of the response body (at most [`MAX_RESPONSE_KEPT`] bytes).
    pub response: Bytes,
    pub error: Option<String>,
}

/// An event with its deliveries and their attempts, as stored. Shown as `ops::EventView`.
#[derive(Debug, Clone)]
pub struct EventDetail {
    pub id: EventId,
    pub source: String,
    pub received_at_ms: i64,
    pub routed: bool,
    pub dedupe_key: Option<String>,
    pub headers: Headers,
    pub body: Bytes,
    pub deliveries: Vec<DeliveryDetail>,
}

#[derive(Debug, Clone)]
pub struct DeliveryDetail {
    pub delivery: DeliveryRow,
    /// A transform's output, if one replaced the event's body.
    pub transformed_body: Option<Bytes>,
    /// Every attempt, oldest first (`attempts` is their count).
    pub attempt_log: Vec<AttemptRow>,
}

/// A stored event as it arrived (for re-routing).
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub source: String,
    pub received_at_ms: i64,
    pub headers: Headers,
    pub body: Bytes,
}

/// Which stored events [`Inspect::export_events`] pages through, in accept order.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub source: Option<String>,
    /// Received at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Received before this time (unix ms; exclusive, so consecutive ranges never overlap).
    pub until_ms: Option<i64>,
    /// Only events with at least one delivery of this route (planned when they arrived or by a
    /// re-route since).
    pub route: Option<RouteName>,
    /// Only events with at least one delivery to this destination (with `route` and `status`:
    /// one delivery that is all of them).
    pub destination: Option<DestinationName>,
    /// Only events with at least one delivery in this status.
    pub status: Option<DeliveryStatus>,
    /// Newest first (the console's event log) instead of accept order; `after` is then the last
    /// event of the previous page in that order.
    pub newest_first: bool,
    /// Cursor: only events after this one in the listing's order (the last of the previous page).
    pub after: Option<ExportCursor>,
    /// Load each event's deliveries too (one query per page, not one per event).
    pub deliveries: bool,
    pub limit: usize,
}

/// A place in accept order: `(received_at, id)`, the order the event log keeps. Events received
/// in the same millisecond follow their ids' order (random within the millisecond), which is
/// total and stable, so keyset pages neither skip nor repeat one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub received_at_ms: i64,
    pub id: EventId,
}

/// A stored event as [`Inspect::export_events`] returns it: what arrived (headers as stored,
/// credentials and signatures removed; the body's exact bytes) and, when asked, its deliveries
/// (by id).
#[derive(Debug, Clone)]
pub struct ExportedEvent {
    pub id: EventId,
    pub source: String,
    pub received_at_ms: i64,
    pub headers: Headers,
    pub body: Bytes,
    pub deliveries: Vec<DeliveryRow>,
}

impl ExportedEvent {
    /// Where the next page starts when this event ends one.
    pub fn cursor(&self) -> ExportCursor {
        ExportCursor { received_at_ms: self.received_at_ms, id: self.id.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    pub destination: DestinationName,
    pub pending: u64,
    pub oldest_due_ms: u64,
    pub dead: u64,
    pub failed: u64,
    /// Keys held by a dead or failed head (`ordering.on_dead: block`).
    pub held: u64,
}

/// Which pending deliveries to cancel. Ids, filters and `all` are exclusive (see
/// [`DeliverySelection::check`]).
#[derive(Debug, Clone, Default)]
pub struct DeliverySelection {
    /// Deliveries, or events (all the event's pending deliveries).
    pub ids: Vec<DeliveryRef>,
    pub destination: Option<DestinationName>,
    pub source: Option<String>,
    /// Only deliveries created at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// Every pending delivery.
    pub all: bool,
}

impl DeliverySelection {
    /// `None` if the selection is usable; else why not. Nothing selected is refused rather than
    /// read as "everything": that takes `all`.
    pub fn check(&self) -> Option<&'static str> {
        let filtered = self.destination.is_some() || self.source.is_some() || self.since_ms.is_some();
        match (!self.ids.is_empty(), filtered, self.all) {
            (false, false, false) => Some("nothing selected: give ids, a filter (destination, source, since) or all"),
            (true, true, _) => Some("give either ids or a filter (destination, source, since), not both"),
            (true, _, true) | (_, true, true) => {
                Some("`all` selects every pending delivery; give no ids or filter with it")
            }
            _ => None,
        }
    }
}

/// Who cancelled a delivery, why and when; shown with a `cancelled` delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// `cli:<user>`, `api:<token name>`, `api:token <fingerprint>`, `api` (no token) or `operator`.
    pub by: String,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// What a dead-letter purge deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub deliveries: usize,
    /// Events deleted because no delivery of theirs was left.
    pub events: usize,
}

/// How a store is opened (from the `storage:` section).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub sync: SyncMode,
    /// Longest wait of an event for its commit, the database's write lock included; then
    /// [`StoreError::Timeout`] and nothing written.
    pub commit_timeout: Duration,
    /// The time the store's waits follow (and the dispatcher reads through [`Queue::clock`]).
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncMode::Full,
            commit_timeout: crate::config::DEFAULT_COMMIT_TIMEOUT,
            clock: Clock::System,
        }
    }
}

/// The storage boundary: what a backend implements, in two parts (the queue the dispatcher and
/// ingress drive per event, and the inspection and operator actions of `ops`). Every method names
/// its own types, never a database's. Writes return once committed.
pub trait Backend: Queue + Inspect {}

impl<B: Queue + Inspect> Backend for B {}

/// The durable queue: the per-event path.
pub trait Queue: Clone + Send + Sync + 'static {
    /// Records an event and its planned deliveries in one committed transaction. With a dedupe
    /// key and window, a key already seen for the source within the window stores nothing and
    /// returns the original event id. An event not committed within the commit timeout is not
    /// written and gets [`StoreError::Timeout`]; one of a group whose other operations fail is
    /// still written (a failing operation never undoes the others).
    fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
    ) -> impl Future<Output = Result<Accepted>> + Send;

    /// Records an attempt and the delivery's new state. Only a pending delivery takes the new
    /// state (a cancelled one stays cancelled unless this attempt delivered it); the attempt is
    /// logged either way. An unknown delivery is an error.
    fn settle(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Settles an ordered delivery to a final state (as [`Queue::settle`]) and advances its key
    /// (as [`Queue::advance`]), in one commit where the backend can (SQLite: one operation of its
    /// writer, so a delivery costs one commit, and no crash falls between the two). Returns the
    /// key's due head.
    fn settle_and_advance(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        destination: DestinationName,
        key: String,
    ) -> impl Future<Output = Result<Option<DeliveryId>>> + Send;

    /// The later steps waiting for `delivery` (a chain's), oldest first.
    fn steps_after(&self, delivery: DeliveryId) -> impl Future<Output = Result<Vec<WaitingStep>>> + Send;

    /// Settles a delivery that later steps follow (as [`Queue::settle`]) and, in the same commit,
    /// decides its waiting steps: those released are due now; those skipped or failed take every
    /// step after them along (`skipped`, naming why). Steps no longer waiting are left alone;
    /// a retry decides nothing.
    fn settle_steps(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        decisions: Vec<StepDecision>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Ids and destinations of pending deliveries due at `now_ms` (oldest due first, at most
    /// `limit`), except those of the `skip` destinations. Ids only: the poller skips what it owns
    /// before loading bodies. The pause flag is not applied here (a paused destination that a
    /// reload removed must still reach the dispatcher, which fails its deliveries).
    fn due_ids(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> impl Future<Output = Result<Vec<(DeliveryId, DestinationName)>>> + Send;

    /// Loads the given deliveries if they are still pending and due at `now_ms` (another process
    /// may have attempted one since it was read as due). Where several processes share the
    /// queue (PostgreSQL), this is also the claim: those loaded are leased to this one, and one
    /// another process holds is not loaded.
    fn load_pending(&self, ids: Vec<DeliveryId>, now_ms: i64) -> impl Future<Output = Result<Vec<DueDelivery>>> + Send;

    /// The earliest `next_at` of any pending delivery, except those of the `skip` destinations.
    fn next_due_ms(&self, skip: Vec<DestinationName>) -> impl Future<Output = Result<Option<i64>>> + Send;

    fn pending_count(&self) -> impl Future<Output = Result<usize>> + Send;

    /// Moves the order of `key` at `destination` on after its head ended: makes the first
    /// delivery waiting for its turn the head, unless the key still has a pending head or is
    /// held (see [`OrderSpec`]). Returns the key's head if it is due now (to be attempted next).
    fn advance(
        &self,
        destination: DestinationName,
        key: String,
    ) -> impl Future<Output = Result<Option<DeliveryId>>> + Send;

    /// Advances every key that has deliveries waiting for their turn but no head and no hold
    /// (the process that settled the head stopped before advancing its key). Returns how many.
    fn advance_stalled(&self) -> impl Future<Output = Result<usize>> + Send;

    /// Forms one batch of the oldest deliveries of `destination` awaiting one, if a limit closes
    /// it at `now_ms`: `max_events` of them, or the next would pass `max_bytes` (a single larger
    /// one goes alone), or the oldest has waited `max_wait`. Members belong to one batch; the
    /// batch is pending, due now, with its own `webhook-id`.
    fn form_batch(
        &self,
        destination: DestinationName,
        limits: BatchLimits,
        now_ms: i64,
    ) -> impl Future<Output = Result<Formation>> + Send;

    /// Ids and destinations of pending batches due at `now_ms` (oldest due first, at most
    /// `limit`), but those of the `skip` destinations.
    fn due_batches(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> impl Future<Output = Result<Vec<(i64, DestinationName)>>> + Send;

    /// Loads a batch if it is still pending and due (claimed as [`Queue::load_pending`] claims).
    fn load_batch(&self, id: i64, now_ms: i64) -> impl Future<Output = Result<Option<DueBatch>>> + Send;

    /// Records an attempt of a batch: the batch takes the new state, and so does each of the
    /// `members` sent (as [`Queue::settle`] would, each with its own attempt row), except that a
    /// retry keeps them in the batch (the batch is due again, not they).
    fn settle_batch(
        &self,
        id: i64,
        members: Vec<DeliveryId>,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Sends the deliveries awaiting a batch of every destination but the `batched` ones one by
    /// one (their `batch:` is gone, or they are). Returns how many.
    fn unbatch(&self, batched: Vec<DestinationName>) -> impl Future<Output = Result<usize>> + Send;

    /// Adds deliveries to an existing event (re-routing with the current config). Due now.
    fn add_deliveries(
        &self,
        event_id: EventId,
        deliveries: Vec<NewDelivery>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Deletes events received before `before_ms` whose deliveries are all finished; pending work
    /// is never deleted. Returns the number of events deleted.
    fn purge(&self, before_ms: i64) -> impl Future<Output = Result<usize>> + Send;

    /// Whether the store can take events now (for readiness), and if not why. Answers at once,
    /// even while a write waits.
    fn health(&self) -> std::result::Result<(), String>;

    /// The clock the store was opened with; the dispatcher's due times follow it.
    fn clock(&self) -> Clock;
}

/// Inspection and operator actions (the CLI and the admin API, through `ops`).
pub trait Inspect: Clone + Send + Sync + 'static {
    /// Deliveries matching `filter`, newest first.
    fn list_deliveries(&self, filter: DeliveryFilter) -> impl Future<Output = Result<Vec<DeliveryRow>>> + Send;

    /// One event with its deliveries and every attempt.
    fn event(&self, id: EventId) -> impl Future<Output = Result<Option<EventDetail>>> + Send;

    /// The raw event (for re-routing).
    fn raw_event(&self, id: EventId) -> impl Future<Output = Result<Option<RawEvent>>> + Send;

    /// Stored events matching `filter`, in accept order (see [`ExportCursor`]), at most
    /// `filter.limit`, after `filter.after`: one page of a walk of the event log that holds one
    /// page in memory whatever the log's size.
    fn export_events(&self, filter: ExportFilter) -> impl Future<Output = Result<Vec<ExportedEvent>>> + Send;

    /// Re-sends deliveries as planned: every delivery of the given events or the given
    /// deliveries becomes pending and due now, keeping its `webhook-id`.
    /// Returns the number queued; unknown ids are an error naming them.
    fn replay(&self, ids: Vec<DeliveryRef>) -> impl Future<Output = Result<usize>> + Send;

    /// Re-sends dead letters (optionally of one destination, and since a time). Returns how many.
    fn replay_dead(
        &self,
        destination: Option<DestinationName>,
        since_ms: Option<i64>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Per destination: pending deliveries, the age of the oldest due one (ms, 0 if none is due),
    /// dead letters and failed deliveries; by destination name.
    fn destination_stats(&self, now_ms: i64) -> impl Future<Output = Result<Vec<DestinationStats>>> + Send;

    /// Paused destinations and why, by name.
    fn paused(&self) -> impl Future<Output = Result<Vec<(DestinationName, Option<String>)>>> + Send;

    /// Pauses or resumes a destination: while paused its deliveries wait in the store.
    fn set_paused(
        &self,
        destination: &DestinationName,
        paused: bool,
        reason: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// How many pending deliveries [`Inspect::cancel`] would cancel now. Ids that match no
    /// delivery are an error naming them; ids of deliveries that are not pending count for nothing.
    fn count_cancellable(&self, selection: DeliverySelection) -> impl Future<Output = Result<usize>> + Send;

    /// Cancels the selected pending deliveries (kept as `cancelled` with who and why). An unknown
    /// id cancels nothing. Returns how many were cancelled.
    fn cancel(
        &self,
        selection: DeliverySelection,
        by: String,
        reason: Option<String>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Lets held heads (dead or failed under `on_dead: block`) hold their keys no more, leaving
    /// them as they are: their keys move on. Ids that match no delivery are an error naming them;
    /// ids of deliveries that hold nothing count for nothing. Returns how many were held.
    fn skip(&self, ids: Vec<DeliveryId>) -> impl Future<Output = Result<usize>> + Send;

    /// How many dead letters [`Inspect::purge_dead`] would delete now (dead before `before_ms`),
    /// or [`Inspect::replay_dead`] would replay (dead since `since_ms`).
    fn count_dead(
        &self,
        destination: Option<DestinationName>,
        since_ms: Option<i64>,
        before_ms: Option<i64>,
    ) -> impl Future<Output = Result<usize>> + Send;

    /// Deletes dead letters (of one destination, last changed before a time), with their attempts
    /// and bodies, and then their events where no delivery is left.
    fn purge_dead(
        &self,
        destination: Option<DestinationName>,
        before_ms: Option<i64>,
    ) -> impl Future<Output = Result<Purged>> + Send;
}

/// The store callers hold: one variant per backend. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the store the `storage:` section names (`path` resolved): PostgreSQL when it has a
    /// `postgres:` part, else the SQLite file.
    pub async fn connect(storage: &StorageConfig, clock: Clock) -> Result<Store> {
        let options = StoreOptions { sync: storage.sync, commit_timeout: storage.commit_timeout.0, clock };
        match &storage.postgres {
            Some(pg) => PgStore::open(pg, options).await.map(Store::Postgres),
            None => Store::open_with(&storage.path, options),
        }
    }

    /// Problems of the store's setup that the gateway warns about at start.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Store::Sqlite(_) => Vec::new(),
            Store::Postgres(pg) => pg.warnings(),
        }
    }

    /// How logs and `status` name the store: the SQLite file, or the PostgreSQL database without
    /// its password.
    pub fn describe(storage: &StorageConfig) -> String {
        match &storage.postgres {
            Some(pg) => format!("{} (schema {})", postgres_display_url(&pg.url.0), pg.schema),
            None => storage.path.display().to_string(),
        }
    }

    /// This instance's id among those sharing the store (PostgreSQL); `None` for SQLite, which
    /// one process uses.
    pub fn node(&self) -> Option<&str> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pg) => Some(pg.node()),
        }
    }

    /// Ends this instance's leases on deliveries it will not attempt now, so that another
    /// instance may (nothing to do on SQLite). Returns how many it held.
    pub async fn release(&self, ids: Vec<DeliveryId>) -> Result<usize> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(pg) => pg.release(ids).await,
        }
    }

    /// Renews this instance's lease on a delivery it is about to attempt: the new deadline, or
    /// `None` if it lost the lease (it must not attempt it). SQLite leases nothing: an hour.
    pub async fn renew(&self, id: DeliveryId) -> Result<Option<Instant>> {
        match self {
            Store::Sqlite(_) => Ok(Some(Instant::now() + Duration::from_secs(3600))),
            Store::Postgres(pg) => pg.renew(id).await,
        }
    }

    /// Records that this instance is alive and returns every instance sharing the store (none
    /// on SQLite), and whether another process beats under this instance's id.
    pub async fn heartbeat(&self, me: &cluster::NodeUpdate) -> Result<(Vec<cluster::NodeRow>, bool)> {
        match self {
            Store::Sqlite(_) => Ok((Vec::new(), false)),
            Store::Postgres(pg) => pg.heartbeat(me).await,
        }
    }

    /// A clean shutdown: ends this instance's leases (but those of `keep`, attempts still
    /// running) and marks it stopped. Returns how many leases it ended.
    pub async fn leave(&self, keep: Vec<DeliveryId>) -> Result<usize> {
        match self {
            Store::Sqlite(_) => Ok(0),
            Store::Postgres(pg) => pg.leave(keep).await,
        }
    }

    /// Sends `signal` to every instance sharing the store, this one included (a SQLite store
    /// has no other: nothing is sent, the caller applies it itself).
    pub async fn signal(&self, signal: &cluster::Signal) -> Result<()> {
        match self {
            Store::Sqlite(_) => Ok(()),
            Store::Postgres(pg) => pg.signal(signal).await,
        }
    }

    /// The signals of every instance as they arrive (`None` in the stream: reconnected, some
    /// may have been missed); `None` for SQLite.
    pub fn listen(&self) -> Option<tokio::sync::mpsc::Receiver<Option<cluster::Signal>>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(pg) => Some(pg.listen()),
        }
    }

    /// Runs `work` unless another instance sharing the store runs work of the same `name` now
    /// (then `None`). On SQLite, always runs it.
    pub async fn exclusive<T>(&self, name: &str, work: impl Future<Output = T>) -> Result<Option<T>> {
        match self {
            Store::Sqlite(_) => Ok(Some(work.await)),
            Store::Postgres(pg) => pg.exclusive(name, work).await,
        }
    }

    /// Opens (creating it and its directory on first run) and migrates the SQLite database at
    /// `path`. `:memory:` keeps everything in a throw-away file (for tests and benchmarks).
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store> {
        SqliteStore::open(path, options).map(Store::Sqlite)
    }
}

/// Calls the same method on whichever backend `self` is.
macro_rules! on_backend {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Store::Sqlite($b) => $call,
            Store::Postgres($b) => $call,
        }
    };
}

impl Queue for Store {
    async fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        window: Option<Duration>,
    ) -> Result<Accepted> {
        on_backend!(self, b => b.accept(event, deliveries, window).await)
    }
    async fn settle(
        &self,
        id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        on_backend!(self, b => b.settle(id, attempt, settle, error).await)
    }
    async fn settle_and_advance(
        &self,
        id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        destination: DestinationName,
        key: String,
    ) -> Result<Option<DeliveryId>> {
        on_backend!(self, b => b.settle_and_advance(id, attempt, settle, error, destination, key).await)
    }
    async fn steps_after(&self, delivery: DeliveryId) -> Result<Vec<WaitingStep>> {
        on_backend!(self, b => b.steps_after(delivery).await)
    }
    async fn settle_steps(
        &self,
        id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        decisions: Vec<StepDecision>,
    ) -> Result<()> {
        on_backend!(self, b => b.settle_steps(id, attempt, settle, error, decisions).await)
    }
    async fn due_ids(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(DeliveryId, DestinationName)>> {
        on_backend!(self, b => b.due_ids(now_ms, limit, skip).await)
    }
    async fn load_pending(&self, ids: Vec<DeliveryId>, now_ms: i64) -> Result<Vec<DueDelivery>> {
        on_backend!(self, b => b.load_pending(ids, now_ms).await)
    }
    async fn next_due_ms(&self, skip: Vec<DestinationName>) -> Result<Option<i64>> {
        on_backend!(self, b => b.next_due_ms(skip).await)
    }
    async fn pending_count(&self) -> Result<usize> {
        on_backend!(self, b => b.pending_count().await)
    }
    async fn advance(&self, destination: DestinationName, key: String) -> Result<Option<DeliveryId>> {
        on_backend!(self, b => b.advance(destination, key).await)
    }
    async fn advance_stalled(&self) -> Result<usize> {
        on_backend!(self, b => b.advance_stalled().await)
    }
    async fn form_batch(&self, destination: DestinationName, limits: BatchLimits, now_ms: i64) -> Result<Formation> {
        on_backend!(self, b => b.form_batch(destination, limits, now_ms).await)
    }
    async fn due_batches(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(i64, DestinationName)>> {
        on_backend!(self, b => b.due_batches(now_ms, limit, skip).await)
    }
    async fn load_batch(&self, id: i64, now_ms: i64) -> Result<Option<DueBatch>> {
        on_backend!(self, b => b.load_batch(id, now_ms).await)
    }
    async fn settle_batch(
        &self,
        id: i64,
        members: Vec<DeliveryId>,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        on_backend!(self, b => b.settle_batch(id, members, attempt, settle, error).await)
    }
    async fn unbatch(&self, batched: Vec<DestinationName>) -> Result<usize> {
        on_backend!(self, b => b.unbatch(batched).await)
    }
    async fn add_deliveries(&self, event_id: EventId, deliveries: Vec<NewDelivery>) -> Result<usize> {
        on_backend!(self, b => b.add_deliveries(event_id, deliveries).await)
    }
    async fn purge(&self, before_ms: i64) -> Result<usize> {
        on_backend!(self, b => b.purge(before_ms).await)
    }
    fn health(&self) -> std::result::Result<(), String> {
        on_backend!(self, b => b.health())
    }
    fn clock(&self) -> Clock {
        on_backend!(self, b => b.clock())
    }
}

impl Inspect for Store {
    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>> {
        on_backend!(self, b => b.list_deliveries(filter).await)
    }
    async fn event(&self, id: EventId) -> Result<Option<EventDetail>> {
        on_backend!(self, b => b.event(id).await)
    }
    async fn raw_event(&self, id: EventId) -> Result<Option<RawEvent>> {
        on_backend!(self, b => b.raw_event(id).await)
    }
    async fn export_events(&self, filter: ExportFilter) -> Result<Vec<ExportedEvent>> {
        on_backend!(self, b => b.export_events(filter).await)
    }
    async fn replay(&self, ids: Vec<DeliveryRef>) -> Result<usize> {
        on_backend!(self, b => b.replay(ids).await)
    }
    async fn replay_dead(&self, destination: Option<DestinationName>, since_ms: Option<i64>) -> Result<usize> {
        on_backend!(self, b => b.replay_dead(destination, since_ms).await)
    }
    async fn destination_stats(&self, now_ms: i64) -> Result<Vec<DestinationStats>> {
        on_backend!(self, b => b.destination_stats(now_ms).await)
    }
    async fn paused(&self) -> Result<Vec<(DestinationName, Option<String>)>> {
        on_backend!(self, b => b.paused().await)
    }
    async fn set_paused(&self, destination: &DestinationName, paused: bool, reason: Option<String>) -> Result<()> {
        on_backend!(self, b => b.set_paused(destination, paused, reason).await)
    }
    async fn count_cancellable(&self, selection: DeliverySelection) -> Result<usize> {
        on_backend!(self, b => b.count_cancellable(selection).await)
    }
    async fn cancel(&self, selection: DeliverySelection, by: String, reason: Option<String>) -> Result<usize> {
        on_backend!(self, b => b.cancel(selection, by, reason).await)
    }
    async fn skip(&self, ids: Vec<DeliveryId>) -> Result<usize> {
        on_backend!(self, b => b.skip(ids).await)
    }
    async fn count_dead(
        &self,
        destination: Option<DestinationName>,
        since_ms: Option<i64>,
        before_ms: Option<i64>,
    ) -> Result<usize> {
        on_backend!(self, b => b.count_dead(destination, since_ms, before_ms).await)
    }
    async fn purge_dead(&self, destination: Option<DestinationName>, before_ms: Option<i64>) -> Result<Purged> {
        on_backend!(self, b => b.purge_dead(destination, before_ms).await)
    }
}
