//! Whether the store can take events now, for readiness and for refusing events honestly.
//!
//! Two things are watched:
//! - the outcome of the last write that held an event (an accept, or the writer's probe, which
//!   writes and removes a row of `events` when no event was written for [`PROBE_INTERVAL`]), so a
//!   full disk, a read-only file or a database locked by another process shows at once and its
//!   recovery within a second;
//! - that the database file (and its `-wal`) at the configured path is still the file the store
//!   opened (same device and inode). A deleted or replaced file keeps working through the open
//!   descriptor, so without this check events would be acknowledged into a file that the next
//!   start never opens. Checked before each group of accepts, at each probe and at readiness: one
//!   `stat` each, no allocation.
//!
//! Must not do SQL: the writer reports outcomes here, this module only keeps and checks them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::{error, info};

pub use crate::store::health::PROBE_INTERVAL;
use crate::store::health::WriteHealth;

/// Device and inode: what the path must still point at.
type FileId = (u64, u64);

pub struct Health {
    /// The database and its `-wal`, with the identity each had when the store opened them.
    files: Vec<(PathBuf, FileId)>,
    writes: WriteHealth,
    file_error: Mutex<Option<String>>,
}

impl Health {
    /// Records the identity of the database at `path` and of its `-wal`, if present (it is while
    /// a connection in WAL mode is open, and SQLite removes it only when the last one closes).
    pub fn new(path: &Path) -> Health {
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let files = [path.to_path_buf(), wal].into_iter().filter_map(|p| file_id(&p).ok().map(|id| (p, id))).collect();
        Health { files, writes: WriteHealth::default(), file_error: Mutex::new(None) }
    }

    /// `Err(reason)` when the database at the configured path is not the file open any more.
    /// Logs the change when it is new (and when it is over).
    pub fn check_file(&self) -> Result<(), String> {
        let problem = self.files.iter().find_map(|(path, opened)| match file_id(path) {
            Ok(id) if id == *opened => None,
            Ok(_) => Some(format!(
                "database file {} was replaced by another file while hookyard runs; events written now would be lost at restart",
                path.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "database file {} was deleted while hookyard runs; events written now would be lost at restart",
                path.display()
            )),
            Err(e) => Some(format!("cannot check database file {}: {e}", path.display())),
        });
        let mut state = self.file_error.lock().unwrap_or_else(|p| p.into_inner());
        match (&*state, &problem) {
            (None, Some(reason)) => {
                error!(%reason, "the store's database file is gone; refusing new events until it is restored or hookyard restarts")
            }
            (Some(_), None) => info!("the store's database file is back; accepting events again"),
            _ => {}
        }
        *state = problem.clone();
        problem.map_or(Ok(()), Err)
    }

    /// Records the outcome of a write that held events (or of a probe).
    pub fn record_write(&self, outcome: Result<(), &str>) {
        self.writes.record(outcome)
    }

    /// `Ok` when the file is the one open and the last write succeeded; else the reason.
    pub fn status(&self) -> Result<(), String> {
        self.check_file()?;
        self.writes.status()
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> std::io::Result<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Elsewhere the identity check is off: every file looks like the one opened.
#[cfg(not(unix))]
fn file_id(_path: &Path) -> std::io::Result<FileId> {
    Ok((0, 0))
}
