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

/// What to tell each caller once the group's transaction is settled.
enum Reply {
    Accept(oneshot::Sender<Result<Accepted>>, Result<Accepted>),
    Settle(oneshot::Sender<Result<()>>, Result<()>),
    Deferred(Deferred),
}

fn run(mut conn: Connection, rx: Receiver<Op>) {
    // blocks for the first operation, then takes whatever else is already waiting
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(group.len());
        let committed = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction()?;
            for op in group {
                replies.push(apply(&mut tx, op));
            }
            tx.commit()
        })();
        if let Err(e) = &committed {
            error!(error = %e, "store commit failed; the group's callers get an error");
            let msg = e.to_string();
            for r in &mut replies {
                match r {
                    Reply::Accept(_, res) => *res = Err(StoreError::Commit(msg.clone())),
                    Reply::Settle(_, res) => *res = Err(StoreError::Commit(msg.clone())),
                    Reply::Deferred(_) => {}
                }
            }
        }
        let commit_error = committed.err().map(|e| e.to_string());
        for r in replies {
            match r {
                Reply::Accept(tx, res) => {
                    let _ = tx.send(res);
                }
                Reply::Settle(tx, res) => {
                    let _ = tx.send(res);
                }
                Reply::Deferred(f) => f(commit_error.clone()),
            }
        }
    }
}

/// Runs one operation in its own savepoint.
fn apply(tx: &mut Transaction<'_>, op: Op) -> Reply {
    let mut sp = match tx.savepoint() {
        Ok(sp) => sp,
        Err(e) => {
            return match op {
                Op::Accept { reply, .. } => Reply::Accept(reply, Err(e.into())),
                Op::Settle { reply, .. } => Reply::Settle(reply, Err(e.into())),
                Op::Exec(job) => {
                    // let the job report the error to its caller without running its writes
                    let msg = e.to_string();
                    drop(job);
                    return Reply::Deferred(Box::new(move |_| error!(error = %msg, "savepoint failed")));
                }
            };
        }
    };
    let (reply, ok) = match op {
        Op::Accept { event, deliveries, dedupe_window, reply } => {
            let res = accept(&sp, event, deliveries, dedupe_window);
            let ok = res.is_ok();
            (Reply::Accept(reply, res.map_err(Into::into)), ok)
        }
        Op::Settle { delivery_id, attempt, settle, error, reply } => {
            let res = settle_delivery(&sp, delivery_id, &attempt, &settle, error.as_deref());
            let ok = res.is_ok();
            (Reply::Settle(reply, res.map_err(Into::into)), ok)
        }
        Op::Exec(job) => {
            let (ok, deferred) = job(&sp);
            (Reply::Deferred(deferred), ok)
        }
    };
    let done = if ok { sp.commit() } else { sp.rollback().and_then(|_| sp.finish()) };
    if let Err(e) = done {
        error!(error = %e, "savepoint failed");
    }
    reply
}

fn accept(
    t: &Connection,
    ev: NewEvent,
    deliveries: Vec<NewDelivery>,
    dedupe_window: Option<Duration>,
) -> rusqlite::Result<Accepted> {
    if let (Some(key), Some(window)) = (&ev.dedupe_key, dedupe_window) {
        let since = ev.received_at_ms - window.as_millis() as i64;
        let original: Option<String> = t
            .prepare_cached(
                "SELECT id FROM events WHERE source = ?1 AND dedupe_key = ?2 AND received_at >= ?3 ORDER BY received_at LIMIT 1",
            )?
            .query_row(params![ev.source, key, since], |r| r.get(0))
            .optional()?;
        if let Some(original) = original {
            return Ok(Accepted::Duplicate { original });
        }
    }
    let headers = serde_json::to_string(&ev.headers).expect("headers serialize");
    t.prepare_cached(
        "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![ev.id, ev.source, ev.received_at_ms, headers, &ev.body[..], ev.dedupe_key, !deliveries.is_empty()])?;
    let now = now_ms();
    let event_id: Arc<str> = ev.id.into();
    let shared_headers = Arc::new(ev.headers);
    let mut due = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        let id = insert_delivery(t, &event_id, &d, now)?;
        if d.failed.is_some() {
            continue;
        }
        due.push(DueDelivery {
            id,
            event_id: event_id.clone(),
            route: d.route.into(),
            destination: d.destination.into(),
            msg_id: d.msg_id.into(),
            attempts: 0,
            headers: shared_headers.clone(),
            extra_headers: d.headers.map(Arc::new),
            body: d.body.unwrap_or_else(|| ev.body.clone()),
        });
    }
    Ok(Accepted::Stored(due))
}

pub fn insert_delivery(t: &Connection, event_id: &str, d: &NewDelivery, now: i64) -> rusqlite::Result<i64> {
    let extra = d.headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize"));
    t.prepare_cached(
        "INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at, body, headers, last_error)
         VALUES (?1, ?2, ?3, ?4, ?8, 0, ?5, ?5, ?5, ?6, ?7, ?9)",
    )?
    .execute(params![
        event_id,
        d.route,
        d.destination,
        d.msg_id,
        now,
        d.body.as_deref(),
        extra,
        if d.failed.is_some() { "failed" } else { "pending" },
        d.failed
    ])?;
    Ok(t.last_insert_rowid())
}

fn settle_delivery(
    t: &Connection,
    id: i64,
    a: &AttemptRecord,
    s: &Settle,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let n: i64 = t
        .prepare_cached("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ?1 RETURNING attempts")?
        .query_row([id], |r| r.get(0))?;
    let response = &a.response[..a.response.len().min(MAX_RESPONSE_KEPT)];
    t.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![id, n, a.at_ms, a.status_code, a.latency_ms as i64, response, a.error])?;
    let next_at = match s {
        Settle::Retry { next_at_ms } => *next_at_ms,
        _ => 0,
    };
    t.prepare_cached(
        "UPDATE deliveries SET status = ?2, next_at = ?3, updated_at = ?4, last_status = ?5, last_error = ?6 WHERE id = ?1",
    )?
    .execute(params![id, s.status(), next_at, now_ms(), a.status_code, error])?;
    Ok(())
}
