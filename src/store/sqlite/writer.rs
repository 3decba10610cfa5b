//! The single writer: a plain OS thread that owns the write connection and commits the operations
//! of concurrent callers together (group commit). Accepts and settles run bare in the group's
//! transaction; should one fail, the group is rolled back and run again with a savepoint per
//! operation, so a failing operation never undoes the others. Administrative jobs always get a
//! savepoint of their own. Replies are sent only after COMMIT.
//!
//! The wait for SQLite's write lock is bounded: a group takes the lock up front (`BEGIN
//! IMMEDIATE`) and waits for it at most until the earliest deadline of its accepts (their
//! caller's `storage.commit_timeout`). Accepts whose deadline has passed once the lock is held are
//! answered with [`StoreError::Timeout`] and not written, so an event refused with `503` does not
//! land afterwards.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;
use tracing::error;

use super::db;
use super::health::{Health, PROBE_INTERVAL};
use crate::store::{AWAITING_BATCH, BatchLimits, Formation, StepDecision, batch_msg_id};
use crate::store::{
    Accepted, AttemptRecord, DeliveryId, EventId, MAX_GROUP, MAX_RESPONSE_KEPT, NewDelivery, NewEvent, Result, Settle,
    StoreError, WAITING, now_ms,
};

/// An administrative write: runs in the group's transaction and returns whether it succeeded and
/// how to tell its caller, which is called after COMMIT (with the commit error, if any).
/// Called with `None` when its group failed before it could run: its caller then gets the
/// group's error (not a "writer stopped" from a dropped reply).
pub type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Deferred) + Send>;
pub type Deferred = Box<dyn FnOnce(Option<String>) + Send>;

pub enum Op {
    Accept {
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
        /// Not written once this has passed (its caller has been told `503` or is about to be).
        deadline: Instant,
        reply: oneshot::Sender<Result<Accepted>>,
    },
    Settle {
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        /// The order key (destination, key) to advance in the same transaction: the reply is
        /// the key's due head.
        advance: Option<(String, String)>,
        /// What becomes of the later steps that follow it, decided in the same transaction.
        steps: Vec<StepDecision>,
        reply: oneshot::Sender<Result<Option<i64>>>,
    },
    /// An administrative write; returns whether it succeeded (its result travels in its closure).
    Exec(Job),
}

#[derive(Clone)]
pub struct Writer {
    tx: Sender<Op>,
    #[cfg(test)]
    pub(super) trace: Arc<Trace>,
}

/// What the writer thread needs besides its connection and queue.
struct Ctx {
    health: Arc<Health>,
    /// The lock wait of a group without accepts, and of the probe.
    commit_timeout: Duration,
    #[cfg(test)]
    trace: Arc<Trace>,
}

/// What unit tests observe of the writer: operations queued and not yet taken (counted after the
/// send and before the take, so only meaningful while the writer is held), and each group.
#[cfg(test)]
#[derive(Default)]
pub(super) struct Trace {
    pub queued: std::sync::atomic::AtomicUsize,
    pub groups: std::sync::Mutex<Vec<GroupTrace>>,
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupTrace {
    /// Accepts and settles written (refused ones not counted).
    pub ops: usize,
    pub jobs: usize,
    /// The first, bare pass failed and the group ran again with a savepoint per operation.
    pub rolled_back: bool,
}

impl Writer {
    pub fn start(conn: Connection, health: Arc<Health>, commit_timeout: Duration) -> Writer {
        let (tx, rx) = channel();
        #[cfg(test)]
        let trace = Arc::new(Trace::default());
        let ctx = Ctx {
            health,
            commit_timeout,
            #[cfg(test)]
            trace: trace.clone(),
        };
        std::thread::Builder::new()
            .name("hookyard-store-writer".into())
            .spawn(move || run(conn, rx, ctx))
            .expect("spawn store writer thread");
        Writer {
            tx,
            #[cfg(test)]
            trace,
        }
    }

    pub fn send(&self, op: Op) -> Result<()> {
        self.tx.send(op).map_err(|_| StoreError::WriterGone)?;
        // counted once in the queue, so a test that sees N queued knows the next group takes them
        #[cfg(test)]
        self.trace.queued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// What one accept or settle wrote, before its caller is told.
enum Written {
    Accept(rusqlite::Result<AcceptRows>),
    Settle(rusqlite::Result<Option<i64>>),
}

enum AcceptRows {
    Duplicate {
        original: EventId,
    },
    /// The row id of each planned delivery, in order, and whether it waits for its turn.
    Stored(Vec<(i64, bool)>),
}

fn run(mut conn: Connection, rx: Receiver<Op>, ctx: Ctx) {
    // Blocks for the first operation, yields the CPU once, then takes whatever is waiting. Where
    // the writer shares a core with the request handlers, running it the moment an operation
    // wakes it would commit (and fsync) one or two operations at a time while the handlers are
    // still busy with the rest; the yield lets them hand over what they are working on first,
    // so one commit serves more of them (with the plugin on the route, 6.4k -> 9.6k events/s on
    // one core in A/B runs). With a core to spare, the yield returns at once.
    //
    // When no event was written for PROBE_INTERVAL (idle, or only settles), it probes instead.
    let mut next_probe = Instant::now() + PROBE_INTERVAL;
    loop {
        let first = match rx.recv_timeout(next_probe.saturating_duration_since(Instant::now())) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                probe(&mut conn, &ctx);
                next_probe = Instant::now() + PROBE_INTERVAL;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
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
        #[cfg(test)]
        ctx.trace.queued.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        let has_accepts = ops.iter().any(|op| matches!(op, Op::Accept { .. }));
        if has_accepts && let Err(reason) = ctx.health.check_file() {
            // Settles and jobs still go to the open file: they record the fate of events that
            // were acknowledged before, which are still delivered from it.
            for op in ops.extract_if(.., |op| matches!(op, Op::Accept { .. })) {
                refuse(op, StoreError::Unwritable(reason.clone()));
            }
            if ops.is_empty() && jobs.is_empty() {
                continue;
            }
        }
        // Wait for the write lock no longer than the first caller waits for its answer.
        let lock_wait = ops
            .iter()
            .filter_map(|op| match op {
                Op::Accept { deadline, .. } => Some(deadline.saturating_duration_since(Instant::now())),
                _ => None,
            })
            .min()
            .unwrap_or(ctx.commit_timeout);
        let mut written = Vec::with_capacity(ops.len());
        let mut deferred = Vec::with_capacity(jobs.len());
        #[cfg(test)]
        let jobs_n = jobs.len();
        let mut expired = Vec::new();
        let committed = conn
            .busy_timeout(lock_wait)
            .and_then(|()| write_group(&mut conn, &mut ops, &mut expired, &mut jobs, &mut written, &mut deferred));
        deferred.extend(jobs.drain(..).map(|job| job(None).1)); // not run: the group failed
        #[cfg(test)]
        if let Ok(rolled_back) = &committed {
            let group = GroupTrace { ops: ops.len(), jobs: jobs_n, rolled_back: *rolled_back };
            ctx.trace.groups.lock().unwrap().push(group);
        }
        if let Err(e) = &committed {
            error!(error = %e, "store commit failed; the group's callers get an error");
        }
        let commit_error = committed.err().map(|e| e.to_string());
        if ops.iter().any(|op| matches!(op, Op::Accept { .. })) || !expired.is_empty() {
            // readiness follows the writes that hold events
            let failed_accept = written.iter().find_map(|w| match w {
                Written::Accept(Err(e)) => Some(e.to_string()),
                _ => None,
            });
            let outcome = match (&commit_error, &failed_accept) {
                (Some(e), _) | (None, Some(e)) => Err(e.as_str()),
                (None, None) if !expired.is_empty() => {
                    Err("events waited longer than storage.commit_timeout for the write lock")
                }
                (None, None) => Ok(()),
            };
            ctx.health.record_write(outcome);
            next_probe = Instant::now() + PROBE_INTERVAL;
        } else if let Some(e) = &commit_error {
            ctx.health.record_write(Err(e));
        }
        for op in expired {
            refuse(op, StoreError::Timeout(ctx.commit_timeout));
        }
        reply(ops, written, commit_error.as_deref());
        for f in deferred {
            f(commit_error.clone());
        }
        if Instant::now() >= next_probe {
            probe(&mut conn, &ctx);
            next_probe = Instant::now() + PROBE_INTERVAL;
        }
    }
}

/// Answers an accept that is not written.
fn refuse(op: Op, error: StoreError) {
    if let Op::Accept { reply, .. } = op {
        let _ = reply.send(Err(error));
    }
}

/// Checks the database file and writes (and removes) a row of `events` in a transaction of its
/// own, as an accept would, recording the outcome for readiness.
fn probe(conn: &mut Connection, ctx: &Ctx) {
    let _ = ctx.health.check_file();
    let written = conn.busy_timeout(ctx.commit_timeout).and_then(|()| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO events (id, source, received_at, headers, body, routed) VALUES ('hookyard-probe', '', 0, '[]', x'', 0)",
        )?
        .execute([])?;
        tx.prepare_cached("DELETE FROM events WHERE id = 'hookyard-probe'")?.execute([])?;
        tx.commit()
    });
    match written {
        Ok(()) => ctx.health.record_write(Ok(())),
        Err(e) => ctx.health.record_write(Err(&e.to_string())),
    }
}

/// Writes one group in one transaction, taking the write lock first. Accepts whose deadline passed
/// while the lock was awaited go to `expired`, unwritten. Accepts and settles first run without
/// savepoints (a savepoint per operation journals every page it touches a second time); should
/// one fail, the transaction is rolled back and they run again, each in its own savepoint, so a
/// failing operation does not undo the others. Administrative jobs (rare, and not repeatable)
/// always get their own savepoint, after the accepts and settles of their group (which arrived
/// concurrently, so no caller can tell the order). Returns whether the group was run again.
fn write_group(
    conn: &mut Connection,
    ops: &mut Vec<Op>,
    expired: &mut Vec<Op>,
    jobs: &mut Vec<Job>,
    written: &mut Vec<Written>,
    deferred: &mut Vec<Deferred>,
) -> rusqlite::Result<bool> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = Instant::now();
    expired.extend(ops.extract_if(.., |op| matches!(op, Op::Accept { deadline, .. } if *deadline <= now)));
    let mut clean = true;
    for op in ops.iter() {
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
        tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for op in ops.iter() {
            written.push(in_savepoint(&mut tx, |sp| {
                let w = write_one(sp, op);
                let ok = w.is_ok();
                (w, ok)
            })?);
        }
    }
    // in arrival order; a job not taken when an error returns stays in `jobs`
    jobs.reverse();
    while let Some(job) = jobs.pop() {
        let mut sp = match tx.savepoint() {
            Ok(sp) => sp,
            Err(e) => {
                jobs.push(job);
                return Err(e);
            }
        };
        let (ok, reply) = job(Some(&sp));
        deferred.push(reply);
        if ok {
            sp.commit()?;
        } else {
            sp.rollback()?;
            sp.finish()?;
        }
    }
    tx.commit()?;
    Ok(!clean)
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
        Op::Settle { delivery_id, attempt, settle, error, advance, steps, .. } => {
            Written::Settle(settle_delivery(t, delivery_id.0, attempt, settle, error.as_deref()).and_then(|()| {
                decide_steps(t, delivery_id.0, steps, now_ms())?;
                match advance {
                    Some((destination, key)) => advance_key(t, destination, key, now_ms()),
                    None => Ok(None),
                }
            }))
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
                    Some(Written::Accept(Err(e))) => Err(db(e)),
                    Some(Written::Accept(Ok(AcceptRows::Duplicate { original }))) => {
                        Ok(Accepted::Duplicate { original })
                    }
                    Some(Written::Accept(Ok(AcceptRows::Stored(ids)))) => {
                        Ok(Accepted::Stored(crate::store::due_now(event, deliveries, ids, None)))
                    }
                    Some(Written::Settle(_)) => unreachable!("written in the order of the operations"),
                };
                let _ = reply.send(res);
            }
            Op::Settle { reply, .. } => {
                let res = match w {
                    None => Err(commit_failed()),
                    Some(Written::Settle(res)) => res.map_err(db),
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
        let original: Option<EventId> = t
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
    let ids = insert_deliveries(t, &ev.id, deliveries, now_ms())?;
    Ok(AcceptRows::Stored(ids))
}

/// Inserts the deliveries planned for an event together (a later step names the one it follows
/// by its index among them); returns each one's id and whether it waits.
pub fn insert_deliveries(
    t: &Connection,
    event_id: &EventId,
    deliveries: &[NewDelivery],
    now: i64,
) -> rusqlite::Result<Vec<(i64, bool)>> {
    let leads = crate::store::leaders(deliveries);
    let mut ids: Vec<(i64, bool)> = Vec::with_capacity(deliveries.len());
    for (d, leads) in deliveries.iter().zip(leads) {
        let parent = d.after.and_then(|i| ids.get(i)).map(|(id, _)| *id);
        ids.push(insert_delivery(t, event_id, d, parent, leads, now)?);
    }
    Ok(ids)
}

/// Inserts a planned delivery (`parent`: the delivery a later step follows; `leads`: later steps
/// follow it); returns its id and whether it waits for its turn (an ordered delivery whose key
/// has a pending or held delivery already, a later step, one awaiting a batch).
fn insert_delivery(
    t: &Connection,
    event_id: &EventId,
    d: &NewDelivery,
    parent: Option<i64>,
    leads: bool,
    now: i64,
) -> rusqlite::Result<(i64, bool)> {
    let extra = d.headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize"));
    let batched = d.batch && d.failed.is_none();
    let waiting = batched
        || (parent.is_some() && d.failed.is_none())
        || match &d.order {
            Some(o) if d.failed.is_none() => key_taken(t, &d.destination, &o.key)?,
            _ => false,
        };
    t.prepare_cached(
        "INSERT INTO deliveries (event_id, route, destination, msg_id, status, attempts, next_at, created_at, updated_at,
             last_error, order_key, order_block, batch_id, parent_id, leads)
         VALUES (?1, ?2, ?3, ?4, ?6, 0, ?8, ?5, ?5, ?7, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        event_id,
        d.route,
        d.destination,
        d.msg_id,
        now,
        if d.failed.is_some() { "failed" } else { "pending" },
        d.failed,
        if waiting { WAITING } else { now },
        d.order.as_ref().map(|o| &o.key),
        d.order.as_ref().is_some_and(|o| o.block),
        batched.then_some(AWAITING_BATCH),
        parent,
        leads,
    ])?;
    let id = t.last_insert_rowid();
    // a transform's output (or a template's) lives beside the delivery, which every settle rewrites
    if d.body.is_some() || extra.is_some() || d.url.is_some() {
        t.prepare_cached("INSERT INTO delivery_bodies (delivery_id, body, headers, url) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![id, d.body.as_deref(), extra, d.url])?;
    }
    Ok((id, waiting))
}

/// Applies the decisions on the later steps following `parent` (see
/// [`crate::store::Queue::settle_steps`]): only steps still waiting for it change.
pub fn decide_steps(t: &Connection, parent: i64, steps: &[StepDecision], now: i64) -> rusqlite::Result<()> {
    for step in steps {
        let (id, status, reason) = match step {
            StepDecision::Release { id, url, headers, body, context } => {
                let released = t
                    .prepare_cached(
                        "UPDATE deliveries SET next_at = ?3, updated_at = ?3
                         WHERE id = ?1 AND parent_id = ?2 AND status = 'pending' AND next_at = ?4",
                    )?
                    .execute(params![id.0, parent, now, WAITING])?;
                if released > 0 {
                    let headers = headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize"));
                    t.prepare_cached(
                        "INSERT INTO delivery_bodies (delivery_id, body, headers, url, context) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (delivery_id) DO UPDATE SET body = COALESCE(excluded.body, body),
                             headers = COALESCE(excluded.headers, headers), url = COALESCE(excluded.url, url),
                             context = excluded.context",
                    )?
                    .execute(params![id.0, body.as_deref(), headers, url, &context[..]])?;
                }
                continue;
            }
            StepDecision::Skip { id, reason } => (id, "skipped", reason),
            StepDecision::Fail { id, reason } => (id, "failed", reason),
        };
        let ended = t
            .prepare_cached(
                "UPDATE deliveries SET status = ?3, last_error = ?4, updated_at = ?5
                 WHERE id = ?1 AND parent_id = ?2 AND status = 'pending' AND next_at = ?6",
            )?
            .execute(params![id.0, parent, status, reason, now, WAITING])?;
        if ended > 0 {
            skip_steps_after(t, id.0, &format!("the step before it (delivery {}) was not sent: {reason}", id.0), now)?;
        }
    }
    Ok(())
}

/// Skips every later step still waiting in the chain after `delivery`, with `reason`.
pub fn skip_steps_after(t: &Connection, delivery: i64, reason: &str, now: i64) -> rusqlite::Result<usize> {
    t.prepare_cached(
        "WITH RECURSIVE chain(id) AS (
             SELECT id FROM deliveries WHERE parent_id = ?1
             UNION ALL SELECT d.id FROM deliveries d JOIN chain c ON d.parent_id = c.id)
         UPDATE deliveries SET status = 'skipped', last_error = ?2, updated_at = ?3
         WHERE id IN (SELECT id FROM chain) AND status = 'pending' AND next_at = ?4",
    )?
    .execute(params![delivery, reason, now, WAITING])
}

/// Makes the skipped later steps after `delivery` (through skipped ones only) wait for it again:
/// it is being sent again, and its new answer decides them.
pub fn rearm_steps_after(t: &Connection, delivery: i64, now: i64) -> rusqlite::Result<usize> {
    t.prepare_cached(
        "WITH RECURSIVE chain(id) AS (
             SELECT id FROM deliveries WHERE parent_id = ?1 AND status = 'skipped'
             UNION ALL SELECT d.id FROM deliveries d JOIN chain c ON d.parent_id = c.id WHERE d.status = 'skipped')
         UPDATE deliveries SET status = 'pending', next_at = ?3, last_error = NULL, updated_at = ?2
         WHERE id IN (SELECT id FROM chain)",
    )?
    .execute(params![delivery, now, WAITING])
}

/// Whether a key of a destination has a pending delivery (its head, or ones waiting) or a held one.
fn key_taken(t: &Connection, destination: &str, key: &str) -> rusqlite::Result<bool> {
    t.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE destination = ?1 AND order_key = ?2 AND status = 'pending')
             OR EXISTS (SELECT 1 FROM deliveries WHERE destination = ?1 AND order_key = ?2 AND held = 1)",
    )?
    .query_row(params![destination, key], |r| r.get(0))
}

/// Makes the first waiting delivery of a key its head, due at `now`, unless the key has a head
/// (pending, not waiting) or is held. Returns the key's head if it is due at `now` (the one just
/// made head, or one that already was).
pub fn advance_key(t: &Connection, destination: &str, key: &str, now: i64) -> rusqlite::Result<Option<i64>> {
    t.prepare_cached(
        "UPDATE deliveries SET next_at = ?3
         WHERE id = (SELECT MIN(id) FROM deliveries
                     WHERE destination = ?1 AND order_key = ?2 AND status = 'pending' AND next_at = ?4)
           AND NOT EXISTS (SELECT 1 FROM deliveries
                           WHERE destination = ?1 AND order_key = ?2 AND status = 'pending' AND next_at < ?4)
           AND NOT EXISTS (SELECT 1 FROM deliveries WHERE destination = ?1 AND order_key = ?2 AND held = 1)",
    )?
    .execute(params![destination, key, now, WAITING])?;
    t.prepare_cached(
        "SELECT id FROM deliveries
         WHERE destination = ?1 AND order_key = ?2 AND status = 'pending' AND next_at <= ?3
         ORDER BY next_at, id LIMIT 1",
    )?
    .query_row(params![destination, key, now], |r| r.get(0))
    .optional()
}

/// The keys (destination, key) of the ordered deliveries that `selection` (an SQL condition on
/// `deliveries`, with `params`) selects.
pub fn keys_of(
    t: &Connection,
    selection: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut st = t.prepare(&format!(
        "SELECT DISTINCT destination, order_key FROM deliveries WHERE order_key IS NOT NULL AND ({selection})"
    ))?;
    st.query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
}

/// Keys with deliveries waiting but neither a head nor a hold (the process stopped between a
/// head's settle and its key's advance), each advanced. Returns how many keys were. One walk of
/// the pending ordered rows, grouped by key (a key all of whose pending rows wait has no head).
pub fn advance_stalled(t: &Connection, now: i64) -> rusqlite::Result<usize> {
    let keys: Vec<(String, String)> = {
        let mut st = t.prepare_cached(
            "SELECT destination, order_key FROM deliveries
             WHERE status = 'pending' AND order_key IS NOT NULL
             GROUP BY destination, order_key HAVING MIN(next_at) = ?1",
        )?;
        st.query_map([WAITING], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?
    };
    let mut advanced = 0;
    for (destination, key) in &keys {
        // a held key stays as it is
        if advance_key(t, destination, key, now)?.is_some() {
            advanced += 1;
        }
    }
    Ok(advanced)
}

/// See [`crate::store::Queue::form_batch`].
pub fn form_batch(t: &Connection, destination: &str, limits: BatchLimits, now: i64) -> rusqlite::Result<Formation> {
    let rows: Vec<(i64, u64, i64)> = {
        let mut st = t.prepare_cached(
            "SELECT d.id, length(COALESCE(b.body, e.body)), d.created_at
             FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
             WHERE d.destination = ?1 AND d.batch_id = 0 AND d.status = 'pending'
             ORDER BY d.id LIMIT ?2",
        )?;
        st.query_map(params![destination, limits.max_events as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let Some(&(first, _, oldest)) = rows.first() else { return Ok(Formation::Empty) };
    let (members, bytes, full) = crate::store::close_batch(&rows, limits);
    if !full && oldest + limits.max_wait_ms > now {
        return Ok(Formation::NotYet { due_at_ms: oldest + limits.max_wait_ms, awaiting: rows.len() });
    }
    t.prepare_cached(
        "INSERT INTO batches (destination, msg_id, status, attempts, next_at, created_at, updated_at, events, bytes)
         VALUES (?1, '', 'pending', 0, ?2, ?2, ?2, ?3, ?4)",
    )?
    .execute(params![destination, now, members as i64, bytes as i64])?;
    let batch = t.last_insert_rowid();
    t.prepare_cached("UPDATE batches SET msg_id = ?2 WHERE id = ?1")?
        .execute(params![batch, batch_msg_id(destination, batch, first).as_str()])?;
    let mut join = t.prepare_cached("UPDATE deliveries SET batch_id = ?2 WHERE id = ?1")?;
    for (id, _, _) in &rows[..members] {
        join.execute(params![id, batch])?;
    }
    Ok(Formation::Formed { batch, events: members })
}

/// See [`crate::store::Queue::settle_batch`].
pub fn settle_batch(
    t: &Connection,
    batch: i64,
    members: &[crate::store::DeliveryId],
    a: &AttemptRecord,
    s: &Settle,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let next_at = s.next_at_ms();
    let now = now_ms();
    let changed = t
        .prepare_cached(
            "UPDATE batches SET attempts = attempts + 1,
                    status = CASE WHEN status = 'pending' THEN ?2 ELSE status END,
                    next_at = CASE WHEN status = 'pending' THEN ?3 ELSE next_at END,
                    updated_at = ?4, last_status = ?5, last_error = ?6
             WHERE id = ?1",
        )?
        .execute(params![batch, s.status().as_str(), next_at, now, a.status_code, error])?;
    if changed == 0 {
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    // each member as a delivery would be, but a retry keeps it in the batch (never due alone)
    let mut member = t.prepare_cached(
        "UPDATE deliveries SET attempts = attempts + 1,
                status = CASE WHEN status = 'pending' OR ?2 = 'delivered' THEN ?2 ELSE status END,
                updated_at = ?3, last_status = ?4, last_error = ?5
         WHERE id = ?1 AND batch_id = ?6 AND batch_id > 0",
    )?;
    let mut log = t.prepare_cached(
        "INSERT OR REPLACE INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error)
         SELECT id, attempts, ?2, ?3, ?4, ?5, ?6 FROM deliveries WHERE id = ?1",
    )?;
    let response = &a.response[..a.response.len().min(MAX_RESPONSE_KEPT)];
    for id in members {
        if member.execute(params![id.0, s.status().as_str(), now, a.status_code, error, batch])? > 0 {
            log.execute(params![id.0, a.at_ms, a.status_code, a.latency_ms as i64, response, a.error])?;
        }
    }
    Ok(())
}

fn settle_delivery(
    t: &Connection,
    id: i64,
    a: &AttemptRecord,
    s: &Settle,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    let next_at = s.next_at_ms();
    // No RETURNING: SQLite buffers its rows in a temporary table, which made this statement the
    // dearest of the settle. The attempt row reads the new count back instead.
    // Only a pending delivery takes the new state: one an operator cancelled while this attempt
    // was in flight stays cancelled (the attempt is still recorded), unless the attempt delivered it.
    let changed = t
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1,
                    status = CASE WHEN status = 'pending' OR ?2 = 'delivered' THEN ?2 ELSE status END,
                    next_at = CASE WHEN status = 'pending' THEN ?3 ELSE next_at END,
                    held = CASE WHEN status = 'pending' AND order_block = 1 AND ?2 IN ('dead', 'failed') THEN 1 ELSE held END,
                    updated_at = ?4, last_status = ?5, last_error = ?6
             WHERE id = ?1",
        )?
        .execute(params![id, s.status().as_str(), next_at, now_ms(), a.status_code, error])?;
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
