//! Router: picks the destinations from a payload field. Config: `field` (a dotted path, e.g.
//! `type` or `data.object.currency`), `map.<value>=dest1,dest2` for each value, and optionally
//! `default=dest` for values with no entry (without it they are dropped). The body passes
//! through unchanged; destinations must be among the route's.

use hookyard_plugin_sdk::prelude::*;

struct RouteBy;

impl Plugin for RouteBy {
    fn transform(event: Event) -> Result<Outcome> {
        let field = JsonPath::parse(config::require("field")?).map_err(PluginError::fatal)?;
        let body = event.json()?;
        let value = match field.get(&body) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let key = format!("map.{value}");
        let destinations = match config::get(&key).or_else(|| config::get("default")) {
            Some(list) => list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            None => return Ok(Outcome::drop("no route")),
        };
        Ok(Outcome::one(Output::new(event.body).to(destinations)))
    }
}

hookyard_plugin_sdk::export!(RouteBy);
