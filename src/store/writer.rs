//! The single writer: a plain OS thread that owns the write connection and commits the operations
//! of concurrent callers together (group commit). Each operation runs in its own savepoint, so one
//! failing operation does not undo the others in its group; replies are sent only after COMMIT.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;
use tracing::error;

use super::{
    Accepted, AttemptRecord, DueDelivery, MAX_RESPONSE_KEPT, NewDelivery, NewEvent, Result, Settle, StoreError, now_ms,
};

/// Most operations in one transaction. Bounds commit latency under a flood.
pub const MAX_GROUP: usize = 1024;

/// An administrative write: runs in the group's transaction and returns whether it succeeded and
/// how to tell its caller, which is called after COMMIT (with the commit error, if any).
pub type Job = Box<dyn FnOnce(&Connection) -> (bool, Deferred) + Send>;
pub type Deferred = Box<dyn FnOnce(Option<String>) + Send>;

pub enum Op {
    Accept {
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
        reply: oneshot::Sender<Result<Accepted>>,
    },
    Settle {
        delivery_id: i64,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// An administrative write; returns whether it succeeded (its result travels in its closure).
    Exec(Job),
}

#[derive(Clone)]
pub struct Writer {
    tx: Sender<Op>,
}

impl Writer {
    pub fn start(conn: Connection) -> Writer {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("hookyard-store-writer".into())
            .spawn(move || run(conn, rx))
            .expect("spawn store writer thread");
        Writer { tx }
    }

    pub fn send(&self, op: Op) -> Result<()> {
        self.tx.send(op).map_err(|_| StoreError::WriterGone)
    }
}

/// What one accept or settle wrote, before its caller is told.
enum Written {
    Accept(rusqlite::Result<AcceptRows>),
    Settle(rusqlite::Result<()>),
}

enum AcceptRows {
    Duplicate {
        original: String,
    },
    /// The row id of each planned delivery, in order.
    Stored(Vec<i64>),
}

fn run(mut conn: Connection, rx: Receiver<Op>) {
    // Blocks for the first operation, yields the CPU once, then takes whatever is waiting. Where
    // the writer shares a core with the request handlers, running it the moment an operation
    // wakes it would commit (and fsync) one or two operations at a time while the handlers are
    // still busy with the rest; the yield lets them hand over what they are working on first,
    // so one commit serves more of them (with the plugin on the route, 6.4k -> 9.6k events/s on
    // one core in A/B runs). With a core to spare, the yield returns at once.
    while let Ok(first) = rx.recv() {
        std::thread::yield_now();
        let mut ops = Vec::new();
        let mut jobs = Vec::new();
        let mut take = |op: Op| match op {
            Op::Exec(job) => jobs.push(job),
            op => ops.push(op),
        };
        take(first);
        let mut n = 1;
        while n < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => take(op),
                Err(_) => break,
            }
            n += 1;
        }
        let mut written = Vec::with_capacity(ops.len());
        let mut deferred = Vec::with_capacity(jobs.len());
        let committed = write_group(&mut conn, &ops, jobs, &mut written, &mut deferred);
        if let Err(e) = &committed {
            error!(error = %e, "store commit failed; the group's callers get an error");
        }
        let commit_error = committed.err().map(|e| e.to_string());
        reply(ops, written, commit_error.as_deref());
        for f in deferred {
            f(commit_error.clone());
        }
    }
}

/// Writes one group in one transaction. Accepts and settles first run without savepoints (a
/// savepoint per operation journals every page it touches a second time); should one fail, the
/// transaction is rolled back and they run again, each in its own savepoint, so a failing
/// operation does not undo the others. Administrative jobs (rare, and not repeatable) always get
/// their own savepoint, after the accepts and settles of their group (which arrived concurrently,
/// so no caller can tell the order).
fn write_group(
    conn: &mut Connection,
    ops: &[Op],
    jobs: Vec<Job>,
    written: &mut Vec<Written>,
    deferred: &mut Vec<Deferred>,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction()?;
    let mut clean = true;
    for op in ops {
        let w = write_one(&tx, op);
        if !w.is_ok() {
            clean = false;
            break;
        }
        written.push(w);
    }
    if !clean {
        drop(tx); // rolls back
        written.clear();
        tx = conn.transaction()?;
        for op in ops {
            written.push(in_savepoint(&mut tx, |sp| {
                let w = write_one(sp, op);
                let ok = w.is_ok();
                (w, ok)
            })?);
        }
    }
    for job in jobs {
        deferred.push(in_savepoint(&mut tx, |t| {
            let (ok, reply) = job(t);
            (reply, ok)
        })?);
    }
    tx.commit()
}

/// Runs `f` in a savepoint, released when `f` reports success and rolled back otherwise.
fn in_savepoint<T>(tx: &mut Transaction<'_>, f: impl FnOnce(&Connection) -> (T, bool)) -> rusqlite::Result<T> {
    let mut sp = tx.savepoint()?;
    let (out, ok) = f(&sp);
    if ok {
        sp.commit()?;
    } else {
        sp.rollback()?;
        sp.finish()?;
    }
    Ok(out)
}

fn write_one(t: &Connection, op: &Op) -> Written {
    match op {
        Op::Accept { event, deliveries, dedupe_window, .. } => {
            Written::Accept(accept(t, event, deliveries, *dedupe_window))
        }
        Op::Settle { delivery_id, attempt, settle, error, .. } => {
            Written::Settle(settle_delivery(t, *delivery_id, attempt, settle, error.as_deref()))
        }
        Op::Exec(_) => unreachable!("administrative jobs are written by write_group"),
    }
}

impl Written {
    fn is_ok(&self) -> bool {
        match self {
            Written::Accept(r) => r.is_ok(),
            Written::Settle(r) => r.is_ok(),
        }
    }
}

/// Tells each accept and settle caller its outcome (an error for all if the commit failed).
/// A failed group may have written only some of its operations (`written` is then short): every
/// caller gets the commit error.
fn reply(ops: Vec<Op>, written: Vec<Written>, commit_error: Option<&str>) {
    let commit_failed = || StoreError::Commit(commit_error.unwrap_or("the group was not written").to_string());
    let mut written = written.into_iter();
    for op in ops {
        let w = written.next().filter(|_| commit_error.is_none());
        match op {
            Op::Accept { event, deliveries, reply, .. } => {
                let res = match w {
                    None => Err(commit_failed()),
                    Some(Written::Accept(Err(e))) => Err(e.into()),
                    Some(Written::Accept(Ok(AcceptRows::Duplicate { original }))) => {
                        Ok(Accepted::Duplicate { original })
                    }
                    Some(Written::Accept(Ok(AcceptRows::Stored(ids)))) => {
                        Ok(Accepted::Stored(due(event, deliveries, ids)))
                    }
                    Some(Written::Settle(_)) => unreachable!("written in the order of the operations"),
                };
                let _ = reply.send(res);
            }
            Op::Settle { reply, .. } => {
                let res = match w {
                    None => Err(commit_failed()),
                    Some(Written::Settle(res)) => res.map_err(Into::into),
                    Some(Written::Accept(_)) => unreachable!("written in the order of the operations"),
                };
                let _ = reply.send(res);
            }
            Op::Exec(_) => unreachable!("administrative jobs are answered by their own closures"),
        }
    }
}

fn accept(
    t: &Connection,
    ev: &NewEvent,
    deliveries: &[NewDelivery],
    dedupe_window: Option<Duration>,
) -> rusqlite::Result<AcceptRows> {
    if let (Some(key), Some(window)) = (&ev.dedupe_key, dedupe_window) {
        let since = ev.received_at_ms - window.as_millis() as i64;
        let original: Option<String> = t
            .prepare_cached(
                "SELECT id FROM events WHERE source = ?1 AND dedupe_key = ?2 AND received_at >= ?3 ORDER BY received_at LIMIT 1",
            )?
            .query_row(params![ev.source, key, since], |r| r.get(0))
            .optional()?;
        if let Some(original) = original {
            return Ok(AcceptRows::Duplicate { original });
        }
    }
    let headers = serde_json::to_string(&ev.headers).expect("headers serialize");
    t.prepare_cached(
        "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![ev.id, ev.source, ev.received_at_ms, headers, &ev.body[..], ev.dedupe_key, !deliveries.is_empty()])?;
    let now = now_ms();
    let ids = deliveries.iter().map(|d| insert_delivery(t, &ev.id, d, now)).collect::<rusqlite::Result<_>>()?;
    Ok(AcceptRows::Stored(ids))
}

/// The deliveries of a committed event that are due now (failed ones are kept, not sent).
fn due(ev: NewEvent, deliveries: Vec<NewDelivery>, ids: Vec<i64>) -> Vec<DueDelivery> {
    let event_id: Arc<str> = ev.id.into();
    let shared_headers = Arc::new(ev.headers);
    deliveries
        .into_iter()
        .zip(ids)
        .filter(|(d, _)| d.failed.is_none())
        .map(|(d, id)| DueDelivery {
            id,
            event_id: event_id.clone(),
            route: d.route.into(),
            destination: d.destination.into(),
            msg_id: d.msg_id.into(),
            attempts: 0,
            headers: shared_headers.clone(),
            extra_headers: d.headers.map(Arc::new),
            body: d.body.unwrap_or_else(|| ev.body.clone()),
        })
        .collect()
}

pub fn insert_delivery(t: &Connection, event_id: &str, d: &NewDelivery, now: i64) -> rusqlite::Result<i64> {
    let extra = d.headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize"));
    t.prepare_cached(
        "INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at, last_error)
         VALUES (?1, ?2, ?3, ?4, ?6, 0, ?5, ?5, ?5, ?7)",
    )?
    .execute(params![
        event_id,
        d.route,
        d.destination,
        d.msg_id,
        now,
        if d.failed.is_some() { "failed" } else { "pending" },
        d.failed
    ])?;
    let id = t.last_insert_rowid();
    // a transform's output lives beside the delivery, which every settle rewrites
    if d.body.is_some() || extra.is_some() {
        t.prepare_cached("INSERT INTO delivery_bodies (delivery_id, body, headers) VALUES (?1, ?2, ?3)")?
            .execute(params![id, d.body.as_deref(), extra])?;
    }
    Ok(id)
}

fn settle_delivery(
    t: &Connection,
    id: i64,
    a: &AttemptRecord,
    s: &Settle,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let next_at = match s {
        Settle::Retry { next_at_ms } => *next_at_ms,
        _ => 0,
    };
    // No RETURNING: SQLite buffers its rows in a temporary table, which made this statement the
    // dearest of the settle. The attempt row reads the new count back instead.
    // Only a pending delivery takes the new state: one an operator cancelled while this attempt
    // was in flight stays cancelled (the attempt is still recorded), unless the attempt delivered it.
    let changed = t
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1,
                    status = CASE WHEN status = 'pending' OR ?2 = 'delivered' THEN ?2 ELSE status END,
                    next_at = CASE WHEN status = 'pending' THEN ?3 ELSE next_at END,
                    updated_at = ?4, last_status = ?5, last_error = ?6
             WHERE id = ?1",
        )?
        .execute(params![id, s.status(), next_at, now_ms(), a.status_code, error])?;
    if changed == 0 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    let response = &a.response[..a.response.len().min(MAX_RESPONSE_KEPT)];
    t.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error)
         SELECT id, attempts, ?2, ?3, ?4, ?5, ?6 FROM deliveries WHERE id = ?1",
    )?
    .execute(params![id, a.at_ms, a.status_code, a.latency_ms as i64, response, a.error])?;
    Ok(())
}
