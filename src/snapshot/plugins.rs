//! The plugin host that builds load transforms with.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::plugin::PluginHost;

/// The plugin host of one gateway (or one CLI command), created on first use, so a config without
/// transforms never starts wasmtime, then kept for every later build (reloads). The composition
/// root owns it; nothing is process-global. Compiled plugins are cached on disk next to the store
/// (`<storage dir>/plugin-cache`), or in `HOOKYARD_PLUGIN_CACHE`, by content hash, so restarts and
/// reloads do not recompile unchanged plugins.
#[derive(Default)]
pub struct Plugins {
    /// `HOOKYARD_PLUGIN_CACHE`, read once.
    cache_override: Option<PathBuf>,
    host: OnceLock<Result<PluginHost, String>>,
}

impl Plugins {
    /// Reads `HOOKYARD_PLUGIN_CACHE` (once: later changes to the environment are not seen).
    pub fn from_env() -> Plugins {
        Plugins::with_cache(std::env::var_os("HOOKYARD_PLUGIN_CACHE").map(PathBuf::from))
    }

    /// Compiled plugins cached in `dir` (`None`: next to the store). Several gateways in one
    /// process (the integration tests) can share one `Plugins`, hence one wasmtime engine.
    pub fn with_cache(dir: Option<PathBuf>) -> Plugins {
        Plugins { cache_override: dir, host: OnceLock::new() }
    }

    /// The host, created on first use with the cache in `HOOKYARD_PLUGIN_CACHE`, else in
    /// `storage_dir/plugin-cache` (`None`: no disk cache).
    pub(crate) fn host(&self, storage_dir: Option<PathBuf>) -> Result<&PluginHost, String> {
        self.host
            .get_or_init(|| {
                let cache = self.cache_override.clone().or_else(|| storage_dir.map(|d| d.join("plugin-cache")));
                PluginHost::new(cache)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}
