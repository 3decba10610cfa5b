//! Several plugins on one route, run in order (semantics documented in plugins/README.md).

use super::Plugin;
use super::call::overlaid;
use super::error::PluginError;
use super::event::{EventRef, Outcome, Output};

/// A chain failed at plugin `index` (0-based, in route order).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("transform {index} ({plugin}): {error}")]
pub struct ChainError {
    pub index: usize,
    pub plugin: String,
    pub error: PluginError,
}

/// One plugin call in a `plugin` span (a child of the route's `transform` span), with its outcome;
/// a failure marks the span failed. Only while spans are exported.
async fn traced(
    plugin: &Plugin,
    index: usize,
    call: impl std::future::Future<Output = Result<Outcome, PluginError>>,
) -> Result<Outcome, PluginError> {
    let mut span = crate::telemetry::Span::child("plugin");
    if !span.is_recording() {
        return call.await;
    }
    span.set("plugin", plugin.name().to_string());
    span.set("index", index);
    let result = call.await;
    match &result {
        Ok(Outcome::Emit(outputs)) => span.set("outcome", format!("emit {}", outputs.len())),
        Ok(Outcome::Drop(_)) => span.set("outcome", "drop"),
        Err(e) => {
            span.fail(e);
            span.set("outcome", e.label())
        }
    };
    result
}

/// Runs `plugins` in order on `event`.
///
/// - The first plugin gets the event; each output of plugin *i* becomes the event of plugin
///   *i+1*: its body, and the original headers with the output's headers set on top. A plugin
///   that emits several outputs fans out: the rest of the chain runs once per output (branch).
/// - Headers set along a branch accumulate (later plugins override earlier ones); the final
///   outputs carry all of them.
/// - Destinations only narrow: once a plugin picks a subset, later plugins on that branch may
///   pick only within it, and an output that names none keeps the branch's subset.
/// - A drop ends its branch only. If every branch is dropped the result is a drop, with the
///   first reason seen.
/// - Any error fails the whole chain (the event's transform), naming the plugin.
/// - A step's outputs, summed over branches, may not exceed that plugin's `max_outputs`, nor
///   their bytes (bodies and headers, the branch's headers included) its
///   `max_total_output_bytes`: the chain's last step bounds what one event stores.
///
/// Branches run one after another; each call has its own deadline.
/// An empty chain emits the event's body unchanged.
///
/// Takes a [`PluginEvent`](super::PluginEvent) or an [`EventRef`] of borrowed parts: nothing of the event is copied
/// on the way into a plugin.
pub async fn run_chain<'a>(plugins: &[Plugin], event: impl Into<EventRef<'a>>) -> Result<Outcome, ChainError> {
    let event = event.into();
    let mut branches = vec![Output { destinations: None, headers: Vec::new(), body: event.body.clone() }];
    let mut first_drop: Option<String> = None;
    for (index, plugin) in plugins.iter().enumerate() {
        let fail = |error| ChainError { index, plugin: plugin.name().to_string(), error };
        let mut next: Vec<Output> = Vec::new();
        let mut total = 0;
        for branch in branches {
            let step_event = EventRef { body: &branch.body, ..event };
            let allowed = branch.destinations.as_deref().unwrap_or(&plugin.inner.allowed_destinations);
            let call = plugin.inner.run(step_event, &branch.headers, allowed, None);
            let result = if crate::telemetry::exporting() { traced(plugin, index, call).await } else { call.await };
            match result.map_err(fail)? {
                Outcome::Drop(reason) => {
                    first_drop.get_or_insert(reason);
                }
                Outcome::Emit(outputs) => {
                    let start = next.len();
                    next.extend(outputs.into_iter().map(|out| Output {
                        destinations: out.destinations.or_else(|| branch.destinations.clone()),
                        headers: overlay(&branch.headers, out.headers),
                        body: out.body,
                    }));
                    total += next[start..].iter().map(Output::size).sum::<usize>();
                }
            }
            if total > plugin.limits().max_total_output_bytes {
                return Err(fail(PluginError::OutputsTooLarge {
                    total,
                    limit: plugin.limits().max_total_output_bytes,
                }));
            }
            if next.len() > plugin.limits().max_outputs {
                return Err(fail(PluginError::TooManyOutputs {
                    count: next.len(),
                    limit: plugin.limits().max_outputs,
                }));
            }
        }
        if next.is_empty() {
            return Ok(Outcome::Drop(first_drop.unwrap_or_else(|| "no outputs".to_string())));
        }
        branches = next;
    }
    Ok(Outcome::Emit(branches))
}

/// `base` with each header of `top` replacing those of the same name (case-insensitive).
fn overlay(base: &[(String, String)], top: Vec<(String, String)>) -> Vec<(String, String)> {
    if base.is_empty() {
        return top;
    }
    overlaid(base, &top).cloned().collect()
}
