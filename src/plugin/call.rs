//! One plugin call: the plugin as loaded ([`PluginInner`]), a fresh store and instance per
//! call, the call modes (direct, or yielding on a fiber after a preemption: see
//! [`Mode`](super::state::Mode)), and naming why a call failed. What the plugin returned is
//! checked by `output.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;
use wasmtime::Trap;
use wasmtime::component::{ComponentExportIndex, TypedFunc};

use super::bindings::{self, hookyard::plugin::types};
use super::engine::{Engine, one_line};
use super::error::{LoadError, PluginError};
use super::event::{EventRef, Outcome, PluginEvent};
use super::limits::{Limits, MAX_LOG_LINES};
use super::output;
use super::state::{GuestLog, Interrupt, Limiter, Mode, State};

/// How many calls of a plugin run on a fiber after one of its calls was preempted (see
/// [`Mode`]). At most two ticks of work are thrown away per this many calls of a plugin that is
/// always slow; a plugin that was slow once, on a big event, goes back to direct calls.
pub(super) const YIELDING_CALLS_AFTER_PREEMPTION: u32 = 1000;

/// A loaded plugin, ready to run: compiled code, its route's config, limits and destinations.
/// Cheap to clone; share it between requests.
#[derive(Clone)]
pub struct Plugin {
    pub(super) inner: Arc<PluginInner>,
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
    /// thread at every tick (see `state::Mode`), and it is stopped at its deadline either way: it
    /// never computes on a tokio worker for more than about two ticks. Waits for a free instance
    /// slot first.
    pub async fn run(&self, event: &PluginEvent) -> Result<Outcome, PluginError> {
        self.inner.run(event.into(), &[], &self.inner.allowed_destinations, None).await
    }

    /// [`run`](Self::run), also returning the plugin's log lines and the time the call took
    /// (for `hookyard plugin test` and `dry-run`). The lines also go to `tracing` as usual.
    pub async fn run_report(&self, event: &PluginEvent) -> RunReport {
        let mut logs = Vec::new();
        let start = Instant::now();
        let result = self.inner.run(event.into(), &[], &self.inner.allowed_destinations, Some(&mut logs)).await;
        RunReport { result, logs, elapsed: start.elapsed() }
    }
}

/// The result of one call with what the plugin logged and how long it took, instance
/// creation included.
#[derive(Debug)]
pub struct RunReport {
    pub result: Result<Outcome, PluginError>,
    pub logs: Vec<GuestLog>,
    pub elapsed: Duration,
}

/// A loaded plugin: its compiled component, where its `transform` is, its route's settings,
/// and the state of its call mode.
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
    /// The route's `config:` map for the plugin, shared with each call's store.
    pub(super) config: Arc<[(String, String)]>,
    pub(super) allowed_destinations: Vec<String>,
    pub(super) engine: Arc<Engine>,
}

/// The `transform` export's type: the WIT event in, `result<outcome, plugin-error>` out.
type TransformFunc<'a> = TypedFunc<(types::Event<'a>,), (Result<types::Outcome, types::PluginError>,)>;

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
            config: config.into(),
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
        &self,
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
            Ok(returned) => output::check(returned, &self.limits, allowed),
            Err(error) => Err(classify(&error, store.data(), &self.limits)),
        }
    }

    /// A fresh store for one call: the plugin's memory limit, the deadline, and the epoch
    /// callback that enforces it (and preempts a direct call, see [`Mode`]).
    fn store(&self, mode: Mode, deadline: Instant, keep_all_logs: bool) -> Store<State> {
        let state = State {
            config: Arc::clone(&self.config),
            tick: self.engine.config().tick,
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
        store.epoch_deadline_callback(|mut ctx| ctx.data_mut().on_tick());
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

/// How wasmtime says a call's copy budget (`Store::set_hostcall_fuel`) ran out; its error type
/// is private. `hostile_plugins_fail_precisely_while_good_events_flow` pins it.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Names a failed call: the deadline, the memory limit, the copy budget, a trap, or else output
/// the canonical ABI could not lift (bad UTF-8, out-of-bounds lists, bad discriminants).
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

/// The headers of `base` that `top` does not replace (names compare case-insensitively), then
/// those of `top`.
pub(super) fn overlaid<'a>(
    base: &'a [(String, String)],
    top: &'a [(String, String)],
) -> impl Iterator<Item = &'a (String, String)> {
    base.iter().filter(|(k, _)| !top.iter().any(|(t, _)| t.eq_ignore_ascii_case(k))).chain(top)
}
