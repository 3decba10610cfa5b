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
use crate::store::{BatchLimits, DueBatch, Formation, StepDecision, WaitingStep};

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
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, steps: Vec::new(), reply: tx })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// One transaction of the writer: the settle and its steps' decisions.
    async fn settle_steps(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        steps: Vec<StepDecision>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, steps, reply: tx })?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn steps_after(&self, delivery: DeliveryId) -> Result<Vec<WaitingStep>> {
        let c = self.conn().await?;
        let st = c
            .prepare_cached(
                "SELECT d.id, d.route, d.destination, COALESCE(b.body, e.body), b.context IS NOT NULL, b.headers
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.parent_id = $1 AND d.status = 'pending' AND d.next_at = $2 ORDER BY d.id",
            )
            .await
            .map_err(db)?;
        let rows = c.query(&st, &[&delivery.0, &WAITING]).await.map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| WaitingStep {
                id: DeliveryId(r.get(0)),
                route: r.get::<_, &str>(1).into(),
                destination: r.get::<_, &str>(2).into(),
                body: Bytes::copy_from_slice(r.get::<_, &[u8]>(3)),
                rendered: r.get(4),
                extra_headers: r.get::<_, Option<&str>>(5).and_then(|h| serde_json::from_str(h).ok()),
            })
            .collect())
    }

    /// The settle, then the key's advance in a transaction of its own (under the key's lock); a
    /// failed advance is left to the sweep of stalled keys.
    async fn settle_and_advance(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        destination: DestinationName,
        key: String,
    ) -> Result<Option<DeliveryId>> {
        self.settle(delivery_id, attempt, settle, error).await?;
        match self.advance(destination.clone(), key).await {
            Ok(head) => Ok(head),
            Err(e) => {
                tracing::warn!(error = %e, destination = %destination, "could not advance an ordered key; the next sweep will");
                Ok(None)
            }
        }
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
                            lease_until - (SELECT hookyard_now_ms()) AS left_ms, order_key, leads
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
                               d.order_key, d.leads
                 ), got AS (
                     SELECT * FROM held UNION ALL SELECT * FROM claimed
                 )
                 SELECT d.id, d.event_id, d.route, d.destination, d.msg_id, d.attempts, e.headers, b.headers,
                        COALESCE(b.body, e.body), d.left_ms, d.order_key, b.url, d.leads, b.context
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
                    url: r.get::<_, Option<&str>>(11).map(Arc::from),
                    leads: r.get(12),
                    context: r.get::<_, Option<&[u8]>>(13).map(Bytes::copy_from_slice),
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
                "SELECT LEAST(
                     (SELECT next_at FROM deliveries
                      WHERE status = 'pending' AND destination <> ALL($1::text[])
                        AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < (SELECT hookyard_now_ms()))
                      ORDER BY next_at LIMIT 1),
                     (SELECT next_at FROM batches
                      WHERE status = 'pending' AND destination <> ALL($1::text[])
                        AND (lease_owner IS NULL OR lease_owner = $2 OR lease_until < (SELECT hookyard_now_ms()))
                      ORDER BY next_at LIMIT 1))",
            )
            .await
            .map_err(db)?;
        Ok(c.query_one(&st, &[&names(&skip), &&*self.lease.owner]).await.map_err(db)?.get(0))
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

    /// The candidates are locked (`SKIP LOCKED`: another instance forming a batch of the same
    /// destination takes others), so a delivery joins one batch.
    async fn form_batch(&self, destination: DestinationName, limits: BatchLimits, now_ms: i64) -> Result<Formation> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let rows: Vec<(i64, u64, i64)> = tx
            .query(
                "SELECT d.id, octet_length(COALESCE(b.body, e.body)), d.created_at
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.destination = $1 AND d.batch_id = 0 AND d.status = 'pending'
                 ORDER BY d.id LIMIT $2 FOR UPDATE OF d SKIP LOCKED",
                &[&&*destination, &(limits.max_events as i64)],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1).max(0) as u64, r.get::<_, i64>(2)))
            .collect();
        let Some(&(first, _, oldest)) = rows.first() else { return Ok(Formation::Empty) };
        let (members, bytes, full) = crate::store::close_batch(&rows, limits);
        if !full && oldest + limits.max_wait_ms > now_ms {
            return Ok(Formation::NotYet { due_at_ms: oldest + limits.max_wait_ms, awaiting: rows.len() });
        }
        let batch: i64 = tx.query_one("SELECT nextval('batches_id_seq')", &[]).await.map_err(db)?.get(0);
        let msg_id = crate::store::batch_msg_id(&destination, batch, first);
        tx.execute(
            "INSERT INTO batches (id, destination, msg_id, status, attempts, next_at, created_at, updated_at, events, bytes)
             VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4, $5, $6)",
            &[&batch, &&*destination, &msg_id.as_str(), &now_ms, &(members as i32), &(bytes as i64)],
        )
        .await
        .map_err(db)?;
        let ids: Vec<i64> = rows[..members].iter().map(|r| r.0).collect();
        tx.execute("UPDATE deliveries SET batch_id = $2 WHERE id = ANY($1::int8[])", &[&ids, &batch])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Formation::Formed { batch, events: members })
    }

    async fn due_batches(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(i64, DestinationName)>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT id, destination FROM batches
                 WHERE status = 'pending' AND next_at <= $1 AND destination <> ALL($3::text[])
                   AND (lease_until < (SELECT hookyard_now_ms()) OR lease_owner = $4)
                 ORDER BY next_at LIMIT $2",
                &[&now_ms, &(limit as i64), &names(&skip), &&*self.lease.owner],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), DestinationName::from(r.get::<_, &str>(1)))).collect())
    }

    /// Leases the batch to this instance (as [`Queue::load_pending`] leases a delivery).
    async fn load_batch(&self, id: i64, now_ms: i64) -> Result<Option<DueBatch>> {
        let c = self.lease_conn().await?;
        let lease_ms = self.lease.duration.as_millis() as i64;
        let asked = Instant::now();
        let Some(head) = c
            .query_opt(
                "UPDATE batches SET lease_owner = $2, lease_until = (SELECT hookyard_now_ms()) + $3::int8
                 WHERE id = $1 AND status = 'pending' AND next_at <= $4
                   AND (lease_until < (SELECT hookyard_now_ms()) OR lease_owner = $2)
                 RETURNING destination, msg_id, attempts",
                &[&id, &&*self.lease.owner, &lease_ms, &now_ms],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        drop(c);
        let c = self.conn().await?;
        let members: Vec<(DeliveryId, Bytes)> = c
            .query(
                "SELECT d.id, COALESCE(b.body, e.body)
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.batch_id = $1 AND d.batch_id > 0 AND d.status = 'pending' ORDER BY d.id",
                &[&id],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| (DeliveryId(r.get(0)), Bytes::copy_from_slice(r.get::<_, &[u8]>(1))))
            .collect();
        if members.is_empty() {
            // every member was cancelled or replayed into another batch: nothing left to send
            c.execute("UPDATE batches SET status = 'cancelled', updated_at = $2 WHERE id = $1", &[&id, &now_ms])
                .await
                .map_err(db)?;
            return Ok(None);
        }
        Ok(Some(DueBatch {
            id,
            destination: DestinationName::from(head.get::<_, &str>(0)),
            msg_id: head.get::<_, &str>(1).into(),
            attempts: head.get::<_, i32>(2).max(0) as u32,
            members,
            lease_until: Some(asked + self.lease.duration),
        }))
    }

    async fn settle_batch(
        &self,
        id: i64,
        members: Vec<DeliveryId>,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        let next_at = settle.next_at_ms();
        let status = settle.status().as_str();
        let code = attempt.status_code.map(i32::from);
        let now = now_ms();
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(db)?;
        let n = tx
            .execute(
                "UPDATE batches SET attempts = attempts + 1,
                        status = CASE WHEN status = 'pending' THEN $2 ELSE status END,
                        next_at = CASE WHEN status = 'pending' THEN $3 ELSE next_at END,
                        updated_at = $4, last_status = $5, last_error = $6,
                        lease_owner = CASE WHEN lease_owner = $7 THEN NULL ELSE lease_owner END,
                        lease_until = CASE WHEN lease_owner = $7 THEN 0 ELSE lease_until END
                 WHERE id = $1",
                &[&id, &status, &next_at, &now, &code, &error, &&*self.lease.owner],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no batch {id}")));
        }
        let ids: Vec<i64> = members.iter().map(|m| m.0).collect();
        let response = &attempt.response[..attempt.response.len().min(crate::store::MAX_RESPONSE_KEPT)];
        // each member as a delivery would be, but a retry keeps it in the batch (never due alone)
        tx.execute(
            "WITH m AS (
                 UPDATE deliveries d SET attempts = d.attempts + 1,
                        status = CASE WHEN d.status = 'pending' OR $2 = 'delivered' THEN $2 ELSE d.status END,
                        updated_at = $3, last_status = $4, last_error = $5
                 WHERE d.id = ANY($1::int8[]) AND d.batch_id = $6
                 RETURNING d.id, d.attempts
             )
             INSERT INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error)
             SELECT id, attempts, $7, $4, $8, $9, $10 FROM m
             ON CONFLICT (delivery_id, n) DO UPDATE SET at = excluded.at, status_code = excluded.status_code,
                latency_ms = excluded.latency_ms, response = excluded.response, error = excluded.error",
            &[
                &ids,
                &status,
                &now,
                &code,
                &error,
                &id,
                &attempt.at_ms,
                &(attempt.latency_ms as i64),
                &response,
                &attempt.error,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn unbatch(&self, batched: Vec<DestinationName>) -> Result<usize> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "UPDATE deliveries SET batch_id = NULL, next_at = $2
                 WHERE batch_id = 0 AND status = 'pending' AND destination <> ALL($1::text[])",
                &[&names(&batched), &now_ms()],
            )
            .await
            .map_err(db)?;
        Ok(n as usize)
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
        // batches none of whose members is left
        c.execute(
            "DELETE FROM batches WHERE status <> 'pending'
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.batch_id = batches.id AND d.batch_id > 0)",
            &[],
        )
        .await
        .map_err(db)?;
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
