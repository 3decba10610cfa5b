//! A transform's `limits:` section, compiled: `Limits::from(&PluginLimitsConfig)`.

use super::Limits;
use crate::config::PluginLimitsConfig;

impl From<&PluginLimitsConfig> for Limits {
    /// Unset limits take the defaults; a raised `max_output_bytes` raises the default total with it.
    fn from(l: &PluginLimitsConfig) -> Limits {
        let d = Limits::default();
        let max_output_bytes = l.max_output_bytes.unwrap_or(d.max_output_bytes);
        Limits {
            timeout_ms: l.timeout_ms.unwrap_or(d.timeout_ms),
            memory_mb: l.memory_mb.unwrap_or(d.memory_mb),
            max_output_bytes,
            max_outputs: l.max_outputs.unwrap_or(d.max_outputs),
            max_total_output_bytes: l.max_total_output_bytes.unwrap_or(d.max_total_output_bytes.max(max_output_bytes)),
        }
    }
}
