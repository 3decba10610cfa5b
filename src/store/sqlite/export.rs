//! Reading a whole store out, for `hookyard migrate` (`store/migrate`): every table in the order
//! its foreign keys need, cut into batches of plain rows (`migrate::rows`), under the database's
//! write lock, so that no writer (a gateway that was not stopped) changes the file while it is
//! read, nor until the copy was committed elsewhere and the export is dropped.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, Row};

use super::{db, schema};
use crate::store::migrate::BatchLimits;
use crate::store::migrate::rows::{
    Attempt, Batch, Body, Cancellation, Delivery, DeliveryBatch, DestinationState, Event,
};
use crate::store::{Result, StoreError};

/// How long opening waits for a write lock another process holds (a gateway's commit takes
/// milliseconds; a gateway that was not stopped may take it again and again).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// An open store whose write lock is held until the export is dropped.
pub(crate) struct Export {
    conn: Connection,
}

impl Export {
    /// Opens the existing database at `path` (never creates one), applies the migrations it has
    /// not seen, as a gateway's start would, and takes the write lock (`BEGIN IMMEDIATE`).
    pub(crate) fn open(path: &Path) -> Result<Export> {
        let err = |message: String| StoreError::Open { path: path.to_path_buf(), message };
        let mut conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(|e| err(e.to_string()))?;
        conn.busy_timeout(LOCK_WAIT).map_err(|e| err(e.to_string()))?;
        schema::migrate(&mut conn).map_err(|e| err(e.to_string()))?.map_err(err)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
            err(format!("cannot take the write lock ({e}); is a gateway still running on this file? Stop it first"))
        })?;
        Ok(Export { conn })
    }

    /// Reads every table, handing `send` one batch at a time (at most `limits.rows` rows and
    /// about `limits.bytes` bytes of bodies, headers and responses each). Stops at a batch `send`
    /// refuses (it returns false when the writing side gave up, which has its own error).
    pub(crate) fn read(&self, limits: BatchLimits, mut send: impl FnMut(Batch) -> bool) -> Result<()> {
        let c = &self.conn;
        table(c, limits, &mut send, Batch::Events, EVENTS, |r| {
            let e = Event {
                id: r.get(0)?,
                source: r.get(1)?,
                received_at: r.get(2)?,
                headers: r.get(3)?,
                body: bytes(r, 4)?.unwrap_or_default(),
                dedupe_key: r.get(5)?,
                routed: r.get(6)?,
            };
            Ok((e.headers.len() + e.body.len(), e))
        })?;
        table(c, limits, &mut send, Batch::DeliveryBatches, BATCHES, |r| {
            let b = DeliveryBatch {
                id: r.get(0)?,
                destination: r.get(1)?,
                msg_id: r.get(2)?,
                status: r.get(3)?,
                attempts: r.get(4)?,
                next_at: r.get(5)?,
                created_at: r.get(6)?,
                updated_at: r.get(7)?,
                events: r.get(8)?,
                bytes: r.get(9)?,
                last_status: r.get(10)?,
                last_error: r.get(11)?,
            };
            Ok((b.last_error.as_ref().map_or(0, String::len), b))
        })?;
        table(c, limits, &mut send, Batch::Deliveries, DELIVERIES, |r| {
            let d = Delivery {
                id: r.get(0)?,
                event_id: r.get(1)?,
                route: r.get(2)?,
                destination: r.get(3)?,
                msg_id: r.get(4)?,
                status: r.get(5)?,
                attempts: r.get(6)?,
                next_at: r.get(7)?,
                created_at: r.get(8)?,
                updated_at: r.get(9)?,
                last_status: r.get(10)?,
                last_error: r.get(11)?,
                order_key: r.get(12)?,
                order_block: r.get(13)?,
                held: r.get(14)?,
                batch_id: r.get(15)?,
                parent_id: r.get(16)?,
                leads: r.get(17)?,
            };
            Ok((d.last_error.as_ref().map_or(0, String::len) + d.order_key.as_ref().map_or(0, String::len), d))
        })?;
        table(c, limits, &mut send, Batch::Bodies, BODIES, |r| {
            let b = Body {
                delivery_id: r.get(0)?,
                body: bytes(r, 1)?,
                headers: r.get(2)?,
                url: r.get(3)?,
                context: bytes(r, 4)?,
            };
            let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
            Ok((
                b.body.as_ref().map_or(0, Vec::len)
                    + len(&b.headers)
                    + len(&b.url)
                    + b.context.as_ref().map_or(0, Vec::len),
                b,
            ))
        })?;
        table(c, limits, &mut send, Batch::Attempts, ATTEMPTS, |r| {
            let a = Attempt {
                delivery_id: r.get(0)?,
                n: r.get(1)?,
                at: r.get(2)?,
                status_code: r.get(3)?,
                latency_ms: r.get(4)?,
                response: bytes(r, 5)?,
                error: r.get(6)?,
            };
            Ok((a.response.as_ref().map_or(0, Vec::len) + a.error.as_ref().map_or(0, String::len), a))
        })?;
        table(c, limits, &mut send, Batch::Cancellations, CANCELLATIONS, |r| {
            Ok((0, Cancellation { delivery_id: r.get(0)?, at: r.get(1)?, actor: r.get(2)?, reason: r.get(3)? }))
        })?;
        table(c, limits, &mut send, Batch::DestinationStates, DESTINATION_STATES, |r| {
            Ok((0, DestinationState { name: r.get(0)?, paused: r.get(1)?, reason: r.get(2)?, updated_at: r.get(3)? }))
        })?;
        Ok(())
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // nothing was written in the transaction: ending it releases the lock
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

const EVENTS: &str = "SELECT id, source, received_at, headers, body, dedupe_key, routed FROM events";
const DELIVERIES: &str = "SELECT id, event_id, route, destination, msg_id, status, attempts, next_at, created_at, \
     updated_at, last_status, last_error, order_key, order_block, held, batch_id, parent_id, leads FROM deliveries ORDER BY id";
const BATCHES: &str = "SELECT id, destination, msg_id, status, attempts, next_at, created_at, updated_at, events, bytes, \
     last_status, last_error FROM batches ORDER BY id";
const BODIES: &str = "SELECT delivery_id, body, headers, url, context FROM delivery_bodies ORDER BY delivery_id";
const ATTEMPTS: &str =
    "SELECT delivery_id, n, at, status_code, latency_ms, response, error FROM attempts ORDER BY delivery_id, n";
const CANCELLATIONS: &str = "SELECT delivery_id, at, actor, reason FROM cancellations ORDER BY delivery_id";
const DESTINATION_STATES: &str = "SELECT name, paused, reason, updated_at FROM destination_state ORDER BY name";

/// Sends the rows of `sql` in batches; `row` reads one and says how many bytes it holds.
fn table<T>(
    c: &Connection,
    limits: BatchLimits,
    send: &mut impl FnMut(Batch) -> bool,
    wrap: fn(Vec<T>) -> Batch,
    sql: &str,
    row: impl Fn(&Row<'_>) -> rusqlite::Result<(usize, T)>,
) -> Result<()> {
    let stopped = || StoreError::Backend("the copy stopped: its writing side gave up".into());
    let mut st = c.prepare(sql).map_err(db)?;
    let mut rows = st.query([]).map_err(db)?;
    let (mut batch, mut bytes) = (Vec::new(), 0);
    while let Some(r) = rows.next().map_err(db)? {
        let (size, item) = row(r).map_err(db)?;
        batch.push(item);
        bytes += size;
        if batch.len() >= limits.rows || bytes >= limits.bytes {
            if !send(wrap(std::mem::take(&mut batch))) {
                return Err(stopped());
            }
            bytes = 0;
        }
    }
    if batch.is_empty() || send(wrap(batch)) { Ok(()) } else { Err(stopped()) }
}

/// A BLOB column (or TEXT, should a value have been stored as text) as bytes.
fn bytes(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<Vec<u8>>> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
        other => Err(rusqlite::Error::InvalidColumnType(i, format!("column {i}"), other.data_type())),
    }
}
