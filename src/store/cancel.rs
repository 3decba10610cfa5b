//! Operator clean-up of the queue: cancelling pending deliveries (kept, as `cancelled`, with who
//! cancelled them and why) and purging dead letters. Each has a count-only twin, so a front end
//! can show what would happen before it happens.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::{Result, Store, StoreError, now_ms};

/// Which pending deliveries to cancel. Ids, filters and `all` are exclusive (see
/// [`DeliverySelection::check`]).
#[derive(Debug, Clone, Default)]
pub struct DeliverySelection {
    /// Delivery ids (numeric) or event ids (`evt_…`: all the event's pending deliveries).
    pub ids: Vec<String>,
    pub destination: Option<String>,
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cancellation {
    /// `cli:<user>`, `api:token <fingerprint>`, `api` (no token) or `operator`.
    pub by: String,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// What a dead-letter purge deleted.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Purged {
    pub deliveries: usize,
    /// Events deleted because no delivery of theirs was left.
    pub events: usize,
}

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

/// The statement parameters of a selection.
fn selection_params(s: &DeliverySelection) -> (Option<String>, String, Option<String>, Option<String>, Option<i64>) {
    let (numbers, events): (Vec<&String>, Vec<&String>) = s.ids.iter().partition(|i| i.parse::<i64>().is_ok());
    let numbers: Vec<i64> = numbers.iter().filter_map(|n| n.parse().ok()).collect();
    let by_ids = (!s.ids.is_empty()).then(|| serde_json::to_string(&numbers).expect("numbers serialize"));
    let events = serde_json::to_string(&events).expect("strings serialize");
    (by_ids, events, s.destination.clone(), s.source.clone(), s.since_ms)
}

/// Ids the selection names that match no delivery at all (pending or not).
fn unknown_ids(c: &Connection, ids: &[String]) -> rusqlite::Result<Vec<String>> {
    let mut unknown = Vec::new();
    for id in ids {
        let found: bool = match id.parse::<i64>() {
            Ok(n) => c.query_row("SELECT EXISTS (SELECT 1 FROM deliveries WHERE id = ?1)", [n], |r| r.get(0))?,
            Err(_) => {
                c.query_row("SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?1)", [id], |r| r.get(0))?
            }
        };
        if !found {
            unknown.push(id.clone());
        }
    }
    Ok(unknown)
}

fn not_found(unknown: Vec<String>) -> StoreError {
    StoreError::NotFound(format!("no deliveries for: {}", unknown.join(", ")))
}

impl Store {
    /// How many pending deliveries [`Store::cancel`] would cancel now. Ids that match no delivery
    /// are an error naming them; ids of deliveries that are not pending count for nothing.
    pub async fn count_cancellable(&self, selection: DeliverySelection) -> Result<usize> {
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
    pub async fn cancel(&self, selection: DeliverySelection, by: String, reason: Option<String>) -> Result<usize> {
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
                let n = t.execute(
                    &format!("UPDATE deliveries AS d SET status = 'cancelled', updated_at = ?6 WHERE {SELECTED}"),
                    params![a, b, d, s, since, now],
                )?;
                Ok((unknown, n))
            })
            .await?;
        if unknown.is_empty() { Ok(n) } else { Err(not_found(unknown)) }
    }

    /// How many dead letters [`Store::purge_dead`] would delete now.
    pub async fn count_dead(&self, destination: Option<String>, before_ms: Option<i64>) -> Result<usize> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT COUNT(*) FROM deliveries WHERE {DEAD}"),
                params![destination, before_ms],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n as usize)
    }

    /// Deletes dead letters (of one destination, last changed before a time), with their
    /// attempts and bodies, and then their events where no delivery is left.
    pub async fn purge_dead(&self, destination: Option<String>, before_ms: Option<i64>) -> Result<Purged> {
        self.write(move |t| {
            let events: Vec<String> = {
                let mut st = t.prepare(&format!("SELECT DISTINCT event_id FROM deliveries WHERE {DEAD}"))?;
                st.query_map(params![destination, before_ms], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            let deliveries =
                t.execute(&format!("DELETE FROM deliveries WHERE {DEAD}"), params![destination, before_ms])?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::store::tests::delivery;
    use crate::store::{Accepted, AttemptRecord, DeliveryFilter, NewEvent, Settle, SyncMode};

    fn event(id: &str, source: &str) -> NewEvent {
        NewEvent {
            id: id.into(),
            source: source.into(),
            received_at_ms: now_ms(),
            headers: Vec::new(),
            body: Bytes::from_static(b"{}"),
            dedupe_key: None,
        }
    }

    fn attempt(code: Option<u16>) -> AttemptRecord {
        AttemptRecord { at_ms: now_ms(), status_code: code, latency_ms: 1, response: Bytes::new(), error: None }
    }

    async fn accept(store: &Store, id: &str, source: &str, dests: &[&str]) -> Vec<i64> {
        match store.accept(event(id, source), dests.iter().map(|d| delivery(d)).collect(), None).await.unwrap() {
            Accepted::Stored(due) => due.iter().map(|d| d.id).collect(),
            Accepted::Duplicate { .. } => unreachable!(),
        }
    }

    async fn status(store: &Store, id: i64) -> (String, u32, Option<Cancellation>) {
        let rows = store.list_deliveries(DeliveryFilter { limit: 1000, ..Default::default() }).await.unwrap();
        let r = rows.into_iter().find(|r| r.id == id).unwrap();
        (r.status, r.attempts, r.cancelled)
    }

    fn by_destination(d: &str) -> DeliverySelection {
        DeliverySelection { destination: Some(d.into()), ..Default::default() }
    }

    /// A delivery cancelled while an attempt of it is in flight (loaded, claimed, being sent)
    /// stays cancelled when that attempt settles as a retry or a failure: the attempt is recorded,
    /// the status is not written back to pending. An attempt that delivered it makes it delivered.
    #[tokio::test]
    async fn a_cancel_survives_the_settle_of_an_attempt_in_flight() {
        let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
        let ids = accept(&store, "evt_1", "app", &["a", "b", "c", "keep"]).await;
        let (a, b, c, keep) = (ids[0], ids[1], ids[2], ids[3]);
        // the dispatcher has loaded all four for attempts in flight
        assert_eq!(store.load_pending(ids.clone()).await.unwrap().len(), 4);

        for d in ["a", "b", "c"] {
            assert_eq!(store.count_cancellable(by_destination(d)).await.unwrap(), 1);
            assert_eq!(store.cancel(by_destination(d), "cli:alice".into(), Some("retired".into())).await.unwrap(), 1);
        }
        assert_eq!(store.pending_count().await.unwrap(), 1, "cancelled deliveries are not pending");
        assert_eq!(store.count_cancellable(by_destination("a")).await.unwrap(), 0);

        store.settle(a, attempt(Some(503)), Settle::Retry { next_at_ms: 0 }, Some("HTTP 503".into())).await.unwrap();
        store.settle(b, attempt(Some(400)), Settle::Failed, Some("HTTP 400".into())).await.unwrap();
        store.settle(c, attempt(Some(200)), Settle::Delivered, None).await.unwrap();
        store.settle(keep, attempt(Some(503)), Settle::Retry { next_at_ms: 0 }, None).await.unwrap();

        let (st, attempts, cancelled) = status(&store, a).await;
        assert_eq!((st.as_str(), attempts), ("cancelled", 1), "the retry did not bring it back");
        let cancelled = cancelled.expect("who and why");
        assert_eq!((cancelled.by.as_str(), cancelled.reason.as_deref()), ("cli:alice", Some("retired")));
        assert_eq!(status(&store, b).await.0, "cancelled", "a failure does not replace the cancel");
        assert_eq!(status(&store, c).await.0, "delivered", "what was delivered says so");
        assert_eq!(status(&store, c).await.2, None);
        let ev = store.event("evt_1".into()).await.unwrap().unwrap();
        assert_eq!(ev.deliveries[0].attempt_log.len(), 1, "the attempt in flight is in the log");

        // never due again, except the one not cancelled
        let due: Vec<i64> = store.due(now_ms() + 1, 10, &[]).await.unwrap().iter().map(|d| d.id).collect();
        assert_eq!(due, [keep]);
        assert_eq!(store.pending_count().await.unwrap(), 1);

        // replayed by id like a failed delivery: pending and due again, no longer shown cancelled
        assert_eq!(store.replay(vec![a.to_string()]).await.unwrap(), 1);
        assert_eq!(status(&store, a).await, ("pending".to_string(), 1, None));
        let mut due: Vec<i64> = store.due(now_ms() + 1, 10, &[]).await.unwrap().iter().map(|d| d.id).collect();
        due.sort();
        assert_eq!(due, [a, keep]);
    }

    #[tokio::test]
    async fn selections_name_pending_deliveries_by_id_event_or_filter() {
        let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
        let e1 = accept(&store, "evt_1", "app", &["a", "b"]).await;
        let e2 = accept(&store, "evt_2", "other", &["a"]).await;
        let e3 = accept(&store, "evt_3", "app", &["b"]).await;
        store.settle(e3[0], attempt(Some(200)), Settle::Delivered, None).await.unwrap();
        let count = |s: DeliverySelection| {
            let store = store.clone();
            async move { store.count_cancellable(s).await.map_err(|e| e.to_string()) }
        };
        let ids =
            |ids: &[&str]| DeliverySelection { ids: ids.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        assert_eq!(count(ids(&[&e1[0].to_string()])).await, Ok(1));
        assert_eq!(count(ids(&["evt_1"])).await, Ok(2));
        assert_eq!(count(ids(&["evt_1", &e2[0].to_string()])).await, Ok(3));
        assert_eq!(count(ids(&[&e3[0].to_string()])).await, Ok(0), "delivered: nothing to cancel");
        assert_eq!(count(ids(&["evt_9", "999"])).await, Err("no deliveries for: evt_9, 999".to_string()));
        assert_eq!(count(by_destination("a")).await, Ok(2));
        assert_eq!(count(DeliverySelection { source: Some("other".into()), ..Default::default() }).await, Ok(1));
        let future = DeliverySelection { since_ms: Some(now_ms() + 60_000), ..Default::default() };
        assert_eq!(count(future).await, Ok(0));
        assert_eq!(count(DeliverySelection { all: true, ..Default::default() }).await, Ok(3));
        assert_eq!(
            DeliverySelection::default().check(),
            Some("nothing selected: give ids, a filter (destination, source, since) or all")
        );
        // an unknown id cancels nothing, not even the known ones
        let err = store.cancel(ids(&["evt_1", "evt_9"]), "operator".into(), None).await.unwrap_err();
        assert_eq!(err.to_string(), "no deliveries for: evt_9");
        assert_eq!(store.pending_count().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn purging_dead_letters_deletes_them_and_events_left_empty() {
        let store = Store::open(Path::new(":memory:"), SyncMode::Full).unwrap();
        let e1 = accept(&store, "evt_1", "app", &["a"]).await;
        let e2 = accept(&store, "evt_2", "app", &["a", "b"]).await;
        let e3 = accept(&store, "evt_3", "app", &["b"]).await;
        for id in [e1[0], e2[0], e3[0]] {
            store.settle(id, attempt(None), Settle::Dead, Some("timed out".into())).await.unwrap();
        }
        assert_eq!(store.count_dead(None, None).await.unwrap(), 3);
        assert_eq!(store.count_dead(Some("a".into()), None).await.unwrap(), 2);
        assert_eq!(store.count_dead(None, Some(now_ms() - 60_000)).await.unwrap(), 0, "none older than a minute");
        let purged = store.purge_dead(Some("a".into()), None).await.unwrap();
        assert_eq!(purged, Purged { deliveries: 2, events: 1 }, "evt_2 keeps its delivery to b");
        assert!(store.event("evt_1".into()).await.unwrap().is_none());
        let ev2 = store.event("evt_2".into()).await.unwrap().unwrap();
        assert_eq!(ev2.deliveries.len(), 1);
        assert_eq!(store.count_dead(None, None).await.unwrap(), 1);
        assert_eq!(store.pending_count().await.unwrap(), 1, "pending work is never purged");
    }
}
