//! The checks on what a plugin returned, before anything of it leaves the module: the outcome's
//! size and count limits, its destinations (within the allowed set), its headers (valid, and
//! none of those the gateway manages), its drop reason and error message (cut to their caps).

use super::bindings::hookyard::plugin::types;
use super::error::PluginError;
use super::event::{Outcome, Output};
use super::limits::{Limits, MAX_DROP_REASON_BYTES, MAX_ERROR_MESSAGE_BYTES, truncate};

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

/// What the `transform` export returned, checked: an outcome within `limits` whose outputs
/// name only destinations in `allowed`, or the plugin's own error.
pub(super) fn check(
    returned: Result<types::Outcome, types::PluginError>,
    limits: &Limits,
    allowed: &[String],
) -> Result<Outcome, PluginError> {
    match returned {
        Ok(outcome) => check_outcome(outcome, limits, allowed),
        Err(types::PluginError { retryable, mut message }) => {
            truncate(&mut message, MAX_ERROR_MESSAGE_BYTES);
            Err(PluginError::Failed { retryable, message })
        }
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
