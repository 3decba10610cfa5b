//! A `routes[i]` entry, compiled: its condition, its destinations and its transform chain.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Inputs, KeyError, OnError, RouteConfig};
use crate::delivery::Destination;
use crate::plugin::{Limits, Plugin};
use crate::rules::Rule;

use super::Plugins;

pub struct Route {
    pub name: Arc<str>,
    pub rule: Rule,
    /// Indexes into `Snapshot::destinations`.
    pub destinations: Vec<usize>,
    /// The `transform:` chain, compiled; empty for none.
    pub plugins: Vec<Plugin>,
    /// Label of the chain in metrics and logs (`a+b` for two plugins).
    pub chain_label: String,
    pub on_error: OnError,
    /// `then:`: later steps, in order, each with the destination it follows.
    pub steps: Vec<Step>,
    /// The route as written in the config file (the console shows it).
    pub written: String,
}

/// One later step of a route's chain.
pub struct Step {
    /// Index into `Snapshot::destinations`.
    pub destination: usize,
    /// The destination whose delivery it follows (an index into `Snapshot::destinations`).
    pub after: usize,
    pub rule: Arc<crate::delivery::StepRule>,
}

impl Route {
    /// Compiles `routes[i]` against the destinations already built (a name that is not among
    /// them was reported by config). Every problem is returned, with keys relative to the entry.
    /// `storage_dir` is where the plugin cache goes (`None` for an in-memory store).
    pub fn from_config(
        r: &RouteConfig,
        destinations: &[Arc<Destination>],
        plugins: &Plugins,
        storage_dir: Option<PathBuf>,
        inputs: &mut Inputs,
    ) -> Result<Route, Vec<KeyError>> {
        let rule = crate::rules::compile(&r.when).map_err(|errs| {
            errs.into_iter().map(|e| KeyError::new(format!(".when{}", e.path), e.message)).collect::<Vec<_>>()
        })?;
        let dests = r.to.iter().filter_map(|t| destinations.iter().position(|d| &*d.name == t)).collect();
        let mut chain = Vec::new();
        let mut errors = Vec::new();
        for (j, t) in r.transform.iter().enumerate() {
            let key = format!(".transform[{j}].plugin");
            let path = inputs.resolve(&t.plugin);
            // read once, bounded: what is hashed into the version is what is compiled
            let bytes = match inputs.read(&path, |p| crate::plugin::read_plugin_file(p).map_err(|e| e.to_string())) {
                Ok(bytes) => bytes,
                Err(e) => {
                    errors.push(KeyError::new(key, format!("route \"{}\": {}: {e}", r.name, path.display())));
                    continue;
                }
            };
            let config: Vec<(String, String)> = t
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let loaded = plugins.host(storage_dir.clone()).and_then(|h| {
                h.load_bytes(&name, &bytes, config, Limits::from(&t.limits), r.to.clone())
                    .map_err(|e| format!("route \"{}\": {}: {e}", r.name, path.display()))
            });
            match loaded {
                Ok(p) => chain.push(p),
                Err(m) => errors.push(KeyError::new(key, m)),
            }
        }
        let mut steps = Vec::new();
        let position = |name: &str| destinations.iter().position(|d| &*d.name == name);
        for (j, st) in r.then.iter().enumerate() {
            let rule = crate::rules::compile(&st.when).map_err(|errs| {
                errs.into_iter()
                    .map(|e| KeyError::new(format!(".then[{j}].when{}", e.path), e.message))
                    .collect::<Vec<_>>()
            });
            // config reported names that are unknown, and where `after` is missing
            let after = st
                .after
                .as_deref()
                .or_else(|| if j == 0 { r.to.first().map(String::as_str) } else { Some(&r.then[j - 1].destination) });
            match (rule, position(&st.destination), after.and_then(position)) {
                (Ok(rule), Some(destination), Some(after)) => steps.push(Step {
                    destination,
                    after,
                    rule: Arc::new(crate::delivery::StepRule { status: st.status.clone(), rule }),
                }),
                (Err(e), _, _) => errors.extend(e),
                _ => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let chain_label = chain.iter().map(|p| p.name()).collect::<Vec<_>>().join("+");
        Ok(Route {
            name: r.name.as_str().into(),
            rule,
            destinations: dests,
            plugins: chain,
            chain_label,
            on_error: r.on_error,
            steps,
            written: String::new(),
        })
    }
}
