//! The queue on PostgreSQL: accepts and settles through the group-committing writer, the due
//! window and the loads on pooled connections, and the retention purge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::writer::{self, Op};
use super::{PgStore, db};
use crate::clock::Clock;
use crate::store::cluster::Signal;
use crate::store::{
    ANSWER_GRACE, Accepted, AttemptRecord, DeliveryId, DestinationName, DueDelivery, EventId, NewDelivery, NewEvent,
    Queue, Result, Settle, StoreError, WAITING, now_ms,
};

/// Events one purge statement looks at, so a purge of a week's history is many short
/// transactions, not one long one.
const PURGE_BATCH: i64 = 5000;

/// Destination names as statement parameters.
fn names(names: &[DestinationName]) -> Vec<&str> {
    names.iter().map(|n| &**n).collect()
}

impl Queue for PgStore {
    async fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
    ) -> Result<Accepted> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + self.commit_timeout;
        self.writer.send(Op::Accept { event, deliveries, dedupe_window, deadline, reply: tx })?;
        // The writer answers by the deadline itself; the grace covers a database that stopped
        // answering mid-commit.
        match tokio::time::timeout(self.commit_timeout + ANSWER_GRACE, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StoreError::WriterGone),
            Err(_) => Err(StoreError::Timeout(self.commit_timeout)),
        }
    }

    async fn settle(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, reply: tx })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn due_ids(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(DeliveryId, DestinationName)>> {
        let c = self.conn().await?;
        // another instance's lease hides a delivery until it ends; this instance's own leases
        // do not (its claims in memory tell what it is attempting)
        let st = c
            .prepare_cached(
                "SELECT id, destination FROM deliveries
                 WHERE status = 'pending' AND next_at <= $1 AND destination <> ALL($3::text[])
                   AND (lease_until < (SELECT hookyard_now_ms()) OR lease_owner = $4)
                 ORDER BY next_at LIMIT $2",
            )
            .await
            .map_err(db)?;
        let rows = c.query(&st, &[&now_ms, &(limit as i64), &names(&skip), &&*self.lease.owner]).await.map_err(db)?;
        Ok(rows.iter().map(|r| (DeliveryId(r.get(0)), DestinationName::from(r.get::<_, &str>(1)))).collect())
    }

    /// Claims the deliveries that are still pending, due and not leased by another instance
    /// (`FOR UPDATE SKIP LOCKED`: one another instance is claiming is passed over, not waited
    /// for), leasing them to this one, and loads them. One this instance still holds (an accept
    /// leased it, and it could not start it at once) is only read: no other instance can take it
    /// before its lease ends, the dispatcher renews a lease too short for an attempt before
    /// starting it, and the claim's write (a new row version and its WAL) is saved.
    async fn load_pending(&self, ids: Vec<DeliveryId>, now_ms: i64) -> Result<Vec<DueDelivery>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.lease_conn().await?;
        let st = c
            .prepare_cached(
                "WITH held AS (
                     SELECT id, event_id, route, destination, msg_id, attempts,
                            lease_until - (SELECT hookyard_now_ms()) AS left_ms, order_key
                     FROM deliveries
                     WHERE id = ANY($1::int8[]) AND status = 'pending' AND next_at <= $4
                       AND lease_owner = $2 AND lease_until > (SELECT hookyard_now_ms())
                 ), claimable AS (
                     SELECT id FROM deliveries
                     WHERE id = ANY($1::int8[]) AND status = 'pending' AND next_at <= $4
                       AND (lease_until < (SELECT hookyard_now_ms()) OR lease_owner = $2)
                       AND id NOT IN (SELECT id FROM held)
                     FOR UPDATE SKIP LOCKED
                 ), claimed AS (
                     UPDATE deliveries d SET lease_owner = $2, lease_until = (SELECT hookyard_now_ms()) + $3::int8
                     FROM claimable WHERE d.id = claimable.id
                     RETURNING d.id, d.event_id, d.route, d.destination, d.msg_id, d.attempts, $3::int8 AS left_ms,
                               d.order_key
                 ), got AS (
                     SELECT * FROM held UNION ALL SELECT * FROM claimed
                 )
                 SELECT d.id, d.event_id, d.route, d.destination, d.msg_id, d.attempts, e.headers, b.headers,
                        COALESCE(b.body, e.body), d.left_ms, d.order_key
                 FROM got d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id",
            )
            .await
            .map_err(db)?;
        let wanted: Vec<i64> = ids.iter().map(|i| i.0).collect();
        let lease_ms = self.lease.duration.as_millis() as i64;
        let asked = Instant::now();
        let rows = c.query(&st, &[&wanted, &&*self.lease.owner, &lease_ms, &now_ms]).await.map_err(db)?;
        let mut by_id: std::collections::HashMap<i64, DueDelivery> = rows
            .iter()
            .map(|r| {
                let headers: &str = r.get(6);
                let extra: Option<&str> = r.get(7);
                let d = DueDelivery {
                    id: DeliveryId(r.get(0)),
                    event_id: EventId::from(r.get::<_, &str>(1)),
                    route: r.get::<_, &str>(2).into(),
                    destination: r.get::<_, &str>(3).into(),
                    msg_id: r.get::<_, &str>(4).into(),
                    attempts: r.get::<_, i32>(5).max(0) as u32,
                    headers: Arc::new(serde_json::from_str(headers).unwrap_or_default()),
                    extra_headers: extra.map(|e| Arc::new(serde_json::from_str(e).unwrap_or_default())),
                    body: Bytes::copy_from_slice(r.get::<_, &[u8]>(8)),
                    order_key: r.get(10),
                    // from when it was asked: never later than the database's deadline
                    lease_until: Some(asked + Duration::from_millis(r.get::<_, i64>(9).max(0) as u64)),
                };
                (d.id.0, d)
            })
            .collect();
        // in the order asked for
        Ok(ids.iter().filter_map(|id| by_id.remove(&id.0)).collect())
    }

    async fn next_due_ms(&self, skip: Vec<DestinationName>) -> Result<Option<i64>> {
        let c = self.conn().await?;
        // The first due time of a delivery no other instance holds a lease on: an idle instance
        // does not poll again and again for what others are attempting (their settles or the
        // poll interval tell when those are due again). In due order on the due index, stopping
        // at the first such row: one row read when no other instance holds any.
        let st = c
            .prepare_cached(
                "SELECT next_at FROM deliveries
                 WHERE status = 'pending' AND destination <> ALL($1::text[])
                   AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < (SELECT hookyard_now_ms()))
                 ORDER BY next_at LIMIT 1",
            )
            .await
            .map_err(db)?;
        Ok(c.query_opt(&st, &[&names(&skip), &&*self.lease.owner]).await.map_err(db)?.map(|r| r.get(0)))
    }

    async fn pending_count(&self) -> Result<usize> {
        let c = self.conn().await?;
        let row = c.query_one("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'", &[]).await.map_err(db)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn advance(&self, destination: DestinationName, key: String) -> Result<Option<DeliveryId>> {
        let mut c = self.lease_conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let head = writer::advance_key(&tx, &destination, &key, now_ms()).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(head.map(DeliveryId))
    }

    /// Each stalled key in a transaction of its own (one key lock at a time); the dispatcher runs
    /// it under an advisory lock (one instance sweeps at a time).
    async fn advance_stalled(&self) -> Result<usize> {
        let stalled = {
            let c = self.conn().await?;
            let st = c
                .prepare_cached(
                    "SELECT destination, order_key FROM deliveries
                     WHERE status = 'pending' AND order_key IS NOT NULL
                     GROUP BY destination, order_key HAVING MIN(next_at) = $1",
                )
                .await
                .map_err(db)?;
            let rows = c.query(&st, &[&WAITING]).await.map_err(db)?;
            rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>()
        };
        let mut advanced = 0;
        for (destination, key) in &stalled {
            // a held key stays as it is
            if self.advance(DestinationName::from(destination.as_str()), key.clone()).await?.is_some() {
                advanced += 1;
            }
        }
        Ok(advanced)
    }

    async fn add_deliveries(&self, event_id: EventId, deliveries: Vec<NewDelivery>) -> Result<usize> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let n = deliveries.len() as i64;
        let ids: Vec<i64> = tx
            .query("SELECT nextval('deliveries_id_seq') FROM generate_series(1, $1::int8)", &[&n])
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let planned: Vec<(&EventId, &NewDelivery)> = deliveries.iter().map(|d| (&event_id, d)).collect();
        writer::insert_deliveries(&tx, &planned, &ids, now_ms(), None).await.map_err(db)?;
        // every instance looks at the queue now (the one that takes them leases them then)
        self.notify_in(&tx, &Signal::Wake).await?;
        tx.commit().await.map_err(db)?;
        Ok(deliveries.len())
    }

    /// In batches of [`PURGE_BATCH`] events, each one statement: the finished deliveries of old
    /// events are deleted first (with their attempts, outputs and cancels), each re-checked under
    /// its row lock (a replay that made one pending meanwhile keeps it), then the events none of
    /// whose deliveries is left.
    async fn purge(&self, before_ms: i64) -> Result<usize> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "WITH old AS (
                     SELECT id FROM events WHERE received_at < $1
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = 'pending')
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.held)
                     LIMIT $2
                 ), gone AS (
                     DELETE FROM deliveries d USING old WHERE d.event_id = old.id AND d.status <> 'pending' RETURNING d.id
                 ), attempts_gone AS (
                     DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM gone)
                 ), bodies_gone AS (
                     DELETE FROM delivery_bodies WHERE delivery_id IN (SELECT id FROM gone)
                 ), cancels_gone AS (
                     DELETE FROM cancellations WHERE delivery_id IN (SELECT id FROM gone)
                 ), purged AS (
                     DELETE FROM events e USING old WHERE e.id = old.id
                       AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.id NOT IN (SELECT id FROM gone))
                     RETURNING 1
                 )
                 SELECT (SELECT COUNT(*) FROM old), (SELECT COUNT(*) FROM purged)",
            )
            .await
            .map_err(db)?;
        let mut purged = 0;
        loop {
            let row = c.query_one(&st, &[&before_ms, &PURGE_BATCH]).await.map_err(db)?;
            let (seen, deleted): (i64, i64) = (row.get(0), row.get(1));
            purged += deleted as usize;
            // a batch that deleted nothing it saw would be seen again: stop
            if seen < PURGE_BATCH || deleted == 0 {
                break;
            }
        }
        // dedupe keys as old as the purged events (the events behind them are gone or going)
        c.execute("DELETE FROM dedupe WHERE received_at < $1", &[&before_ms]).await.map_err(db)?;
        Ok(purged)
    }

    /// The last write of an event, or the writer's probe, failed.
    fn health(&self) -> std::result::Result<(), String> {
        self.health.status()
    }

    fn clock(&self) -> Clock {
        self.clock
    }
}
