//! Inspection and operator actions on SQLite: listing and cursor pages, one event in full,
//! replays, per-destination figures, pauses, and the operator clean-up of the queue (cancelling
//! pending deliveries, kept as `cancelled` with who and why; purging dead letters), each with its
//! count-only twin so a front end can show what would happen before it happens.

use std::collections::BTreeMap;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::writer;
use crate::store::{
    AttemptRow, Cancellation, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryRef, DeliveryRow, DeliverySelection,
    DeliveryStatus, DestinationName, DestinationStats, EventDetail, EventId, ExportFilter, ExportedEvent, Inspect,
    Purged, RawEvent, Result, StoreError, WAITING, now_ms, step_refusal,
};

/// The pending deliveries a selection names (`?1`: delivery ids as JSON or NULL when selecting
/// by filter, `?2`: event ids as JSON, `?3` destination, `?4` source, `?5` since).
const SELECTED: &str = "d.status = 'pending'
     AND (?1 IS NULL OR d.id IN (SELECT value FROM json_each(?1)) OR d.event_id IN (SELECT value FROM json_each(?2)))
     AND (?3 IS NULL OR d.destination = ?3)
     AND (?4 IS NULL OR EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.source = ?4))
     AND d.created_at >= COALESCE(?5, 0)";

/// The dead letters a purge names (`?1` destination, `?2` updated before).
const DEAD: &str =
    "status = 'dead' AND (?1 IS NULL OR destination = ?1) AND updated_at < COALESCE(?2, 9223372036854775807)";

/// What a replay sets (`now`, `waiting`: the parameters of the time and of [`WAITING`]): pending,
/// due now, unless it is ordered: then it waits for its turn (its key is advanced after), and a
/// held head holds its key no more. A pending head is due now; a delivery waiting still waits.
/// A delivery of a batched destination awaits a batch again (a new one, with its own
/// `webhook-id`).
fn replayed(now: &str, waiting: &str) -> String {
    format!(
        "status = 'pending', held = 0, updated_at = {now},
         batch_id = CASE WHEN batch_id IS NULL THEN NULL ELSE 0 END,
         next_at = CASE WHEN batch_id IS NOT NULL THEN {waiting}
                        WHEN order_key IS NULL THEN {now}
                        WHEN status = 'pending' AND next_at < {waiting} THEN {now}
                        WHEN status = 'pending' THEN next_at
                        ELSE {waiting} END"
    )
}

/// Why some of `ids` cannot be replayed: a later step that was never sent (skipped, or still
/// waiting) has no request without the answer of the step before it; replaying that one resumes
/// the chain.
fn unreplayable_steps(c: &Connection, ids: &[DeliveryRef]) -> rusqlite::Result<Vec<String>> {
    let mut refused = Vec::new();
    let mut st = c.prepare_cached(
        "SELECT d.parent_id, d.status FROM deliveries d LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
         WHERE d.id = ?1 AND d.parent_id IS NOT NULL AND b.context IS NULL",
    )?;
    for id in ids {
        let DeliveryRef::Delivery(n) = id else { continue };
        if let Some((parent, status)) =
            st.query_row([n.0], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).optional()?
        {
            refused.push(step_refusal(n.0, parent, &status));
        }
    }
    Ok(refused)
}

/// Advances each of `keys` (see [`writer::advance_key`]).
fn advance_all(t: &Connection, keys: Vec<(String, String)>, now: i64) -> rusqlite::Result<()> {
    for (destination, key) in keys {
        writer::advance_key(t, &destination, &key, now)?;
    }
    Ok(())
}

/// The statement parameters of a selection.
fn selection_params(
    s: &DeliverySelection,
) -> (Option<String>, String, Option<DestinationName>, Option<String>, Option<i64>) {
    let mut numbers = Vec::new();
    let mut events = Vec::new();
    for id in &s.ids {
        match id {
            DeliveryRef::Delivery(n) => numbers.push(n.0),
            DeliveryRef::Event(e) => events.push(e.as_str()),
        }
    }
    let by_ids = (!s.ids.is_empty()).then(|| serde_json::to_string(&numbers).expect("numbers serialize"));
    let events = serde_json::to_string(&events).expect("strings serialize");
    (by_ids, events, s.destination.clone(), s.source.clone(), s.since_ms)
}

/// Ids the selection names that match no delivery at all (pending or not).
fn unknown_ids(c: &Connection, ids: &[DeliveryRef]) -> rusqlite::Result<Vec<DeliveryRef>> {
    let mut unknown = Vec::new();
    for id in ids {
        let found: bool = match id {
            DeliveryRef::Delivery(n) => {
                c.query_row("SELECT EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)", [n], |r| r.get(0))?
            }
            DeliveryRef::Event(e) => {
                c.query_row("SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?1)", [e], |r| r.get(0))?
            }
        };
        if !found {
            unknown.push(id.clone());
        }
    }
    Ok(unknown)
}

fn not_found(unknown: Vec<DeliveryRef>) -> StoreError {
    let unknown: Vec<String> = unknown.iter().map(DeliveryRef::to_string).collect();
    StoreError::NotFound(format!("no deliveries for: {}", unknown.join(", ")))
}

impl Inspect for SqliteStore {
    async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>> {
        let status = f.status.map(DeliveryStatus::as_str);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts, d.next_at,
                        d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at, d.order_key, d.held,
                        d.batch_id, bt.msg_id, d.parent_id, (SELECT url FROM delivery_bodies WHERE delivery_id = d.id)
                 FROM deliveries d JOIN events e ON e.id = d.event_id
                   LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                   LEFT JOIN batches bt ON bt.id = d.batch_id
                 WHERE (?1 IS NULL OR d.status = ?1) AND (?2 IS NULL OR d.destination = ?2) AND (?3 IS NULL OR e.source = ?3)
                   AND d.created_at >= COALESCE(?4, 0) AND d.created_at <= COALESCE(?5, 9223372036854775807)
                   AND (?6 IS NULL OR d.id < ?6) AND (?8 IS NULL OR d.msg_id = ?8)
                 ORDER BY d.id DESC LIMIT ?7",
            )?;
            let rows = st.query_map(
                params![status, f.destination, f.source, f.since_ms, f.until_ms, f.before_id, f.limit as i64, f.msg_id],
                delivery_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn event(&self, id: EventId) -> Result<Option<EventDetail>> {
        self.read(move |c| {
            let ev = c
                .query_row(
                    "SELECT id, source, received_at, routed, dedupe_key, headers, body FROM events WHERE id = ?1",
                    [&id],
                    |r| {
                        let headers: String = r.get(5)?;
                        Ok(EventDetail {
                            id: r.get(0)?,
                            source: r.get(1)?,
                            received_at_ms: r.get(2)?,
                            routed: r.get(3)?,
                            dedupe_key: r.get(4)?,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                            body: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                            deliveries: Vec::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut ev) = ev else { return Ok(None) };
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts, d.next_at,
                        d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at, d.order_key, d.held,
                        d.batch_id, bt.msg_id, d.parent_id, b.url, b.body
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                   LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                   LEFT JOIN batches bt ON bt.id = d.batch_id
                 WHERE d.event_id = ?1 ORDER BY d.id",
            )?;
            let rows: Vec<(DeliveryRow, Option<Vec<u8>>)> =
                st.query_map([&id], |r| Ok((delivery_row(r)?, r.get(22)?)))?.collect::<rusqlite::Result<_>>()?;
            let mut at = c.prepare_cached(
                "SELECT n, at, status_code, latency_ms, response, error FROM attempts WHERE delivery_id = ?1 ORDER BY n",
            )?;
            for (row, body) in rows {
                let attempt_log = at
                    .query_map([row.id], |r| {
                        Ok(AttemptRow {
                            n: r.get(0)?,
                            at_ms: r.get(1)?,
                            status_code: r.get(2)?,
                            latency_ms: r.get::<_, i64>(3)? as u64,
                            response: Bytes::from(r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default()),
                            error: r.get(5)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let transformed_body = body.map(Bytes::from);
                ev.deliveries.push(DeliveryDetail { delivery: row, transformed_body, attempt_log });
            }
            Ok(Some(ev))
        })
        .await
    }

    async fn raw_event(&self, id: EventId) -> Result<Option<RawEvent>> {
        self.read(move |c| {
            c.query_row("SELECT source, received_at, headers, body FROM events WHERE id = ?1", [&id], |r| {
                let headers: String = r.get(2)?;
                Ok(RawEvent {
                    source: r.get(0)?,
                    received_at_ms: r.get(1)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                })
            })
            .optional()
        })
        .await
    }

    async fn export_events(&self, f: ExportFilter) -> Result<Vec<ExportedEvent>> {
        self.read(move |c| {
            let (after_at, after_id) = f.after.map(|a| (a.received_at_ms, a.id)).unzip();
            // one bound from the cursor's time and the range: the scan of the index on
            // received_at starts at the cursor (not at the range's end, page after page), and
            // only the cursor's own millisecond is sorted by id
            let (range, cursor, order) = if f.newest_first {
                (
                    "e.received_at >= COALESCE(?2, -9223372036854775808)
                     AND e.received_at <= MIN(COALESCE(?3 - 1, 9223372036854775807), COALESCE(?5, 9223372036854775807))",
                    "(?5 IS NULL OR e.received_at < ?5 OR e.id < ?6)",
                    "e.received_at DESC, e.id DESC",
                )
            } else {
                (
                    "e.received_at >= MAX(COALESCE(?2, -9223372036854775808), COALESCE(?5, -9223372036854775808))
                     AND e.received_at < COALESCE(?3, 9223372036854775807)",
                    "(?5 IS NULL OR e.received_at > ?5 OR e.id > ?6)",
                    "e.received_at, e.id",
                )
            };
            let mut st = c.prepare_cached(&format!(
                "SELECT e.id, e.source, e.received_at, e.headers, e.body FROM events e
                 WHERE (?1 IS NULL OR e.source = ?1) AND {range}
                   AND (?4 IS NULL AND ?8 IS NULL AND ?9 IS NULL OR EXISTS (
                        SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND (?4 IS NULL OR d.route = ?4)
                          AND (?8 IS NULL OR d.destination = ?8) AND (?9 IS NULL OR d.status = ?9)))
                   AND {cursor}
                 ORDER BY {order} LIMIT ?7"
            ))?;
            let status = f.status.map(DeliveryStatus::as_str);
            let mut events: Vec<ExportedEvent> = st
                .query_map(
                    params![f.source, f.since_ms, f.until_ms, f.route, after_at, after_id, f.limit as i64, f.destination, status],
                    |r| {
                        let headers: String = r.get(3)?;
                        Ok(ExportedEvent {
                            id: r.get(0)?,
                            source: r.get(1)?,
                            received_at_ms: r.get(2)?,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                            body: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                            deliveries: Vec::new(),
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            if f.deliveries && !events.is_empty() {
                let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                let ids = serde_json::to_string(&ids).expect("strings serialize");
                let mut st = c.prepare_cached(
                    "SELECT d.id, d.event_id, e.source, d.route, d.destination, d.msg_id, d.status, d.attempts, d.next_at,
                            d.created_at, d.updated_at, d.last_status, d.last_error, c.actor, c.reason, c.at, d.order_key,
                            d.held, d.batch_id, bt.msg_id, d.parent_id,
                            (SELECT url FROM delivery_bodies WHERE delivery_id = d.id)
                     FROM deliveries d JOIN events e ON e.id = d.event_id
                       LEFT JOIN cancellations c ON c.delivery_id = d.id AND d.status = 'cancelled'
                       LEFT JOIN batches bt ON bt.id = d.batch_id
                     WHERE d.event_id IN (SELECT value FROM json_each(?1)) ORDER BY d.id",
                )?;
                let mut by_event: std::collections::HashMap<EventId, Vec<DeliveryRow>> = Default::default();
                for row in st.query_map([ids], delivery_row)? {
                    let row = row?;
                    by_event.entry(row.event_id.clone()).or_default().push(row);
                }
                for e in &mut events {
                    e.deliveries = by_event.remove(&e.id).unwrap_or_default();
                }
            }
            Ok(events)
        })
        .await
    }

    async fn replay(&self, ids: Vec<DeliveryRef>) -> Result<usize> {
        let (n, unknown, refused) = self
            .write(move |t| {
                let refused = unreplayable_steps(t, &ids)?;
                if !refused.is_empty() {
                    return Ok((0, Vec::new(), refused));
                }
                let mut n = 0;
                let mut unknown = Vec::new();
                let mut keys = Vec::new();
                let now = now_ms();
                for id in &ids {
                    let (by, value): (&str, &dyn rusqlite::ToSql) = match id {
                        DeliveryRef::Delivery(num) => ("id", num),
                        DeliveryRef::Event(id) => ("event_id", id),
                    };
                    keys.extend(writer::keys_of(t, &format!("{by} = ?1"), [value])?);
                    // an event's later steps wait for the steps before them again
                    let first_steps = if by == "event_id" { " AND parent_id IS NULL" } else { "" };
                    let mut changed = t.execute(
                        &format!("UPDATE deliveries SET {} WHERE {by} = ?1{first_steps}", replayed("?2", "?3")),
                        params![value, now, WAITING],
                    )?;
                    match id {
                        DeliveryRef::Event(_) => changed += t.execute(
                            "UPDATE deliveries SET status = 'pending', next_at = ?3, updated_at = ?2, last_error = NULL
                                 WHERE event_id = ?1 AND parent_id IS NOT NULL",
                            params![value, now, WAITING],
                        )?,
                        // its skipped later steps wait for its new answer
                        DeliveryRef::Delivery(num) => changed += writer::rearm_steps_after(t, num.0, now)?,
                    }
                    if changed == 0 {
                        unknown.push(id.clone());
                    }
                    n += changed;
                }
                advance_all(t, keys, now)?;
                Ok((n, unknown, Vec::new()))
            })
            .await?;
        if !refused.is_empty() {
            return Err(StoreError::Refused(refused.join("; ")));
        }
        if unknown.is_empty() { Ok(n) } else { Err(not_found(unknown)) }
    }

    async fn replay_dead(&self, destination: Option<DestinationName>, since_ms: Option<i64>) -> Result<usize> {
        self.write(move |t| {
            const DEAD_SINCE: &str =
                "status = 'dead' AND (?1 IS NULL OR destination = ?1) AND updated_at >= COALESCE(?2, 0)";
            let now = now_ms();
            let keys = writer::keys_of(t, DEAD_SINCE, params![destination, since_ms])?;
            let leaders: Vec<i64> = {
                let mut st = t.prepare(&format!("SELECT id FROM deliveries WHERE leads = 1 AND {DEAD_SINCE}"))?;
                st.query_map(params![destination, since_ms], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            let n = t.execute(
                &format!("UPDATE deliveries SET {} WHERE {DEAD_SINCE}", replayed("?3", "?4")),
                params![destination, since_ms, now, WAITING],
            )?;
            for id in leaders {
                writer::rearm_steps_after(t, id, now)?;
            }
            advance_all(t, keys, now)?;
            Ok(n)
        })
        .await
    }

    async fn destination_stats(&self, now_ms: i64) -> Result<Vec<DestinationStats>> {
        // Three walks of partial indexes (pending, dead, failed rows only), never of the delivered
        // history: a scrape costs what is queued or kept for replay, not what was retained.
        self.read(move |c| {
            let mut by_name = BTreeMap::<DestinationName, DestinationStats>::new();
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
            let mut st = c.prepare_cached(
                "SELECT destination, COUNT(DISTINCT order_key) FROM deliveries WHERE held = 1 GROUP BY destination",
            )?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                stats_entry(&mut by_name, r.get(0)?).held = r.get::<_, i64>(1)? as u64;
            }
            Ok(by_name.into_values().collect())
        })
        .await
    }

    async fn skip(&self, ids: Vec<DeliveryId>) -> Result<usize> {
        let (n, unknown) = self
            .write(move |t| {
                let unknown = unknown_ids(t, &ids.iter().map(|id| DeliveryRef::Delivery(*id)).collect::<Vec<_>>())?;
                if !unknown.is_empty() {
                    return Ok((0, unknown));
                }
                let list =
                    serde_json::to_string(&ids.iter().map(|i| i.0).collect::<Vec<_>>()).expect("numbers serialize");
                const HELD: &str = "held = 1 AND id IN (SELECT value FROM json_each(?1))";
                let keys = writer::keys_of(t, HELD, [&list])?;
                let n = t.execute(
                    &format!("UPDATE deliveries SET held = 0, updated_at = ?2 WHERE {HELD}"),
                    params![list, now_ms()],
                )?;
                advance_all(t, keys, now_ms())?;
                Ok((n, unknown))
            })
            .await?;
        if unknown.is_empty() { Ok(n) } else { Err(not_found(unknown)) }
    }

    async fn paused(&self) -> Result<Vec<(DestinationName, Option<String>)>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached("SELECT name, reason FROM destination_state WHERE paused = 1 ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn set_paused(&self, destination: &DestinationName, paused: bool, reason: Option<String>) -> Result<()> {
        let name = destination.clone();
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

    /// How many pending deliveries [`Inspect::cancel`] would cancel now. Ids that match no delivery
    /// are an error naming them; ids of deliveries that are not pending count for nothing.
    async fn count_cancellable(&self, selection: DeliverySelection) -> Result<usize> {
        let (unknown, n) = self
            .read(move |c| {
                let unknown = unknown_ids(c, &selection.ids)?;
                let (a, b, d, s, since) = selection_params(&selection);
                let n: i64 = c.query_row(
                    &format!("SELECT COUNT(*) FROM deliveries d WHERE {SELECTED}"),
                    params![a, b, d, s, since],
                    |r| r.get(0),
                )?;
                Ok((unknown, n as usize))
            })
            .await?;
        if unknown.is_empty() { Ok(n) } else { Err(not_found(unknown)) }
    }

    /// Cancels the selected pending deliveries: they become `cancelled` (never attempted again,
    /// no longer counted as pending, replayable by id) and keep who cancelled them and why. An
    /// attempt already in flight finishes; its settle records the attempt but leaves the
    /// delivery cancelled, unless it delivered it. Returns how many were cancelled.
    async fn cancel(&self, selection: DeliverySelection, by: String, reason: Option<String>) -> Result<usize> {
        let (unknown, n) = self
            .write(move |t| {
                let unknown = unknown_ids(t, &selection.ids)?;
                if !unknown.is_empty() {
                    return Ok((unknown, 0));
                }
                let (a, b, d, s, since) = selection_params(&selection);
                let now = now_ms();
                t.execute(
                    &format!(
                        "INSERT OR REPLACE INTO cancellations (delivery_id, at, actor, reason)
                         SELECT d.id, ?6, ?7, ?8 FROM deliveries d WHERE {SELECTED}"
                    ),
                    params![a, b, d, s, since, now, by, reason],
                )?;
                let keys = writer::keys_of(
                    t,
                    &format!("id IN (SELECT d.id FROM deliveries d WHERE {SELECTED})"),
                    params![a, b, d, s, since],
                )?;
                let leaders: Vec<i64> = {
                    let mut st =
                        t.prepare(&format!("SELECT d.id FROM deliveries d WHERE d.leads = 1 AND {SELECTED}"))?;
                    st.query_map(params![a, b, d, s, since], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
                };
                let n = t.execute(
                    &format!("UPDATE deliveries AS d SET status = 'cancelled', updated_at = ?6 WHERE {SELECTED}"),
                    params![a, b, d, s, since, now],
                )?;
                for id in leaders {
                    let why = format!("the step before it (delivery {id}) was cancelled");
                    writer::skip_steps_after(t, id, &why, now)?;
                }
                // a cancelled head lets its key move on
                advance_all(t, keys, now)?;
                Ok((unknown, n))
            })
            .await?;
        if unknown.is_empty() { Ok(n) } else { Err(not_found(unknown)) }
    }

    /// How many dead letters [`Inspect::purge_dead`] would delete now (`before_ms`), or
    /// [`Inspect::replay_dead`] would replay (`since_ms`).
    async fn count_dead(
        &self,
        destination: Option<DestinationName>,
        since_ms: Option<i64>,
        before_ms: Option<i64>,
    ) -> Result<usize> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT COUNT(*) FROM deliveries WHERE {DEAD} AND updated_at >= COALESCE(?3, 0)"),
                params![destination, before_ms, since_ms],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    /// Deletes dead letters (of one destination, last changed before a time), with their
    /// attempts and bodies, and then their events where no delivery is left.
    async fn purge_dead(&self, destination: Option<DestinationName>, before_ms: Option<i64>) -> Result<Purged> {
        self.write(move |t| {
            let events: Vec<String> = {
                let mut st = t.prepare(&format!("SELECT DISTINCT event_id FROM deliveries WHERE {DEAD}"))?;
                st.query_map(params![destination, before_ms], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            let keys = writer::keys_of(t, &format!("held = 1 AND {DEAD}"), params![destination, before_ms])?;
            let deliveries =
                t.execute(&format!("DELETE FROM deliveries WHERE {DEAD}"), params![destination, before_ms])?;
            // a purged head holds its key no more
            advance_all(t, keys, now_ms())?;
            let events = t.execute(
                "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1))
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id)",
                [serde_json::to_string(&events).expect("strings serialize")],
            )?;
            Ok(Purged { deliveries, events })
        })
        .await
    }
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let status: String = r.get(6)?;
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        source: r.get(2)?,
        route: r.get(3)?,
        destination: r.get(4)?,
        msg_id: r.get(5)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                6,
                rusqlite::types::Type::Text,
                format!("status {status:?}").into(),
            )
        })?,
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
        order_key: r.get(16)?,
        held: r.get(17)?,
        batch_id: r.get(18)?,
        batch_msg_id: r.get(19)?,
        after: r.get::<_, Option<i64>>(20)?.map(DeliveryId),
        url: r.get(21)?,
    })
}

fn stats_entry(
    by_name: &mut BTreeMap<DestinationName, DestinationStats>,
    name: DestinationName,
) -> &mut DestinationStats {
    by_name.entry(name.clone()).or_insert(DestinationStats {
        destination: name,
        pending: 0,
        oldest_due_ms: 0,
        dead: 0,
        failed: 0,
        held: 0,
    })
}
