//! One plugin call: a fresh store and instance, the `host` imports, the deadline and memory
//! limit, and the checks on what the plugin returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{ComponentExportIndex, TypedFunc};
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

use super::chain::overlaid;
use super::engine::{Engine, one_line};
use super::{EventRef, Limits, LoadError, Outcome, Output, PluginError};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "plugins/wit/hookyard-plugin-0.1.0",
        exports: { default: async },
        // The event is lowered straight from borrowed data: no copy of the body or headers.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

use bindings::hookyard::plugin::{host, types};

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
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The `tracing` target of plugin log lines.
const GUEST_LOG_TARGET: &str = "hookyard::plugin::guest";
/// How many calls of a plugin run on a fiber after one of its calls was preempted (see
/// [`Mode`]). At most two ticks of work are thrown away per this many calls of a plugin that is
/// always slow; a plugin that was slow once, on a big event, goes back to direct calls.
pub(super) const YIELDING_CALLS_AFTER_PREEMPTION: u32 = 1000;

/// Headers that frame the request: the gateway sets them, a plugin may not.
const MANAGED_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// The `transform` export's type: the WIT event in, `result<outcome, plugin-error>` out.
type TransformFunc<'a> = TypedFunc<(types::Event<'a>,), (Result<types::Outcome, types::PluginError>,)>;

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
/// [`YIELDING_CALLS_AFTER_PREEMPTION`] calls then start in yielding mode. So plugin code never
/// holds a worker thread for more than about two ticks of CPU time.
///
/// "Computed" is the thread's CPU time, counted from the first tick the call sees, not the wall
/// time since it started: a call of a few microseconds that the OS deschedules for a
/// millisecond (for the store's writer thread, say) has not held the worker by itself, and
/// running it again on a fiber would only add to the cost. Under load, in end-to-end runs, that
/// happened once or twice a second, and each time sent the plugin's next 1000 calls to the fiber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Yielding,
}

pub(super) struct PluginInner {
    pub(super) name: String,
    pub(super) pre: bindings::TransformPre<State>,
    /// Where `transform` is among the component's exports, looked up once at load.
    pub(super) transform: ComponentExportIndex,
    /// Whether one instance's `transform` has passed wasmtime's type check. Every instance
    /// comes from the same component, so later calls skip the check, which walked the WIT
    /// types of the event and the outcome on every call (a tenth of a cold no-op call).
    pub(super) typechecked: AtomicBool,
    /// Calls left to run in [`Mode::Yielding`] since the last preemption; 0: direct.
    pub(super) yielding_calls: AtomicU32,
    pub(super) limits: Limits,
    pub(super) config: Vec<(String, String)>,
    pub(super) allowed_destinations: Vec<String>,
    pub(super) engine: Arc<Engine>,
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
    fn enabled(self) -> bool {
        match self {
            LogLevel::Debug => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::DEBUG),
            LogLevel::Info => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::INFO),
            LogLevel::Warn => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::WARN),
            LogLevel::Error => tracing::enabled!(target: GUEST_LOG_TARGET, tracing::Level::ERROR),
        }
    }

    /// Writes a plugin's line to `tracing`, tagged with the plugin's name.
    fn emit(self, plugin: &str, message: &str) {
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

/// The result of one call with what the plugin logged and how long it took, instance
/// creation included.
#[derive(Debug)]
pub struct RunReport {
    pub result: Result<super::Outcome, PluginError>,
    pub logs: Vec<GuestLog>,
    pub elapsed: Duration,
}

/// The data of one store, i.e. of one call.
pub(super) struct State {
    plugin: Arc<PluginInner>,
    limiter: Limiter,
    mode: Mode,
    /// The thread's CPU time at the first epoch tick this call saw (`None`: none yet).
    cpu_at_first_tick: Option<Duration>,
    deadline: Instant,
    logs_left: u32,
    /// Keep every line, not only those `tracing` would show (the caller captures them).
    keep_all_logs: bool,
    /// The call's log lines, written to `tracing` when it ends, not when they are logged, so
    /// that a preempted call's lines are not written twice.
    logs: Vec<GuestLog>,
}

/// Why the epoch callback stopped a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// The deadline has passed.
    DeadlineExceeded,
    /// A direct call has computed for a tick (see [`Mode`]).
    Preempted,
}

impl Interrupt {
    fn of(error: &wasmtime::Error) -> Option<Interrupt> {
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
/// reported as [`PluginError::MemoryLimit`] rather than as a bare trap.
struct Limiter {
    memory_bytes: usize,
    memory_exceeded: bool,
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

impl host::Host for State {
    fn log(&mut self, level: host::Level, mut message: String) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        truncate(&mut message, MAX_LOG_LINE_BYTES);
        if self.logs_left == 0 {
            message.push_str(" [log limit reached: further lines from this event are dropped]");
        }
        let level = match level {
            host::Level::Debug => LogLevel::Debug,
            host::Level::Info => LogLevel::Info,
            host::Level::Warn => LogLevel::Warn,
            host::Level::Error => LogLevel::Error,
        };
        if self.keep_all_logs || level.enabled() {
            self.logs.push(GuestLog { level, message });
        }
    }

    fn config(&mut self) -> Vec<(String, String)> {
        self.plugin.config.clone()
    }
}

/// What the `transform` export returns, or why the call failed.
type Called = wasmtime::Result<Result<types::Outcome, types::PluginError>>;

impl PluginInner {
    pub(super) fn new(
        name: String,
        pre: bindings::TransformPre<State>,
        limits: Limits,
        config: Vec<(String, String)>,
        allowed_destinations: Vec<String>,
        engine: Arc<Engine>,
    ) -> Result<PluginInner, LoadError> {
        Ok(PluginInner {
            name,
            transform: transform_index(&pre)?,
            typechecked: AtomicBool::new(false),
            yielding_calls: AtomicU32::new(0),
            pre,
            limits,
            config,
            allowed_destinations,
            engine,
        })
    }

    /// Whether the next call would start in yielding mode (see [`Mode`]).
    #[cfg(test)]
    pub(super) fn yields(&self) -> bool {
        self.yielding_calls.load(Ordering::Relaxed) > 0
    }

    /// Runs one call on `event` with the headers of `overlay` set on top of its own (a chain
    /// branch's); `allowed` is the set an output's destinations must be within (the route's, or
    /// a chain branch's narrower set).
    pub(super) async fn run(
        self: &Arc<Self>,
        event: EventRef<'_>,
        overlay: &[(String, String)],
        allowed: &[String],
        capture: Option<&mut Vec<GuestLog>>,
    ) -> Result<Outcome, PluginError> {
        let _permit = self.engine.permits.acquire().await.expect("the instance semaphore is never closed");
        let _ticking = self.engine.call_in_flight();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.limits.timeout_ms);
        let headers = overlay_headers(event.headers, overlay);
        let wit_event = || types::Event {
            id: event.id,
            source: event.source,
            received_at_ms: event.received_at_ms,
            method: event.method,
            path: event.path,
            headers: &headers,
            body: event.body,
        };

        let mut mode = self.next_mode();
        let (called, mut store) = loop {
            let mut store = self.store(mode, deadline, capture.is_some());
            let called = match mode {
                Mode::Direct => self.call_direct(&mut store, wit_event()),
                Mode::Yielding => self.call_yielding(&mut store, wit_event()).await,
            };
            match called {
                Err(error) if Interrupt::of(&error) == Some(Interrupt::Preempted) => {
                    self.preempted(started.elapsed());
                    mode = Mode::Yielding;
                }
                called => break (called, store),
            }
        };

        let logs = std::mem::take(&mut store.data_mut().logs);
        for line in &logs {
            line.level.emit(&self.name, &line.message);
        }
        if let Some(out) = capture {
            *out = logs;
        }
        match called {
            Ok(Ok(outcome)) => check_outcome(outcome, &self.limits, allowed),
            Ok(Err(types::PluginError { retryable, mut message })) => {
                truncate(&mut message, MAX_ERROR_MESSAGE_BYTES);
                Err(PluginError::Failed { retryable, message })
            }
            Err(error) => Err(classify(&error, store.data(), &self.limits)),
        }
    }

    /// A fresh store for one call: the plugin's memory limit, the deadline, and the epoch
    /// callback that enforces it (and preempts a direct call, see [`Mode`]).
    fn store(self: &Arc<Self>, mode: Mode, deadline: Instant, keep_all_logs: bool) -> Store<State> {
        let state = State {
            plugin: Arc::clone(self),
            limiter: Limiter { memory_bytes: (self.limits.memory_mb as usize) << 20, memory_exceeded: false },
            mode,
            cpu_at_first_tick: None,
            deadline,
            logs_left: MAX_LOG_LINES,
            keep_all_logs,
            logs: Vec::new(),
        };
        let mut store = Store::new(&self.engine.wasmtime, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(self.limits.host_copy_budget());
        // Called at every epoch tick.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if Instant::now() >= state.deadline {
                return Err(wasmtime::Error::new(Interrupt::DeadlineExceeded));
            }
            if state.mode == Mode::Yielding {
                return Ok(UpdateDeadline::Yield(1));
            }
            let cpu = thread_cpu_time();
            let first = *state.cpu_at_first_tick.get_or_insert(cpu);
            if cpu.saturating_sub(first) >= state.plugin.engine.config().tick {
                Err(wasmtime::Error::new(Interrupt::Preempted))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        store
    }

    fn call_direct(&self, store: &mut Store<State>, event: types::Event<'_>) -> Called {
        let instance = self.pre.instance_pre().instantiate(&mut *store)?;
        let (result,) = self.transform_func(store, &instance)?.call(&mut *store, (event,))?;
        Ok(result)
    }

    async fn call_yielding(&self, store: &mut Store<State>, event: types::Event<'_>) -> Called {
        let instance = self.pre.instance_pre().instantiate_async(&mut *store).await?;
        let (result,) = self.transform_func(store, &instance)?.call_async(&mut *store, (event,)).await?;
        Ok(result)
    }

    fn transform_func<'a>(
        &self,
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<TransformFunc<'a>> {
        let func = instance
            .get_func(&mut *store, self.transform)
            .ok_or_else(|| wasmtime::format_err!("the component has no `transform` function"))?;
        if self.typechecked.load(Ordering::Relaxed) {
            // SAFETY: `func` is the `transform` export of an instance of the same component
            // (`self.pre`) as the one whose `transform` passed `Func::typed` with these very
            // types below: a component's export types are fixed when it is compiled.
            return Ok(unsafe { TypedFunc::new_unchecked(func) });
        }
        let typed = func.typed(&*store)?;
        self.typechecked.store(true, Ordering::Relaxed);
        Ok(typed)
    }

    /// The mode of the next call: direct, unless a call was preempted in the last
    /// [`YIELDING_CALLS_AFTER_PREEMPTION`] calls. (Relaxed: two calls racing here may both
    /// count down; that changes nothing that matters.)
    fn next_mode(&self) -> Mode {
        match self.yielding_calls.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
            Ok(_) => Mode::Yielding,
            Err(_) => Mode::Direct,
        }
    }

    fn preempted(&self, after: Duration) {
        self.yielding_calls.store(YIELDING_CALLS_AFTER_PREEMPTION, Ordering::Relaxed);
        tracing::info!(
            plugin = %self.name,
            after_us = after.as_micros() as u64,
            "a plugin call ran past one epoch tick on a worker thread: running it again on a fiber, \
             as the plugin's next {YIELDING_CALLS_AFTER_PREEMPTION} calls will run"
        );
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

/// Where `transform` is among `pre`'s exports (`TransformPre::new` checked that it is there).
fn transform_index(pre: &bindings::TransformPre<State>) -> Result<ComponentExportIndex, LoadError> {
    let found = || "exports no `transform` function".to_string();
    pre.instance_pre()
        .component()
        .get_export_index(None, "transform")
        .ok_or_else(|| LoadError::WrongWorld { found: found() })
}

/// `base` overlaid with `top` (see [`overlaid`]), as borrowed pairs for lowering.
fn overlay_headers<'a>(base: &'a [(String, String)], top: &'a [(String, String)]) -> Vec<(&'a str, &'a str)> {
    overlaid(base, top).map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Names a failed call: the deadline, the memory limit, the copy budget, a trap, or else output
/// the canonical ABI could not lift (bad UTF-8, out-of-bounds lists, bad discriminants).
/// How wasmtime says a call's copy budget (`Store::set_hostcall_fuel`) ran out; its error type
/// is private. `hostile_plugins_fail_precisely_while_good_events_flow` pins it.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

fn classify(error: &wasmtime::Error, state: &State, limits: &Limits) -> PluginError {
    if Interrupt::of(error) == Some(Interrupt::DeadlineExceeded) {
        PluginError::Timeout { ms: limits.timeout_ms }
    } else if state.limiter.memory_exceeded {
        PluginError::MemoryLimit { mb: limits.memory_mb }
    } else if error.chain().any(|e| e.to_string().contains(HOSTCALL_FUEL_EXHAUSTED)) {
        PluginError::TooMuchData { limit: limits.host_copy_budget() }
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        PluginError::Trap(trap.to_string())
    } else {
        PluginError::Malformed(one_line(error))
    }
}

fn check_outcome(outcome: types::Outcome, limits: &Limits, allowed: &[String]) -> Result<Outcome, PluginError> {
    let outputs = match outcome {
        types::Outcome::Drop(mut reason) => {
            truncate(&mut reason, MAX_DROP_REASON_BYTES);
            return Ok(Outcome::Drop(reason));
        }
        types::Outcome::Emit(outputs) if outputs.is_empty() => {
            return Ok(Outcome::Drop("no outputs".to_string()));
        }
        types::Outcome::Emit(outputs) => outputs,
    };
    if outputs.len() > limits.max_outputs {
        return Err(PluginError::TooManyOutputs { count: outputs.len(), limit: limits.max_outputs });
    }
    let outputs: Vec<Output> = outputs
        .into_iter()
        .enumerate()
        .map(|(index, output)| check_output(index, output, limits, allowed))
        .collect::<Result<_, _>>()?;
    let total = outputs.iter().map(Output::size).sum();
    if total > limits.max_total_output_bytes {
        return Err(PluginError::OutputsTooLarge { total, limit: limits.max_total_output_bytes });
    }
    Ok(Outcome::Emit(outputs))
}

fn check_output(
    index: usize,
    output: types::Output,
    limits: &Limits,
    allowed: &[String],
) -> Result<Output, PluginError> {
    let size = output.body.len() + output.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    if size > limits.max_output_bytes {
        return Err(PluginError::OutputTooLarge { index, size, limit: limits.max_output_bytes });
    }
    if let Some(destinations) = &output.destinations {
        if destinations.is_empty() {
            return Err(PluginError::Malformed(format!(
                "output {index} has an empty destination list (drop the event to deliver nothing)"
            )));
        }
        if let Some(name) = destinations.iter().find(|d| !allowed.contains(d)) {
            return Err(PluginError::BadDestination { name: name.clone(), allowed: allowed.to_vec() });
        }
    }
    for (name, value) in &output.headers {
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| PluginError::Malformed(format!("output {index}: `{name}` is not a valid header name")))?;
        if MANAGED_HEADERS.contains(&header.as_str()) {
            return Err(PluginError::Malformed(format!(
                "output {index}: header `{name}` is set by the gateway, not by plugins"
            )));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(PluginError::Malformed(format!(
                "output {index}: the value of header `{name}` has characters not allowed in a header"
            )));
        }
    }
    Ok(Output { destinations: output.destinations, headers: output.headers, body: output.body.into() })
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}
