//! The writer: one task that owns no connection of its own but takes one from the pool per group,
//! and commits the accepts and settles of concurrent callers together, with a handful of
//! multi-row statements per group whatever its size (`INSERT … SELECT FROM unnest($arrays)`,
//! `UPDATE … FROM unnest(…)`), so a group of 200 events costs about what one does. Replies are
//! sent only after COMMIT returned.
//!
//! Should a grouped statement fail (a duplicate event id, a settle of a delivery an operator
//! purged), the transaction is rolled back and the group runs again with a savepoint per
//! operation, so a failing operation never undoes the others. Accepts whose deadline passed
//! before their group began are answered with [`StoreError::Timeout`] and not written, so an
//! event refused with `503` does not land afterwards. While no event was written for
//! [`PROBE_INTERVAL`] the writer probes the database (a write, as an accept would do), so
//! readiness follows a database that went away or came back within a second or so.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use super::{describe, pool_error};
use crate::store::health::{PROBE_INTERVAL, WriteHealth};
use crate::store::{
    Accepted, AttemptRecord, DeliveryId, EventId, MAX_GROUP, MAX_RESPONSE_KEPT, NewDelivery, NewEvent, Result, Settle,
    StepDecision, StoreError, WAITING, now_ms,
};

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
        /// What becomes of the later steps that follow it, decided in the same transaction.
        steps: Vec<StepDecision>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Who this instance is to the deliveries it leases, and for how long a lease runs
/// (`storage.postgres.lease`).
#[derive(Clone)]
pub struct Lease {
    pub owner: Arc<str>,
    pub duration: Duration,
}

#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
}

impl Writer {
    pub fn start(pool: Pool, health: Arc<WriteHealth>, commit_timeout: Duration, lease: Lease) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx, health, commit_timeout, lease));
        Writer { tx }
    }

    pub fn send(&self, op: Op) -> Result<()> {
        self.tx.send(op).map_err(|_| StoreError::WriterGone)
    }
}

/// What one accept wrote.
enum AcceptRows {
    Duplicate {
        original: EventId,
    },
    /// The id of each planned delivery, in order.
    Stored(Vec<(i64, bool)>),
}

/// The outcome of each operation of a group, in the order of the group.
type Outcomes = Vec<std::result::Result<Written, String>>;

enum Written {
    Accept(AcceptRows),
    Settle,
}

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Op>,
    health: Arc<WriteHealth>,
    commit_timeout: Duration,
    lease: Lease,
) {
    let mut next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
    loop {
        let first = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
            _ = tokio::time::sleep_until(next_probe) => {
                probe(&pool, &health).await;
                next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
                continue;
            }
        };
        // let the request handlers that are mid-way hand over their events first (as SQLite's
        // writer does), so one commit serves more of them
        tokio::task::yield_now().await;
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let (expired, ops): (Vec<Op>, Vec<Op>) =
            ops.into_iter().partition(|op| matches!(op, Op::Accept { deadline, .. } if *deadline <= now));
        let has_accepts = ops.iter().any(|op| matches!(op, Op::Accept { .. }));
        // the leases of the accepts' deliveries run from no earlier than this
        let leased_until = Instant::now() + lease.duration;
        let committed = write_bounded(&pool, &ops, commit_timeout, &lease).await;
        if let Err(e) = &committed {
            error!(error = %e, "store commit failed; the group's callers get an error");
        }
        if has_accepts || !expired.is_empty() {
            let outcome = match &committed {
                Err(e) => Err(e.as_str()),
                Ok(_) if !expired.is_empty() => Err("events waited longer than storage.commit_timeout"),
                Ok(_) => Ok(()),
            };
            health.record(outcome);
            next_probe = tokio::time::Instant::now() + PROBE_INTERVAL;
        } else if let Err(e) = &committed {
            health.record(Err(e));
        }
        for op in expired {
            if let Op::Accept { reply, .. } = op {
                let _ = reply.send(Err(StoreError::Timeout(commit_timeout)));
            }
        }
        reply(ops, committed, leased_until);
    }
}

/// Writes and removes a row of `events` in a transaction of its own, as an accept would,
/// recording the outcome for readiness.
async fn probe(pool: &Pool, health: &WriteHealth) {
    let written = async {
        let mut client = pool.get().await.map_err(|e| pool_error(e).to_string())?;
        let tx = client.transaction().await.map_err(|e| describe(&e))?;
        tx.batch_execute(
            "INSERT INTO events (id, source, received_at, headers, body, routed) VALUES ('hookyard-probe', '', 0, '[]', '', false);
             DELETE FROM events WHERE id = 'hookyard-probe'",
        )
        .await
        .map_err(|e| describe(&e))?;
        tx.commit().await.map_err(|e| describe(&e))
    };
    match tokio::time::timeout(PROBE_INTERVAL * 5, written).await {
        Ok(Ok(())) => health.record(Ok(())),
        Ok(Err(e)) => health.record(Err(&e)),
        Err(_) => health.record(Err("the database did not answer the writer's probe within 5s")),
    }
}

/// [`write_group`] on a pooled connection, given at most `limit` (a caller waits no longer for
/// its commit). A group still running then (a lock wait, a database that stopped answering) is
/// cancelled on the server and its connection closed, not put back in the pool, so the next
/// group does not queue behind it; its transaction rolls back.
async fn write_bounded(
    pool: &Pool,
    ops: &[Op],
    limit: Duration,
    lease: &Lease,
) -> std::result::Result<Outcomes, String> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let late = || format!("the database did not commit within storage.commit_timeout ({limit:?})");
    let mut client = match tokio::time::timeout(limit, pool.get()).await {
        Ok(got) => got.map_err(|e| pool_error(e).to_string())?,
        Err(_) => return Err(late()),
    };
    let cancel = client.cancel_token();
    let left = limit.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, write_group(&mut client, ops, lease)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            let _ = deadpool_postgres::Object::take(client);
            // best effort, bounded: the server aborts the statement (and so the transaction)
            let _ = tokio::time::timeout(Duration::from_secs(1), cancel.cancel_query(tokio_postgres::NoTls)).await;
            Err(late())
        }
    }
}

/// Writes one group in one transaction: first all operations together; should that fail, again
/// with a savepoint per operation. `Err` when the group as a whole could not be committed.
async fn write_group(
    client: &mut deadpool_postgres::Client,
    ops: &[Op],
    lease: &Lease,
) -> std::result::Result<Outcomes, String> {
    // two settles of one delivery cannot share an UPDATE: such a group runs one by one
    let mut settled: Vec<i64> = ops
        .iter()
        .filter_map(|op| if let Op::Settle { delivery_id, .. } = op { Some(delivery_id.0) } else { None })
        .collect();
    let n = settled.len();
    settled.sort_unstable();
    settled.dedup();
    if settled.len() == n {
        let tx = client.transaction().await.map_err(|e| describe(&e))?;
        match write_ops(&tx, ops, lease).await {
            Ok(outcomes) => {
                tx.commit().await.map_err(|e| describe(&e))?;
                return Ok(outcomes);
            }
            Err(e) if ops.len() == 1 => {
                // nothing else to keep: answer the one operation with its own error
                tx.rollback().await.map_err(|e| describe(&e))?;
                return Ok(vec![Err(describe(&e))]);
            }
            Err(_) => tx.rollback().await.map_err(|e| describe(&e))?,
        }
    }
    let mut tx = client.transaction().await.map_err(|e| describe(&e))?;
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        let sp = tx.savepoint("op").await.map_err(|e| describe(&e))?;
        match write_ops(&sp, std::slice::from_ref(op), lease).await {
            Ok(mut one) => {
                sp.commit().await.map_err(|e| describe(&e))?;
                outcomes.push(one.pop().expect("one outcome per operation"));
            }
            Err(e) => {
                sp.rollback().await.map_err(|e| describe(&e))?;
                outcomes.push(Err(describe(&e)));
            }
        }
    }
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(outcomes)
}

/// Runs every operation of `ops` with grouped statements. Any failing statement fails the lot.
async fn write_ops(
    tx: &Transaction<'_>,
    ops: &[Op],
    lease: &Lease,
) -> std::result::Result<Outcomes, tokio_postgres::Error> {
    let accepts: Vec<(&NewEvent, &[NewDelivery], Option<Duration>)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Accept { event, deliveries, dedupe_window, .. } => Some((event, &deliveries[..], *dedupe_window)),
            Op::Settle { .. } => None,
        })
        .collect();
    let settles: Vec<(&DeliveryId, &AttemptRecord, &Settle, Option<&str>)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Settle { delivery_id, attempt, settle, error, .. } => {
                Some((delivery_id, attempt, settle, error.as_deref()))
            }
            Op::Accept { .. } => None,
        })
        .collect();
    let mut accepted = if accepts.is_empty() { Vec::new() } else { accept_all(tx, &accepts, lease).await? }.into_iter();
    let settled = if settles.is_empty() { Vec::new() } else { settle_all(tx, &settles, lease).await? };
    for (op, outcome) in ops.iter().filter(|op| matches!(op, Op::Settle { .. })).zip(&settled) {
        if let (Op::Settle { delivery_id, steps, .. }, Ok(())) = (op, outcome)
            && !steps.is_empty()
        {
            decide_steps(tx, delivery_id.0, steps, now_ms()).await?;
        }
    }
    let mut settled = settled.into_iter();
    Ok(ops
        .iter()
        .map(|op| match op {
            Op::Accept { .. } => Ok(Written::Accept(accepted.next().expect("one per accept"))),
            Op::Settle { .. } => settled.next().expect("one per settle").map(|()| Written::Settle),
        })
        .collect())
}

/// The outcome of two pipelined statements. When both failed, the one that failed first is the
/// cause: the server then refuses the other only because the transaction is aborted, which would
/// hide why (a lock, a statement timeout).
fn both<A, B>(
    (a, b): (std::result::Result<A, tokio_postgres::Error>, std::result::Result<B, tokio_postgres::Error>),
) -> std::result::Result<(A, B), tokio_postgres::Error> {
    use tokio_postgres::error::SqlState;
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(aborted), Err(cause)) if aborted.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => Err(cause),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Records the events (unless a duplicate) and their deliveries: the dedupe keys first (one
/// insert into the unique `dedupe` table for the group, so two instances accepting one key at
/// once cannot both store it), one id allocation for all deliveries, then one insert per table.
async fn accept_all(
    tx: &Transaction<'_>,
    accepts: &[(&NewEvent, &[NewDelivery], Option<Duration>)],
    lease: &Lease,
) -> std::result::Result<Vec<AcceptRows>, tokio_postgres::Error> {
    // The first event of the group with each (source, key) tries to take the key; a later one
    // within its window is a duplicate of it (or of what the first turns out to duplicate).
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut rows: Vec<Option<AcceptRows>> = Vec::with_capacity(accepts.len());
    let mut of_first: Vec<(usize, usize)> = Vec::new();
    for (i, (ev, _, window)) in accepts.iter().enumerate() {
        rows.push(None);
        let (Some(key), Some(window)) = (ev.dedupe_key.as_deref(), window) else { continue };
        match first.get(&(ev.source.as_str(), key)) {
            Some(&f) if accepts[f].0.received_at_ms >= ev.received_at_ms - window.as_millis() as i64 => {
                of_first.push((i, f))
            }
            Some(_) => {} // outside the window of the first: stored, the key stays the first's
            None => {
                first.insert((ev.source.as_str(), key), i);
            }
        }
    }
    if !first.is_empty() {
        let mut firsts: Vec<usize> = first.values().copied().collect();
        firsts.sort_unstable();
        let source: Vec<&str> = firsts.iter().map(|&i| accepts[i].0.source.as_str()).collect();
        let key: Vec<&str> = firsts.iter().map(|&i| accepts[i].0.dedupe_key.as_deref().unwrap_or_default()).collect();
        let id: Vec<&str> = firsts.iter().map(|&i| accepts[i].0.id.as_str()).collect();
        let at: Vec<i64> = firsts.iter().map(|&i| accepts[i].0.received_at_ms).collect();
        let window: Vec<i64> = firsts.iter().map(|&i| accepts[i].2.map_or(0, |w| w.as_millis() as i64)).collect();
        // A key held within the new event's window stays with its holder; an older one passes to
        // the new event. Rows in key order, so two groups never wait for each other's keys in
        // opposite orders (a deadlock).
        let st = tx
            .prepare_cached(
                "INSERT INTO dedupe (source, key, event_id, received_at, window_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[]) ORDER BY 1, 2
                 ON CONFLICT (source, key) DO UPDATE SET event_id = excluded.event_id,
                    received_at = excluded.received_at, window_ms = excluded.window_ms
                 WHERE dedupe.received_at < excluded.received_at - excluded.window_ms
                 RETURNING event_id",
            )
            .await?;
        let taken: HashSet<String> =
            tx.query(&st, &[&source, &key, &id, &at, &window]).await?.iter().map(|r| r.get(0)).collect();
        let held: Vec<usize> = firsts.into_iter().filter(|&i| !taken.contains(accepts[i].0.id.as_str())).collect();
        if !held.is_empty() {
            // duplicates of a stored event: which one
            let source: Vec<&str> = held.iter().map(|&i| accepts[i].0.source.as_str()).collect();
            let key: Vec<&str> = held.iter().map(|&i| accepts[i].0.dedupe_key.as_deref().unwrap_or_default()).collect();
            let st = tx
                .prepare_cached(
                    "SELECT d.source, d.key, d.event_id FROM dedupe d
                     JOIN unnest($1::text[], $2::text[]) AS k (source, key) ON d.source = k.source AND d.key = k.key",
                )
                .await?;
            let originals: HashMap<(String, String), String> =
                tx.query(&st, &[&source, &key]).await?.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
            for i in held {
                let ev = accepts[i].0;
                let k = (ev.source.clone(), ev.dedupe_key.clone().unwrap_or_default());
                let original = originals.get(&k).map_or_else(|| ev.id.clone(), |o| EventId::from(o.as_str()));
                rows[i] = Some(AcceptRows::Duplicate { original });
            }
        }
    }
    for (i, f) in of_first {
        let original = match &rows[f] {
            Some(AcceptRows::Duplicate { original }) => original.clone(),
            _ => accepts[f].0.id.clone(),
        };
        rows[i] = Some(AcceptRows::Duplicate { original });
    }
    let stored: Vec<usize> = (0..accepts.len()).filter(|&i| rows[i].is_none()).collect();
    // the ids and the events' insert go out together (pipelined: one round trip's wait)
    let n_deliveries: i64 = stored.iter().map(|&i| accepts[i].1.len() as i64).sum();
    let allocate = async {
        if n_deliveries == 0 {
            return Ok(Vec::new());
        }
        let st = tx.prepare_cached("SELECT nextval('deliveries_id_seq') FROM generate_series(1, $1::int8)").await?;
        Ok::<Vec<i64>, tokio_postgres::Error>(tx.query(&st, &[&n_deliveries]).await?.iter().map(|r| r.get(0)).collect())
    };
    let insert_events = async {
        if stored.is_empty() {
            return Ok(());
        }
        let events: Vec<&NewEvent> = stored.iter().map(|&i| accepts[i].0).collect();
        let id: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let source: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        let at: Vec<i64> = events.iter().map(|e| e.received_at_ms).collect();
        let headers: Vec<String> =
            events.iter().map(|e| serde_json::to_string(&e.headers).expect("headers serialize")).collect();
        let body: Vec<&[u8]> = events.iter().map(|e| &e.body[..]).collect();
        let key: Vec<Option<&str>> = events.iter().map(|e| e.dedupe_key.as_deref()).collect();
        let routed: Vec<bool> = stored.iter().map(|&i| !accepts[i].1.is_empty()).collect();
        let st = tx
            .prepare_cached(
                "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[], $6::text[], $7::bool[])",
            )
            .await?;
        tx.execute(&st, &[&id, &source, &at, &headers, &body, &key, &routed]).await.map(drop)
    };
    let (mut ids, ()) = both(tokio::join!(allocate, insert_events))?;
    ids.sort_unstable();
    let planned: Vec<(&EventId, &NewDelivery)> =
        stored.iter().flat_map(|&i| accepts[i].1.iter().map(move |d| (&accepts[i].0.id, d))).collect();
    let waiting = insert_deliveries(tx, &planned, &ids, now_ms(), Some(lease)).await?;
    let mut ids = ids.into_iter().zip(waiting);
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| match row {
            Some(duplicate) => duplicate,
            None => AcceptRows::Stored(ids.by_ref().take(accepts[i].1.len()).collect()),
        })
        .collect())
}

/// Inserts deliveries with the given ids (one per delivery, in order), and the transform outputs
/// of those that have one. Returns, per delivery, whether it waits for its turn in its key's order
/// (see [`crate::store::OrderSpec`]): the keys of ordered deliveries are locked first (advisory
/// locks until commit, taken in one statement in a fixed order, so no two transactions wait for
/// each other), as [`advance_key`] does, so a key's head is decided by one transaction at a time.
/// With a `lease`, the pending ones due now are leased to its owner (an accept's, for its own fast path).
pub async fn insert_deliveries(
    tx: &Transaction<'_>,
    planned: &[(&EventId, &NewDelivery)],
    ids: &[i64],
    now: i64,
    lease: Option<&Lease>,
) -> std::result::Result<Vec<bool>, tokio_postgres::Error> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let event: Vec<&str> = planned.iter().map(|(e, _)| e.as_str()).collect();
    let route: Vec<&str> = planned.iter().map(|(_, d)| &*d.route).collect();
    let destination: Vec<&str> = planned.iter().map(|(_, d)| &*d.destination).collect();
    let msg: Vec<&str> = planned.iter().map(|(_, d)| &*d.msg_id).collect();
    let status: Vec<&str> =
        planned.iter().map(|(_, d)| if d.failed.is_some() { "failed" } else { "pending" }).collect();
    let failed: Vec<Option<&str>> = planned.iter().map(|(_, d)| d.failed.as_deref()).collect();
    let owner: Option<&str> = lease.map(|l| &*l.owner);
    let lease_ms: i64 = lease.map_or(0, |l| l.duration.as_millis() as i64);
    let mut waiting = vec![false; planned.len()];
    // a later step's parent: `after` counts among its own event's deliveries, which are adjacent
    let mut parent: Vec<Option<i64>> = Vec::with_capacity(planned.len());
    let mut leads = vec![false; planned.len()];
    let mut start = 0;
    for (i, (event, d)) in planned.iter().enumerate() {
        if i > 0 && planned[i - 1].0 != *event {
            start = i;
        }
        parent.push(d.after.map(|a| ids[start + a]));
        if let Some(a) = d.after {
            leads[start + a] = true;
        }
    }
    if planned.iter().all(|(_, d)| d.order.is_none() && !d.batch && d.after.is_none()) {
        let st = tx
            .prepare_cached(
                "INSERT INTO deliveries (id, event_id, route, destination, msg_id, status, attempts, next_at, created_at,
                     updated_at, last_error, lease_owner, lease_until)
                 SELECT u.id, u.event_id, u.route, u.destination, u.msg_id, u.status, 0, $7, $7, $7, u.failed,
                     CASE WHEN u.status = 'pending' THEN $9::text END,
                     CASE WHEN u.status = 'pending' AND $9::text IS NOT NULL THEN (SELECT hookyard_now_ms()) + $10::int8 ELSE 0 END
                 FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[])
                   AS u (id, event_id, route, destination, msg_id, status, failed)",
            )
            .await?;
        tx.execute(&st, &[&ids, &event, &route, &destination, &msg, &status, &now, &failed, &owner, &lease_ms]).await?;
    } else {
        let order_key: Vec<Option<&str>> =
            planned.iter().map(|(_, d)| d.order.as_ref().map(|o| o.key.as_str())).collect();
        let block: Vec<bool> = planned.iter().map(|(_, d)| d.order.as_ref().is_some_and(|o| o.block)).collect();
        let batch: Vec<bool> = planned.iter().map(|(_, d)| d.batch).collect();
        // a second delivery of one key in this batch waits for the first (the statement's
        // EXISTS does not see the rows it inserts itself)
        let mut seen = HashSet::new();
        let must_wait: Vec<bool> = planned
            .iter()
            .map(|(_, d)| match &d.order {
                Some(o) if d.failed.is_none() => !seen.insert((&*d.destination, o.key.as_str())),
                _ => false,
            })
            .collect();
        lock_keys(tx, seen.into_iter()).await?;
        let st = tx
            .prepare_cached(
                "WITH u AS (
                     SELECT u.*, (u.status = 'pending' AND u.batch) AS batched,
                            (u.status = 'pending' AND (u.batch OR u.parent_id IS NOT NULL)) OR (u.order_key IS NOT NULL AND u.status = 'pending' AND (u.must_wait
                         OR EXISTS (SELECT 1 FROM deliveries o WHERE o.destination = u.destination
                                      AND o.order_key = u.order_key AND o.status = 'pending')
                         OR EXISTS (SELECT 1 FROM deliveries o WHERE o.destination = u.destination
                                      AND o.order_key = u.order_key AND o.held))) AS wait
                     FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[],
                                 $11::text[], $12::bool[], $13::bool[], $15::bool[], $16::int8[], $17::bool[])
                       AS u (id, event_id, route, destination, msg_id, status, failed, order_key, block, must_wait, batch,
                             parent_id, leads)
                 )
                 INSERT INTO deliveries (id, event_id, route, destination, msg_id, status, attempts, next_at, created_at,
                     updated_at, last_error, lease_owner, lease_until, order_key, order_block, batch_id, parent_id, leads)
                 SELECT u.id, u.event_id, u.route, u.destination, u.msg_id, u.status, 0,
                     CASE WHEN u.wait THEN $14::int8 ELSE $7 END, $7, $7, u.failed,
                     CASE WHEN u.status = 'pending' AND NOT u.wait THEN $9::text END,
                     CASE WHEN u.status = 'pending' AND NOT u.wait AND $9::text IS NOT NULL
                          THEN (SELECT hookyard_now_ms()) + $10::int8 ELSE 0 END,
                     u.order_key, u.block, CASE WHEN u.batched THEN 0 END, u.parent_id, u.leads
                 FROM u
                 RETURNING id, next_at = $14::int8",
            )
            .await?;
        let rows = tx
            .query(
                &st,
                &[
                    &ids,
                    &event,
                    &route,
                    &destination,
                    &msg,
                    &status,
                    &now,
                    &failed,
                    &owner,
                    &lease_ms,
                    &order_key,
                    &block,
                    &must_wait,
                    &WAITING,
                    &batch,
                    &parent,
                    &leads,
                ],
            )
            .await?;
        let waits: HashMap<i64, bool> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for (w, id) in waiting.iter_mut().zip(ids) {
            *w = waits.get(id).copied().unwrap_or(false);
        }
    }
    // a transform's output lives beside the delivery, which every settle rewrites
    let with_body: Vec<(i64, &NewDelivery)> = planned
        .iter()
        .zip(ids)
        .filter(|((_, d), _)| d.body.is_some() || d.headers.is_some() || d.url.is_some())
        .map(|((_, d), id)| (*id, *d))
        .collect();
    if !with_body.is_empty() {
        let id: Vec<i64> = with_body.iter().map(|(id, _)| *id).collect();
        let body: Vec<Option<&[u8]>> = with_body.iter().map(|(_, d)| d.body.as_deref()).collect();
        let headers: Vec<Option<String>> = with_body
            .iter()
            .map(|(_, d)| d.headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize")))
            .collect();
        let url: Vec<Option<&str>> = with_body.iter().map(|(_, d)| d.url.as_deref()).collect();
        let st = tx
            .prepare_cached(
                "INSERT INTO delivery_bodies (delivery_id, body, headers, url)
                 SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::text[])",
            )
            .await?;
        tx.execute(&st, &[&id, &body, &headers, &url]).await?;
    }
    Ok(waiting)
}

/// Applies the decisions on the later steps following `parent` (see
/// [`crate::store::Queue::settle_steps`]): only steps still waiting for it change.
pub async fn decide_steps(
    tx: &Transaction<'_>,
    parent: i64,
    steps: &[StepDecision],
    now: i64,
) -> std::result::Result<(), tokio_postgres::Error> {
    for step in steps {
        let (id, status, reason) = match step {
            StepDecision::Release { id, url, headers, body, context } => {
                let st = tx
                    .prepare_cached(
                        "UPDATE deliveries SET next_at = $3, updated_at = $3
                         WHERE id = $1 AND parent_id = $2 AND status = 'pending' AND next_at = $4",
                    )
                    .await?;
                if tx.execute(&st, &[&id.0, &parent, &now, &WAITING]).await? > 0 {
                    let headers = headers.as_ref().map(|h| serde_json::to_string(h).expect("headers serialize"));
                    let st = tx
                        .prepare_cached(
                            "INSERT INTO delivery_bodies (delivery_id, body, headers, url, context) VALUES ($1, $2, $3, $4, $5)
                             ON CONFLICT (delivery_id) DO UPDATE SET body = COALESCE(excluded.body, delivery_bodies.body),
                                 headers = COALESCE(excluded.headers, delivery_bodies.headers),
                                 url = COALESCE(excluded.url, delivery_bodies.url), context = excluded.context",
                        )
                        .await?;
                    tx.execute(&st, &[&id.0, &body.as_deref(), &headers, url, &&context[..]]).await?;
                }
                continue;
            }
            StepDecision::Skip { id, reason } => (id, "skipped", reason),
            StepDecision::Fail { id, reason } => (id, "failed", reason),
        };
        let st = tx
            .prepare_cached(
                "UPDATE deliveries SET status = $3, last_error = $4, updated_at = $5
                 WHERE id = $1 AND parent_id = $2 AND status = 'pending' AND next_at = $6",
            )
            .await?;
        if tx.execute(&st, &[&id.0, &parent, &status, reason, &now, &WAITING]).await? > 0 {
            let why = format!("the step before it (delivery {}) was not sent: {reason}", id.0);
            skip_steps_after(tx, id.0, &why, now).await?;
        }
    }
    Ok(())
}

/// Skips every later step still waiting in the chain after `delivery`, with `reason`.
pub async fn skip_steps_after(
    tx: &Transaction<'_>,
    delivery: i64,
    reason: &str,
    now: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let st = tx
        .prepare_cached(
            "WITH RECURSIVE chain(id) AS (
                 SELECT id FROM deliveries WHERE parent_id = $1
                 UNION ALL SELECT d.id FROM deliveries d JOIN chain c ON d.parent_id = c.id)
             UPDATE deliveries SET status = 'skipped', last_error = $2, updated_at = $3
             WHERE id IN (SELECT id FROM chain) AND status = 'pending' AND next_at = $4",
        )
        .await?;
    tx.execute(&st, &[&delivery, &reason, &now, &WAITING]).await
}

/// Makes the skipped later steps after `delivery` (through skipped ones only) wait for it again.
pub async fn rearm_steps_after(
    tx: &Transaction<'_>,
    delivery: i64,
    now: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let st = tx
        .prepare_cached(
            "WITH RECURSIVE chain(id) AS (
                 SELECT id FROM deliveries WHERE parent_id = $1 AND status = 'skipped'
                 UNION ALL SELECT d.id FROM deliveries d JOIN chain c ON d.parent_id = c.id WHERE d.status = 'skipped')
             UPDATE deliveries SET status = 'pending', next_at = $3, last_error = NULL, updated_at = $2,
                 lease_owner = NULL, lease_until = 0
             WHERE id IN (SELECT id FROM chain)",
        )
        .await?;
    tx.execute(&st, &[&delivery, &now, &WAITING]).await
}

/// The advisory lock of an order key (the whole database's lock space: a collision only makes
/// two keys wait for each other).
fn key_lock(destination: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"hookyard-order\0")
        .chain_update(destination.as_bytes())
        .chain_update(b"\0")
        .chain_update(key.as_bytes())
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Locks order keys until the transaction ends, in ascending order of their locks: transactions
/// that lock several keys never wait for each other in a cycle.
async fn lock_keys<'a>(
    tx: &Transaction<'_>,
    keys: impl Iterator<Item = (&'a str, &'a str)>,
) -> std::result::Result<(), tokio_postgres::Error> {
    let mut locks: Vec<i64> = keys.map(|(d, k)| key_lock(d, k)).collect();
    if locks.is_empty() {
        return Ok(());
    }
    locks.sort_unstable();
    locks.dedup();
    let st = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest($1::int8[]) AS k ORDER BY 1) AS s")
        .await?;
    tx.execute(&st, &[&locks]).await.map(drop)
}

/// Makes the first delivery waiting for its turn in a key's order its head (due at `now`), unless
/// the key has a pending head or a held one, under the key's lock (see [`insert_deliveries`]).
/// Returns the key's head if it is due at `now`.
pub async fn advance_key(
    tx: &Transaction<'_>,
    destination: &str,
    key: &str,
    now: i64,
) -> std::result::Result<Option<i64>, tokio_postgres::Error> {
    lock_keys(tx, std::iter::once((destination, key))).await?;
    let st = tx
        .prepare_cached(
            "WITH promoted AS (
                 UPDATE deliveries SET next_at = $3
                 WHERE id = (SELECT MIN(id) FROM deliveries
                             WHERE destination = $1 AND order_key = $2 AND status = 'pending' AND next_at = $4)
                   AND NOT EXISTS (SELECT 1 FROM deliveries
                                   WHERE destination = $1 AND order_key = $2 AND status = 'pending' AND next_at < $4)
                   AND NOT EXISTS (SELECT 1 FROM deliveries WHERE destination = $1 AND order_key = $2 AND held)
                 RETURNING id
             )
             SELECT id FROM promoted
             UNION ALL
             (SELECT id FROM deliveries
              WHERE destination = $1 AND order_key = $2 AND status = 'pending' AND next_at <= $3
              ORDER BY next_at, id LIMIT 1)
             LIMIT 1",
        )
        .await?;
    Ok(tx.query_opt(&st, &[&destination, &key, &now, &WAITING]).await?.map(|r| r.get(0)))
}

/// Records the attempts and the deliveries' new states: one update for all (only a pending
/// delivery takes the new state; a cancelled one stays cancelled unless this attempt delivered
/// it; this instance's lease on it ends, another's is left alone) and the insert of the attempt
/// rows numbered from the updated rows, in one statement. A settle of an unknown delivery is an
/// error of its own. The deliveries are distinct (see [`write_group`]).
async fn settle_all(
    tx: &Transaction<'_>,
    settles: &[(&DeliveryId, &AttemptRecord, &Settle, Option<&str>)],
    lease: &Lease,
) -> std::result::Result<Vec<std::result::Result<(), String>>, tokio_postgres::Error> {
    let id: Vec<i64> = settles.iter().map(|s| s.0.0).collect();
    let status: Vec<&str> = settles.iter().map(|s| s.2.status().as_str()).collect();
    let next_at: Vec<i64> = settles.iter().map(|s| s.2.next_at_ms()).collect();
    let code: Vec<Option<i32>> = settles.iter().map(|s| s.1.status_code.map(i32::from)).collect();
    let error: Vec<Option<&str>> = settles.iter().map(|s| s.3).collect();
    let at: Vec<i64> = settles.iter().map(|s| s.1.at_ms).collect();
    let latency: Vec<i64> = settles.iter().map(|s| s.1.latency_ms as i64).collect();
    let response: Vec<&[u8]> = settles
        .iter()
        .map(|s| {
            let r = &s.1.response;
            &r[..r.len().min(MAX_RESPONSE_KEPT)]
        })
        .collect();
    let a_error: Vec<Option<&str>> = settles.iter().map(|s| s.1.error.as_deref()).collect();
    // One statement: the attempt row is numbered from the count the update returns. (Two
    // pipelined statements raced: `join!` may send the insert first, which then read the old
    // count and overwrote the previous attempt's row.)
    let st = tx
        .prepare_cached(
            "WITH u AS (
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int4[], $5::text[],
                                      $8::int8[], $9::int8[], $10::bytea[], $11::text[])
                   AS u (id, status, next_at, code, error, at, latency, response, a_error)
             ), updated AS (
                 UPDATE deliveries d SET attempts = d.attempts + 1,
                        status = CASE WHEN d.status = 'pending' OR u.status = 'delivered' THEN u.status ELSE d.status END,
                        next_at = CASE WHEN d.status = 'pending' THEN u.next_at ELSE d.next_at END,
                        held = d.held OR (d.status = 'pending' AND d.order_block AND u.status IN ('dead', 'failed')),
                        updated_at = $6, last_status = u.code, last_error = u.error,
                        lease_owner = CASE WHEN d.lease_owner = $7 THEN NULL ELSE d.lease_owner END,
                        lease_until = CASE WHEN d.lease_owner = $7 THEN 0 ELSE d.lease_until END
                 FROM u WHERE d.id = u.id
                 RETURNING d.id, d.attempts
             )
             INSERT INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error)
             SELECT updated.id, updated.attempts, u.at, u.code, u.latency, u.response, u.a_error
             FROM updated JOIN u ON u.id = updated.id
             ON CONFLICT (delivery_id, n) DO UPDATE SET at = excluded.at, status_code = excluded.status_code,
                latency_ms = excluded.latency_ms, response = excluded.response, error = excluded.error
             RETURNING delivery_id",
        )
        .await?;
    let found: HashSet<i64> = tx
        .query(
            &st,
            &[&id, &status, &next_at, &code, &error, &now_ms(), &&*lease.owner, &at, &latency, &response, &a_error],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(id.iter().map(|i| if found.contains(i) { Ok(()) } else { Err(format!("no delivery {i}")) }).collect())
}

/// Tells each caller its outcome (an error for all if the group could not be committed); an
/// accept's deliveries are leased to this instance until `leased_until`.
fn reply(ops: Vec<Op>, committed: std::result::Result<Outcomes, String>, leased_until: Instant) {
    let (mut outcomes, commit_error) = match committed {
        Ok(outcomes) => (outcomes.into_iter(), None),
        Err(e) => (Vec::new().into_iter(), Some(e)),
    };
    for op in ops {
        let outcome = match &commit_error {
            Some(e) => Err(StoreError::Commit(e.clone())),
            None => outcomes.next().expect("one outcome per operation").map_err(StoreError::Backend),
        };
        match op {
            Op::Accept { event, deliveries, reply, .. } => {
                let _ = reply.send(outcome.map(|w| match w {
                    Written::Accept(AcceptRows::Duplicate { original }) => Accepted::Duplicate { original },
                    Written::Accept(AcceptRows::Stored(ids)) => {
                        Accepted::Stored(crate::store::due_now(event, deliveries, ids, Some(leased_until)))
                    }
                    Written::Settle => unreachable!("outcomes are in the order of the operations"),
                }));
            }
            Op::Settle { reply, .. } => {
                let _ = reply.send(outcome.map(|_| ()));
            }
        }
    }
}
