//! Write Hookyard transform plugins in Rust.
//!
//! A plugin is a `cdylib` that implements [`Plugin`] for a type and exports it:
//!
//! ```ignore
//! use hookyard_plugin_sdk::prelude::*;
//!
//! struct Upper;
//! impl Plugin for Upper {
//!     fn transform(event: Event) -> Result<Outcome> {
//!         let mut body = event.json()?;
//!         body["seen_by"] = json!("upper");
//!         Ok(Outcome::one(Output::json(&body)))
//!     }
//! }
//! hookyard_plugin_sdk::export!(Upper);
//! ```
//!
//! `plugins/build.sh` turns the crate into a WebAssembly component for the `transform` world of
//! `plugins/wit/hookyard-plugin-0.1.0/plugin.wit`. The component gets a fresh instance for every event: statics do not
//! survive from one event to the next. It has no WASI: no files, clock, environment or
//! randomness, only [`log`] and [`config`].

/// The bindings wit-bindgen generates for the `transform` world.
#[doc(hidden)]
#[allow(clippy::too_many_arguments, reason = "generated code: wit-bindgen's lowering of the event record")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../wit/hookyard-plugin-0.1.0",
        pub_export_macro: true,
        default_bindings_module: "hookyard_plugin_sdk::bindings",
    });
}

// The global allocator of every plugin built with the SDK (feature `arena`, on by default);
// natively (the SDK's own tests) the standard allocator serves. It is single-threaded, and
// refuses to compile for a wasm32 target with atomics (see arena.rs).
#[cfg(all(target_arch = "wasm32", feature = "arena"))]
mod arena;
pub mod loose;
pub mod path;

use std::sync::OnceLock;

/// The trait a plugin implements: `fn transform(event: Event) -> Result<Outcome>`.
pub use bindings::Guest as Plugin;
/// `export!(MyPlugin);` makes `MyPlugin`'s [`Plugin`] impl the component's `transform` export.
pub use bindings::export;
use bindings::hookyard;
pub use bindings::hookyard::plugin::types::{Event, Outcome, Output, PluginError};
pub use serde_json::{self, Value, json};

/// A plugin's result: an outcome, or its own error.
pub type Result<T, E = PluginError> = core::result::Result<T, E>;

/// Everything a plugin usually needs: `use hookyard_plugin_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::loose::{IsTrue, List, Obj, Str};
    pub use crate::path::JsonPath;
    pub use crate::{Event, Outcome, Output, Plugin, PluginError, Result, Value, config, json, log};
}

impl Event {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; a body that is not JSON is a permanent (non-retryable) error.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(body_error)
    }

    /// The body parsed into `T`, typically a struct of the [`loose`] types that borrow from the
    /// body: much less work than [`json`](Self::json) for a plugin that reads a few fields, as
    /// the rest is skipped unstored. A body that is not JSON, or not of `T`'s shape, is a
    /// permanent error.
    pub fn json_as<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(body_error)
    }
}

fn body_error(e: serde_json::Error) -> PluginError {
    match e.classify() {
        serde_json::error::Category::Data => PluginError::fatal(format!("body does not have the expected shape: {e}")),
        _ => PluginError::fatal(format!("body is not JSON: {e}")),
    }
}

impl Output {
    /// An output with this body, sent to all of the route's destinations.
    pub fn new(body: impl Into<Vec<u8>>) -> Output {
        Output { destinations: None, headers: Vec::new(), body: body.into() }
    }

    /// An output whose body is `value` serialized as JSON, with `Content-Type: application/json`.
    /// `value` is a [`Value`] or any `Serialize` type: a `#[derive(Serialize)]` struct of the
    /// fields to send is cheaper than building a `Value` first.
    ///
    /// Panics (the call fails as a trap) if `value`'s `Serialize` fails, which a `Value`, a
    /// derived struct or a map with string keys never does; use [`Output::try_json`] for types
    /// whose serialization can fail.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Output {
        Output::try_json(value).expect("the value serializes to JSON")
    }

    /// [`Output::json`], with a failed serialization as a permanent error.
    pub fn try_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Output> {
        let body = serde_json::to_vec(value).map_err(|e| PluginError::fatal(format!("output is not JSON: {e}")))?;
        Ok(Output::new(body).header("Content-Type", "application/json"))
    }

    /// Sets a header on the outgoing request (replacing one of the same name).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Output {
        let name = name.into();
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// Sends this output only to these destinations, which must be among the route's.
    pub fn to<S: Into<String>>(mut self, destinations: impl IntoIterator<Item = S>) -> Output {
        self.destinations = Some(destinations.into_iter().map(Into::into).collect());
        self
    }
}

impl Outcome {
    /// Emit exactly one output.
    pub fn one(output: Output) -> Outcome {
        Outcome::Emit(vec![output])
    }

    /// Deliver nothing; `reason` becomes a metric label, so keep it short and fixed.
    pub fn drop(reason: impl Into<String>) -> Outcome {
        Outcome::Drop(reason.into())
    }
}

impl PluginError {
    /// A permanent failure: retrying the same event will fail again.
    pub fn fatal(message: impl Into<String>) -> PluginError {
        PluginError { retryable: false, message: message.into() }
    }

    /// A failure that may go away if the event is retried later.
    pub fn retryable(message: impl Into<String>) -> PluginError {
        PluginError { retryable: true, message: message.into() }
    }
}

/// The route's `config:` map for this plugin (routes.yaml), fetched from the host once per event.
pub mod config {
    use super::*;

    fn map() -> &'static [(String, String)] {
        static CONFIG: OnceLock<Vec<(String, String)>> = OnceLock::new();
        CONFIG.get_or_init(hookyard::plugin::host::config)
    }

    /// All entries, in file order.
    pub fn all() -> &'static [(String, String)] {
        map()
    }

    /// The value of `key`, if set.
    pub fn get(key: &str) -> Option<&'static str> {
        map().iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or a permanent error naming the missing key.
    pub fn require(key: &str) -> Result<&'static str> {
        get(key).ok_or_else(|| PluginError::fatal(format!("config key `{key}` is required")))
    }

    /// A comma-separated list (`a, b,c` gives `["a", "b", "c"]`); empty when unset.
    pub fn list(key: &str) -> Vec<&'static str> {
        get(key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
    }

    /// A boolean (`true`/`yes`/`1` or `false`/`no`/`0`), or `default` when unset.
    pub fn flag(key: &str, default: bool) -> Result<bool> {
        match get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "yes" | "1") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "no" | "0") => Ok(false),
            Some(v) => Err(PluginError::fatal(format!("config key `{key}`: `{v}` is not a boolean"))),
        }
    }

    /// Entries whose key starts with `prefix`, with the prefix removed (`set.a=1` → `("a", "1")`).
    pub fn with_prefix(prefix: &str) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        map().iter().filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }
}

/// Lines in the gateway's log, tagged with the plugin's name and the event id. The host keeps
/// at most a bounded number of lines per event (see plugins/README.md).
pub mod log {
    use super::hookyard::plugin::host::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn json_outputs_serialize_values_and_structs() {
        #[derive(serde::Serialize)]
        struct Chat<'a> {
            text: &'a str,
            channel: &'a str,
        }
        let from_struct = Output::json(&Chat { text: "hi \"you\"", channel: "#c" });
        let from_value = Output::json(&json!({ "text": "hi \"you\"", "channel": "#c" }));
        assert_eq!(from_struct.body, br##"{"text":"hi \"you\"","channel":"#c"}"##);
        assert_eq!(
            serde_json::from_slice::<Value>(&from_value.body).unwrap(),
            json!({"text": "hi \"you\"", "channel": "#c"})
        );
        assert_eq!(from_struct.headers, vec![("Content-Type".to_string(), "application/json".to_string())]);

        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let error = Output::try_json(&bad).unwrap_err();
        assert!(!error.retryable && error.message.starts_with("output is not JSON: "), "{}", error.message);
    }
}
