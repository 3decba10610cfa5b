use hookyard_plugin_sdk::prelude::*; struct P; impl Plugin for P { fn transform(e: Event) -> Result<Outcome> { Ok(Outcome::one(Output::new(e.body))) } } hookyard_plugin_sdk::export!(P);
