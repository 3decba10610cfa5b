//! What a plugin may import: the world's `host` interface (`log`, `config`), implemented on the
//! call's [`State`], and the linker that offers it and nothing else (no WASI).

use wasmtime::component::{HasSelf, Linker};

use super::bindings::hookyard::plugin::host;
use super::limits::{MAX_LOG_LINE_BYTES, truncate};
use super::state::{GuestLog, LogLevel, State};

/// Imports a plugin may have: the world's `host` interface, and the types-only interface its
/// exported function refers to.
pub(super) const ALLOWED_IMPORTS: [&str; 2] = ["hookyard:plugin/host@0.1.0", "hookyard:plugin/types@0.1.0"];

/// The linker every plugin is instantiated with: the `host` imports, and an empty `types`.
pub(super) fn linker(engine: &wasmtime::Engine) -> Result<Linker<State>, String> {
    let mut linker = Linker::new(engine);
    host::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
        .map_err(|e| format!("cannot set up the plugin linker: {e:#}"))?;
    // `types` has no functions; an empty instance satisfies its import.
    linker.instance(ALLOWED_IMPORTS[1]).map_err(|e| format!("cannot set up the plugin linker: {e:#}"))?;
    Ok(linker)
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
        self.config.to_vec()
    }
}
