//! `hookyard migrate`: copies a SQLite store into an empty PostgreSQL schema, pending work
//! included, so a team can move to PostgreSQL without losing its queue. Every row is copied as
//! stored: delivery ids (what operators and logs name deliveries by), `webhook-id`s, due times,
//! attempt logs, cancels, pauses and dedupe keys; the target's delivery id sequence is then moved
//! past the copied ids, so the next delivery gets a new one.
//!
//! The two sides never meet: the SQLite side reads rows into the plain types of `rows.rs`
//! (`sqlite/export.rs`), on a thread of its own, and hands them over a bounded channel to the
//! PostgreSQL side (`postgres/import.rs`), which writes them in batches in one transaction. So
//! only `store::sqlite` names rusqlite and only `store::postgres` tokio-postgres.
//!
//! What it relies on, and enforces where it can:
//! - **The gateway is stopped.** The SQLite file is read under its write lock (`BEGIN
//!   IMMEDIATE`), held until the copy is committed, so a gateway still running cannot change it
//!   mid-copy (its events are refused with `503` meanwhile); but what it writes after the copy
//!   is not copied. The migrations of the file's version are applied first, as a gateway's start
//!   would.
//! - **The target schema is empty.** Its tables are locked for the copy (no gateway on it can
//!   write meanwhile) and a schema that holds events or destination state is refused: merging
//!   two queues is not what a move needs, and the delivery ids would collide.
//! - **All or nothing.** Nothing is committed unless every table was read and written.

pub(crate) mod rows;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use super::{PgStore, StoreError, StoreOptions, sqlite};
use crate::config::PostgresConfig;
use rows::Read;

/// Most rows in one batch (one multi-row `INSERT … SELECT FROM unnest(…)` per batch): large
/// enough that a million rows take two thousand round trips, small enough that a statement never
/// nears `storage.postgres.statement_timeout`.
pub const BATCH_ROWS: usize = 500;

/// Most bytes of bodies, headers and responses in one batch, whatever its row count: events of
/// up to `server.max_body_bytes` each would otherwise make a batch of 500 rows hundreds of MiB.
/// With at most [`BATCHES_IN_FLIGHT`] batches queued, one being read and one being written, a copy
/// holds about 64 MiB of rows at most.
pub const BATCH_BYTES: usize = 16 << 20;

/// Batches read ahead of the one being written: reading and writing overlap, memory stays bounded.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Why a copy was refused or failed. Nothing was committed to the target in every case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The operator named a file that is not there (the default path of a config whose gateway
    /// never ran, a typo).
    #[error("there is no SQLite store at {0}")]
    NoSource(PathBuf),
    /// The target already has a queue of its own.
    #[error(
        "the PostgreSQL schema \"{schema}\" already holds a store (events: {events}, destination states: \
         {destinations}); migrate copies into an empty schema only: name a new one in storage.postgres.schema, \
         or drop this one (DROP SCHEMA \"{schema}\" CASCADE) if nothing in it is needed"
    )]
    TargetNotEmpty { schema: String, events: i64, destinations: i64 },
    /// A database refused: the SQLite file (opening it names it) or PostgreSQL.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a copy committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub events: u64,
    pub deliveries: u64,
    /// Deliveries still to send: the queue the target's gateway takes over.
    pub pending: u64,
    /// Transform outputs (bodies and headers of deliveries).
    pub bodies: u64,
    pub attempts: u64,
    pub cancellations: u64,
    /// Destinations paused in the source (their deliveries keep waiting in the target).
    pub paused: u64,
    /// Rows of destination state, resumed ones included.
    pub destination_states: u64,
}

/// How the rows are cut into batches (see [`BATCH_ROWS`] and [`BATCH_BYTES`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub rows: usize,
    pub bytes: usize,
}

/// Copies the SQLite store at `sqlite_path` into the PostgreSQL schema `target` names, which is
/// created and migrated if need be and must hold no store yet (no events, no destination state;
/// a refused copy leaves it created and empty). The gateway on the SQLite store must
/// be stopped first (see the module's documentation). Returns what was copied, once committed.
pub async fn sqlite_to_postgres(sqlite_path: &Path, target: &PostgresConfig) -> Result<Copied, MigrateError> {
    copy(sqlite_path, target, BatchLimits { rows: BATCH_ROWS, bytes: BATCH_BYTES }).await
}

/// [`sqlite_to_postgres`] with its batches cut at `limits` (tests copy in batches of a few rows).
pub(crate) async fn copy(
    sqlite_path: &Path,
    target: &PostgresConfig,
    limits: BatchLimits,
) -> Result<Copied, MigrateError> {
    // checked before anything is opened: opening would create an empty store there
    if !sqlite_path.is_file() {
        return Err(MigrateError::NoSource(sqlite_path.to_path_buf()));
    }
    let store = PgStore::open(target, StoreOptions::default()).await?;
    let (release, released) = oneshot::channel::<()>();
    let mut reader = None;
    let copied = store
        .import(&target.schema, || {
            let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
            let path = sqlite_path.to_path_buf();
            reader = Some(tokio::task::spawn_blocking(move || read(&path, limits, tx, released)));
            rx
        })
        .await;
    // committed or not, the SQLite file's lock goes now, and is gone when this returns
    drop(release);
    if let Some(reader) = reader {
        let _ = reader.await;
    }
    copied
}

/// The reading side: opens and locks the file, sends every table, then holds the lock until
/// `release` resolves (the copy committed or failed).
fn read(path: &Path, limits: BatchLimits, tx: mpsc::Sender<Read>, release: oneshot::Receiver<()>) {
    let export = match sqlite::Export::open(path) {
        Ok(export) => export,
        Err(e) => {
            let _ = tx.blocking_send(Read::Failed(e));
            return;
        }
    };
    // `send` fails only when the writing side gave up; it has its own error to report then
    let outcome = export.read(limits, |batch| tx.blocking_send(Read::Batch(batch)).is_ok());
    let _ = tx.blocking_send(match outcome {
        Ok(()) => Read::Done,
        Err(e) => Read::Failed(e),
    });
    let _ = release.blocking_recv();
    drop(export);
}
