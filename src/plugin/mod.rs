//! WebAssembly transform plugins: the host side.
//!
//! A plugin is a WebAssembly **component** for the `hookyard:plugin/transform@0.1.0` world
//! (`plugins/wit/hookyard-plugin-0.1.0/plugin.wit`). [`PluginHost`] owns the one wasmtime
//! `Engine` of the process; [`PluginHost::load`] compiles a component once (or loads it from the
//! compiled-code cache) and checks its world; [`Plugin::run`] runs it on one event in a **fresh
//! store and instance**, so no state leaks from one event to the next, under a wall-clock
//! deadline (epoch interruption) and a memory limit, then checks what it returned against the
//! route (destinations, sizes, headers).
//! [`run_chain`] runs several plugins in a row, fanning out on splits.
//!
//! This is the only module that names wasmtime types: nothing wasmtime-shaped crosses its API.
//! It does no network or file IO on the request path (files are read by `load` only), and it
//! gives plugins no WASI: a component can import nothing but the `host` interface.
//!
//! Failures are the plugin's fault and are reported per event as a [`PluginError`] with a precise
//! reason; nothing a plugin does can take the gateway down or affect another event.

mod chain;
mod engine;
mod error;
mod run;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use chain::{ChainError, run_chain};
pub use error::{LoadError, PluginError};
pub use run::{GuestLog, LogLevel, RunReport};

/// The WIT world every plugin must target.
pub const WORLD: &str = "hookyard:plugin/transform@0.1.0";

/// Largest plugin file read, in bytes: 64 MiB. A Rust plugin built by `plugins/build.sh` is a
/// few hundred KiB and a large one with its dependencies a few MiB; the limit stops a path that
/// points at something else (a disk image, a log) from being read whole into memory.
pub const MAX_PLUGIN_FILE_BYTES: u64 = 64 << 20;

/// Reads a plugin file: a regular file of at most [`MAX_PLUGIN_FILE_BYTES`], its size checked
/// before reading. A device such as `/dev/zero`, a pipe or a directory is refused unread.
pub fn read_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    use crate::config::{ReadError, Regular, read_limited};
    read_limited(path, MAX_PLUGIN_FILE_BYTES, Regular::Required, "a plugin file").map_err(|e| match e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => LoadError::NotFound,
        ReadError::Io(e) => LoadError::Unreadable(e.to_string()),
        ReadError::NotRegular(kind) => LoadError::NotRegular(kind.to_string()),
        ReadError::TooLarge { size, limit, .. } => LoadError::TooLarge { size, limit },
    })
}

/// Settings of the process-wide plugin runtime. [`PluginHost::new`] uses the defaults.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where compiled plugins are cached, keyed by the sha256 of the `.wasm` file and the engine
    /// configuration, so restarts and reloads skip recompiling unchanged plugins (compiling takes
    /// 0.1-1 s per plugin). `None`: compile on every load. The files in it are trusted native
    /// code: the directory must be writable only by the gateway's user.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin instances may exist at once, across all plugins: the size of wasmtime's
    /// instance pool, and of the semaphore in front of it (an event waits for a free slot rather
    /// than failing). 128 covers the concurrency two cores can usefully drive with room for
    /// slow plugins; each slot reserves address space, not memory.
    pub max_instances: u32,
    /// The largest `memory_mb` a plugin's limits may ask for. Default 256.
    pub max_memory_mb: u64,
    /// The epoch tick: deadlines are checked this often, so a timeout fires at most about one
    /// tick late; a call that has computed for a tick on a worker thread moves to a fiber that
    /// yields the thread at every tick.
    /// Default 1 ms.
    pub tick: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig { cache_dir: None, max_instances: 128, max_memory_mb: 256, tick: Duration::from_millis(1) }
    }
}

/// The plugin runtime: one per process. Create it only if some route has a transform (it runs a
/// ticker thread). Cloning is cheap and shares the engine.
#[derive(Clone)]
pub struct PluginHost {
    engine: Arc<engine::Engine>,
}

impl PluginHost {
    /// A host with [`HostConfig`]'s defaults and this compiled-code cache directory (created if
    /// missing).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginHost, String> {
        PluginHost::with_config(HostConfig { cache_dir, ..HostConfig::default() })
    }

    pub fn with_config(config: HostConfig) -> Result<PluginHost, String> {
        Ok(PluginHost { engine: Arc::new(engine::Engine::new(config)?) })
    }

    /// Compiles (or loads from the cache) the component at `path` and checks that it targets
    /// [`WORLD`]. `config` is the route's `config:` map for it, `allowed_destinations` the route's
    /// destination names: an output naming any other fails the event with
    /// [`PluginError::BadDestination`].
    ///
    /// Blocking and CPU-heavy (compilation): call it at startup or from `spawn_blocking`,
    /// never on a request.
    pub fn load(
        &self,
        path: &Path,
        config: Vec<(String, String)>,
        limits: Limits,
        allowed_destinations: Vec<String>,
    ) -> Result<Plugin, LoadError> {
        limits.check(self.engine.config().max_memory_mb).map_err(LoadError::BadLimits)?;
        let pre = self.engine.load(path)?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let inner = run::PluginInner::new(name, pre, limits, config, allowed_destinations, self.engine.clone())?;
        Ok(Plugin { inner: Arc::new(inner) })
    }

    /// The same as [`load`](Self::load) for a component already in memory; `name` is used in
    /// logs. For tests and tools.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        config: Vec<(String, String)>,
        limits: Limits,
        allowed_destinations: Vec<String>,
    ) -> Result<Plugin, LoadError> {
        limits.check(self.engine.config().max_memory_mb).map_err(LoadError::BadLimits)?;
        let pre = self.engine.load_bytes(bytes)?;
        let inner =
            run::PluginInner::new(name.to_string(), pre, limits, config, allowed_destinations, self.engine.clone())?;
        Ok(Plugin { inner: Arc::new(inner) })
    }
}

/// Per-plugin limits (routes.yaml: `limits:` under a transform). Every one is enforced per event.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Wall-clock deadline for one call, instantiation included. Default 50 ms: reshaping a 1 KiB
    /// event takes tens of microseconds, so 50 ms leaves room for slow machines and bodies of
    /// several hundred KiB while bounding what a looping plugin costs. Range 1..=60000.
    pub timeout_ms: u64,
    /// Linear memory a plugin may grow to. Default 16 MiB: a Rust plugin needs ~1 MiB of stack
    /// plus a few copies of a body that the ingress caps at 1 MiB. Range 1..=the host's
    /// `max_memory_mb`; plugins built by `plugins/build.sh` start with 2 MiB.
    pub memory_mb: u64,
    /// Largest single output: body plus header names and values. Default 1 MiB, the ingress
    /// body limit, so a transform cannot amplify what a sender may send.
    pub max_output_bytes: usize,
    /// Most outputs one call (or one chain step, across its branches) may emit. Default 100.
    pub max_outputs: usize,
    /// Largest total of all outputs of one call (or one chain step, across its branches):
    /// bodies plus header names and values. Default 4 MiB. Each output is stored with every
    /// delivery it makes, so without it a split of 100 outputs of 1 MiB stores 100 MiB per
    /// event; 4 MiB lets a split fan an event out widely, or reshape a large one a few times,
    /// while one event stays within a few times what a sender may send.
    pub max_total_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 50,
            memory_mb: 16,
            max_output_bytes: 1 << 20,
            max_outputs: 100,
            max_total_output_bytes: 4 << 20,
        }
    }
}

impl Limits {
    /// The most a call may hand the host to copy (its outputs, a log line, its error), in
    /// bytes: 4 × `max_total_output_bytes` + 1 MiB (17 MiB by default). The outputs are copied
    /// out of the plugin's memory before they can be checked, and 100 outputs may all point at
    /// the same 16 MiB: without a budget one call could make the host allocate 1.6 GiB (wasmtime
    /// stops at 128 MiB by itself). Up to 4 × the limit, the event fails with the outputs'
    /// exact total; beyond, copying stops and it fails as [`PluginError::TooMuchData`].
    pub fn host_copy_budget(&self) -> usize {
        self.max_total_output_bytes.saturating_mul(4).saturating_add(1 << 20)
    }

    fn check(&self, max_memory_mb: u64) -> Result<(), String> {
        let mut problems = Vec::new();
        if !(1..=60_000).contains(&self.timeout_ms) {
            problems.push(format!("timeout_ms must be 1..=60000, not {}", self.timeout_ms));
        }
        if !(1..=max_memory_mb).contains(&self.memory_mb) {
            problems.push(format!("memory_mb must be 1..={max_memory_mb}, not {}", self.memory_mb));
        }
        if self.max_output_bytes == 0 {
            problems.push("max_output_bytes must be at least 1".to_string());
        }
        if self.max_outputs == 0 {
            problems.push("max_outputs must be at least 1".to_string());
        }
        if self.max_total_output_bytes == 0 {
            problems.push("max_total_output_bytes must be at least 1".to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

/// A loaded plugin, ready to run: compiled code, its route's config, limits and destinations.
/// Cheap to clone; share it between requests.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<run::PluginInner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.inner.name).field("limits", &self.inner.limits).finish()
    }
}

impl Plugin {
    /// The file stem of the `.wasm` file (`plugins/dist/redact.wasm` → `redact`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Runs the plugin on one event in a fresh instance, with its deadline and memory limit.
    ///
    /// The wasm runs on the calling task: directly on its thread while it computes for less than
    /// an epoch tick (the common case, and the cheapest), else on a fiber that yields the worker
    /// thread at every tick (see `run::Mode`), and it is stopped at its deadline either way: it
    /// never computes on a tokio worker for more than about two ticks. Waits for a free instance
    /// slot first.
    pub async fn run(&self, event: &PluginEvent) -> Result<Outcome, PluginError> {
        self.inner.run(event.into(), &[], &self.inner.allowed_destinations, None).await
    }

    /// [`run`](Self::run), also returning the plugin's log lines and the time the call took
    /// (for `hookyard plugin test` and `dry-run`). The lines also go to `tracing` as usual.
    pub async fn run_report(&self, event: &PluginEvent) -> RunReport {
        let mut logs = Vec::new();
        let start = std::time::Instant::now();
        let result = self.inner.run(event.into(), &[], &self.inner.allowed_destinations, Some(&mut logs)).await;
        RunReport { result, logs, elapsed: start.elapsed() }
    }
}

/// One event as a plugin sees it (`event` in the WIT).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginEvent {
    pub id: String,
    /// The name of the source that received it.
    pub source: String,
    /// Milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A [`PluginEvent`] made of borrowed parts, for callers that already hold them (the request
/// path): a call lowers these straight into the plugin's memory, copying nothing on the way.
#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub received_at_ms: u64,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a Bytes,
}

impl<'a> From<&'a PluginEvent> for EventRef<'a> {
    fn from(event: &'a PluginEvent) -> Self {
        EventRef {
            id: &event.id,
            source: &event.source,
            received_at_ms: event.received_at_ms,
            method: &event.method,
            path: &event.path,
            headers: &event.headers,
            body: &event.body,
        }
    }
}

/// What a plugin decided, after the host checked it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// One or more outputs (never empty: a plugin that emits nothing is reported as a drop).
    Emit(Vec<Output>),
    /// Deliver nothing; the reason is the plugin's (a metric label), at most 128 bytes.
    Drop(String),
}

/// One request to send on.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `None`: the route's destinations. `Some`: a non-empty subset of them (checked).
    pub destinations: Option<Vec<String>>,
    /// Headers to add to, or replace on, the outgoing request (names and values checked; the
    /// plugin may not set the framing headers the gateway manages, such as Content-Length).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Output {
    /// What the output counts towards `max_output_bytes` and `max_total_output_bytes`: its body
    /// plus its header names and values.
    pub fn size(&self) -> usize {
        self.body.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}
