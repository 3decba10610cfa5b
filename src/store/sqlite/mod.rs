//! The SQLite backend (bundled, WAL mode): the default, embedded store.
//!
//! Why SQLite: it is the most tested embedded database there is, needs no server, gives real
//! transactions and crash safety, and its WAL mode lets readers (the CLI, the admin API) run
//! beside the one writer. Only this module names rusqlite.
//!
//! Writes go through one writer thread that groups the operations of concurrent requests into one
//! transaction (group commit, `writer.rs`): an event is acknowledged only after the commit that
//! holds it returned, and with `sync: full` that commit is fsynced, so throughput does not
//! collapse to one fsync per request. Reads use their own connection on the blocking pool.
//!
//! `mod.rs`: opening and connection setup; `schema.rs`: migrations; `queue.rs`: the per-event
//! operations; `inspect.rs`: listing, replay, stats, pause, cancel and purge; `health.rs`:
//! readiness; `export.rs`: reading a whole store out for `hookyard migrate`.

mod export;
mod health;
mod inspect;
mod queue;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::{Result, StoreError, StoreOptions};
use crate::clock::{Clock, Waited};
use crate::config::SyncMode;
pub(crate) use export::Export;
use health::Health;
#[cfg(test)]
pub(crate) use schema::create_at_version;
use writer::{Op, Writer};

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    /// An async lock, taken before the read goes to the blocking pool: readers queue as tasks, not
    /// as blocked threads (each would be a pool thread with its own allocator heap).
    reader: Arc<tokio::sync::Mutex<Connection>>,
    health: Arc<Health>,
    commit_timeout: Duration,
    clock: Clock,
    _temp: Option<Arc<TempDir>>,
}

/// Removes the directory of a `:memory:` store when the last handle is dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database error as the boundary carries it.
fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// `sync: None` turns fsync off entirely (the throw-away `:memory:` store).
fn open_conn(path: &Path, sync: Option<SyncMode>) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match sync {
        Some(SyncMode::Full) => "FULL",
        Some(SyncMode::Normal) => "NORMAL",
        None => "OFF",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating it and its directory on first run) and migrates the database at `path`.
    /// `:memory:` keeps everything in a throw-away file (nothing survives a restart).
    pub fn open(path: &Path, options: StoreOptions) -> Result<SqliteStore> {
        let StoreOptions { sync, commit_timeout, clock } = options;
        let err = |message: String| StoreError::Open { path: path.to_path_buf(), message };
        // `:memory:` is a throw-away file without fsync: SQLite's own in-memory databases cannot be
        // shared by a writer and a reader connection without table locks.
        let (target, sync, temp) = if path == Path::new(":memory:") {
            let dir = std::env::temp_dir().join(format!("hookyard-mem-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            (dir.join("hookyard.db"), None, Some(TempDir(dir)))
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            }
            (path.to_path_buf(), Some(sync), None)
        };
        let mut write_conn = open_conn(&target, sync).map_err(|e| err(e.to_string()))?;
        schema::migrate(&mut write_conn).map_err(|e| err(e.to_string()))?.map_err(err)?;
        let read_conn = open_conn(&target, sync).map_err(|e| err(e.to_string()))?;
        let health = Arc::new(Health::new(&target));
        Ok(SqliteStore {
            writer: Writer::start(write_conn, health.clone(), commit_timeout),
            reader: Arc::new(tokio::sync::Mutex::new(read_conn)),
            health,
            commit_timeout,
            clock,
            _temp: temp.map(Arc::new),
        })
    }

    /// Runs `f` in the writer's transaction (grouped with others). For rare administrative writes.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: writer::Job = Box::new(move |t| {
            let r = t.map(f);
            let ok = matches!(r, Some(Ok(_)));
            let reply: writer::Deferred = Box::new(move |commit_error: Option<String>| {
                let _ = tx.send(match (commit_error, r) {
                    (Some(e), _) => Err(StoreError::Commit(e)),
                    (None, Some(r)) => r.map_err(db),
                    (None, None) => Err(StoreError::Commit("the group was not written".into())),
                });
            });
            (ok, reply)
        });
        self.writer.send(Op::Exec(job))?;
        self.wait_for_writer(rx).await
    }

    /// Runs a read on the blocking pool with the reader connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.reader.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&conn)).await.map_err(|_| StoreError::WriterGone)?.map_err(db)
    }

    /// Waits for the writer's answer to a settle or an administrative write (no limit: the writer
    /// answers them once their group committed or failed).
    async fn wait_for_writer<T: Send + 'static>(&self, rx: tokio::sync::oneshot::Receiver<Result<T>>) -> Result<T> {
        match self.clock.wait_for_thread(rx, None).await {
            Waited::Answer(answer) => answer,
            Waited::Gone | Waited::TimedOut => Err(StoreError::WriterGone),
        }
    }
}

/// The boundary's ids bind and read as their text (or number), so statements take them as they
/// are.
mod sql_ids {
    use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

    use crate::ids::{DeliveryId, DestinationName, EventId, MsgId, RouteName};

    macro_rules! text_sql {
        ($($name:ident),*) => {$(
            impl ToSql for $name {
                fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                    Ok(ToSqlOutput::from(self.as_str()))
                }
            }

            impl FromSql for $name {
                fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                    value.as_str().map($name::from)
                }
            }
        )*};
    }

    text_sql!(EventId, RouteName, DestinationName, MsgId);

    impl ToSql for DeliveryId {
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::from(self.0))
        }
    }

    impl FromSql for DeliveryId {
        fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
            value.as_i64().map(DeliveryId)
        }
    }
}
