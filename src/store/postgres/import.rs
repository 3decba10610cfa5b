//! Writing a copied store in, for `hookyard migrate` (`store/migrate`): one transaction over
//! tables locked against other writers, refused unless they are empty, a multi-row
//! `INSERT … SELECT FROM unnest(…)` per batch (as the writer's group commit does), delivery ids
//! kept, and the id sequence moved past them before the commit.

use tokio::sync::mpsc;

use super::{PgStore, db};
use crate::store::StoreError;
use crate::store::migrate::rows::{Batch, Read};
use crate::store::migrate::{Copied, MigrateError};

/// Every table of the store, in an order their foreign keys accept for the lock.
const TABLES: &str = "events, batches, deliveries, delivery_bodies, attempts, cancellations, destination_state, dedupe";

impl PgStore {
    /// Copies what `start`'s channel brings into this store's tables, in one transaction that is
    /// committed only once the channel said [`Read::Done`]. `start` is called once the tables
    /// are locked and found empty (so a refused copy never reads its source). `schema` names the
    /// store's schema in a refusal.
    pub(crate) async fn import(
        &self,
        schema: &str,
        start: impl FnOnce() -> mpsc::Receiver<Read>,
    ) -> Result<Copied, MigrateError> {
        let mut client = self.conn().await?;
        let tx = client.transaction().await.map_err(db)?;
        // EXCLUSIVE: a gateway running on this schema can still read, but not write until the
        // copy is committed (its events wait or are refused with 503)
        tx.batch_execute(&format!("LOCK TABLE {TABLES} IN EXCLUSIVE MODE")).await.map_err(db)?;
        let row = tx
            .query_one("SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM destination_state)", &[])
            .await
            .map_err(db)?;
        let (events, destinations): (i64, i64) = (row.get(0), row.get(1));
        if events > 0 || destinations > 0 {
            return Err(MigrateError::TargetNotEmpty { schema: schema.to_string(), events, destinations });
        }
        let mut rx = start();
        let mut copied = Copied::default();
        loop {
            match rx.recv().await {
                Some(Read::Batch(batch)) => insert(&tx, batch, &mut copied).await.map_err(db)?,
                Some(Read::Done) => break,
                Some(Read::Failed(e)) => return Err(e.into()),
                None => return Err(StoreError::Backend("the reading side of the copy stopped".into()).into()),
            }
        }
        // the next delivery accepted gets an id past every copied one
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('deliveries', 'id'), MAX(id)) FROM deliveries HAVING MAX(id) IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?;
        tx.execute(
            "SELECT setval(pg_get_serial_sequence('batches', 'id'), MAX(id)) FROM batches HAVING MAX(id) IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?;
        // the dedupe keys of the copied events, each held by its latest event
        tx.execute(
            "INSERT INTO dedupe (source, key, event_id, received_at, window_ms)
             SELECT DISTINCT ON (source, dedupe_key) source, dedupe_key, id, received_at, 0
             FROM events WHERE dedupe_key IS NOT NULL
             ORDER BY source, dedupe_key, received_at DESC",
            &[],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(copied)
    }
}

/// Writes one batch and counts it.
async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: Batch,
    copied: &mut Copied,
) -> std::result::Result<(), tokio_postgres::Error> {
    match batch {
        Batch::Events(rows) => {
            let id: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let source: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
            let at: Vec<i64> = rows.iter().map(|r| r.received_at).collect();
            let headers: Vec<&str> = rows.iter().map(|r| r.headers.as_str()).collect();
            let body: Vec<&[u8]> = rows.iter().map(|r| &r.body[..]).collect();
            let key: Vec<Option<&str>> = rows.iter().map(|r| r.dedupe_key.as_deref()).collect();
            let routed: Vec<bool> = rows.iter().map(|r| r.routed).collect();
            copied.events += tx
                .execute(
                    "INSERT INTO events (id, source, received_at, headers, body, dedupe_key, routed)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::bytea[], $6::text[], $7::bool[])",
                    &[&id, &source, &at, &headers, &body, &key, &routed],
                )
                .await?;
        }
        Batch::Deliveries(rows) => {
            let id: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let event: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
            let route: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
            let destination: Vec<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
            let msg_id: Vec<&str> = rows.iter().map(|r| r.msg_id.as_str()).collect();
            let status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
            let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
            let next_at: Vec<i64> = rows.iter().map(|r| r.next_at).collect();
            let created_at: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
            let updated_at: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
            let last_status: Vec<Option<i32>> = rows.iter().map(|r| r.last_status).collect();
            let last_error: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
            let order_key: Vec<Option<&str>> = rows.iter().map(|r| r.order_key.as_deref()).collect();
            let order_block: Vec<bool> = rows.iter().map(|r| r.order_block).collect();
            let held: Vec<bool> = rows.iter().map(|r| r.held).collect();
            let batch_id: Vec<Option<i64>> = rows.iter().map(|r| r.batch_id).collect();
            let parent_id: Vec<Option<i64>> = rows.iter().map(|r| r.parent_id).collect();
            let leads: Vec<bool> = rows.iter().map(|r| r.leads).collect();
            copied.deliveries += tx
                .execute(
                    "INSERT INTO deliveries (id, event_id, route, destination, msg_id, status, attempts, next_at,
                                             created_at, updated_at, last_status, last_error, order_key, order_block, held,
                                             batch_id, parent_id, leads)
                     SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                          $7::int4[], $8::int8[], $9::int8[], $10::int8[], $11::int4[], $12::text[],
                                          $13::text[], $14::bool[], $15::bool[], $16::int8[], $17::int8[], $18::bool[])",
                    &[
                        &id,
                        &event,
                        &route,
                        &destination,
                        &msg_id,
                        &status,
                        &attempts,
                        &next_at,
                        &created_at,
                        &updated_at,
                        &last_status,
                        &last_error,
                        &order_key,
                        &order_block,
                        &held,
                        &batch_id,
                        &parent_id,
                        &leads,
                    ],
                )
                .await?;
            copied.pending += rows.iter().filter(|r| r.status == "pending").count() as u64;
        }
        Batch::DeliveryBatches(rows) => {
            let id: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let destination: Vec<&str> = rows.iter().map(|r| r.destination.as_str()).collect();
            let msg_id: Vec<&str> = rows.iter().map(|r| r.msg_id.as_str()).collect();
            let status: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
            let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
            let next_at: Vec<i64> = rows.iter().map(|r| r.next_at).collect();
            let created_at: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
            let updated_at: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
            let events: Vec<i32> = rows.iter().map(|r| r.events).collect();
            let bytes: Vec<i64> = rows.iter().map(|r| r.bytes).collect();
            let last_status: Vec<Option<i32>> = rows.iter().map(|r| r.last_status).collect();
            let last_error: Vec<Option<&str>> = rows.iter().map(|r| r.last_error.as_deref()).collect();
            tx.execute(
                "INSERT INTO batches (id, destination, msg_id, status, attempts, next_at, created_at, updated_at, events,
                                      bytes, last_status, last_error)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::int8[],
                                      $8::int8[], $9::int4[], $10::int8[], $11::int4[], $12::text[])",
                &[
                    &id,
                    &destination,
                    &msg_id,
                    &status,
                    &attempts,
                    &next_at,
                    &created_at,
                    &updated_at,
                    &events,
                    &bytes,
                    &last_status,
                    &last_error,
                ],
            )
            .await?;
        }
        Batch::Bodies(rows) => {
            let id: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
            let body: Vec<Option<&[u8]>> = rows.iter().map(|r| r.body.as_deref()).collect();
            let headers: Vec<Option<&str>> = rows.iter().map(|r| r.headers.as_deref()).collect();
            let url: Vec<Option<&str>> = rows.iter().map(|r| r.url.as_deref()).collect();
            let context: Vec<Option<&[u8]>> = rows.iter().map(|r| r.context.as_deref()).collect();
            copied.bodies += tx
                .execute(
                    "INSERT INTO delivery_bodies (delivery_id, body, headers, url, context)
                     SELECT * FROM unnest($1::int8[], $2::bytea[], $3::text[], $4::text[], $5::bytea[])",
                    &[&id, &body, &headers, &url, &context],
                )
                .await?;
        }
        Batch::Attempts(rows) => {
            let id: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
            let n: Vec<i32> = rows.iter().map(|r| r.n).collect();
            let at: Vec<i64> = rows.iter().map(|r| r.at).collect();
            let code: Vec<Option<i32>> = rows.iter().map(|r| r.status_code).collect();
            let latency: Vec<i64> = rows.iter().map(|r| r.latency_ms).collect();
            let response: Vec<Option<&[u8]>> = rows.iter().map(|r| r.response.as_deref()).collect();
            let error: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
            copied.attempts += tx
                .execute(
                    "INSERT INTO attempts (delivery_id, n, at, status_code, latency_ms, response, error)
                     SELECT * FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int4[], $5::int8[], $6::bytea[], $7::text[])",
                    &[&id, &n, &at, &code, &latency, &response, &error],
                )
                .await?;
        }
        Batch::Cancellations(rows) => {
            let id: Vec<i64> = rows.iter().map(|r| r.delivery_id).collect();
            let at: Vec<i64> = rows.iter().map(|r| r.at).collect();
            let actor: Vec<&str> = rows.iter().map(|r| r.actor.as_str()).collect();
            let reason: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
            copied.cancellations += tx
                .execute(
                    "INSERT INTO cancellations (delivery_id, at, actor, reason)
                     SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[])",
                    &[&id, &at, &actor, &reason],
                )
                .await?;
        }
        Batch::DestinationStates(rows) => {
            let name: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
            let paused: Vec<bool> = rows.iter().map(|r| r.paused).collect();
            let reason: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
            let updated_at: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
            copied.destination_states += tx
                .execute(
                    "INSERT INTO destination_state (name, paused, reason, updated_at)
                     SELECT * FROM unnest($1::text[], $2::bool[], $3::text[], $4::int8[])",
                    &[&name, &paused, &reason, &updated_at],
                )
                .await?;
            copied.paused += paused.iter().filter(|p| **p).count() as u64;
        }
    }
    Ok(())
}
