//! The smallest plugin: forwards the event's body unchanged to all of the route's destinations.
//! Used by the benchmarks to measure the fixed cost of a plugin call.

use hookyard_plugin_sdk::prelude::*;

struct Noop;

impl Plugin for Noop {
    fn transform(event: Event) -> Result<Outcome> {
        Ok(Outcome::one(Output::new(event.body)))
    }
}

hookyard_plugin_sdk::export!(Noop);
