//! Inspection and operator actions on PostgreSQL, each on a pooled connection (the writes in a
//! transaction of their own): listing and cursor pages, one event in full, replays,
//! per-destination figures, pauses, cancels and dead-letter purges with their count-only twins.
//! The statements are SQLite's (`sqlite/inspect.rs`) in PostgreSQL's dialect: arrays where
//! SQLite takes JSON lists.

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{PgStore, db};
use crate::store::cluster::Signal;
use crate::store::{
    AttemptRow, Cancellation, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryRef, DeliveryRow, DeliverySelection,
    DeliveryStatus, DestinationName, DestinationStats, EventDetail, EventId, ExportFilter, ExportedEvent, Inspect,
    Purged, Queue, RawEvent, Result, StoreError, WAITING, now_ms, step_refusal,
};

/// The pending deliveries a selection names (`$1`: delivery ids, NULL when selecting by filter,
/// `$2`: event ids, `$3` destination, `$4` source, `$5` since).
const SELECTED: &str = "d.status = 'pending'
     AND ($1::int8[] IS NULL OR d.id = ANY($1::int8[]) OR d.event_id = ANY($2::text[]))
     AND ($3::text IS NULL OR d.destination = $3::text)
     AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.source = $4::text))
     AND d.created_at >= COALESCE($5::int8, 0)";

/// The dead letters a purge names (`$1` destination, `$2` updated before).
const DEAD: &str = "status = 'dead' AND ($1::text IS NULL OR destination = $1::text)
     AND updated_at < COALESCE($2::int8, 9223372036854775807)";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts,
     d.next_at, d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at, d.order_key, d.held,
     d.batch_id, (SELECT bt.msg_id FROM batches bt WHERE bt.id = d.batch_id), d.parent_id,
     (SELECT bb.url FROM delivery_bodies bb WHERE bb.delivery_id = d.id)";

/// The statement parameters of a selection.
struct Selected {
    numbers: Option<Vec<i64>>,
    events: Vec<String>,
    destination: Option<String>,
    source: Option<String>,
    since: Option<i64>,
}

impl Selected {
    fn of(s: &DeliverySelection) -> Selected {
        let mut numbers = Vec::new();
        let mut events = Vec::new();
        for id in &s.ids {
            match id {
                DeliveryRef::Delivery(n) => numbers.push(n.0),
                DeliveryRef::Event(e) => events.push(e.as_str().to_string()),
            }
        }
        Selected {
            numbers: (!s.ids.is_empty()).then_some(numbers),
            events,
            destination: s.destination.as_ref().map(|d| d.to_string()),
            source: s.source.clone(),
            since: s.since_ms,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [&self.numbers, &self.events, &self.destination, &self.source, &self.since]
    }
}

/// Ids the selection names that match no delivery at all (pending or not).
async fn unknown_ids(c: &impl tokio_postgres::GenericClient, ids: &[DeliveryRef]) -> Result<Vec<DeliveryRef>> {
    let mut unknown = Vec::new();
    for id in ids {
        let row = match id {
            DeliveryRef::Delivery(n) => {
                c.query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE id = $1)", &[&n.0]).await
            }
            DeliveryRef::Event(e) => {
                c.query_one("SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_id = $1)", &[&e.as_str()]).await
            }
        };
        if !row.map_err(db)?.get::<_, bool>(0) {
            unknown.push(id.clone());
        }
    }
    Ok(unknown)
}

fn not_found(unknown: Vec<DeliveryRef>) -> StoreError {
    let unknown: Vec<String> = unknown.iter().map(DeliveryRef::to_string).collect();
    StoreError::NotFound(format!("no deliveries for: {}", unknown.join(", ")))
}

fn opt_name(d: &Option<DestinationName>) -> Option<&str> {
    d.as_deref()
}

impl Inspect for PgStore {
    async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS}
                 FROM deliveries d JOIN events e ON e.id = d.event_id
                   LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                 WHERE ($1::text IS NULL OR d.status = $1::text) AND ($2::text IS NULL OR d.destination = $2::text)
                   AND ($3::text IS NULL OR e.source = $3::text)
                   AND d.created_at >= COALESCE($4::int8, 0) AND d.created_at <= COALESCE($5::int8, 9223372036854775807)
                   AND ($6::int8 IS NULL OR d.id < $6::int8) AND ($8::text IS NULL OR d.msg_id = $8::text)
                 ORDER BY d.id DESC LIMIT $7"
            ))
            .await
            .map_err(db)?;
        let status = f.status.map(DeliveryStatus::as_str);
        let before = f.before_id.map(|b| b.0);
        let rows = c
            .query(
                &st,
                &[
                    &status,
                    &opt_name(&f.destination),
                    &f.source,
                    &f.since_ms,
                    &f.until_ms,
                    &before,
                    &(f.limit as i64),
                    &f.msg_id,
                ],
            )
            .await
            .map_err(db)?;
        rows.iter().map(delivery_row).collect()
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>> {
        let c = self.conn().await?;
        let Some(r) = c
            .query_opt(
                "SELECT id, source, received_at, routed, dedupe_key, headers, body FROM events WHERE id = $1",
                &[&id.as_str()],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let mut ev = EventDetail {
            id: EventId::from(r.get::<_, &str>(0)),
            source: r.get(1),
            received_at_ms: r.get(2),
            routed: r.get(3),
            dedupe_key: r.get(4),
            headers: serde_json::from_str(r.get(5)).unwrap_or_default(),
            body: Bytes::copy_from_slice(r.get(6)),
            deliveries: Vec::new(),
        };
        let rows = c
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS}, b.body
                     FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                       LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                     WHERE d.event_id = $1 ORDER BY d.id"
                ),
                &[&id.as_str()],
            )
            .await
            .map_err(db)?;
        let attempts = c
            .query(
                "SELECT a.delivery_id, a.n, a.at, a.status_code, a.latency_ms, a.response, a.error
                 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.event_id = $1
                 ORDER BY a.delivery_id, a.n",
                &[&id.as_str()],
            )
            .await
            .map_err(db)?;
        for r in &rows {
            let row = delivery_row(r)?;
            let attempt_log = attempts
                .iter()
                .filter(|a| a.get::<_, i64>(0) == row.id.0)
                .map(|a| AttemptRow {
                    n: a.get::<_, i32>(1).max(0) as u32,
                    at_ms: a.get(2),
                    status_code: a.get::<_, Option<i32>>(3).map(|c| c as u16),
                    latency_ms: a.get::<_, i64>(4).max(0) as u64,
                    response: Bytes::copy_from_slice(a.get::<_, Option<&[u8]>>(5).unwrap_or_default()),
                    error: a.get(6),
                })
                .collect();
            let transformed_body = r.get::<_, Option<&[u8]>>(22).map(Bytes::copy_from_slice);
            ev.deliveries.push(DeliveryDetail { delivery: row, transformed_body, attempt_log });
        }
        Ok(Some(ev))
    }

    async fn raw_event(&self, id: EventId) -> Result<Option<RawEvent>> {
        let c = self.conn().await?;
        let row = c
            .query_opt("SELECT source, received_at, headers, body FROM events WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(db)?;
        Ok(row.map(|r| RawEvent {
            source: r.get(0),
            received_at_ms: r.get(1),
            headers: serde_json::from_str(r.get(2)).unwrap_or_default(),
            body: Bytes::copy_from_slice(r.get(3)),
        }))
    }

    async fn export_events(&self, f: ExportFilter) -> Result<Vec<ExportedEvent>> {
        let c = self.conn().await?;
        let (after_at, after_id) = f.after.map(|a| (a.received_at_ms, a.id.as_str().to_string())).unzip();
        let route = f.route.as_ref().map(|r| r.as_str());
        let status = f.status.map(DeliveryStatus::as_str);
        // ids compared and sorted bytewise (`C`), as SQLite does, whatever the database's collation;
        // one bound from the cursor's time and the range, so the scan of the index on received_at
        // starts at the cursor
        let (range, cursor, order) = if f.newest_first {
            (
                "e.received_at >= COALESCE($2::int8, -9223372036854775808)
                 AND e.received_at <= LEAST($3::int8 - 1, $5::int8, 9223372036854775807)",
                r#"($5::int8 IS NULL OR e.received_at < $5::int8 OR e.id COLLATE "C" < $6::text)"#,
                r#"e.received_at DESC, e.id COLLATE "C" DESC"#,
            )
        } else {
            (
                "e.received_at >= GREATEST($2::int8, $5::int8, -9223372036854775808)
                 AND e.received_at < COALESCE($3::int8, 9223372036854775807)",
                r#"($5::int8 IS NULL OR e.received_at > $5::int8 OR e.id COLLATE "C" > $6::text)"#,
                r#"e.received_at, e.id COLLATE "C""#,
            )
        };
        let rows = c
            .query(
                &format!(
                    "SELECT e.id, e.source, e.received_at, e.headers, e.body FROM events e
                     WHERE ($1::text IS NULL OR e.source = $1::text) AND {range}
                       AND ($4::text IS NULL AND $8::text IS NULL AND $9::text IS NULL OR EXISTS (
                            SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND ($4::text IS NULL OR d.route = $4::text)
                              AND ($8::text IS NULL OR d.destination = $8::text) AND ($9::text IS NULL OR d.status = $9::text)))
                       AND {cursor}
                     ORDER BY {order} LIMIT $7"
                ),
                &[
                    &f.source,
                    &f.since_ms,
                    &f.until_ms,
                    &route,
                    &after_at,
                    &after_id,
                    &(f.limit as i64),
                    &opt_name(&f.destination),
                    &status,
                ],
            )
            .await
            .map_err(db)?;
        let mut events: Vec<ExportedEvent> = rows
            .iter()
            .map(|r| ExportedEvent {
                id: EventId::from(r.get::<_, &str>(0)),
                source: r.get(1),
                received_at_ms: r.get(2),
                headers: serde_json::from_str(r.get(3)).unwrap_or_default(),
                body: Bytes::copy_from_slice(r.get(4)),
                deliveries: Vec::new(),
            })
            .collect();
        if f.deliveries && !events.is_empty() {
            let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
            let rows = c
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                           LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                         WHERE d.event_id = ANY($1::text[]) ORDER BY d.id"
                    ),
                    &[&ids],
                )
                .await
                .map_err(db)?;
            let mut by_event: std::collections::HashMap<EventId, Vec<DeliveryRow>> = Default::default();
            for r in &rows {
                let row = delivery_row(r)?;
                by_event.entry(row.event_id.clone()).or_default().push(row);
            }
            for e in &mut events {
                e.deliveries = by_event.remove(&e.id).unwrap_or_default();
            }
        }
        Ok(events)
    }

    async fn replay(&self, ids: Vec<DeliveryRef>) -> Result<usize> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let mut n = 0;
        let mut unknown = Vec::new();
        let now = now_ms();
        let mut keys = Vec::new();
        // a later step never sent has no request without the answer of the step before it
        let mut refused = Vec::new();
        for id in &ids {
            let DeliveryRef::Delivery(num) = id else { continue };
            let row = tx
                .query_opt(
                    "SELECT d.parent_id, d.status FROM deliveries d LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                     WHERE d.id = $1 AND d.parent_id IS NOT NULL AND b.context IS NULL",
                    &[&num.0],
                )
                .await
                .map_err(db)?;
            if let Some(r) = row {
                refused.push(step_refusal(num.0, r.get(0), r.get(1)));
            }
        }
        if !refused.is_empty() {
            return Err(StoreError::Refused(refused.join("; ")));
        }
        for id in &ids {
            let rows = match id {
                DeliveryRef::Delivery(num) => {
                    tx.query(
                        &format!(
                            "UPDATE deliveries SET {} WHERE id = $1 RETURNING destination, order_key",
                            replayed("$2", "$3")
                        ),
                        &[&num.0, &now, &WAITING],
                    )
                    .await
                }
                // an event's later steps wait for the steps before them again
                DeliveryRef::Event(e) => {
                    tx.query(
                        &format!(
                            "UPDATE deliveries SET {} WHERE event_id = $1 AND parent_id IS NULL RETURNING destination, order_key",
                            replayed("$2", "$3")
                        ),
                        &[&e.as_str(), &now, &WAITING],
                    )
                    .await
                }
            }
            .map_err(db)?;
            let steps = match id {
                DeliveryRef::Event(e) => tx
                    .execute(
                        "UPDATE deliveries SET status = 'pending', next_at = $3, updated_at = $2, last_error = NULL,
                             lease_owner = NULL, lease_until = 0
                         WHERE event_id = $1 AND parent_id IS NOT NULL",
                        &[&e.as_str(), &now, &WAITING],
                    )
                    .await
                    .map_err(db)?,
                // its skipped later steps wait for its new answer
                DeliveryRef::Delivery(num) => super::writer::rearm_steps_after(&tx, num.0, now).await.map_err(db)?,
            };
            if rows.is_empty() && steps == 0 {
                unknown.push(id.clone());
            }
            n += rows.len() + steps as usize;
            keys.extend(order_keys(&rows));
        }
        if !unknown.is_empty() {
            return Err(not_found(unknown)); // rolled back
        }
        self.notify_in(&tx, &Signal::Wake).await?;
        tx.commit().await.map_err(db)?;
        self.advance_all(keys).await?;
        Ok(n)
    }

    async fn replay_dead(&self, destination: Option<DestinationName>, since_ms: Option<i64>) -> Result<usize> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let now = now_ms();
        let rows = tx
            .query(
                &format!(
                    "UPDATE deliveries SET {}
                     WHERE status = 'dead' AND ($1::text IS NULL OR destination = $1::text) AND updated_at >= COALESCE($2::int8, 0)
                     RETURNING destination, order_key, id, leads",
                    replayed("$3", "$4")
                ),
                &[&opt_name(&destination), &since_ms, &now, &WAITING],
            )
            .await
            .map_err(db)?;
        // their skipped later steps wait for their new answers
        for r in rows.iter().filter(|r| r.get::<_, bool>(3)) {
            super::writer::rearm_steps_after(&tx, r.get(2), now).await.map_err(db)?;
        }
        if !rows.is_empty() {
            self.notify_in(&tx, &Signal::Wake).await?;
        }
        tx.commit().await.map_err(db)?;
        drop(c);
        self.advance_all(order_keys(&rows)).await?;
        Ok(rows.len())
    }

    async fn destination_stats(&self, now_ms: i64) -> Result<Vec<DestinationStats>> {
        // walks of the partial indexes (pending, dead, failed rows only), never of the delivered
        // history
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT destination, 'pending', COUNT(*), MIN(CASE WHEN next_at <= $1 THEN next_at END)
                   FROM deliveries WHERE status = 'pending' GROUP BY destination
                 UNION ALL
                 SELECT destination, 'dead', COUNT(*), NULL FROM deliveries WHERE status = 'dead' GROUP BY destination
                 UNION ALL
                 SELECT destination, 'failed', COUNT(*), NULL FROM deliveries WHERE status = 'failed' GROUP BY destination
                 UNION ALL
                 SELECT destination, 'held', COUNT(DISTINCT order_key), NULL FROM deliveries WHERE held GROUP BY destination",
            )
            .await
            .map_err(db)?;
        let mut by_name = BTreeMap::<DestinationName, DestinationStats>::new();
        for r in c.query(&st, &[&now_ms]).await.map_err(db)? {
            let name = DestinationName::from(r.get::<_, &str>(0));
            let s = by_name.entry(name.clone()).or_insert(DestinationStats {
                destination: name,
                pending: 0,
                oldest_due_ms: 0,
                dead: 0,
                failed: 0,
                held: 0,
            });
            let n = r.get::<_, i64>(2) as u64;
            match r.get::<_, &str>(1) {
                "pending" => {
                    s.pending = n;
                    s.oldest_due_ms = r.get::<_, Option<i64>>(3).map_or(0, |t| (now_ms - t).max(0) as u64);
                }
                "dead" => s.dead = n,
                "held" => s.held = n,
                _ => s.failed = n,
            }
        }
        Ok(by_name.into_values().collect())
    }

    async fn paused(&self) -> Result<Vec<(DestinationName, Option<String>)>> {
        let c = self.conn().await?;
        let rows =
            c.query("SELECT name, reason FROM destination_state WHERE paused ORDER BY name", &[]).await.map_err(db)?;
        Ok(rows.iter().map(|r| (DestinationName::from(r.get::<_, &str>(0)), r.get(1))).collect())
    }

    /// Every instance hears of it at once (and reads the pauses again each poll interval).
    async fn set_paused(&self, destination: &DestinationName, paused: bool, reason: Option<String>) -> Result<()> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute(
            "INSERT INTO destination_state (name, paused, reason, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, reason = excluded.reason, updated_at = excluded.updated_at",
            &[&&**destination, &paused, &reason, &now_ms()],
        )
        .await
        .map_err(db)?;
        let name = destination.to_string();
        self.notify_in(&tx, &if paused { Signal::Paused(name) } else { Signal::Resumed(name) }).await?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn count_cancellable(&self, selection: DeliverySelection) -> Result<usize> {
        let c = self.conn().await?;
        let unknown = unknown_ids(&**c, &selection.ids).await?;
        if !unknown.is_empty() {
            return Err(not_found(unknown));
        }
        let sel = Selected::of(&selection);
        let row = c
            .query_one(&format!("SELECT COUNT(*) FROM deliveries d WHERE {SELECTED}"), &sel.params())
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn cancel(&self, selection: DeliverySelection, by: String, reason: Option<String>) -> Result<usize> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let unknown = unknown_ids(&*tx, &selection.ids).await?;
        if !unknown.is_empty() {
            return Err(not_found(unknown));
        }
        let sel = Selected::of(&selection);
        let now = now_ms();
        // one statement: the rows it cancels are the rows it records (a settle that commits
        // meanwhile is waited for by the row lock, then re-checked)
        let mut params: Vec<&(dyn ToSql + Sync)> = sel.params().to_vec();
        params.extend([&now as &(dyn ToSql + Sync), &by, &reason]);
        let row = tx
            .query_one(
                &format!(
                    "WITH cancelled AS (
                         UPDATE deliveries d SET status = 'cancelled', updated_at = $6 WHERE {SELECTED}
                         RETURNING d.id, d.destination, d.order_key, d.leads
                     ), recorded AS (
                         INSERT INTO cancellations (delivery_id, at, actor, reason)
                         SELECT id, $6, $7, $8 FROM cancelled
                         ON CONFLICT (delivery_id) DO UPDATE SET at = excluded.at, actor = excluded.actor, reason = excluded.reason
                         RETURNING 1
                     )
                     SELECT (SELECT COUNT(*) FROM cancelled), k.destinations, k.keys,
                            (SELECT COALESCE(array_agg(id), '{{}}') FROM cancelled WHERE leads)
                     FROM (SELECT COALESCE(array_agg(destination), '{{}}') AS destinations, COALESCE(array_agg(order_key), '{{}}') AS keys
                           FROM (SELECT DISTINCT destination, order_key FROM cancelled WHERE order_key IS NOT NULL) AS o) AS k"
                ),
                &params,
            )
            .await
            .map_err(db)?;
        // the later steps of a cancelled delivery are not sent
        for id in row.get::<_, Vec<i64>>(3) {
            let why = format!("the step before it (delivery {id}) was cancelled");
            super::writer::skip_steps_after(&tx, id, &why, now).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        // a cancelled head lets its key move on
        self.advance_all(zip_keys(row.get(1), row.get(2))).await?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn skip(&self, ids: Vec<DeliveryId>) -> Result<usize> {
        let refs: Vec<DeliveryRef> = ids.iter().map(|id| DeliveryRef::Delivery(*id)).collect();
        let c = self.conn().await?;
        let unknown = unknown_ids(&**c, &refs).await?;
        if !unknown.is_empty() {
            return Err(not_found(unknown));
        }
        let numbers: Vec<i64> = ids.iter().map(|i| i.0).collect();
        let rows = c
            .query(
                "UPDATE deliveries SET held = false, updated_at = $2 WHERE held AND id = ANY($1::int8[])
                 RETURNING destination, order_key",
                &[&numbers, &now_ms()],
            )
            .await
            .map_err(db)?;
        drop(c);
        self.advance_all(order_keys(&rows)).await?;
        Ok(rows.len())
    }

    async fn count_dead(
        &self,
        destination: Option<DestinationName>,
        since_ms: Option<i64>,
        before_ms: Option<i64>,
    ) -> Result<usize> {
        let c = self.conn().await?;
        let row = c
            .query_one(
                &format!("SELECT COUNT(*) FROM deliveries WHERE {DEAD} AND updated_at >= COALESCE($3::int8, 0)"),
                &[&opt_name(&destination), &before_ms, &since_ms],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn purge_dead(&self, destination: Option<DestinationName>, before_ms: Option<i64>) -> Result<Purged> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .query_one(
                &format!(
                    "WITH gone AS (DELETE FROM deliveries WHERE {DEAD} RETURNING id, event_id, destination, order_key, held),
                          attempts_gone AS (DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM gone)),
                          bodies_gone AS (DELETE FROM delivery_bodies WHERE delivery_id IN (SELECT id FROM gone)),
                          cancels_gone AS (DELETE FROM cancellations WHERE delivery_id IN (SELECT id FROM gone)),
                          emptied AS (
                              -- the statement sees the deliveries as they were before it: those
                              -- it deletes do not count as left
                              DELETE FROM events WHERE id IN (SELECT event_id FROM gone)
                                AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id
                                                AND d.id NOT IN (SELECT id FROM gone))
                              RETURNING 1
                          )
                     SELECT (SELECT COUNT(*) FROM gone), (SELECT COUNT(*) FROM emptied), k.destinations, k.keys
                     FROM (SELECT COALESCE(array_agg(destination), '{{}}') AS destinations, COALESCE(array_agg(order_key), '{{}}') AS keys
                           FROM (SELECT DISTINCT destination, order_key FROM gone WHERE held) AS o) AS k"
                ),
                &[&opt_name(&destination), &before_ms],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        // a purged head holds its key no more
        self.advance_all(zip_keys(row.get(2), row.get(3))).await?;
        Ok(Purged { deliveries: row.get::<_, i64>(0) as usize, events: row.get::<_, i64>(1) as usize })
    }
}

/// What a replay sets (`now`, `waiting`: the parameters of the time and of [`WAITING`]): pending,
/// due now, unless it is ordered: then it waits for its turn (its key is advanced after), and a
/// held head holds its key no more. A pending head is due now; a delivery waiting still waits.
fn replayed(now: &str, waiting: &str) -> String {
    format!(
        "status = 'pending', held = false, updated_at = {now},
         batch_id = CASE WHEN batch_id IS NULL THEN NULL ELSE 0 END,
         next_at = CASE WHEN batch_id IS NOT NULL THEN {waiting}::int8
                        WHEN order_key IS NULL THEN {now}
                        WHEN status = 'pending' AND next_at < {waiting}::int8 THEN {now}
                        WHEN status = 'pending' THEN next_at
                        ELSE {waiting}::int8 END"
    )
}

/// The order keys of rows of (destination, order_key).
fn order_keys(rows: &[Row]) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> =
        rows.iter().filter_map(|r| Some((r.get::<_, String>(0), r.get::<_, Option<String>>(1)?))).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Keys aggregated as an array of destinations and one of their keys.
fn zip_keys(destinations: Vec<String>, keys: Vec<String>) -> Vec<(String, String)> {
    destinations.into_iter().zip(keys).collect()
}

impl PgStore {
    /// Advances each key (see [`Queue::advance`]), each in a transaction of its own.
    async fn advance_all(&self, keys: Vec<(String, String)>) -> Result<()> {
        for (destination, key) in keys {
            self.advance(DestinationName::from(destination.as_str()), key).await?;
        }
        Ok(())
    }
}

fn delivery_row(r: &Row) -> Result<DeliveryRow> {
    let status: &str = r.get(6);
    Ok(DeliveryRow {
        id: DeliveryId(r.get(0)),
        event_id: EventId::from(r.get::<_, &str>(1)),
        source: r.get(2),
        route: r.get::<_, &str>(3).into(),
        destination: r.get::<_, &str>(4).into(),
        msg_id: r.get::<_, &str>(5).into(),
        status: DeliveryStatus::parse(status)
            .ok_or_else(|| StoreError::Backend(format!("a delivery has the unknown status {status:?}")))?,
        attempts: r.get::<_, i32>(7).max(0) as u32,
        next_at_ms: r.get(8),
        created_at_ms: r.get(9),
        updated_at_ms: r.get(10),
        last_status: r.get::<_, Option<i32>>(11).map(|c| c as u16),
        last_error: r.get(12),
        cancelled: r.get::<_, Option<String>>(13).map(|by| Cancellation { by, reason: r.get(14), at_ms: r.get(15) }),
        order_key: r.get(16),
        held: r.get(17),
        batch_id: r.get(18),
        batch_msg_id: r.get::<_, Option<&str>>(19).map(Into::into),
        after: r.get::<_, Option<i64>>(20).map(DeliveryId),
        url: r.get(21),
    })
}
