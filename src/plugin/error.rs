//! What can go wrong with a plugin: at load time ([`LoadError`], a config error) and per event
//! ([`PluginError`], that event's transform failed; the route's `on_error` decides what next).

/// Why one event's transform failed. Every variant but `Timeout` and a retryable `Failed` is the
/// plugin's fault and deterministic: running it again on the same event fails the same way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginError {
    /// The plugin trapped: a panic, `unreachable`, an out-of-bounds access, a stack overflow.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// It ran past its `timeout_ms` deadline and was stopped.
    #[error("plugin ran past its {ms} ms deadline and was stopped")]
    Timeout { ms: u64 },
    /// It tried to grow its memory past `memory_mb` and then failed.
    #[error("plugin exceeded its memory limit of {mb} MiB")]
    MemoryLimit { mb: u64 },
    /// One output (body plus headers) is larger than `max_output_bytes`.
    #[error("output {index} is {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge { index: usize, size: usize, limit: usize },
    /// All outputs of one event's call (or chain step, across its branches) together are larger
    /// than `max_total_output_bytes`.
    #[error("the outputs total {total} bytes, over the limit of {limit} bytes for one event")]
    OutputsTooLarge { total: usize, limit: usize },
    /// The plugin handed the host more than it copies in one call (see
    /// `Limits::host_copy_budget`): outputs far over `max_total_output_bytes`, or a huge log
    /// line. The host stopped copying instead of holding it all.
    #[error(
        "the plugin handed the host more than {limit} bytes in one call (outputs far over the limit for one event, or a huge log line)"
    )]
    TooMuchData { limit: usize },
    /// More outputs than `max_outputs`.
    #[error("plugin emitted {count} outputs, over the limit of {limit}")]
    TooManyOutputs { count: usize, limit: usize },
    /// An output names a destination that is not one of the route's.
    #[error("output names destination `{name}`, which is not one of the route's ({})", allowed.join(", "))]
    BadDestination { name: String, allowed: Vec<String> },
    /// The plugin returned something the host cannot use: invalid UTF-8 or pointers, a bad
    /// header name or value, a framing header, an empty destination list.
    #[error("plugin returned malformed output: {0}")]
    Malformed(String),
    /// The plugin returned its own `plugin-error`.
    #[error("plugin failed ({}): {message}", if *retryable { "retryable" } else { "permanent" })]
    Failed { retryable: bool, message: String },
}

impl PluginError {
    /// Every [`label`](Self::label), so metrics can show each outcome at zero from the start.
    pub const LABELS: [&'static str; 10] = [
        "trap",
        "timeout",
        "memory",
        "output_too_large",
        "outputs_too_large",
        "too_much_data",
        "too_many_outputs",
        "bad_destination",
        "malformed",
        "plugin_error",
    ];

    /// A fixed label for metrics (one of [`LABELS`](Self::LABELS)).
    pub fn label(&self) -> &'static str {
        match self {
            PluginError::Trap(_) => "trap",
            PluginError::Timeout { .. } => "timeout",
            PluginError::MemoryLimit { .. } => "memory",
            PluginError::OutputTooLarge { .. } => "output_too_large",
            PluginError::OutputsTooLarge { .. } => "outputs_too_large",
            PluginError::TooMuchData { .. } => "too_much_data",
            PluginError::TooManyOutputs { .. } => "too_many_outputs",
            PluginError::BadDestination { .. } => "bad_destination",
            PluginError::Malformed(_) => "malformed",
            PluginError::Failed { .. } => "plugin_error",
        }
    }

    /// Whether running the transform again later may succeed: a timeout may (the deadline is
    /// wall-clock time, which depends on load) and so may a plugin error the plugin marked
    /// retryable; everything else is a deterministic property of the plugin and the event.
    pub fn retryable(&self) -> bool {
        match self {
            PluginError::Timeout { .. } => true,
            PluginError::Failed { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// Why a plugin file cannot be used. The message is one line and names no file: the caller
/// prefixes the route and the path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("file not found")]
    NotFound,
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    /// A device, a pipe or a directory: what kind it is.
    #[error("not a regular file ({0}): a plugin must be a .wasm file")]
    NotRegular(String),
    /// Larger than [`MAX_PLUGIN_FILE_BYTES`](super::MAX_PLUGIN_FILE_BYTES) (the size, when known
    /// before reading).
    #[error("the file is {}over the {limit}-byte limit for a plugin file", size.map(|s| format!("{s} bytes, ")).unwrap_or_default())]
    TooLarge { size: Option<u64>, limit: u64 },
    /// Not WebAssembly at all (or WebAssembly text, which must be built first).
    #[error("not a WebAssembly file: {0}")]
    NotWasm(String),
    #[error("this is a core WebAssembly module, not a component: build it as a component: see plugins/README.md")]
    CoreModule,
    /// A component, but not for `hookyard:plugin/transform@0.1.0`.
    #[error("the component does not target {}: {found}", super::bindings::WORLD)]
    WrongWorld { found: String },
    /// A component that wasmtime rejects (malformed or using unsupported features).
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The route's `limits:` for this plugin are out of range.
    #[error("bad limits: {0}")]
    BadLimits(String),
}

#[cfg(test)]
mod tests {
    use super::PluginError;

    /// `LABELS` lists every variant's label, in declaration order (metrics register them all).
    #[test]
    fn labels_lists_every_label() {
        let all = [
            PluginError::Trap(String::new()),
            PluginError::Timeout { ms: 0 },
            PluginError::MemoryLimit { mb: 0 },
            PluginError::OutputTooLarge { index: 0, size: 0, limit: 0 },
            PluginError::OutputsTooLarge { total: 0, limit: 0 },
            PluginError::TooMuchData { limit: 0 },
            PluginError::TooManyOutputs { count: 0, limit: 0 },
            PluginError::BadDestination { name: String::new(), allowed: Vec::new() },
            PluginError::Malformed(String::new()),
            PluginError::Failed { retryable: false, message: String::new() },
        ];
        // a new variant makes this match non-exhaustive: add it above and to LABELS
        for e in &all {
            match e {
                PluginError::Trap(_)
                | PluginError::Timeout { .. }
                | PluginError::MemoryLimit { .. }
                | PluginError::OutputTooLarge { .. }
                | PluginError::OutputsTooLarge { .. }
                | PluginError::TooMuchData { .. }
                | PluginError::TooManyOutputs { .. }
                | PluginError::BadDestination { .. }
                | PluginError::Malformed(_)
                | PluginError::Failed { .. } => {}
            }
        }
        assert_eq!(all.iter().map(PluginError::label).collect::<Vec<_>>(), PluginError::LABELS);
    }
}
