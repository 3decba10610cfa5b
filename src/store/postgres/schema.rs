//! Versioned migrations. `hookyard_schema.version` holds the number of migrations applied; each
//! runs once, in order, in a transaction, under an advisory lock keyed by the schema, so
//! instances that start at once migrate one after the other. Never edit a released migration:
//! add a new one. The tables mirror SQLite's (`sqlite/schema.rs`) at its latest version.

use tokio_postgres::Client;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the event log, the delivery queue, the attempt log, transform outputs, cancels, pauses.
    // No foreign keys: their checks were about a third of the server's CPU per event (one per
    // delivery inserted, one per attempt logged). The store deletes a delivery's attempts, output
    // and cancel with it, and an event only once none of its deliveries is left
    // (`queue.rs` purge, `inspect.rs` purge_dead); nothing else deletes.
    r#"
    CREATE TABLE events (
        id           TEXT PRIMARY KEY,
        source       TEXT NOT NULL,
        received_at  BIGINT NOT NULL,           -- unix ms
        headers      TEXT NOT NULL,             -- JSON [[name, value], ...]; credentials and signatures removed
        body         BYTEA NOT NULL,
        dedupe_key   TEXT,
        routed       BOOLEAN NOT NULL           -- false: no route matched (kept, never delivered)
    );
    CREATE INDEX events_received ON events (received_at);
    CREATE INDEX events_dedupe ON events (source, dedupe_key, received_at) WHERE dedupe_key IS NOT NULL;

    CREATE TABLE deliveries (
        id           BIGSERIAL PRIMARY KEY,
        event_id     TEXT NOT NULL,
        route        TEXT NOT NULL,
        destination  TEXT NOT NULL,
        msg_id       TEXT NOT NULL,             -- the outgoing webhook-id, stable across retries and replays
        status       TEXT NOT NULL,             -- pending | delivered | failed | dead | cancelled
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      BIGINT NOT NULL,           -- unix ms when due (pending only)
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL,
        last_status  INTEGER,                   -- last HTTP status, if any
        last_error   TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (next_at, destination) WHERE status = 'pending';
    CREATE INDEX deliveries_event ON deliveries (event_id);
    CREATE INDEX deliveries_dead ON deliveries (destination, updated_at) WHERE status = 'dead';
    CREATE INDEX deliveries_failed ON deliveries (destination) WHERE status = 'failed';

    -- apart from the row each settle rewrites
    CREATE TABLE delivery_bodies (
        delivery_id  BIGINT PRIMARY KEY,
        body         BYTEA,                     -- transformed body; NULL: the event's body
        headers      TEXT                       -- JSON of extra headers set by a transform; NULL: none
    );

    CREATE TABLE attempts (
        delivery_id  BIGINT NOT NULL,
        n            INTEGER NOT NULL,
        at           BIGINT NOT NULL,
        status_code  INTEGER,
        latency_ms   BIGINT NOT NULL,
        response     BYTEA,                     -- first 4 KiB of the response body
        error        TEXT,
        PRIMARY KEY (delivery_id, n)
    );

    CREATE TABLE cancellations (
        delivery_id  BIGINT PRIMARY KEY,
        at           BIGINT NOT NULL,           -- unix ms
        actor        TEXT NOT NULL,             -- cli:<user>, api:token <fingerprint>, api, operator
        reason       TEXT
    );

    CREATE TABLE destination_state (
        name         TEXT PRIMARY KEY,
        paused       BOOLEAN NOT NULL,
        reason       TEXT,
        updated_at   BIGINT NOT NULL
    );
    "#,
    // 2: several instances on one database. A pending delivery may be leased by one instance
    // (`lease_owner`, until `lease_until`, the database's clock in unix ms): the others leave it
    // alone until the lease ends, so one sender attempts it at a time and a dead instance's work
    // comes back. The instances' heartbeats (`nodes`). Deduplication by a unique key
    // (`dedupe`): two instances accepting one key at once cannot both store it; the lookup index
    // on events goes.
    r#"
    ALTER TABLE deliveries ADD COLUMN lease_owner TEXT, ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;

    CREATE TABLE nodes (
        id              TEXT PRIMARY KEY,
        host            TEXT NOT NULL,
        address         TEXT NOT NULL,          -- ingress, as bound
        admin           TEXT,                   -- the admin API, as bound
        version         TEXT NOT NULL,          -- hookyard's
        config_version  TEXT NOT NULL,
        started_at      BIGINT NOT NULL,        -- unix ms, the database's clock
        last_seen       BIGINT NOT NULL,
        stopped_at      BIGINT,                 -- a clean shutdown
        incarnation     TEXT NOT NULL           -- random per process: two processes beating under one id show
    );

    CREATE TABLE dedupe (
        source       TEXT NOT NULL,
        key          TEXT NOT NULL,
        event_id     TEXT NOT NULL,             -- the event that holds the key
        received_at  BIGINT NOT NULL,
        window_ms    BIGINT NOT NULL,           -- the source's dedupe window when it took the key
        PRIMARY KEY (source, key)
    );
    INSERT INTO dedupe (source, key, event_id, received_at, window_ms)
        SELECT DISTINCT ON (source, dedupe_key) source, dedupe_key, id, received_at, 0
        FROM events WHERE dedupe_key IS NOT NULL
        ORDER BY source, dedupe_key, received_at DESC;
    DROP INDEX events_dedupe;

    -- the database's clock in unix ms: leases and heartbeats are compared with it, as the
    -- instances' own clocks may disagree
    CREATE FUNCTION hookyard_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE
        AS $$ SELECT (extract(epoch from clock_timestamp()) * 1000)::int8 $$;
    "#,
    // 3: ordered delivery (as SQLite's migration 4). Of the pending deliveries of a key only the
    // head is due; the others wait with next_at = 9223372036854775807 (store::WAITING). A head
    // that ended dead or failed under `on_dead: block` is `held`.
    r#"
    ALTER TABLE deliveries ADD COLUMN order_key TEXT,
        ADD COLUMN order_block BOOLEAN NOT NULL DEFAULT false,
        ADD COLUMN held BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX deliveries_order ON deliveries (destination, order_key, next_at, id)
        WHERE status = 'pending' AND order_key IS NOT NULL;
    CREATE INDEX deliveries_held ON deliveries (destination, order_key) WHERE held;
    "#,
    // 4: batched delivery (as SQLite's migration 5), with leases on batches as on deliveries.
    r#"
    CREATE TABLE batches (
        id           BIGSERIAL PRIMARY KEY,
        destination  TEXT NOT NULL,
        msg_id       TEXT NOT NULL,             -- the batch's webhook-id, stable across its retries
        status       TEXT NOT NULL,             -- pending | delivered | failed | dead | cancelled
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      BIGINT NOT NULL,
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL,
        events       INTEGER NOT NULL,
        bytes        BIGINT NOT NULL,
        last_status  INTEGER,
        last_error   TEXT,
        lease_owner  TEXT,
        lease_until  BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX batches_due ON batches (next_at, destination) WHERE status = 'pending';
    ALTER TABLE deliveries ADD COLUMN batch_id BIGINT;       -- NULL: not batched; 0: awaiting a batch
    CREATE INDEX deliveries_awaiting ON deliveries (destination, id) WHERE batch_id = 0 AND status = 'pending';
    CREATE INDEX deliveries_batch ON deliveries (batch_id) WHERE batch_id > 0;
    "#,
    // 5: chains and dynamic endpoints (as SQLite's migration 6).
    r#"
    ALTER TABLE deliveries ADD COLUMN parent_id BIGINT,
        ADD COLUMN leads BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX deliveries_parent ON deliveries (parent_id) WHERE parent_id IS NOT NULL;
    ALTER TABLE delivery_bodies ADD COLUMN url TEXT, ADD COLUMN context BYTEA;
    "#,
];

/// The advisory lock key of a schema's migrations (one per schema in a database).
fn lock_key(schema: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("hookyard-migrations:{schema}"));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Creates the schema if missing and applies the migrations this database has not seen, holding
/// the schema's advisory lock. Refuses a database from a newer Hookyard (the outer error is the
/// database's, the inner one ours).
pub async fn migrate(client: &mut Client, schema: &str) -> Result<Result<(), String>, tokio_postgres::Error> {
    let key = lock_key(schema);
    client.execute("SELECT pg_advisory_lock($1)", &[&key]).await?;
    let result = apply(client, schema).await;
    // released even when a migration failed (a dropped connection releases it too)
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&key]).await;
    let applied = result?;
    unlocked?;
    Ok(applied)
}

async fn apply(client: &mut Client, schema: &str) -> Result<Result<(), String>, tokio_postgres::Error> {
    // `schema` is checked to be a plain lower-case name (config); quoted all the same
    client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".hookyard_schema (version INTEGER NOT NULL);
             INSERT INTO \"{schema}\".hookyard_schema (version)
                 SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM \"{schema}\".hookyard_schema)"
        ))
        .await?;
    let applied: i32 =
        client.query_one(&format!("SELECT version FROM \"{schema}\".hookyard_schema"), &[]).await?.get(0);
    let applied = applied.max(0) as usize;
    if applied > MIGRATIONS.len() {
        return Ok(Err(format!(
            "the database schema \"{schema}\" has version {applied}, newer than this hookyard knows ({}); upgrade hookyard",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = client.transaction().await?;
        tx.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\"")).await?;
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE hookyard_schema SET version = $1", &[&((i + 1) as i32)]).await?;
        tx.commit().await?;
    }
    Ok(Ok(()))
}

/// The number of migrations a database of this hookyard has.
#[cfg(test)]
pub fn latest() -> usize {
    MIGRATIONS.len()
}
