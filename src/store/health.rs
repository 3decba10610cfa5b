//! The outcome of a backend's last write that held events (an accept, or the writer's probe when
//! no event was written for a while), for readiness and for refusing events honestly: a store
//! that cannot write shows at once, and its recovery with the next write that succeeds.
//! Shared by the backends; each adds what only it can check (SQLite: its file's identity).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{error, info};

/// How long a writer goes without writing an event before it probes the store (a write, as an
/// accept would do), and so how long readiness may lag behind a store that went bad (or
/// recovered) while no event arrived.
pub const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct WriteHealth {
    /// Lock-free fast path of `error.is_none()`, so a healthy writer takes no lock.
    ok: AtomicBool,
    error: Mutex<Option<String>>,
}

impl Default for WriteHealth {
    fn default() -> Self {
        WriteHealth { ok: AtomicBool::new(true), error: Mutex::new(None) }
    }
}

impl WriteHealth {
    /// Records the outcome of a write that held events (or of a probe). Takes a lock only when
    /// the outcome is a failure or ends one; logs the change when it is new (and when it is over).
    pub fn record(&self, outcome: Result<(), &str>) {
        if outcome.is_ok() && self.ok.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(()) => {
                if state.take().is_some() {
                    info!("the store takes events again; ready");
                }
                self.ok.store(true, Ordering::Release);
            }
            Err(e) => {
                if state.is_none() {
                    error!(error = e, "the store cannot write events; not ready until a write succeeds");
                }
                *state = Some(format!("the last write failed: {e}"));
                self.ok.store(false, Ordering::Release);
            }
        }
    }

    /// `Ok` when the last write succeeded; else why not.
    pub fn status(&self) -> Result<(), String> {
        if self.ok.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }
}
