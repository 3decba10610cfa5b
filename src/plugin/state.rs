//! The data of one store, i.e. of one call ([`State`]): the plugin's `config:` for the `config`
//! import, its log lines, its memory limit ([`Limiter`]), its deadline and how it runs
//! ([`Mode`]), and the epoch callback that enforces the deadline and preempts a direct call
//! ([`State::on_tick`]). Knows nothing of the plugin that made it: `call.rs` builds one per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, UpdateDeadline};

use super::limits::MAX_TABLE_ELEMENTS;

/// The `tracing` target of plugin log lines.
const GUEST_LOG_TARGET: &str = "hookyard::plugin::guest";

/// How a call runs.
///
/// - `Direct`: on the calling thread, like any other function. The common case: a call takes
///   microseconds, and a fiber (wasmtime's async mode) cost 6 to 20 µs of CPU per event on
///   top in end-to-end A/B runs (switching stacks, and the cache misses of a second stack).
/// - `Yielding`: on a fiber, handing the worker thread back to the runtime at every epoch tick,
///   so a slow plugin cannot hold a worker.
///
/// A direct call that has computed for a tick is preempted: stopped, thrown away (a plugin call
/// has no effects but its result and its log lines, which are held until the call ends) and run
/// again from the start in yielding mode, under the same deadline. The plugin's next
/// `YIELDING_CALLS_AFTER_PREEMPTION` calls then start in yielding mode (`call.rs` keeps the
/// count). So plugin code never holds a worker thread for more than about two ticks of CPU time.
///
/// "Computed" is the thread's CPU time, counted from the first tick the call sees, not the wall
/// time since it started: a call of a few microseconds that the OS deschedules for a
/// millisecond (for the store's writer thread, say) has not held the worker by itself, and
/// running it again on a fiber would only add to the cost. Under load, in end-to-end runs, that
/// happened once or twice a second, and each time sent the plugin's next 1000 calls to the fiber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Direct,
    Yielding,
}

/// The data of one store, i.e. of one call.
pub(super) struct State {
    /// The route's `config:` map for the plugin, handed out by the `config` import.
    pub(super) config: Arc<[(String, String)]>,
    /// The engine's epoch tick: how much CPU time a direct call may take (see [`Mode`]).
    pub(super) tick: Duration,
    pub(super) limiter: Limiter,
    pub(super) mode: Mode,
    /// The thread's CPU time at the first epoch tick this call saw (`None`: none yet).
    pub(super) cpu_at_first_tick: Option<Duration>,
    pub(super) deadline: Instant,
    pub(super) logs_left: u32,
    /// Keep every line, not only those `tracing` would show (the caller captures them).
    pub(super) keep_all_logs: bool,
    /// The call's log lines, written to `tracing` when it ends, not when they are logged, so
    /// that a preempted call's lines are not written twice.
    pub(super) logs: Vec<GuestLog>,
}

impl State {
    /// The epoch callback, called at every tick: stops the call at its deadline, lets a
    /// yielding call yield, and preempts a direct call that has computed for a tick.
    pub(super) fn on_tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        if Instant::now() >= self.deadline {
            return Err(wasmtime::Error::new(Interrupt::DeadlineExceeded));
        }
        if self.mode == Mode::Yielding {
            return Ok(UpdateDeadline::Yield(1));
        }
        let cpu = thread_cpu_time();
        let first = *self.cpu_at_first_tick.get_or_insert(cpu);
        if cpu.saturating_sub(first) >= self.tick {
            Err(wasmtime::Error::new(Interrupt::Preempted))
        } else {
            Ok(UpdateDeadline::Continue(1))
        }
    }
}

/// Why the epoch callback stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Interrupt {
    /// The deadline has passed.
    DeadlineExceeded,
    /// A direct call has computed for a tick (see [`Mode`]).
    Preempted,
}

impl Interrupt {
    pub(super) fn of(error: &wasmtime::Error) -> Option<Interrupt> {
        error.downcast_ref::<Interrupt>().copied()
    }
}

impl std::fmt::Display for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupt::DeadlineExceeded => "deadline exceeded",
            Interrupt::Preempted => "preempted, to be run again on a fiber",
        })
    }
}

impl std::error::Error for Interrupt {}

/// Refuses memory growth past the plugin's limit and remembers that it did: the guest sees a
/// failed `memory.grow` (as wasm specifies) and usually traps soon after, which is then
/// reported as [`PluginError::MemoryLimit`](super::PluginError::MemoryLimit) rather than as a
/// bare trap.
pub(super) struct Limiter {
    pub(super) memory_bytes: usize,
    pub(super) memory_exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory_bytes;
        self.memory_exceeded |= !ok;
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The CPU time the calling thread has used: a system call (not in the vDSO), so it is read at
/// epoch ticks, never once per call. Elsewhere than Linux, wall time stands in for it.
fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// A plugin's log line, as captured by [`Plugin::run_report`](super::Plugin::run_report).
#[derive(Debug, Clone, PartialEq)]
pub struct GuestLog {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Whether `tracing` would write a plugin line of this level.
    pub(super) fn enabled(self) -> bool {
        match self {
            LogLevel::Debug => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::DEBUG),
            LogLevel::Info => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::INFO),
            LogLevel::Warn => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::WARN),
            LogLevel::Error => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::ERROR),
        }
    }

    /// Writes a plugin's line to `tracing`, tagged with the plugin's name.
    pub(super) fn emit(self, plugin: &str, message: &str) {
        match self {
            LogLevel::Debug => tracing::debug!(target: GUEST_LOG_TARGET, plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: GUEST_LOG_TARGET, plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: GUEST_LOG_TARGET, plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: GUEST_LOG_TARGET, plugin, "{message}"),
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}
