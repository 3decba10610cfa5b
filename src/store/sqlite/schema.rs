//! Versioned migrations. `PRAGMA user_version` holds the number of migrations applied; each runs
//! once, in order, in a transaction. Never edit a released migration: add a new one.

use rusqlite::Connection;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the event log, the delivery queue and the attempt log
    r#"
    CREATE TABLE events (
        id           TEXT PRIMARY KEY,
        source       TEXT NOT NULL,
        received_at  INTEGER NOT NULL,          -- unix ms
        headers      TEXT NOT NULL,             -- JSON [[name, value], ...]; credentials and signatures removed
        body         BLOB NOT NULL,
        dedupe_key   TEXT,
        routed       INTEGER NOT NULL           -- 0: no route matched (kept, never delivered)
    );
    CREATE INDEX events_received ON events(received_at);
    CREATE INDEX events_dedupe ON events(source, dedupe_key) WHERE dedupe_key IS NOT NULL;

    CREATE TABLE deliveries (
        id           INTEGER PRIMARY KEY,
        event_id     TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
        route        TEXT NOT NULL,
        destination  TEXT NOT NULL,
        msg_id       TEXT NOT NULL,             -- the outgoing webhook-id, stable across retries and replays
        status       TEXT NOT NULL,             -- pending | delivered | failed | dead
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,          -- unix ms when due (pending only)
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        last_status  INTEGER,                   -- last HTTP status, if any
        last_error   TEXT,
        body         BLOB,                      -- transformed body; NULL: the event's body
        headers      TEXT                       -- JSON of extra headers set by a transform; NULL: none
    );
    CREATE INDEX deliveries_due ON deliveries(next_at) WHERE status = 'pending';
    CREATE INDEX deliveries_event ON deliveries(event_id);
    CREATE INDEX deliveries_destination ON deliveries(destination, status, updated_at);
    CREATE INDEX deliveries_status ON deliveries(status, updated_at);

    CREATE TABLE attempts (
        delivery_id  INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
        n            INTEGER NOT NULL,
        at           INTEGER NOT NULL,
        status_code  INTEGER,
        latency_ms   INTEGER NOT NULL,
        response     BLOB,                      -- first 4 KiB of the response body
        error        TEXT,
        PRIMARY KEY (delivery_id, n)
    ) WITHOUT ROWID;

    CREATE TABLE destination_state (
        name         TEXT PRIMARY KEY,
        paused       INTEGER NOT NULL,
        reason       TEXT,
        updated_at   INTEGER NOT NULL
    );
    "#,
    // 2: cheaper writes, cheaper scrapes. Every settle rewrote two indexes over the whole history
    // (destination/status/updated_at, status/updated_at) that only the dead-letter replay and the
    // per-destination figures used, and the figures scanned the table anyway. Now only the rows
    // still of interest are indexed: pending (the queue), dead and failed, each with its
    // destination, so a metrics scrape walks what is queued or kept, not what was delivered.
    r#"
    DROP INDEX deliveries_destination;
    DROP INDEX deliveries_status;
    DROP INDEX deliveries_due;
    CREATE INDEX deliveries_due ON deliveries(next_at, destination) WHERE status = 'pending';
    CREATE INDEX deliveries_dead ON deliveries(destination, updated_at) WHERE status = 'dead';
    CREATE INDEX deliveries_failed ON deliveries(destination) WHERE status = 'failed';

    -- A transform's output moves out of the delivery row: every settle rewrites that row whole,
    -- and a kilobyte of body in it was rewritten (and journaled) with each attempt.
    CREATE TABLE delivery_bodies (
        delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
        body         BLOB,                      -- transformed body; NULL: the event's body
        headers      TEXT                       -- JSON of extra headers set by a transform; NULL: none
    );
    INSERT INTO delivery_bodies (delivery_id, body, headers)
        SELECT id, body, headers FROM deliveries WHERE body IS NOT NULL OR headers IS NOT NULL;
    ALTER TABLE deliveries DROP COLUMN body;
    ALTER TABLE deliveries DROP COLUMN headers;
    "#,
    // 3: operator cancels. A cancelled delivery has status 'cancelled' (never attempted again, not
    // pending, replayable); who cancelled it, why and when live here, apart from the row each
    // settle rewrites.
    r#"
    CREATE TABLE cancellations (
        delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries(id) ON DELETE CASCADE,
        at           INTEGER NOT NULL,          -- unix ms
        actor        TEXT NOT NULL,             -- cli:<user>, api:token <fingerprint>, api, operator
        reason       TEXT
    );
    "#,
    // 4: ordered delivery. An ordered delivery has its key (per destination); of the pending ones
    // of a key only the head is due, the others wait with next_at = i64::MAX (store::WAITING). A
    // head that ended dead or failed under `on_dead: block` is `held`: its key waits for an
    // operator. Both indexes cover only what is queued or held, never the delivered history.
    r#"
    ALTER TABLE deliveries ADD COLUMN order_key TEXT;                        -- NULL: unordered
    ALTER TABLE deliveries ADD COLUMN order_block INTEGER NOT NULL DEFAULT 0; -- on_dead: block when it was planned
    ALTER TABLE deliveries ADD COLUMN held INTEGER NOT NULL DEFAULT 0;        -- 1: a dead or failed head holding its key
    CREATE INDEX deliveries_order ON deliveries(destination, order_key, next_at, id)
        WHERE status = 'pending' AND order_key IS NOT NULL;
    CREATE INDEX deliveries_held ON deliveries(destination, order_key) WHERE held = 1;
    "#,
    // 5: batched delivery. A delivery of a batched destination awaits a batch (batch_id 0, never
    // due alone), then belongs to one (batch_id = batches.id), whose row carries the schedule, the
    // attempts count and the webhook-id of the requests that carry it; each member keeps its own
    // status and attempt log.
    r#"
    CREATE TABLE batches (
        id           INTEGER PRIMARY KEY,
        destination  TEXT NOT NULL,
        msg_id       TEXT NOT NULL,             -- the batch's webhook-id, stable across its retries
        status       TEXT NOT NULL,             -- pending | delivered | failed | dead | cancelled
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,          -- unix ms when due (pending only)
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        events       INTEGER NOT NULL,          -- members when formed
        bytes        INTEGER NOT NULL,          -- their bodies' bytes
        last_status  INTEGER,
        last_error   TEXT
    );
    CREATE INDEX batches_due ON batches(next_at, destination) WHERE status = 'pending';
    ALTER TABLE deliveries ADD COLUMN batch_id INTEGER;      -- NULL: not batched; 0: awaiting a batch
    CREATE INDEX deliveries_awaiting ON deliveries(destination, id) WHERE batch_id = 0 AND status = 'pending';
    CREATE INDEX deliveries_batch ON deliveries(batch_id) WHERE batch_id > 0;
    "#,
    // 6: chains and dynamic endpoints. A chain's later step follows one delivery (parent_id) and
    // waits (next_at = WAITING) until that one's final settle releases, skips or fails it; the
    // delivery it follows is marked (leads) so only its settles look for steps. A URL rendered
    // from a template, and the responses a released step's own later steps read (context; set
    // once it is rendered), live beside the body.
    r#"
    ALTER TABLE deliveries ADD COLUMN parent_id INTEGER;                  -- NULL: not a later step
    ALTER TABLE deliveries ADD COLUMN leads INTEGER NOT NULL DEFAULT 0;   -- 1: later steps follow it
    CREATE INDEX deliveries_parent ON deliveries(parent_id) WHERE parent_id IS NOT NULL;
    ALTER TABLE delivery_bodies ADD COLUMN url TEXT;                      -- rendered from the destination's template
    ALTER TABLE delivery_bodies ADD COLUMN context BLOB;                  -- JSON of the responses before it
    "#,
];

/// Applies the migrations this database has not seen. Refuses a database from a newer Hookyard.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if applied > MIGRATIONS.len() {
        return Ok(Err(format!(
            "the database has schema version {applied}, newer than this hookyard knows ({}); upgrade hookyard",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(Ok(()))
}

/// Creates a database at `path` as a hookyard of schema `version` left it (its first `version`
/// migrations applied), then runs `rows` (SQL) in it: for tests of what reads old files.
#[cfg(test)]
pub(crate) fn create_at_version(path: &std::path::Path, version: usize, rows: &str) -> rusqlite::Result<()> {
    let c = Connection::open(path)?;
    for sql in &MIGRATIONS[..version] {
        c.execute_batch(sql)?;
    }
    c.pragma_update(None, "user_version", version as i64)?;
    c.execute_batch(rows)
}
