//! The durable event log and delivery queue: SQLite (bundled, WAL mode) by default.
//!
//! Why SQLite: it is the most tested embedded database there is, needs no server, gives real
//! transactions and crash safety, and its WAL mode lets readers (the CLI, the admin API) run
//! beside the one writer. A shared PostgreSQL backend for several instances would implement the
//! same API (the methods of [`Store`]); nothing outside this module names rusqlite.
//!
//! Writes go through one writer thread that groups the operations of concurrent requests into one
//! transaction (group commit): an event is acknowledged only after the commit that holds it
//! returned, and with `sync: full` that commit is fsynced, so throughput does not collapse to one
//! fsync per request. Reads use their own connection on the blocking pool.
//!
//! Knows nothing of routing, plugins or HTTP.

mod cancel;
mod health;
mod schema;
mod writer;

pub use cancel::{Cancellation, DeliverySelection, Purged};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use health::Health;
use writer::{Op, Writer};

/// How hard a commit tries to reach the disk (`storage.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// fsync on every commit: an acknowledged event survives a crash of the process, the OS or
    /// the power.
    #[default]
    Full,
    /// No fsync on commit (WAL with `synchronous=NORMAL`): survives a crash of the process, but the
    /// last commits may be lost if the machine loses power.
    Normal,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub type Headers = Vec<(String, String)>;

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
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
    pub route: String,
    pub destination: String,
    pub msg_id: String,
    /// A transformed body; `None` delivers the event's body.
    pub body: Option<Bytes>,
    /// Headers a transform set; `None` for none.
    pub headers: Option<Headers>,
    /// Stored as `failed` with this error instead of pending (a transform failed and the route's
    /// `on_error` is `fail`): kept for `replay --reroute`, never sent as is.
    pub failed: Option<String>,
}

/// A pending delivery with everything needed to send it.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: i64,
    pub event_id: Arc<str>,
    pub route: Arc<str>,
    pub destination: Arc<str>,
    pub msg_id: Arc<str>,
    /// Attempts made so far.
    pub attempts: u32,
    /// The event's forwardable headers, then the transform's headers.
    pub headers: Arc<Headers>,
    pub extra_headers: Option<Arc<Headers>>,
    pub body: Bytes,
}

/// What [`Store::accept`] did.
#[derive(Debug)]
pub enum Accepted {
    /// Committed; these deliveries are due now.
    Stored(Vec<DueDelivery>),
    /// The source's event id was seen within the dedupe window: nothing was stored.
    Duplicate { original: String },
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
    fn status(&self) -> &'static str {
        match self {
            Settle::Delivered => "delivered",
            Settle::Retry { .. } => "pending",
            Settle::Failed => "failed",
            Settle::Dead => "dead",
        }
    }
}

/// Filters for [`Store::list_deliveries`].
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub destination: Option<String>,
    pub source: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Cursor: only rows with a smaller id (pages go newest first).
    pub before_id: Option<i64>,
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub source: String,
    pub route: String,
    pub destination: String,
    pub msg_id: String,
    pub status: String,
    /// How many attempts were made (a count; the attempts themselves are a delivery's
    /// `attempt_log` in [`EventDetail`]).
    pub attempts: u32,
    pub next_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Who cancelled it and why, while it is `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancellation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub n: u32,
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub response: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventDetail {
    pub id: String,
    pub source: String,
    pub received_at_ms: i64,
    pub routed: bool,
    pub dedupe_key: Option<String>,
    pub headers: Headers,
    /// The body as text if it is UTF-8, else base64 in `body_base64`.
    pub body: Option<String>,
    pub body_base64: Option<String>,
    pub deliveries: Vec<DeliveryDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryRow,
    pub transformed_body: Option<String>,
    /// Every attempt, oldest first (`attempts` is their count).
    pub attempt_log: Vec<AttemptRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DestinationStats {
    pub destination: String,
    pub pending: u64,
    pub oldest_due_ms: u64,
    pub dead: u64,
    pub failed: u64,
}

/// How a store is opened (from the `storage:` section).
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub sync: SyncMode,
    /// Longest wait of an event for its commit, SQLite's write lock included; then
    /// [`StoreError::Timeout`] and nothing written.
    pub commit_timeout: Duration,
}

/// Default of `storage.commit_timeout`.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { sync: SyncMode::Full, commit_timeout: DEFAULT_COMMIT_TIMEOUT }
    }
}

/// How much longer than `commit_timeout` an accept waits for the writer's answer before giving
/// up on its own: the writer answers by the deadline unless it is stuck in the disk (a commit or
/// fsync that does not return), and only then can an event be stored after its caller was told
/// it was not (a duplicate once the sender retries; never a `202` without a commit).
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    /// An async lock, taken before the read goes to the blocking pool: readers queue as tasks, not
    /// as blocked threads (each would be a pool thread with its own allocator heap).
    reader: Arc<tokio::sync::Mutex<Connection>>,
    health: Arc<Health>,
    commit_timeout: Duration,
    _temp: Option<Arc<TempDir>>,
}

/// Removes the directory of a `:memory:` store when the last handle is dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sync: None` turns fsync off entirely (the throw-away `:memory:` store).
fn open_conn(path: &Path, sync: Option<SyncMode>) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match sync {
        Some(SyncMode::Full) => "FULL",
        Some(SyncMode::Normal) => "NORMAL",
        None => "OFF",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

impl Store {
    /// Opens (creating it and its directory on first run) and migrates the database at `path`.
    /// `:memory:` keeps everything in memory (nothing survives a restart; for tests and benchmarks).
    pub fn open(path: &Path, sync: SyncMode) -> Result<Store> {
        Store::open_with(path, StoreOptions { sync, ..StoreOptions::default() })
    }

    /// [`Store::open`] with every option.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Store> {
        let StoreOptions { sync, commit_timeout } = options;
        let err = |message: String| StoreError::Open { path: path.to_path_buf(), message };
        // `:memory:` is a throw-away file without fsync: SQLite's own in-memory databases cannot be
        // shared by a writer and a reader connection without table locks.
        let (target, sync, temp) = if path == Path::new(":memory:") {
            let dir = std::env::temp_dir().join(format!("hookyard-mem-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            (dir.join("hookyard.db"), None, Some(TempDir(dir)))
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            }
            (path.to_path_buf(), Some(sync), None)
        };
        let mut write_conn = open_conn(&target, sync).map_err(|e| err(e.to_string()))?;
        schema::migrate(&mut write_conn).map_err(|e| err(e.to_string()))?.map_err(err)?;
        let read_conn = open_conn(&target, sync).map_err(|e| err(e.to_string()))?;
        let health = Arc::new(Health::new(&target));
        Ok(Store {
            writer: Writer::start(write_conn, health.clone(), commit_timeout),
            reader: Arc::new(tokio::sync::Mutex::new(read_conn)),
            health,
            commit_timeout,
            _temp: temp.map(Arc::new),
        })
    }

    /// Records an event and its planned deliveries in one committed (and, with `sync: full`,
    /// synced) transaction. With a dedupe key and window, a key already seen for the source within
    /// the window stores nothing and returns the original event id. An event not committed
    /// within the commit timeout is not written and gets [`StoreError::Timeout`].
    pub async fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
    ) -> Result<Accepted> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + self.commit_timeout;
        self.writer.send(Op::Accept { event, deliveries, dedupe_window, deadline, reply: tx })?;
        if cfg!(test) {
            // unit tests may pause the clock, which would fire the timeout at once
            return rx.await.map_err(|_| StoreError::WriterGone)?;
        }
        match tokio::time::timeout(self.commit_timeout + ANSWER_GRACE, rx).await {
            Ok(answer) => answer.map_err(|_| StoreError::WriterGone)?,
            Err(_) => Err(StoreError::Timeout(self.commit_timeout)),
        }
    }

    /// Records an attempt and the delivery's new state. Returns once committed.
    pub async fn settle(
        &self,
        delivery_id: i64,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, reply: tx })?;
        wait_blocking(rx).await
    }

    /// Runs `f` in the writer's transaction (grouped with others). For rare administrative writes.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: writer::Job = Box::new(move |t| {
            let r = t.map(f);
            let ok = matches!(r, Some(Ok(_)));
            let reply: writer::Deferred = Box::new(move |commit_error: Option<String>| {
                let _ = tx.send(match (commit_error, r) {
                    (Some(e), _) => Err(StoreError::Commit(e)),
                    (None, Some(r)) => r.map_err(StoreError::from),
                    (None, None) => Err(StoreError::Commit("the group was not written".into())),
                });
            });
            (ok, reply)
        });
        self.writer.send(Op::Exec(job))?;
        wait_blocking(rx).await
    }

    /// Runs a read on the blocking pool with the reader connection.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.reader.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::from)
    }

    /// Ids and destinations of pending deliveries due at `now_ms` (oldest due first), except those
    /// of the `skip` destinations (paused, breaker open, no free slot: the dispatcher decides): an
    /// index-only scan, so the poller can skip what it already owns before loading bodies. The
    /// paused flag in the store is not applied here: a paused destination that a reload removed
    /// must still reach the dispatcher, which fails its deliveries.
    pub async fn due_ids(&self, now_ms: i64, limit: usize, skip: Vec<String>) -> Result<Vec<(i64, String)>> {
        let skip = serde_json::to_string(&skip).expect("a list of strings serializes");
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, destination FROM deliveries
                 WHERE status = 'pending' AND next_at <= ?1
                   AND destination NOT IN (SELECT value FROM json_each(?3))
                 ORDER BY next_at LIMIT ?2",
            )?;
            let rows = st.query_map(params![now_ms, limit as i64, skip], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// Loads the given deliveries if they are still pending.
    pub async fn load_pending(&self, ids: Vec<i64>) -> Result<Vec<DueDelivery>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, d.route, d.destination, d.msg_id, d.attempts, e.headers, b.headers, COALESCE(b.body, e.body)
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.id = ?1 AND d.status = 'pending'",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = st.query_row([id], due_row).optional()? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Pending deliveries due at `now_ms`, oldest due first, except those of `skip` (the two steps
    /// the dispatcher's poll takes, in one call, for tests).
    #[cfg(test)]
    pub async fn due(&self, now_ms: i64, limit: usize, skip: &[&str]) -> Result<Vec<DueDelivery>> {
        let ids = self.due_ids(now_ms, limit, skip.iter().map(|s| s.to_string()).collect()).await?;
        self.load_pending(ids.into_iter().map(|(id, _)| id).collect()).await
    }

    /// The earliest `next_at` of any pending delivery, except those of the `skip` destinations.
    pub async fn next_due_ms(&self, skip: Vec<String>) -> Result<Option<i64>> {
        let skip = serde_json::to_string(&skip).expect("a list of strings serializes");
        self.read(move |c| {
            c.query_row(
                "SELECT MIN(next_at) FROM deliveries WHERE status = 'pending'
                   AND destination NOT IN (SELECT value FROM json_each(?1))",
                [skip],
                |r| r.get(0),
            )
        })
        .await
    }

    pub async fn pending_count(&self) -> Result<usize> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'", [], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n as usize)
    }

    /// Paused destinations and why.
    pub async fn paused(&self) -> Result<Vec<(String, Option<String>)>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT name, reason FROM destination_state WHERE paused = 1 ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// Pauses or resumes a destination: while paused its deliveries wait in the store.
    pub async fn set_paused(&self, destination: &str, paused: bool, reason: Option<String>) -> Result<()> {
        let name = destination.to_string();
        self.write(move |t| {
            t.execute(
                "INSERT INTO destination_state (name, paused, reason, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET paused = excluded.paused, reason = excluded.reason, updated_at = excluded.updated_at",
                params![name, paused, reason, now_ms()],
            )
        })
        .await
        .map(|_| ())
    }

    /// Re-sends deliveries as planned: every delivery of the given events (ids `evt_…`) or the
    /// given deliveries (numeric ids) becomes pending and due now, keeping its `webhook-id`.
    /// Returns the number of deliveries queued; unknown ids are an error naming them.
    pub async fn replay(&self, ids: Vec<String>) -> Result<usize> {
        self.write(move |t| {
            let mut n = 0;
            let mut unknown = Vec::new();
            for id in &ids {
                let changed = match id.parse::<i64>() {
                    Ok(num) => t.execute(
                        "UPDATE deliveries SET status = 'pending', next_at = ?2, updated_at = ?2 WHERE id = ?1",
                        params![num, now_ms()],
                    )?,
                    Err(_) => t.execute(
                        "UPDATE deliveries SET status = 'pending', next_at = ?2, updated_at = ?2 WHERE event_id = ?1",
                        params![id, now_ms()],
                    )?,
                };
                if changed == 0 {
                    unknown.push(id.clone());
                }
                n += changed;
            }
            Ok((n, unknown))
        })
        .await
        .and_then(|(n, unknown)| {
            if unknown.is_empty() {
                Ok(n)
            } else {
                Err(StoreError::NotFound(format!("no deliveries for: {}", unknown.join(", "))))
            }
        })
    }

    /// Re-sends dead letters (optionally of one destination, and since a time). Returns how many.
    pub async fn replay_dead(&self, destination: Option<String>, since_ms: Option<i64>) -> Result<usize> {
        self.write(move |t| {
            t.execute(
                "UPDATE deliveries SET status = 'pending', next_at = ?3, updated_at = ?3
                 WHERE status = 'dead' AND (?1 IS NULL OR destination = ?1) AND updated_at >= COALESCE(?2, 0)",
                params![destination, since_ms, now_ms()],
            )
        })
        .await
    }

    /// Adds deliveries to an existing event (re-routing with the current config). Due now.
    pub async fn add_deliveries(&self, event_id: String, deliveries: Vec<NewDelivery>) -> Result<usize> {
        self.write(move |t| {
            let now = now_ms();
            for d in &deliveries {
                writer::insert_delivery(t, &event_id, d, now)?;
            }
            Ok(deliveries.len())
        })
        .await
    }

    /// Deletes events received before `before_ms` whose deliveries are all finished (delivered,
    /// failed or dead); pending work is never deleted. Returns the number of events deleted.
    pub async fn purge(&self, before_ms: i64) -> Result<usize> {
        self.write(move |t| {
            t.execute(
                "DELETE FROM events WHERE received_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = 'pending')",
                params![before_ms],
            )
        })
        .await
    }

    pub async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts, d.next_at,
                        d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at
                 FROM deliveries d JOIN events e ON e.id = d.event_id
                   LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                 WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR d.destination = ?2) AND (?3 IS NULL OR e.source = ?3)
                   AND d.created_at >= COALESCE(?4, 0) AND d.created_at <= COALESCE(?5, 9223372036854775807)
                   AND (?6 IS NULL OR d.id < ?6)
                 ORDER BY d.id DESC LIMIT ?7",
            )?;
            let rows = st.query_map(
                params![f.status, f.destination, f.source, f.since_ms, f.until_ms, f.before_id, f.limit as i64],
                delivery_row,
            )?;
            rows.collect()
        })
        .await
    }

    /// One event with its deliveries and every attempt.
    pub async fn event(&self, id: String) -> Result<Option<EventDetail>> {
        self.read(move |c| {
            let ev = c
                .query_row(
                    "SELECT id, source, received_at, routed, dedupe_key, headers, body FROM events WHERE id = ?1",
                    [&id],
                    |r| {
                        let headers: String = r.get(5)?;
                        let body: Vec<u8> = r.get(6)?;
                        let (text, b64) = body_text(&body);
                        Ok(EventDetail {
                            id: r.get(0)?,
                            source: r.get(1)?,
                            received_at_ms: r.get(2)?,
                            routed: r.get(3)?,
                            dedupe_key: r.get(4)?,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                            body: text,
                            body_base64: b64,
                            deliveries: Vec::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut ev) = ev else { return Ok(None) };
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts, d.next_at,
                        d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at, b.body
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                   LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                 WHERE d.event_id = ?1 ORDER BY d.id",
            )?;
            let rows: Vec<(DeliveryRow, Option<Vec<u8>>)> =
                st.query_map([&id], |r| Ok((delivery_row(r)?, r.get(16)?)))?.collect::<rusqlite::Result<_>>()?;
            let mut at = c.prepare_cached(
                "SELECT n, at, status_code, latency_ms, response, error FROM attempts WHERE delivery_id = ?1 ORDER BY n",
            )?;
            for (row, body) in rows {
                let attempt_log = at
                    .query_map([row.id], |r| {
                        let resp: Option<Vec<u8>> = r.get(4)?;
                        Ok(AttemptRow {
                            n: r.get(0)?,
                            at_ms: r.get(1)?,
                            status_code: r.get(2)?,
                            latency_ms: r.get::<_, i64>(3)? as u64,
                            response: String::from_utf8_lossy(&resp.unwrap_or_default()).into_owned(),
                            error: r.get(5)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let transformed_body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                ev.deliveries.push(DeliveryDetail { delivery: row, transformed_body, attempt_log });
            }
            Ok(Some(ev))
        })
        .await
    }

    /// The raw event (for re-routing): source, headers and body.
    pub async fn raw_event(&self, id: String) -> Result<Option<(String, i64, Headers, Bytes)>> {
        self.read(move |c| {
            c.query_row("SELECT source, received_at, headers, body FROM events WHERE id = ?1", [&id], |r| {
                let headers: String = r.get(2)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    serde_json::from_str(&headers).unwrap_or_default(),
                    Bytes::from(r.get::<_, Vec<u8>>(3)?),
                ))
            })
            .optional()
        })
        .await
    }

    /// Per destination: pending deliveries, the age of the oldest one that is due (ms, 0 if none
    /// is due), dead letters and failed deliveries. For metrics and the admin API.
    pub async fn destination_stats(&self, now_ms: i64) -> Result<Vec<DestinationStats>> {
        // Three walks of partial indexes (pending, dead, failed rows only), never of the delivered
        // history: a scrape costs what is queued or kept for replay, not what was retained.
        self.read(move |c| {
            let mut by_name = std::collections::BTreeMap::<String, DestinationStats>::new();
            let mut st = c.prepare_cached(
                "SELECT destination, COUNT(*), MIN(CASE WHEN next_at <= ?1 THEN next_at END)
                 FROM deliveries WHERE status = 'pending' GROUP BY destination",
            )?;
            let mut rows = st.query([now_ms])?;
            while let Some(r) = rows.next()? {
                let oldest: Option<i64> = r.get(2)?;
                let s = stats_entry(&mut by_name, r.get(0)?);
                s.pending = r.get::<_, i64>(1)? as u64;
                s.oldest_due_ms = oldest.map_or(0, |t| (now_ms - t).max(0) as u64);
            }
            for status in ["dead", "failed"] {
                let mut st = c.prepare_cached(&format!(
                    "SELECT destination, COUNT(*) FROM deliveries WHERE status = '{status}' GROUP BY destination"
                ))?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let s = stats_entry(&mut by_name, r.get(0)?);
                    let n = r.get::<_, i64>(1)? as u64;
                    if status == "dead" {
                        s.dead = n;
                    } else {
                        s.failed = n;
                    }
                }
            }
            Ok(by_name.into_values().collect())
        })
        .await
    }

    /// Whether the store can take events now (for readiness), and if not why: the database file
    /// at the configured path is no longer the one open (checked now), or the last write of an
    /// event, or the writer's probe, failed. Answers at once, even while the writer waits.
    pub fn health(&self) -> std::result::Result<(), String> {
        self.health.status()
    }
}

/// Waits for the writer's reply. In unit tests it waits on the blocking pool, so that a test's
/// paused clock does not jump ahead while a commit is in progress (tokio does not auto-advance
/// paused time while blocking tasks run); in the product it is a plain channel wait.
async fn wait_blocking<T: Send + 'static>(rx: tokio::sync::oneshot::Receiver<Result<T>>) -> Result<T> {
    if cfg!(test) {
        tokio::task::spawn_blocking(move || rx.blocking_recv())
            .await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(|_| StoreError::WriterGone)?
    } else {
        rx.await.map_err(|_| StoreError::WriterGone)?
    }
}

fn due_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DueDelivery> {
    let headers: String = r.get(6)?;
    let extra: Option<String> = r.get(7)?;
    Ok(DueDelivery {
        id: r.get(0)?,
        event_id: r.get::<_, String>(1)?.into(),
        route: r.get::<_, String>(2)?.into(),
        destination: r.get::<_, String>(3)?.into(),
        msg_id: r.get::<_, String>(4)?.into(),
        attempts: r.get(5)?,
        headers: Arc::new(serde_json::from_str(&headers).unwrap_or_default()),
        extra_headers: extra.map(|e| Arc::new(serde_json::from_str(&e).unwrap_or_default())),
        body: Bytes::from(r.get::<_, Vec<u8>>(8)?),
    })
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        source: r.get(2)?,
        route: r.get(3)?,
        destination: r.get(4)?,
        msg_id: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_at_ms: r.get(8)?,
        created_at_ms: r.get(9)?,
        updated_at_ms: r.get(10)?,
        last_status: r.get(11)?,
        last_error: r.get(12)?,
        cancelled: match r.get::<_, Option<String>>(13)? {
            Some(by) => Some(Cancellation { by, reason: r.get(14)?, at_ms: r.get(15)? }),
            None => None,
        },
    })
}

fn body_text(body: &[u8]) -> (Option<String>, Option<String>) {
    use base64::Engine as _;
    match std::str::from_utf8(body) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(body))),
    }
}

#[cfg(test)]
mod tests;

fn stats_entry(
    by_name: &mut std::collections::BTreeMap<String, DestinationStats>,
    name: String,
) -> &mut DestinationStats {
    by_name.entry(name.clone()).or_insert(DestinationStats {
        destination: name,
        pending: 0,
        oldest_due_ms: 0,
        dead: 0,
        failed: 0,
    })
}
