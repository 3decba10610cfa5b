//! The live state of a running gateway: the config snapshot in force and the dispatcher (which
//! owns the store). `server`, `admin` and `reload` read and change it; only `app` builds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::delivery::Dispatcher;
use crate::snapshot::{Plugins, Snapshot};

pub struct State {
    /// The config in force. A request loads it once at its start and uses that one to its end;
    /// a reload swaps in a new one.
    pub snapshot: ArcSwap<Snapshot>,
    pub dispatcher: Dispatcher,
    /// The plugin host every build of this gateway (start, reloads) loads transforms with.
    pub plugins: Arc<Plugins>,
    /// Set when shutdown begins: readiness answers 503 from then on.
    shutting_down: AtomicBool,
    /// The instances sharing the store, as the last heartbeat saw them (`None`: SQLite, or no
    /// heartbeat yet).
    pub cluster: std::sync::Mutex<Option<super::cluster::ClusterView>>,
}

impl State {
    pub fn new(snapshot: Snapshot, dispatcher: Dispatcher, plugins: Arc<Plugins>) -> Arc<State> {
        Arc::new(State {
            snapshot: ArcSwap::from_pointee(snapshot),
            dispatcher,
            plugins,
            shutting_down: AtomicBool::new(false),
            cluster: std::sync::Mutex::new(None),
        })
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}
