//! Turns a config file into one immutable, compiled [`Snapshot`]: each component compiles its own
//! section (`Destination::from_config`, `Route::from_config`, `Source::from_config`,
//! `Verifier::from_config`...) and [`build`] orchestrates them and locates their errors.
//! `hookyard check`, `run`, `dry-run` and hot reload all go through [`build`], so what `check`
//! accepts is exactly what `run` serves.
//!
//! A request reads one snapshot at its start and uses it to the end; [`Snapshot::route`] is the
//! one routing call (see `routing`).

mod event;
mod plugins;
mod route;
mod routing;
mod source;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;

pub use event::{Event, EventId};
pub use plugins::Plugins;
pub use route::Route;
pub use routing::{REPLAY_ROUTE, RouteNote, Routed};
pub use source::{Dedupe, DedupeKey, EventTypeAt, Source};

use crate::config::{
    AdminConfig, Config, ConfigErrors, DeliveryConfig, Inputs, ServerConfig, StorageConfig, TelemetryConfig, parse_net,
};
use crate::delivery::egress::EgressPolicy;
use crate::delivery::{Destination, Network};
use crate::rules::JsonPath;

pub struct Snapshot {
    /// First 12 hex digits of the SHA-256 of the config text and every file it reads.
    pub version: String,
    pub loaded_at: SystemTime,
    pub file: String,
    pub server: ServerConfig,
    pub delivery: DeliveryConfig,
    /// `storage`, with `path` and `postgres.ca_file` resolved against the config file's directory.
    pub storage: StorageConfig,
    pub sources: Vec<Source>,
    pub routes: Vec<Route>,
    pub destinations: Vec<Arc<Destination>>,
    /// Some destination orders (`ordering:`) or batches (`batch:`) its deliveries, or has
    /// templates: only then does routing look each planned delivery's destination up again.
    pub finishes_plans: bool,
    pub admin: AdminConfig,
    /// `telemetry`, as read at start (the span exporter is the process's: a reload keeps it).
    pub telemetry: TelemetryConfig,
    /// `server.log_redact`, compiled.
    pub log_redact: Vec<JsonPath>,
    /// Every file besides the config that the snapshot was built from: the plugin files the
    /// routes name and the destinations' TLS files (watched for hot reload).
    pub plugin_files: Vec<PathBuf>,
    /// Every file a `${file:PATH}` names (watched for hot reload; their contents are part of
    /// the version, so a rotated secret is a new config).
    pub secret_files: Vec<PathBuf>,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// What is valid but will not work as written: destinations the egress guard will refuse.
    /// `check` and `dry-run` print these, `run` logs them; they never fail a build.
    pub warnings: Vec<crate::config::ConfigError>,
}

/// Reads and compiles a config file, loading transforms with `plugins`.
pub fn build(path: &Path, plugins: &Plugins) -> Result<Snapshot, ConfigErrors> {
    let text = Config::read_text(path).map_err(|e| ConfigErrors(vec![e]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    build_from_text(&path.display().to_string(), &base, &text, &|k| std::env::var(k).ok(), plugins)
}

/// Parses and compiles config text; every problem is returned, parse and compile errors alike.
pub fn build_from_text(
    file: &str,
    base_dir: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    plugins: &Plugins,
) -> Result<Snapshot, ConfigErrors> {
    let (cfg, mut errors) = Config::parse(file, base_dir, text, env);
    // the version covers the config text and every file it names (plugins, TLS files, secret
    // files), so a reload after a certificate, plugin or secret changed is not taken for "unchanged"
    let mut inputs = Inputs::new(&cfg.base_dir);
    inputs.hash(text.as_bytes());
    let mut secret_files: Vec<PathBuf> = Vec::new();
    for f in &cfg.secret_files {
        inputs.hash(f.path.as_os_str().as_encoded_bytes());
        inputs.hash(&f.sha256.unwrap_or_default());
        if !secret_files.contains(&f.path) {
            secret_files.push(f.path.clone());
        }
    }

    let network = Network::new(EgressPolicy::new(cfg.egress.allow.iter().filter_map(|s| parse_net(s)).collect()));
    let mut destinations = Vec::new();
    let mut warnings = Vec::new();
    for (name, d) in &cfg.destinations {
        let key = format!("destinations.{name}");
        if let Some(w) = network.warning(&d.url) {
            warnings.push(cfg.error(&format!("{key}.url"), w));
        }
        match Destination::from_config(name, d, &network, &mut inputs) {
            Ok(dest) => destinations.push(Arc::new(dest)),
            Err(e) => errors.extend(e.into_iter().map(|e| cfg.error_at(&key, e))),
        }
    }

    let storage_dir = storage_dir(&cfg);
    let mut routes: Vec<Route> = Vec::new();
    let mut route_sources: Vec<&str> = Vec::new();
    for (index, r) in &cfg.routes {
        match Route::from_config(r, &destinations, plugins, storage_dir.clone(), &mut inputs) {
            Ok(mut route) => {
                route.written = cfg.written_item(text, &format!("routes[{index}]")).unwrap_or_default();
                routes.push(route);
                route_sources.push(&r.source);
            }
            Err(e) => errors.extend(e.into_iter().map(|e| cfg.error_at(&format!("routes[{index}]"), e))),
        }
    }

    let mut sources = Vec::new();
    for (name, s) in &cfg.sources {
        let mine: Vec<usize> = (0..routes.len()).filter(|i| route_sources[*i] == name).collect();
        match Source::from_config(name, s, &routes, mine) {
            Ok(source) => sources.push(source),
            Err(e) => errors.extend(e.into_iter().map(|e| cfg.error_at(&format!("sources.{name}"), e))),
        }
    }

    // PostgreSQL's URL and CA file (relative to the config file), checked now so `check` reports them
    let mut postgres = cfg.storage.postgres.clone();
    if let Some(pg) = postgres.as_mut() {
        if let Some(ca) = pg.ca_file.as_mut() {
            *ca = cfg.base_dir.join(&*ca);
        }
        errors.extend(crate::store::check_postgres(pg).into_iter().map(|e| cfg.error_at("storage.postgres", e)));
    }

    let mut log_redact = Vec::new();
    for (i, p) in cfg.server.log_redact.iter().enumerate() {
        match JsonPath::parse_writable(p) {
            Ok(p) => log_redact.push(p),
            Err(m) => errors.push(cfg.error(&format!("server.log_redact[{i}]"), m)),
        }
    }

    let errors = cfg.finish_errors(errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let (plugin_files, version) = inputs.finish();
    Ok(Snapshot {
        version,
        loaded_at: SystemTime::now(),
        file: file.to_string(),
        server: cfg.server.clone(),
        delivery: cfg.delivery.clone(),
        storage: StorageConfig {
            path: if cfg.storage.path.as_os_str() == ":memory:" {
                cfg.storage.path.clone()
            } else {
                cfg.base_dir.join(&cfg.storage.path)
            },
            postgres,
            ..cfg.storage.clone()
        },
        sources,
        routes,
        finishes_plans: destinations
            .iter()
            .any(|d| d.ordering.is_some() || d.batch.is_some() || !d.templates.is_empty()),
        destinations,
        admin: cfg.admin.clone(),
        telemetry: cfg.telemetry.clone(),
        log_redact,
        plugin_files,
        secret_files,
        trusted_proxies: cfg.server.trusted_proxies.iter().filter_map(|n| parse_net(n)).collect(),
        warnings,
    })
}

/// The directory of the store (where the plugin cache lives), `None` for `:memory:`.
fn storage_dir(cfg: &Config) -> Option<PathBuf> {
    (cfg.storage.path.as_os_str() != ":memory:")
        .then(|| cfg.base_dir.join(&cfg.storage.path).parent().map(Path::to_path_buf))
        .flatten()
}

impl Snapshot {
    /// Takes over what `old` (the running snapshot) has learnt and this one would start afresh:
    /// a source's rate limit bucket, when the source keeps its name and limit, so that a reload
    /// does not refill it.
    pub fn inherit(&mut self, old: &Snapshot) {
        for source in &mut self.sources {
            let Some(new) = &source.rate_limit else { continue };
            let kept = old.source_by_name(&source.name).and_then(|o| o.rate_limit.as_ref());
            if let Some(kept) = kept.filter(|k| k.per_second == new.per_second && k.burst == new.burst) {
                source.rate_limit = Some(kept.clone());
            }
        }
    }

    pub fn source_by_path(&self, path: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.path == path)
    }

    pub fn source_by_name(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| &*s.name == name)
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.iter().find(|d| &*d.name == name)
    }

    /// Every route's later steps, by (route, step destination), for the dispatcher.
    pub fn step_rules(&self) -> crate::delivery::StepRules {
        self.routes
            .iter()
            .flat_map(|r| {
                r.steps
                    .iter()
                    .map(|s| ((r.name.clone(), self.destinations[s.destination].name.clone()), s.rule.clone()))
            })
            .collect()
    }

    /// The label of each route's plugin chain (`a+b`), for routes with a transform.
    pub fn plugin_chains(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().filter(|r| !r.plugins.is_empty()).map(|r| r.chain_label.as_str())
    }

    /// `FILE: ok — N sources, N destinations, N routes (version V)` for `check`.
    pub fn summary(&self) -> String {
        format!(
            "{}: ok — {} sources, {} destinations, {} routes (version {})",
            self.file,
            self.sources.len(),
            self.destinations.len(),
            self.routes.len(),
            self.version
        )
    }
}

/// Convenience for callers that hold a raw body.
pub fn new_event(source: &str, headers: HeaderMap, body: Bytes) -> Event {
    Event { id: EventId::generate(), source: source.into(), received_at: SystemTime::now(), headers, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(rate_limit: &str) -> Snapshot {
        let text = format!(
            "sources:\n  a: {{ path: /a, verify: {{ scheme: none }}, rate_limit: {rate_limit} }}\n  b: {{ path: /b, verify: {{ scheme: none }} }}\n"
        );
        build_from_text("routes.yaml", Path::new("."), &text, &|_| None, &Plugins::default())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `storage.postgres` as `check` reports it: the config's own checks and the store's (the URL)
    /// in one list, in file order; the store is named without its password.
    #[test]
    fn storage_postgres_is_checked_with_the_url_and_named_without_its_password() {
        let env =
            |k: &str| (k == "DATABASE_URL").then(|| "postgres://hookyard:s3cret@db.internal:5432/hooks".to_string());
        let snap = build_from_text(
            "routes.yaml",
            Path::new("."),
            "storage:\n  postgres: { url: \"${DATABASE_URL}\" }\n",
            &env,
            &Plugins::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            crate::store::Store::describe(&snap.storage),
            "postgres://hookyard@db.internal:5432/hooks (schema public)"
        );

        let text = "storage:\n  postgres:\n    url: \"mysql://x\"\n    pool: 1\n    schema: Hooks-1\n    statement_timeout: 0s\n";
        let errors = build_from_text("routes.yaml", Path::new("."), text, &env, &Plugins::default()).err().unwrap();
        let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "routes.yaml:3:5: storage.postgres.url: not a PostgreSQL connection URL: invalid connection string",
                "routes.yaml:4:5: storage.postgres.pool: must be at least 2 (one connection commits events, the others read)",
                "routes.yaml:5:5: storage.postgres.schema: must be a lower-case SQL name: a-z, 0-9 and _, not starting with a digit, at most 63 characters",
                "routes.yaml:6:5: storage.postgres.statement_timeout: must be greater than 0",
            ]
        );
    }

    /// A reload must not refill a bucket a flood has emptied, unless the limit itself changed.
    #[test]
    fn a_reload_keeps_a_sources_rate_limit_bucket_while_the_limit_is_the_same() {
        let old = build("{ per_second: 1, burst: 1 }");
        let bucket = old.sources[0].rate_limit.clone().unwrap();
        assert!(bucket.check().is_ok());
        assert!(bucket.check().is_err(), "emptied");

        let mut same = build("{ per_second: 1, burst: 1 }");
        same.inherit(&old);
        let kept = same.sources[0].rate_limit.as_ref().unwrap();
        assert!(Arc::ptr_eq(kept, &bucket));
        assert!(kept.check().is_err(), "still empty after the reload");

        let mut changed = build("{ per_second: 1, burst: 5 }");
        changed.inherit(&old);
        assert!(!Arc::ptr_eq(changed.sources[0].rate_limit.as_ref().unwrap(), &bucket));
        assert!(changed.sources[0].rate_limit.as_ref().unwrap().check().is_ok(), "a new limit starts full");
        assert!(changed.sources[1].rate_limit.is_none());
    }
}
