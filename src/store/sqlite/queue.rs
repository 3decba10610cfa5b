//! The queue on SQLite: accepts and settles through the group-committing writer, the due window
//! and the loads on the reader, and the retention purge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::writer::{self, Op};
use crate::clock::{Clock, Waited};
use crate::store::{
    ANSWER_GRACE, Accepted, AttemptRecord, DeliveryId, DestinationName, DueDelivery, EventId, NewDelivery, NewEvent,
    Queue, Result, Settle, StepDecision, StoreError, WAITING, WaitingStep, now_ms,
};
use crate::store::{BatchLimits, DueBatch, Formation};

impl Queue for SqliteStore {
    async fn accept(
        &self,
        event: NewEvent,
        deliveries: Vec<NewDelivery>,
        dedupe_window: Option<Duration>,
    ) -> Result<Accepted> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = Instant::now() + self.commit_timeout;
        self.writer.send(Op::Accept { event, deliveries, dedupe_window, deadline, reply: tx })?;
        // The writer answers by the deadline itself; the grace covers a writer stuck in the disk.
        match self.clock.wait_for_thread(rx, Some(self.commit_timeout + ANSWER_GRACE)).await {
            Waited::Answer(answer) => answer,
            Waited::Gone => Err(StoreError::WriterGone),
            Waited::TimedOut => Err(StoreError::Timeout(self.commit_timeout)),
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
        self.writer.send(Op::Settle {
            delivery_id,
            attempt,
            settle,
            error,
            advance: None,
            steps: Vec::new(),
            reply: tx,
        })?;
        self.wait_for_writer(rx).await.map(drop)
    }

    /// One operation of the writer: the settle and its steps' decisions commit together.
    async fn settle_steps(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        steps: Vec<StepDecision>,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, advance: None, steps, reply: tx })?;
        self.wait_for_writer(rx).await.map(drop)
    }

    async fn steps_after(&self, delivery: DeliveryId) -> Result<Vec<WaitingStep>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.id, d.route, d.destination, COALESCE(b.body, e.body), b.context IS NOT NULL, b.headers
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.parent_id = ?1 AND d.status = 'pending' AND d.next_at = ?2 ORDER BY d.id",
            )?;
            let rows = st.query_map(params![delivery.0, WAITING], |r| {
                Ok(WaitingStep {
                    id: DeliveryId(r.get(0)?),
                    route: r.get(1)?,
                    destination: r.get(2)?,
                    body: Bytes::from(r.get::<_, Vec<u8>>(3)?),
                    rendered: r.get(4)?,
                    extra_headers: r.get::<_, Option<String>>(5)?.and_then(|h| serde_json::from_str(&h).ok()),
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// One operation of the writer: the settle and the key's advance commit together.
    async fn settle_and_advance(
        &self,
        delivery_id: DeliveryId,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
        destination: DestinationName,
        key: String,
    ) -> Result<Option<DeliveryId>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let advance = Some((destination.to_string(), key));
        self.writer.send(Op::Settle { delivery_id, attempt, settle, error, advance, steps: Vec::new(), reply: tx })?;
        self.wait_for_writer(rx).await.map(|head| head.map(DeliveryId))
    }

    async fn due_ids(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(DeliveryId, DestinationName)>> {
        // an index-only scan of the pending rows
        let skip = serde_json::to_string(&skip).expect("a list of strings serializes");
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, destination FROM deliveries
                 WHERE status = 'pending' AND next_at <= ?1
                   AND destination NOT IN (SELECT value FROM json_each(?3))
                 ORDER BY next_at LIMIT ?2",
            )?;
            let rows = st.query_map(params![now_ms, limit as i64, skip], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn load_pending(&self, ids: Vec<DeliveryId>, now_ms: i64) -> Result<Vec<DueDelivery>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT d.id, d.event_id, d.route, d.destination, d.msg_id, d.attempts, e.headers, b.headers, COALESCE(b.body, e.body),
                        d.order_key, b.url, d.leads, b.context
                 FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                 WHERE d.id = ?1 AND d.status = 'pending' AND d.next_at <= ?2",
            )?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(d) = st.query_row([id.0, now_ms], due_row).optional()? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_due_ms(&self, skip: Vec<DestinationName>) -> Result<Option<i64>> {
        let skip = serde_json::to_string(&skip).expect("a list of strings serializes");
        self.read(move |c| {
            c.query_row(
                "SELECT MIN(m) FROM (
                     SELECT MIN(next_at) AS m FROM deliveries WHERE status = 'pending'
                       AND destination NOT IN (SELECT value FROM json_each(?1))
                     UNION ALL
                     SELECT MIN(next_at) FROM batches WHERE status = 'pending'
                       AND destination NOT IN (SELECT value FROM json_each(?1)))",
                [skip],
                |r| r.get(0),
            )
        })
        .await
    }

    async fn pending_count(&self) -> Result<usize> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'", [], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|n| n as usize)
    }

    async fn add_deliveries(&self, event_id: EventId, deliveries: Vec<NewDelivery>) -> Result<usize> {
        self.write(move |t| {
            writer::insert_deliveries(t, &event_id, &deliveries, now_ms())?;
            Ok(deliveries.len())
        })
        .await
    }

    async fn advance(&self, destination: DestinationName, key: String) -> Result<Option<DeliveryId>> {
        let now = self.clock.now_ms();
        self.write(move |t| writer::advance_key(t, &destination, &key, now)).await.map(|id| id.map(DeliveryId))
    }

    async fn advance_stalled(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        self.write(move |t| writer::advance_stalled(t, now)).await
    }

    async fn form_batch(&self, destination: DestinationName, limits: BatchLimits, now_ms: i64) -> Result<Formation> {
        self.write(move |t| writer::form_batch(t, &destination, limits, now_ms)).await
    }

    async fn due_batches(
        &self,
        now_ms: i64,
        limit: usize,
        skip: Vec<DestinationName>,
    ) -> Result<Vec<(i64, DestinationName)>> {
        let skip = serde_json::to_string(&skip).expect("a list of strings serializes");
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, destination FROM batches
                 WHERE status = 'pending' AND next_at <= ?1 AND destination NOT IN (SELECT value FROM json_each(?3))
                 ORDER BY next_at LIMIT ?2",
            )?;
            let rows = st.query_map(params![now_ms, limit as i64, skip], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn load_batch(&self, id: i64, now_ms: i64) -> Result<Option<DueBatch>> {
        let batch = self
            .read(move |c| {
                let head = c
                    .prepare_cached(
                        "SELECT destination, msg_id, attempts FROM batches
                         WHERE id = ?1 AND status = 'pending' AND next_at <= ?2",
                    )?
                    .query_row(params![id, now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                let Some((destination, msg_id, attempts)) = head else { return Ok(None) };
                let mut st = c.prepare_cached(
                    "SELECT d.id, COALESCE(b.body, e.body)
                     FROM deliveries d JOIN events e ON e.id = d.event_id LEFT JOIN delivery_bodies b ON b.delivery_id = d.id
                     WHERE d.batch_id = ?1 AND d.batch_id > 0 AND d.status = 'pending' ORDER BY d.id",
                )?;
                let members = st
                    .query_map([id], |r| Ok((DeliveryId(r.get(0)?), Bytes::from(r.get::<_, Vec<u8>>(1)?))))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Some(DueBatch { id, destination, msg_id, attempts, members, lease_until: None }))
            })
            .await?;
        match batch {
            // every member was cancelled or replayed into another batch: nothing left to send
            Some(b) if b.members.is_empty() => {
                self.write(move |t| {
                    t.execute(
                        "UPDATE batches SET status = 'cancelled', updated_at = ?2 WHERE id = ?1",
                        params![id, now_ms],
                    )
                })
                .await?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    async fn settle_batch(
        &self,
        id: i64,
        members: Vec<DeliveryId>,
        attempt: AttemptRecord,
        settle: Settle,
        error: Option<String>,
    ) -> Result<()> {
        self.write(move |t| writer::settle_batch(t, id, &members, &attempt, &settle, error.as_deref())).await
    }

    async fn unbatch(&self, batched: Vec<DestinationName>) -> Result<usize> {
        let now = self.clock.now_ms();
        let batched = serde_json::to_string(&batched).expect("a list of strings serializes");
        self.write(move |t| {
            t.execute(
                "UPDATE deliveries SET batch_id = NULL, next_at = ?2
                 WHERE batch_id = 0 AND status = 'pending' AND destination NOT IN (SELECT value FROM json_each(?1))",
                params![batched, now],
            )
        })
        .await
    }

    async fn purge(&self, before_ms: i64) -> Result<usize> {
        self.write(move |t| {
            // batches none of whose members is left (their events were purged before)
            t.execute(
                "DELETE FROM batches WHERE status <> 'pending'
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.batch_id = batches.id AND d.batch_id > 0)",
                [],
            )?;
            // a held head is kept: deleting it would let its key move on
            t.execute(
                "DELETE FROM events WHERE received_at < ?1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.status = 'pending')
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = events.id AND d.held = 1)",
                params![before_ms],
            )
        })
        .await
    }

    /// The database file at the configured path is no longer the one open (checked now), or the
    /// last write of an event, or the writer's probe, failed.
    fn health(&self) -> std::result::Result<(), String> {
        self.health.status()
    }

    fn clock(&self) -> Clock {
        self.clock
    }
}

fn due_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DueDelivery> {
    let headers: String = r.get(6)?;
    let extra: Option<String> = r.get(7)?;
    Ok(DueDelivery {
        id: DeliveryId(r.get(0)?),
        event_id: r.get(1)?,
        route: r.get(2)?,
        destination: r.get(3)?,
        msg_id: r.get(4)?,
        attempts: r.get(5)?,
        headers: Arc::new(serde_json::from_str(&headers).unwrap_or_default()),
        extra_headers: extra.map(|e| Arc::new(serde_json::from_str(&e).unwrap_or_default())),
        body: Bytes::from(r.get::<_, Vec<u8>>(8)?),
        order_key: r.get(9)?,
        url: r.get::<_, Option<String>>(10)?.map(Arc::from),
        leads: r.get(11)?,
        context: r.get::<_, Option<Vec<u8>>>(12)?.map(Bytes::from),
        lease_until: None,
    })
}
