//! Enrichment and mapping of a JSON body. Config, all optional:
//! - `rename=old:new,a.b:c` renames fields (the new name stays under the same parent);
//! - `set.<path>=<value>` sets a string at a dotted path (`set.meta.env=prod`);
//! - `cents_to_units=amount,items[*].price` turns integer cents into units (1999 → 19.99);
//! - `header.<Name>=<value>` sets a header on the outgoing request.

use hookyard_plugin_sdk::prelude::*;

struct Enrich;

impl Plugin for Enrich {
    fn transform(event: Event) -> Result<Outcome> {
        let mut body = event.json()?;
        let path = |p: &str| JsonPath::parse(p).map_err(PluginError::fatal);
        for pair in config::list("rename") {
            let (from, to) =
                pair.split_once(':').ok_or_else(|| PluginError::fatal(format!("rename `{pair}`: expected old:new")))?;
            let from = path(from)?;
            let to_path = match from.as_str().rsplit_once('.') {
                Some((parent, _)) => path(&format!("{parent}.{to}"))?,
                None => path(to)?,
            };
            if let Some(value) = from.remove(&mut body).pop() {
                to_path.set(&mut body, value).map_err(PluginError::fatal)?;
            }
        }
        for (p, value) in config::with_prefix("set.") {
            path(p)?.set(&mut body, json!(value)).map_err(PluginError::fatal)?;
        }
        for p in config::list("cents_to_units") {
            path(p)?.for_each_mut(&mut body, &mut |v| {
                if let Some(cents) = v.as_i64() {
                    *v = json!(cents as f64 / 100.0);
                }
            });
        }
        let mut output = Output::json(&body);
        for (name, value) in config::with_prefix("header.") {
            output = output.header(name, value);
        }
        Ok(Outcome::one(output))
    }
}

hookyard_plugin_sdk::export!(Enrich);
