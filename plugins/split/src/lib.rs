//! Splitter: one batched event in, one output per element of the array at config `path`
//! (`path=events`, `path=data.items`; `path=$` for a top-level array). Each output carries headers
//! `X-Hookyard-Split-Index` and `X-Hookyard-Split-Count`. An empty batch is dropped.

use hookyard_plugin_sdk::prelude::*;

struct Split;

impl Plugin for Split {
    fn transform(event: Event) -> Result<Outcome> {
        let path = JsonPath::parse(config::require("path")?).map_err(PluginError::fatal)?;
        let body = event.json()?;
        let items = match path.get(&body) {
            Some(Value::Array(items)) => items,
            Some(_) => return Err(PluginError::fatal(format!("`{}` is not an array", path.as_str()))),
            None => return Ok(Outcome::drop("no batch")),
        };
        if items.is_empty() {
            return Ok(Outcome::drop("empty batch"));
        }
        let count = items.len().to_string();
        let outputs = items.iter().enumerate().map(|(i, item)| {
            Output::json(item).header("X-Hookyard-Split-Index", i.to_string()).header("X-Hookyard-Split-Count", &count)
        });
        Ok(Outcome::Emit(outputs.collect()))
    }
}

hookyard_plugin_sdk::export!(Split);
