//! Several instances on one database, with PostgreSQL as the coordinator (no consensus of our
//! own): leases on deliveries (claimed in `queue.rs` and at accept, ended by a settle, renewed
//! and released here), the `nodes` heartbeat table, signals between instances (NOTIFY on a
//! channel per schema, heard on a connection of each instance's own) and a session advisory lock
//! for work one instance does at a time (the retention purge).

use std::future::Future;
use std::time::{Duration, Instant};

use deadpool_postgres::GenericClient;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{debug, warn};

use super::{Connect, PgStore, db, describe};
use crate::store::cluster::{NodeRow, NodeUpdate, Signal, host_name};
use crate::store::{DeliveryId, Result};

/// How long a stopped instance stays in `nodes` (and `status`); a dead one stays a day.
const FORGET_STOPPED_MS: i64 = 10 * 60 * 1000;
const FORGET_DEAD_MS: i64 = 24 * 3600 * 1000;

/// How often the LISTEN connection is checked (a dead TCP connection is otherwise noticed only
/// by keepalives, hours later); a lost one is reopened after [`RELISTEN_AFTER`].
const LISTEN_CHECK: Duration = Duration::from_secs(5);
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// The notification channel of a schema's instances: short whatever the schema's name (a
/// channel is an identifier, at most 63 bytes).
pub(super) fn channel(schema: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("hookyard_{}", hex::encode(&Sha256::digest(schema.as_bytes())[..8]))
}

/// An instance id when none is configured and none follows from a fixed listen address
/// (`app` derives one from that): the host name and 8 random hex digits, so two instances on
/// one host differ; a restarted one is a new one (its predecessor's leases end by themselves).
pub(super) fn random_node_id() -> String {
    format!("{}-{:08x}", host_name(), fastrand::u32(..))
}

impl PgStore {
    /// Sends `signal` to every instance (this one too) when `c`'s transaction commits, or now
    /// outside one.
    pub(super) async fn notify_in(&self, c: &impl GenericClient, signal: &Signal) -> Result<()> {
        c.execute("SELECT pg_notify($1, $2)", &[&self.connect.channel, &signal.encode()]).await.map_err(db)?;
        Ok(())
    }

    /// Sends `signal` to every instance sharing the database (this one too).
    pub async fn signal(&self, signal: &Signal) -> Result<()> {
        let c = self.conn().await?;
        self.notify_in(&c, signal).await
    }

    /// Ends this instance's leases on `ids` (deliveries it will not attempt now: another
    /// instance may take them at once). Returns how many it held.
    pub async fn release(&self, ids: Vec<DeliveryId>) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        let c = self.lease_conn().await?;
        let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
        let st = c
            .prepare_cached(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = 0
                 WHERE id = ANY($1::int8[]) AND status = 'pending' AND lease_owner = $2",
            )
            .await
            .map_err(db)?;
        let n = c.execute(&st, &[&ids, &self.node()]).await.map_err(db)?;
        Ok(n as usize)
    }

    /// Extends this instance's lease on `id` by a whole lease from now, if it still holds it
    /// (nobody else claimed the delivery since it ran out, and it is still pending): the new
    /// deadline, or `None` if it must not be attempted.
    pub async fn renew(&self, id: DeliveryId) -> Result<Option<Instant>> {
        let c = self.lease_conn().await?;
        let until = Instant::now() + self.lease.duration;
        let st = c
            .prepare_cached(
                "UPDATE deliveries SET lease_until = hookyard_now_ms() + $3
                 WHERE id = $1 AND status = 'pending' AND lease_owner = $2",
            )
            .await
            .map_err(db)?;
        let n = c.execute(&st, &[&id.0, &self.node(), &(self.lease.duration.as_millis() as i64)]).await.map_err(db)?;
        Ok((n == 1).then_some(until))
    }

    /// Records that this instance is alive (with what it runs), forgets instances long gone, and
    /// returns every instance's row, by id, and whether another process beat under this
    /// instance's id since its last beat (two instances share one id).
    pub async fn heartbeat(&self, me: &NodeUpdate) -> Result<(Vec<NodeRow>, bool)> {
        let c = self.lease_conn().await?;
        let st = c
            .prepare_cached(
                "WITH prev AS (
                     SELECT incarnation FROM nodes WHERE id = $1
                 ), me AS (
                     INSERT INTO nodes (id, host, address, admin, version, config_version, started_at, last_seen, incarnation)
                     VALUES ($1, $2, $3, $4, $5, $6, hookyard_now_ms(), hookyard_now_ms(), $10)
                     ON CONFLICT (id) DO UPDATE SET address = excluded.address, admin = excluded.admin, incarnation = excluded.incarnation,
                        config_version = excluded.config_version, last_seen = excluded.last_seen,
                        host = excluded.host, version = excluded.version,
                        started_at = CASE WHEN $9 THEN excluded.started_at ELSE nodes.started_at END,
                        stopped_at = CASE WHEN $9 THEN NULL ELSE nodes.stopped_at END
                     RETURNING id, host, address, admin, version, config_version, started_at, last_seen, stopped_at
                 ), forgotten AS (
                     DELETE FROM nodes WHERE id <> $1 AND (last_seen < hookyard_now_ms() - $8
                        OR (stopped_at IS NOT NULL AND stopped_at < hookyard_now_ms() - $7))
                 )
                 SELECT id, host, address, admin, version, config_version, started_at, last_seen, stopped_at,
                        hookyard_now_ms() - last_seen, NULL FROM nodes WHERE id <> $1
                 UNION ALL
                 SELECT id, host, address, admin, version, config_version, started_at, last_seen, stopped_at, 0::int8,
                        (SELECT incarnation FROM prev) FROM me
                 ORDER BY 1",
            )
            .await
            .map_err(db)?;
        let host = host_name();
        let version = env!("CARGO_PKG_VERSION");
        let rows = c
            .query(
                &st,
                &[
                    &self.node(),
                    &host,
                    &me.address,
                    &me.admin,
                    &version,
                    &me.config_version,
                    &FORGET_STOPPED_MS,
                    &FORGET_DEAD_MS,
                    &me.first,
                    &&*self.incarnation,
                ],
            )
            .await
            .map_err(db)?;
        let previous: Option<String> = rows.iter().find(|r| r.get::<_, &str>(0) == self.node()).and_then(|r| r.get(10));
        // this process's own earlier beat left its token; a restart in place (first beat) may
        // find its predecessor's
        let shared = !me.first && previous.is_some_and(|p| p != *self.incarnation);
        let rows = rows
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                host: r.get(1),
                address: r.get(2),
                admin: r.get(3),
                version: r.get(4),
                config_version: r.get(5),
                started_at_ms: r.get(6),
                last_seen_ms: r.get(7),
                stopped_at_ms: r.get(8),
                age_ms: r.get::<_, i64>(9).max(0),
            })
            .collect();
        Ok((rows, shared))
    }

    /// A clean shutdown: ends every lease this instance holds but those of `keep` (attempts still
    /// running: their leases run out by themselves), so the others take those deliveries at once
    /// rather than when the leases run out; marks it stopped and tells the others. Returns how
    /// many leases it ended.
    pub async fn leave(&self, keep: Vec<DeliveryId>) -> Result<usize> {
        let c = self.lease_conn().await?;
        let keep: Vec<i64> = keep.iter().map(|i| i.0).collect();
        let row = c
            .query_one(
                "WITH released AS (
                     UPDATE deliveries SET lease_owner = NULL, lease_until = 0
                     WHERE status = 'pending' AND lease_owner = $1 AND id <> ALL($2::int8[]) RETURNING 1
                 ), stopped AS (
                     UPDATE nodes SET stopped_at = hookyard_now_ms(), last_seen = hookyard_now_ms() WHERE id = $1
                 )
                 SELECT COUNT(*) FROM released",
                &[&self.node(), &keep],
            )
            .await
            .map_err(db)?;
        self.notify_in(&c, &Signal::Wake).await?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    /// Runs `work` unless another instance is running work under the same `name` (a session
    /// advisory lock, let go when `work` ends or this instance's connection drops): `None` when
    /// it was skipped.
    pub async fn exclusive<T>(&self, name: &str, work: impl Future<Output = T>) -> Result<Option<T>> {
        let key = lock_key(&self.connect.schema, name);
        let c = self.conn().await?;
        let locked: bool = c.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await.map_err(db)?.get(0);
        if !locked {
            return Ok(None);
        }
        let out = work.await;
        if c.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.is_err() {
            // a connection that may still hold the lock does not go back to the pool
            let _ = deadpool_postgres::Object::take(c);
        }
        Ok(Some(out))
    }

    /// Signals from every instance, as they come, on a connection of this instance's own
    /// (reopened when lost). `None` means "(re)connected: what was sent meanwhile was missed",
    /// so the listener reads again what it keeps. Stops when the receiver is dropped.
    pub fn listen(&self) -> mpsc::Receiver<Option<Signal>> {
        let (tx, rx) = mpsc::channel(1024);
        let connect = self.connect.clone();
        tokio::spawn(async move {
            loop {
                let outcome = match &connect.tls {
                    Some(tls) => match connect.pg.connect(tls.clone()).await {
                        Ok((client, conn)) => listen_on(&connect, client, conn, &tx).await,
                        Err(e) => Err(describe(&e)),
                    },
                    None => match connect.pg.connect(NoTls).await {
                        Ok((client, conn)) => listen_on(&connect, client, conn, &tx).await,
                        Err(e) => Err(describe(&e)),
                    },
                };
                if tx.is_closed() {
                    return;
                }
                if let Err(e) = outcome {
                    warn!(error = %e, "lost the connection that hears other instances' signals; reconnecting (meanwhile they arrive by the once-a-second poll)");
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(RELISTEN_AFTER) => {}
                }
            }
        });
        rx
    }
}

/// LISTENs on `client` and forwards what arrives until the connection fails or nobody listens.
async fn listen_on<S, T>(
    connect: &Connect,
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
    tx: &mpsc::Sender<Option<Signal>>,
) -> std::result::Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // the connection is driven here: it yields the notifications the client's own futures do not
    let (payloads, mut heard) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if payloads.send(n.payload().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(describe(&e)),
                None => return Ok(()),
            }
        }
    });
    let _abort = AbortOnDrop(driver.abort_handle());
    client.batch_execute(&format!("LISTEN \"{}\"", connect.channel)).await.map_err(|e| describe(&e))?;
    debug!(channel = %connect.channel, "listening for other instances' signals");
    if tx.send(None).await.is_err() {
        return Ok(());
    }
    let mut check = tokio::time::interval(LISTEN_CHECK);
    check.tick().await;
    loop {
        tokio::select! {
            payload = heard.recv() => match payload {
                Some(p) => match Signal::decode(&p) {
                    Some(s) => {
                        if tx.send(Some(s)).await.is_err() {
                            return Ok(());
                        }
                    }
                    None => debug!(payload = %p, "ignored a signal this version does not know"),
                },
                None => {
                    return match driver.await {
                        Ok(Err(e)) => Err(e),
                        _ => Err("the connection closed".to_string()),
                    };
                }
            },
            _ = check.tick() => {
                match tokio::time::timeout(LISTEN_CHECK, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(describe(&e)),
                    Err(_) => return Err(format!("the database did not answer within {LISTEN_CHECK:?}")),
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The advisory lock key of `name` in a schema.
fn lock_key(schema: &str, name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("hookyard-{name}:{schema}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}
