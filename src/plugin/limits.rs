//! Every limit of the plugin host: the process-wide settings ([`HostConfig`]), each plugin's
//! [`Limits`] from routes.yaml, and the fixed caps on what one call may hand back (log lines,
//! drop reasons, error messages, tables), with [`truncate`], which applies the byte caps.

use std::path::PathBuf;
use std::time::Duration;

/// Most log lines one event may write; the rest are dropped (a looping `log` call must not
/// flood the gateway's log).
pub const MAX_LOG_LINES: u32 = 100;
/// Longest log line kept, in bytes; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// Longest drop reason kept, in bytes: it becomes a metric label.
pub const MAX_DROP_REASON_BYTES: usize = 128;
/// Longest plugin error message kept, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;
/// Most table elements an instance may grow to (a Rust plugin needs a few hundred).
pub(super) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Settings of the process-wide plugin runtime. [`PluginHost::new`](super::PluginHost::new) uses
/// the defaults.
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
    /// exact total; beyond, copying stops and it fails as
    /// [`PluginError::TooMuchData`](super::PluginError::TooMuchData).
    pub fn host_copy_budget(&self) -> usize {
        self.max_total_output_bytes.saturating_mul(4).saturating_add(1 << 20)
    }

    pub(super) fn check(&self, max_memory_mb: u64) -> Result<(), String> {
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

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub(super) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
