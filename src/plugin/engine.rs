//! The process-wide wasmtime engine: its configuration (pooling allocator, copy-on-write memory
//! images, epoch interruption), the epoch ticker thread, the linker (`host.rs`), and compiling
//! components through the on-disk cache into a [`TransformPre`](bindings::TransformPre) checked
//! against the world.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::bindings;
use super::error::LoadError;
use super::host::{self, ALLOWED_IMPORTS};
use super::limits::HostConfig;
use super::state::State;

pub(super) struct Engine {
    pub(super) wasmtime: wasmtime::Engine,
    linker: Linker<State>,
    /// One permit per instance slot of the pool.
    pub(super) permits: Semaphore,
    config: HostConfig,
    ticker: Ticker,
    /// Hex sha256 of wasmtime's precompile-compatibility hash: part of every cache key, so a
    /// different wasmtime version or engine setting never loads another's compiled code.
    engine_key: String,
}

impl Engine {
    pub(super) fn new(config: HostConfig) -> Result<Engine, String> {
        let slots = config.max_instances.max(1);
        // How a used memory slot is reset for the next instance. With the PAGEMAP_SCAN ioctl
        // (Linux 6.7+), wasmtime finds the pages the instance wrote and zeroes up to this much
        // of them in place: no madvise, so no TLB shootdown per call and no page faults in the
        // next instance (measured: about half the cost of a no-op call). Without it, this much
        // would be memset whether written or not, which costs more than madvise: use none.
        let keep_resident = if PoolingAllocationConfig::is_pagemap_scan_available() { 1 << 20 } else { 0 };
        let mut pool = PoolingAllocationConfig::new();
        // A component built by wit-bindgen + wasm-component-ld instantiates three core modules
        // (the code, plus the shim and fixup modules that wire the lowered imports), with one
        // memory and two tables; leave headroom for hand-written components.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_core_instances_per_component(8)
            .max_memories_per_component(1)
            .max_tables_per_component(4)
            .max_memory_size((config.max_memory_mb as usize) << 20)
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(keep_resident)
            .table_keep_resident(keep_resident.min(16 << 10));

        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(512 << 10)
            .async_stack_size(1 << 20)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&wasm).map_err(|e| format!("cannot start the plugin engine: {e:#}"))?;

        let linker = host::linker(&wasmtime)?;

        let mut hasher = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&wasmtime.precompile_compatibility_hash(), &mut hasher);
        let engine_key = hex::encode(&hasher.0.finalize()[..16]);

        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create the plugin cache directory {}: {e}", dir.display()))?;
        }
        let ticker = Ticker::spawn(&wasmtime, config.tick)?;
        Ok(Engine { wasmtime, linker, permits: Semaphore::new(slots as usize), config, ticker, engine_key })
    }

    /// Counts a call as in flight until the guard drops (cancelled calls included): the epoch
    /// ticker runs while any call is, and sleeps otherwise. Take it before the store is made.
    pub(super) fn call_in_flight(&self) -> InFlight<'_> {
        if self.ticker.shared.in_flight.fetch_add(1, Ordering::SeqCst) == 0 {
            self.ticker.thread.unpark();
        }
        InFlight(self)
    }

    /// Epoch ticks so far (for tests of the ticker).
    #[cfg(test)]
    pub(super) fn ticks(&self) -> u64 {
        self.ticker.shared.ticks.load(Ordering::SeqCst)
    }

    pub(super) fn config(&self) -> &HostConfig {
        &self.config
    }

    pub(super) fn load_bytes(&self, bytes: &[u8]) -> Result<bindings::TransformPre<State>, LoadError> {
        check_header(bytes)?;
        let component = self.compile(bytes)?;
        self.check_world(&component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::WrongWorld { found: one_line(&e) })?;
        bindings::TransformPre::new(pre).map_err(|e| LoadError::WrongWorld { found: one_line(&e) })
    }

    /// Compiles, going through the cache directory when there is one. A cache that cannot be
    /// read or written costs a recompile and a warning, never a failed load.
    fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let compile =
            |bytes: &[u8]| self.wasmtime.precompile_component(bytes).map_err(|e| LoadError::Compile(one_line(&e)));
        let deserialize = |compiled: &[u8]| {
            // SAFETY: `compiled` was produced by `precompile_component` on this engine just now.
            unsafe { Component::deserialize(&self.wasmtime, compiled) }.map_err(|e| LoadError::Compile(one_line(&e)))
        };
        let Some(dir) = &self.config.cache_dir else { return deserialize(&compile(bytes)?) };

        let path = self.cache_path(dir, bytes);
        if path.is_file() {
            // SAFETY: the cache directory is the gateway's own (documented on `cache_dir`), files
            // are written whole by rename, and the key covers the wasm bytes and the engine.
            match unsafe { Component::deserialize_file(&self.wasmtime, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %one_line(&error), "ignoring unusable cached plugin code")
                }
            }
        }
        let compiled = compile(bytes)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if let Err(error) = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), %error, "cannot write the plugin cache");
        }
        deserialize(&compiled)
    }

    fn cache_path(&self, dir: &Path, bytes: &[u8]) -> PathBuf {
        dir.join(format!("{}-{}.cwasm", hex::encode(Sha256::digest(bytes)), self.engine_key))
    }

    /// Names what is wrong with a component's imports and exports in terms of the WIT world,
    /// before the linker's less readable type-check.
    fn check_world(&self, component: &Component) -> Result<(), LoadError> {
        let ty = component.component_type();
        let mut problems: Vec<String> = ty
            .imports(&self.wasmtime)
            .map(|(name, _)| name)
            .filter(|name| !ALLOWED_IMPORTS.contains(name))
            .map(|name| format!("imports `{name}`, which plugins do not get (only `{}`)", ALLOWED_IMPORTS[0]))
            .collect();
        if ty.get_export(&self.wasmtime, "transform").is_none() {
            let exports: Vec<String> = ty.exports(&self.wasmtime).map(|(name, _)| format!("`{name}`")).collect();
            let exports = if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") };
            problems.push(format!("exports no `transform` function (it exports {exports})"));
        }
        if problems.is_empty() { Ok(()) } else { Err(LoadError::WrongWorld { found: problems.join("; ") }) }
    }
}

/// Tells a component from a core module, and both from things that are not WebAssembly, by the
/// 8-byte preamble: `\0asm` then version 1 layer 0 (module) or version 0x0d layer 1 (component).
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if let Some(rest) = bytes.strip_prefix(b"\0asm") {
        return match rest.get(..4) {
            Some([1, 0, 0, 0]) => Err(LoadError::CoreModule),
            Some(_) => Ok(()), // a component, or an unknown version the compiler will name
            None => Err(LoadError::NotWasm("the file ends inside the WebAssembly header".into())),
        };
    }
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]);
    let why = if bytes.starts_with(b"\x7fELF") {
        "this is native code (a precompiled .cwasm or a shared library), not a .wasm component"
    } else if bytes.is_empty() {
        "the file is empty"
    } else if text.trim_start().starts_with('(') || text.trim_start().starts_with(";;") {
        "this is WebAssembly text (.wat): build a binary component (see plugins/README.md)"
    } else {
        "it does not start with the WebAssembly magic bytes \\0asm"
    };
    Err(LoadError::NotWasm(why.into()))
}

/// The thread that advances the engine's epoch every `tick` while calls come: a plain OS
/// thread, not a tokio task, so that a busy runtime cannot delay deadlines. After
/// [`IDLE_TICKS`] ticks in a row with no call in flight it parks, so an idle gateway does not
/// wake a thousand times a second; the next call unparks it, and that call's first tick comes
/// a tick later, as it would have. Under load it never parks, so calls never pay for waking it
/// (an unpark of a thread that is not parked is one atomic swap). It stops once the engine is
/// gone (it looks at least every [`IDLE_RECHECK`]).
struct Ticker {
    thread: Thread,
    shared: Arc<TickerShared>,
}

#[derive(Default)]
struct TickerShared {
    in_flight: AtomicUsize,
    ticks: AtomicU64,
}

/// Ticks in a row with no call in flight before the ticker parks (100 ms at the default tick).
const IDLE_TICKS: u32 = 100;

/// How often a parked ticker checks whether its engine is gone.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

impl Ticker {
    fn spawn(engine: &wasmtime::Engine, tick: Duration) -> Result<Ticker, String> {
        let weak = engine.weak();
        let shared = Arc::new(TickerShared::default());
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("hookyard-plugin-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                while weak.upgrade().is_some() {
                    // SeqCst, with the increment in `call_in_flight`: either this load sees the
                    // call, or the call's unpark comes after it and `park` returns at once.
                    if state.in_flight.load(Ordering::SeqCst) > 0 {
                        idle_ticks = 0;
                    } else if idle_ticks >= IDLE_TICKS {
                        std::thread::park_timeout(IDLE_RECHECK);
                        continue;
                    } else {
                        idle_ticks += 1;
                    }
                    std::thread::sleep(tick);
                    let Some(engine) = weak.upgrade() else { break };
                    engine.increment_epoch();
                    state.ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| format!("cannot start the plugin epoch thread: {e}"))?;
        Ok(Ticker { thread: handle.thread().clone(), shared })
    }
}

/// A call in flight, from [`Engine::call_in_flight`].
pub(super) struct InFlight<'a>(&'a Engine);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.ticker.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// wasmtime's error chain on one line (the cause chain joined by `: `).
pub(super) fn one_line(error: &wasmtime::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// Feeds `Hash` output into sha256, so the engine key is stable across processes (std's
/// `DefaultHasher` makes no such promise).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}
