//! `routes.yaml`: reading, `${ENV}` and `${file:PATH}` expansion, the schema and the checks that need no compilation
//! (names, references, URLs, paths). Every problem is collected with its file, line, column and key
//! path; nothing stops at the first error.
//!
//! This module knows nothing of hyper, wasmtime or the store. Each component compiles its own
//! section (`Verifier::from_config`, `Destination::from_config`, ...) and reports [`KeyError`]s
//! relative to it; `snapshot::build` orchestrates them and locates the errors ([`Config::error_at`]).

mod schema;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;
use sha2::{Digest, Sha256};

pub use schema::*;
use yaml::{Mark, Positions};

/// One problem in a config file, printed as `file:line:col: key: message`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub mark: Option<Mark>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(m) = self.mark {
            write!(f, ":{}:{}", m.line, m.col)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A problem a component found in its own section, at a key relative to it (`.header`,
/// `.tls.ca_file`, `[0].plugin`); the build that owns the section prefixes its location
/// ([`Config::error_at`]). Components build themselves from their section and report this way,
/// so none needs to know where its section sits in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyError {
        KeyError { key: key.into(), message: message.into() }
    }
}

/// The files a config reads besides itself (TLS files, plugins), as components read them: each
/// is resolved against the config's directory, watched for hot reload, and its bytes are part of
/// the config's version, so a changed certificate or plugin is a new config.
pub struct Inputs {
    base_dir: PathBuf,
    version: Sha256,
    files: Vec<PathBuf>,
}

impl Inputs {
    pub fn new(base_dir: &Path) -> Inputs {
        Inputs { base_dir: base_dir.to_path_buf(), version: Sha256::new(), files: Vec::new() }
    }

    /// `path` resolved against the config's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Reads the file at `path` (already resolved) with `read`: watched even if it cannot be
    /// read now (so fixing it reloads), hashed into the version when it can.
    pub fn read(
        &mut self,
        path: &Path,
        read: impl FnOnce(&Path) -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, String> {
        self.files.push(path.to_path_buf());
        let bytes = read(path)?;
        self.version.update(&bytes);
        Ok(bytes)
    }

    /// Adds what is not a file's bytes to the version (the config text, secret files' hashes).
    pub fn hash(&mut self, bytes: &[u8]) {
        self.version.update(bytes);
    }

    /// The files read, in order, and the version: the first 12 hex digits of the SHA-256 of
    /// everything hashed.
    pub fn finish(self) -> (Vec<PathBuf>, String) {
        (self.files, hex::encode(&self.version.finalize()[..6]))
    }
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed config: every item that parsed, in file order. Items with errors are left out and their
/// errors are returned beside it by [`Config::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The file name as given, used in error messages.
    pub file: String,
    /// Directory relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub egress: EgressConfig,
    pub delivery: DeliveryConfig,
    pub storage: StorageConfig,
    pub admin: AdminConfig,
    pub telemetry: TelemetryConfig,
    pub sources: Vec<(String, SourceConfig)>,
    pub destinations: Vec<(String, DestinationConfig)>,
    pub routes: Vec<RouteEntry>,
    /// Every file a `${file:PATH}` names (read or not), with a hash of what was read: part of
    /// the config's version, and watched for hot reload.
    pub secret_files: Vec<SecretFile>,
    positions: Positions,
    /// Keys whose value could not be read (e.g. a missing `${VAR}`).
    poisoned: Vec<String>,
    /// Every name written under `sources` / `destinations`, including items with errors.
    declared_sources: Vec<String>,
    declared_destinations: Vec<String>,
}

const TOP_LEVEL: [&str; 9] =
    ["server", "admin", "egress", "delivery", "storage", "telemetry", "sources", "destinations", "routes"];

impl Config {
    /// Reads `path` and parses it with the process environment.
    pub fn load(path: &Path) -> (Option<Config>, Vec<ConfigError>) {
        match Config::read_text(path) {
            Ok(text) => {
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                let (c, e) = Config::parse(&path.display().to_string(), &base, &text, &|k| std::env::var(k).ok());
                (Some(c), e)
            }
            Err(e) => (None, vec![e]),
        }
    }

    /// The text of the config file at `path`, read only if it is at most [`MAX_CONFIG_BYTES`]
    /// (a regular file's size is checked before reading; anything else, such as a pipe, is read
    /// no further than the limit).
    pub fn read_text(path: &Path) -> Result<String, ConfigError> {
        let error =
            |message: String| ConfigError { file: path.display().to_string(), mark: None, key: String::new(), message };
        let bytes = read_limited(path, MAX_CONFIG_BYTES, Regular::Preferred, "a config file").map_err(|e| match e {
            ReadError::Io(e) => error(format!("cannot read: {e}")),
            other => error(other.to_string()),
        })?;
        String::from_utf8(bytes).map_err(|_| error("cannot read: the file is not UTF-8 text".to_string()))
    }

    /// Parses config text. Returns what parsed and every problem found.
    pub fn parse(
        file: &str,
        base_dir: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Config, Vec<ConfigError>) {
        let mut cfg = Config {
            file: file.to_string(),
            base_dir: base_dir.to_path_buf(),
            server: ServerConfig::default(),
            egress: EgressConfig::default(),
            delivery: DeliveryConfig::default(),
            storage: StorageConfig::default(),
            admin: AdminConfig::default(),
            telemetry: TelemetryConfig::default(),
            sources: Vec::new(),
            destinations: Vec::new(),
            routes: Vec::new(),
            secret_files: Vec::new(),
            positions: Positions::default(),
            poisoned: Vec::new(),
            declared_sources: Vec::new(),
            declared_destinations: Vec::new(),
        };
        let secret_files = std::cell::RefCell::new(Vec::new());
        let read_file = |written: &str| {
            let path = base_dir.join(written);
            let read = read_secret_file(&path);
            let sha256 = read.as_ref().ok().map(|s| Sha256::digest(s.as_bytes()).into());
            secret_files.borrow_mut().push(SecretFile { path, sha256 });
            read
        };
        let parsed = yaml::parse_with(text, env, &read_file);
        cfg.secret_files = secret_files.into_inner();
        let doc = match parsed {
            Ok(doc) => doc,
            Err(p) => {
                return (
                    cfg,
                    vec![ConfigError { file: file.to_string(), mark: p.mark, key: p.path, message: p.message }],
                );
            }
        };
        let root = doc.value;
        cfg.positions = doc.positions;
        let mut errors: Vec<ConfigError> = doc
            .problems
            .into_iter()
            .map(|p| ConfigError { file: file.to_string(), mark: p.mark, key: p.path, message: p.message })
            .collect();
        cfg.poisoned = errors.iter().map(|e| e.key.clone()).collect();
        let mut root = match root {
            Value::Object(map) => map,
            // A truncated save (or an editor's write-then-fill) would serve no source at all.
            Value::Null if is_blank(text) => {
                errors.push(cfg.error(
                    "",
                    "the config is empty (nothing but whitespace or comments): it would serve no source (is the file truncated?)",
                ));
                return (cfg, errors);
            }
            Value::Null => serde_json::Map::new(),
            _ => {
                errors.push(
                    cfg.error("", "the top level must be a mapping with keys server, sources, destinations, routes"),
                );
                return (cfg, errors);
            }
        };
        for key in root.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                let hint = did_you_mean(key, TOP_LEVEL.iter().copied());
                errors.push(cfg.error(key, format!("unknown key{hint}; expected one of {}", TOP_LEVEL.join(", "))));
            }
        }
        if let Some(v) = root.remove("server")
            && let Some(s) = cfg.item("server", v, &mut errors)
        {
            cfg.server = s;
        }
        if let Some(v) = root.remove("egress")
            && let Some(s) = cfg.item("egress", v, &mut errors)
        {
            cfg.egress = s;
        }
        if let Some(v) = root.remove("delivery")
            && let Some(s) = cfg.item("delivery", v, &mut errors)
        {
            cfg.delivery = s;
        }
        if let Some(v) = root.remove("storage")
            && let Some(s) = cfg.item("storage", v, &mut errors)
        {
            cfg.storage = s;
        }
        if let Some(v) = root.remove("admin")
            && let Some(s) = cfg.item("admin", v, &mut errors)
        {
            cfg.admin = s;
        }
        if let Some(v) = root.remove("telemetry")
            && let Some(t) = cfg.item("telemetry", v, &mut errors)
        {
            cfg.telemetry = t;
        }
        if let Some(v) = root.remove("sources") {
            cfg.declared_sources = declared_names(&v);
            cfg.sources = cfg.named_items("sources", v, &mut errors);
        }
        if let Some(v) = root.remove("destinations") {
            cfg.declared_destinations = declared_names(&v);
            cfg.destinations = cfg.named_items("destinations", v, &mut errors);
        }
        match root.remove("routes") {
            Some(Value::Array(items)) => {
                for (i, v) in items.into_iter().enumerate() {
                    if let Some(r) = cfg.item(&format!("routes[{i}]"), v, &mut errors) {
                        cfg.routes.push((i, r));
                    }
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => errors.push(cfg.error("routes", "must be a list of routes")),
        }
        cfg.check_references(&mut errors);
        cfg.check_telemetry(&mut errors);
        // the verifier or signer would report a blank secret again, as not of its scheme's form
        let blank: Vec<String> = errors.iter().filter(|e| e.message == BLANK_SECRET).map(|e| e.key.clone()).collect();
        cfg.poisoned.extend(blank);
        let errors = cfg.finish_errors(errors);
        (cfg, errors)
    }

    /// Sorts errors in file order and drops follow-on errors about a value that could not be read
    /// (a missing `${VAR}` leaves `null`, which would also be reported as "missing secret").
    pub fn finish_errors(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let follow_on = |key: &str| {
            self.poisoned.iter().any(|p| {
                key != p && p.strip_prefix(key).is_some_and(|rest| rest.starts_with(['.', '[']))
                    || key.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with(['.', '[']))
            })
        };
        // and the `null` such a value left, as its field's type sees it
        let null_of_unread =
            |e: &ConfigError| e.message.starts_with("invalid type: null") && self.poisoned.contains(&e.key);
        // a value that the config's checks and a component's build both refuse is reported once
        let mut seen = std::collections::HashSet::new();
        let mut errors: Vec<ConfigError> = errors
            .into_iter()
            .filter(|e| !follow_on(&e.key) && !null_of_unread(e))
            .filter(|e| seen.insert((e.key.clone(), e.message.clone())))
            .collect();
        errors.sort_by_key(|e| e.mark.map(|m| (m.line, m.col)));
        errors
    }

    /// The lines of `text` (this config's text) that write the list item at `key` (`routes[2]`):
    /// the item's first line and every line indented at least as far as its keys, trailing
    /// blank and comment lines left out, dedented. As written: `${VAR}`s are not expanded. `None`
    /// when the item is not in the file.
    pub fn written_item(&self, text: &str, key: &str) -> Option<String> {
        let mark = self.positions.marks.get(key)?;
        let lines: Vec<&str> = text.lines().collect();
        let first = *lines.get(mark.line.checked_sub(1)?)?;
        let indent = |l: &str| l.len() - l.trim_start().len();
        // the item's keys start at its mark's column; its first line may start earlier (at `- `)
        let keys_at = mark.col - 1;
        let mut item = vec![first];
        for line in &lines[mark.line..] {
            if !line.trim().is_empty() && indent(line) < keys_at {
                break;
            }
            item.push(line);
        }
        while item.last().is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            item.pop();
        }
        let cut = indent(first);
        let body: Vec<&str> = item.iter().map(|l| if l.len() >= cut { &l[cut..] } else { l.trim_start() }).collect();
        Some(body.join("\n"))
    }

    /// A component's error ([`KeyError`]) in the section at `section`.
    pub fn error_at(&self, section: &str, e: KeyError) -> ConfigError {
        self.error(&format!("{section}{}", e.key), e.message)
    }

    /// An error at `key`, located in the file when the key was written there.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            mark: self.positions.locate(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Deserializes one item, collecting every problem serde finds in it. serde stops at the
    /// first (an unknown key, a value of the wrong type), so the offending key is taken out of the
    /// value and the item read again, until it reads or the problem is not at a key (the field
    /// lists in the messages stay serde's, so the schema is written once). A problem with a
    /// mapping a key was taken out of (`missing field`) is a follow-on and is not reported.
    fn item<T: DeserializeOwned>(&self, key: &str, mut v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
        let mut failed = false;
        let mut emptied: Vec<Vec<String>> = Vec::new();
        for _ in 0..MAX_PROBLEMS_PER_ITEM {
            let e = match serde_path_to_error::deserialize::<_, T>(&v) {
                Ok(t) => return (!failed).then_some(t),
                Err(e) => e,
            };
            let segments: Vec<Segment> = e.path().iter().cloned().collect();
            let names: Vec<String> = segments.iter().map(segment_name).collect();
            if emptied.contains(&names) {
                return None;
            }
            let inner = e.path().to_string();
            let full = if inner == "." { key.to_string() } else { format!("{key}.{inner}") };
            errors.push(self.error(&full, clean_serde_message(&e.inner().to_string())));
            failed = true;
            if !remove_key(&mut v, &segments) {
                return None;
            }
            emptied.push(names[..names.len() - 1].to_vec());
        }
        if serde_path_to_error::deserialize::<_, T>(&v).is_err() {
            errors.push(
                self.error(
                    key,
                    format!("more problems, not listed: at most {MAX_PROBLEMS_PER_ITEM} are listed per item"),
                ),
            );
        }
        None
    }

    fn named_items<T: DeserializeOwned>(&self, key: &str, v: Value, errors: &mut Vec<ConfigError>) -> Vec<(String, T)> {
        let map = match v {
            Value::Object(m) => m,
            Value::Null => return Vec::new(),
            _ => {
                errors.push(self.error(key, format!("must be a mapping of names to {key}")));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (name, v) in map {
            let k = format!("{key}.{name}");
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                errors.push(self.error(&k, "names may use only letters, digits, '-' and '_'"));
                continue;
            }
            if let Some(t) = self.item(&k, v, errors) {
                out.push((name, t));
            }
        }
        // keep file order, so summaries and dry-run list items as written
        out.sort_by_key(|(name, _)| self.positions.locate(&format!("{key}.{name}")).map(|m| (m.line, m.col)));
        out
    }

    /// The collector's URL and the export's headers, so that a typo fails `check`, not every
    /// export in the background.
    fn check_telemetry(&self, errors: &mut Vec<ConfigError>) {
        let Some(otlp) = &self.telemetry.otlp else { return };
        let key = "telemetry.otlp";
        if !(0.0..=1.0).contains(&otlp.sample_ratio) {
            errors.push(self.error(&format!("{key}.sample_ratio"), "must be from 0 to 1"));
        }
        match otlp.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none() => {}
            Ok(_) => errors.push(self.error(
                &format!("{key}.endpoint"),
                format!("\"{}\" must be an absolute http:// or https:// URL without a query", otlp.endpoint),
            )),
            Err(e) => {
                errors.push(self.error(&format!("{key}.endpoint"), format!("invalid URL \"{}\": {e}", otlp.endpoint)))
            }
        }
        for (name, value) in &otlp.headers {
            if http::HeaderName::try_from(name.as_str()).is_err() {
                errors.push(self.error(&format!("{key}.headers.{name}"), "not a valid header name"));
            } else if http::HeaderValue::from_str(&value.0).is_err() {
                errors.push(self.error(&format!("{key}.headers.{name}"), "not a valid header value"));
            }
        }
    }

    fn check_references(&self, errors: &mut Vec<ConfigError>) {
        let mut paths: Vec<(&str, &str)> = Vec::new();
        for (name, s) in &self.sources {
            let key = format!("sources.{name}.path");
            if !s.path.starts_with('/') {
                errors.push(self.error(&key, format!("must start with '/', got \"{}\"", s.path)));
            } else if s.path.contains(['?', '#']) {
                errors.push(self.error(&key, "must be a plain path without '?' or '#'"));
            } else if let Some((other, _)) = paths.iter().find(|(_, p)| *p == s.path) {
                errors.push(self.error(&key, format!("path \"{}\" is already used by source \"{other}\"", s.path)));
            }
            paths.push((name, &s.path));
            if let Some(d) = &s.dedupe
                && d.header.is_some() == d.path.is_some()
            {
                errors.push(self.error(&format!("sources.{name}.dedupe"), "give exactly one of header and path"));
            }
        }
        for (name, s) in &self.sources {
            let key = format!("sources.{name}");
            match &s.allow_ips {
                Some(nets) if nets.is_empty() => errors.push(self.error(
                    &format!("{key}.allow_ips"),
                    "must list at least one network (leave the key out to allow every address)",
                )),
                Some(nets) => self.check_nets(&format!("{key}.allow_ips"), nets, errors),
                None => {}
            }
            if let Some(r) = &s.rate_limit {
                // below one a day the bucket's arithmetic (nanoseconds in a u64) would overflow
                if !(r.per_second >= MIN_SOURCE_RATE && r.per_second.is_finite()) {
                    errors.push(self.error(
                        &format!("{key}.rate_limit.per_second"),
                        "must be a number of requests per second, at least 0.0000116 (one a day)",
                    ));
                }
                if r.burst == Some(0) {
                    errors.push(self.error(&format!("{key}.rate_limit.burst"), "must be at least 1"));
                }
            }
        }
        self.check_nets("server.trusted_proxies", &self.server.trusted_proxies, errors);
        for (i, net) in self.egress.allow.iter().enumerate() {
            if parse_net(net).is_none() {
                errors.push(
                    self.error(&format!("egress.allow[{i}]"), format!("\"{net}\" is not a CIDR network or IP address")),
                );
            }
        }
        // An empty secret is refused where it is used (by the verifier or signer); one of only
        // whitespace is just as empty, and almost always a broken template or variable.
        let blank = |s: &Secret| !s.0.is_empty() && s.0.trim().is_empty();
        for (name, s) in &self.sources {
            if s.verify.secret.as_ref().is_some_and(blank) {
                errors.push(self.error(&format!("sources.{name}.verify.secret"), BLANK_SECRET));
            }
            for (i, secret) in s.verify.secrets.iter().enumerate() {
                if blank(secret) {
                    errors.push(self.error(&format!("sources.{name}.verify.secrets[{i}]"), BLANK_SECRET));
                }
            }
        }
        for (name, d) in &self.destinations {
            if d.sign.secret.as_ref().is_some_and(blank) {
                errors.push(self.error(&format!("destinations.{name}.sign.secret"), BLANK_SECRET));
            }
        }
        for (name, d) in &self.destinations {
            let key = format!("destinations.{name}");
            if crate::template::is_template(&d.url) {
                if let Err(e) = crate::template::Template::url(&d.url) {
                    errors.push(self.error(&format!("{key}.url"), e));
                }
            } else {
                match d.url.parse::<http::Uri>() {
                    Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
                    Ok(_) => errors.push(self.error(
                        &format!("{key}.url"),
                        format!("\"{}\" must be an absolute http:// or https:// URL", d.url),
                    )),
                    Err(e) => errors.push(self.error(&format!("{key}.url"), format!("invalid URL \"{}\": {e}", d.url))),
                }
            }
            for (h, v) in &d.headers {
                if crate::template::is_template(v)
                    && let Err(e) = crate::template::Template::header(v)
                {
                    errors.push(self.error(&format!("{key}.headers.{h}"), e));
                }
            }
            if let Some(b) = &d.body
                && let Err(e) = crate::template::Template::body(b)
            {
                errors.push(self.error(&format!("{key}.body"), e));
            }
            if d.max_hosts == 0 {
                errors.push(self.error(&format!("{key}.max_hosts"), "must be greater than 0"));
            }
            if d.timeout_ms == 0 {
                errors.push(self.error(&format!("{key}.timeout_ms"), "must be greater than 0"));
            }
            if d.max_in_flight == 0 {
                errors.push(self.error(&format!("{key}.max_in_flight"), "must be greater than 0"));
            }
            if !(0.0..=1.0).contains(&d.retry.jitter) {
                errors.push(self.error(&format!("{key}.retry.jitter"), "must be between 0 and 1"));
            }
            if d.retry.schedule.is_some() && d.retry.exponential.is_some() {
                errors.push(self.error(&format!("{key}.retry"), "give either schedule or exponential, not both"));
            }
            if let Some(e) = &d.retry.exponential {
                if !(e.factor >= 1.0 && e.factor.is_finite()) {
                    errors.push(self.error(&format!("{key}.retry.exponential.factor"), "must be at least 1"));
                }
                if e.max_attempts == 0 {
                    errors.push(self.error(&format!("{key}.retry.exponential.max_attempts"), "must be at least 1"));
                }
            }
            if let Some(r) = d.rate_limit
                && !(r > 0.0 && r.is_finite())
            {
                errors
                    .push(self.error(&format!("{key}.rate_limit"), "must be a positive number of requests per second"));
            }
            if let Some(b) = &d.batch {
                if !(1..=MAX_BATCH_EVENTS).contains(&b.max_events) {
                    errors.push(self.error(
                        &format!("{key}.batch.max_events"),
                        format!("must be between 1 and {MAX_BATCH_EVENTS}"),
                    ));
                }
                if !(1..=MAX_BATCH_BYTES).contains(&b.max_bytes.0) {
                    errors.push(self.error(
                        &format!("{key}.batch.max_bytes"),
                        format!("must be between 1 byte and {} MiB", MAX_BATCH_BYTES >> 20),
                    ));
                }
                if b.max_wait.0.is_zero() || b.max_wait.0 > MAX_BATCH_WAIT {
                    errors.push(self.error(&format!("{key}.batch.max_wait"), "must be more than 0 and at most 1h"));
                }
                if d.ordering.is_some() {
                    errors.push(self.error(
                        &format!("{key}.batch"),
                        "batch and ordering cannot be combined on one destination (yet): choose one",
                    ));
                }
                let templated = crate::template::is_template(&d.url)
                    || d.body.is_some()
                    || d.headers.values().any(|v| crate::template::is_template(v));
                if templated {
                    errors.push(self.error(
                        &format!("{key}.batch"),
                        "a batch is one request: its url, headers and body cannot be templates",
                    ));
                }
            }
            if !(d.breaker.failure_rate > 0.0 && d.breaker.failure_rate <= 1.0) {
                errors.push(self.error(&format!("{key}.breaker.failure_rate"), "must be in (0, 1]"));
            }
        }
        if self.delivery.max_in_flight == 0 {
            errors.push(self.error("delivery.max_in_flight", "must be greater than 0"));
        }
        if self.delivery.max_pending == 0 {
            errors.push(self.error("delivery.max_pending", "must be greater than 0"));
        }
        let open = self.admin.token.is_none() && self.admin.tokens.is_empty();
        if self.admin.enabled && !self.admin.listen.ip().is_loopback() && open {
            errors.push(self.error(
                "admin.token",
                format!(
                    "the admin listener {} is not on loopback: set admin.token (e.g. \"${{HOOKYARD_ADMIN_TOKEN}}\")",
                    self.admin.listen
                ),
            ));
        }
        if self.admin.token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
            errors.push(self.error("admin.token", BLANK_SECRET));
        } else if self.admin.token.as_ref().is_some_and(|t| t.0.len() < 16) {
            errors.push(self.error("admin.token", "must be at least 16 characters"));
        }
        let mut seen: Vec<&str> = self.admin.token.iter().map(|t| t.0.as_str()).collect();
        for (name, token) in &self.admin.tokens {
            let key = format!("admin.tokens.{name}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                errors.push(
                    self.error(
                        &key,
                        "a token's name is letters, digits, `-`, `_` and `.` (it is logged as api:<name>)",
                    ),
                );
            }
            if token.0.trim().is_empty() {
                errors.push(self.error(&key, BLANK_SECRET));
            } else if token.0.len() < 16 {
                errors.push(self.error(&key, "must be at least 16 characters"));
            } else if seen.contains(&token.0.as_str()) {
                errors.push(self.error(
                    &key,
                    "is the same token as another one: each must be its own, or the log cannot say who acted",
                ));
            }
            seen.push(&token.0);
        }
        if self.server.max_connections == Some(0) {
            errors.push(self.error("server.max_connections", "must be greater than 0"));
        }
        if !(1024..=256 * 1024).contains(&self.server.max_header_bytes) {
            errors.push(self.error("server.max_header_bytes", "must be between 1024 and 262144 (256 KiB)"));
        }
        if self.admin.max_connections == Some(0) {
            errors.push(self.error("admin.max_connections", "must be greater than 0"));
        }
        if self.admin.request_timeout.0.is_zero() {
            errors.push(self.error("admin.request_timeout", "must be greater than 0"));
        }
        if self.storage.commit_timeout.0.is_zero() {
            errors.push(self.error("storage.commit_timeout", "must be greater than 0"));
        }
        if let Some(pg) = &self.storage.postgres {
            // the url and the CA file are checked where they are used (`store::check_postgres`,
            // from the snapshot build): this module knows no database driver
            if pg.pool < 2 {
                errors.push(self.error(
                    "storage.postgres.pool",
                    "must be at least 2 (one connection commits events, the others read)",
                ));
            }
            if !is_sql_identifier(&pg.schema) {
                errors.push(self.error(
                    "storage.postgres.schema",
                    "must be a lower-case SQL name: a-z, 0-9 and _, not starting with a digit, at most 63 characters",
                ));
            }
            if pg.connect_timeout.0.is_zero() {
                errors.push(self.error("storage.postgres.connect_timeout", "must be greater than 0"));
            }
            if pg.statement_timeout.0.is_zero() {
                errors.push(self.error("storage.postgres.statement_timeout", "must be greater than 0"));
            }
            if pg.heartbeat.0.is_zero() {
                errors.push(self.error("storage.postgres.heartbeat", "must be greater than 0"));
            } else if pg.node_timeout.0 < pg.heartbeat.0 * 3 {
                errors.push(self.error(
                    "storage.postgres.node_timeout",
                    format!(
                        "must be at least 3 heartbeats ({:?}): a live instance must not look dead for one late heartbeat",
                        pg.heartbeat.0 * 3
                    ),
                ));
            }
            if let Some(id) = &pg.node_id
                && (id.is_empty() || id.len() > 100 || id.chars().any(|c| c.is_control() || c.is_whitespace()))
            {
                errors.push(self.error(
                    "storage.postgres.node_id",
                    "must be 1 to 100 characters without spaces or control characters",
                ));
            }
            // an attempt never starts with less lease left than its timeout and this margin
            let longest = self.destinations.iter().max_by_key(|(_, d)| d.timeout_ms);
            if let Some((name, d)) = longest {
                let needed = std::time::Duration::from_millis(d.timeout_ms) + LEASE_MARGIN;
                if pg.lease.0 < needed {
                    errors.push(self.error(
                        "storage.postgres.lease",
                        format!(
                            "must be longer than the longest destination timeout (destinations.{name}.timeout_ms: {} ms) plus {}s, at least {needed:?}",
                            d.timeout_ms,
                            LEASE_MARGIN.as_secs()
                        ),
                    ));
                }
            }
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, r) in &self.routes {
            let key = format!("routes[{i}]");
            if r.name.is_empty() {
                errors.push(self.error(&format!("{key}.name"), "must not be empty"));
            } else if names.contains(&r.name.as_str()) {
                errors.push(self.error(&format!("{key}.name"), format!("duplicate route name \"{}\"", r.name)));
            }
            names.push(&r.name);
            // a source that is written but has its own errors is not "unknown": those errors say enough
            if !self.declared_sources.contains(&r.source) {
                let hint = did_you_mean(&r.source, self.declared_sources.iter().map(String::as_str));
                errors.push(self.error(&format!("{key}.source"), format!("unknown source \"{}\"{hint}", r.source)));
            }
            if r.to.is_empty() {
                errors.push(self.error(&format!("{key}.to"), "must name at least one destination"));
            }
            for (j, dest) in r.to.iter().enumerate() {
                let k = format!("{key}.to[{j}]");
                if !self.declared_destinations.contains(dest) {
                    let hint = did_you_mean(dest, self.declared_destinations.iter().map(String::as_str));
                    errors.push(self.error(&k, format!("unknown destination \"{dest}\"{hint}")));
                } else if r.to[..j].contains(dest) {
                    errors.push(self.error(&k, format!("destination \"{dest}\" is listed twice")));
                }
            }
            self.check_steps(&key, r, errors);
        }
    }

    fn destination_config(&self, name: &str) -> Option<&DestinationConfig> {
        self.destinations.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// `routes[i].then`: each step names a declared destination not already in the chain, follows
    /// one that is, has sensible statuses, and may be ordered or batched neither itself nor where
    /// it follows; a destination whose templates read a step's response is only ever a step after
    /// that one.
    fn check_steps(&self, key: &str, r: &RouteConfig, errors: &mut Vec<ConfigError>) {
        // each destination of the chain, with the destinations before it (its ancestors)
        let mut chain: Vec<(&str, Vec<&str>)> = r.to.iter().map(|t| (t.as_str(), Vec::new())).collect();
        let mut previous: Option<&str> = None;
        for (j, step) in r.then.iter().enumerate() {
            let k = format!("{key}.then[{j}]");
            let dest = step.destination.as_str();
            if !self.declared_destinations.contains(&step.destination) {
                let hint = did_you_mean(dest, self.declared_destinations.iter().map(String::as_str));
                errors.push(self.error(&format!("{k}.destination"), format!("unknown destination \"{dest}\"{hint}")));
                continue;
            }
            if chain.iter().any(|(d, _)| *d == dest) {
                errors.push(self.error(
                    &format!("{k}.destination"),
                    format!(
                        "destination \"{dest}\" is already in this route's chain (each destination takes one place)"
                    ),
                ));
                continue;
            }
            let after = match (&step.after, previous) {
                (Some(a), _) => a.as_str(),
                (None, Some(p)) => p,
                (None, None) if r.to.len() == 1 => r.to[0].as_str(),
                (None, None) => {
                    errors.push(self.error(
                        &format!("{k}.after"),
                        "the route sends to several destinations: name the one this step follows",
                    ));
                    continue;
                }
            };
            let Some(ancestors) = chain.iter().find(|(d, _)| *d == after).map(|(d, a)| {
                let mut a = a.clone();
                a.push(d);
                a
            }) else {
                errors.push(self.error(
                    &format!("{k}.after"),
                    format!("\"{after}\" is neither one of this route's `to` nor an earlier step"),
                ));
                continue;
            };
            if let Some(codes) = &step.status {
                if codes.is_empty() {
                    errors.push(self.error(&format!("{k}.status"), "must list at least one status"));
                }
                if let Some(c) = codes.iter().find(|c| !(200..=299).contains(*c)) {
                    errors.push(self.error(
                        &format!("{k}.status"),
                        format!("{c} is not a 2xx status (a step follows a delivered step only)"),
                    ));
                }
            }
            for (name, what) in [(dest, "a step"), (after, "a step's predecessor")] {
                if let Some(d) = self.destination_config(name)
                    && (d.ordering.is_some() || d.batch.is_some())
                {
                    errors.push(
                        self.error(
                            &k,
                            format!("destination \"{name}\" is {what} and cannot be ordered or batched (yet)"),
                        ),
                    );
                }
            }
            if let Some(d) = self.destination_config(dest) {
                for read in response_steps(d) {
                    if !ancestors.contains(&read.as_str()) {
                        errors.push(self.error(
                            &format!("{k}.destination"),
                            format!(
                                "destination \"{dest}\" reads the response of \"{read}\", which is not a step before it in this route"
                            ),
                        ));
                    }
                }
            }
            chain.push((dest, ancestors));
            previous = Some(dest);
        }
        for (j, t) in r.to.iter().enumerate() {
            if let Some(read) = self.destination_config(t).and_then(|d| response_steps(d).into_iter().next()) {
                errors.push(self.error(
                    &format!("{key}.to[{j}]"),
                    format!(
                        "destination \"{t}\" reads the response of \"{read}\": it can only be a step after it (then:), not a first destination"
                    ),
                ));
            }
        }
    }
}

/// The steps whose responses a destination's templates read (those that compile).
fn response_steps(d: &DestinationConfig) -> Vec<String> {
    use crate::template::Template;
    let mut steps: Vec<String> = Vec::new();
    let mut add = |t: Result<Template, String>| {
        if let Ok(t) = t {
            steps.extend(t.steps().map(str::to_string));
        }
    };
    add(Template::url(&d.url));
    for v in d.headers.values() {
        add(Template::header(v));
    }
    if let Some(b) = &d.body {
        add(Template::body(b).map(|(t, _)| t));
    }
    steps.sort();
    steps.dedup();
    steps
}

/// Whether `name` is a plain lower-case SQL name (a schema name hookyard uses unquoted).
fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// A file named by `${file:PATH}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretFile {
    /// The path, resolved against the config file's directory.
    pub path: PathBuf,
    /// SHA-256 of what was read (`None`: it could not be read). Never the content itself.
    pub sha256: Option<[u8; 32]>,
}

/// Largest `${file:PATH}` file read, in bytes. Default 64 KiB: secrets, tokens and even PEM
/// bundles are a few KiB; a path mistyped to a log or a device is refused, not read whole.
/// The least lease an attempt starts with beyond its destination's timeout (the lease is renewed
/// first when less is left): covers recording its result. `storage.postgres.lease` must be
/// longer than every destination's timeout plus this.
pub const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

pub const MAX_SECRET_FILE_BYTES: u64 = 64 << 10;

/// Reads a `${file:PATH}` file as Kubernetes secrets and systemd credentials deliver them: a
/// regular file (a symlink to one is fine) of at most [`MAX_SECRET_FILE_BYTES`], UTF-8, one
/// trailing newline (`\n` or `\r\n`) removed. Empty or only whitespace is an error, as an unset
/// variable is. Errors name the path, never the content.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let bytes = read_limited(path, MAX_SECRET_FILE_BYTES, Regular::Required, "a secret file")
        .map_err(|e| format!("cannot read secret file {shown}: {e}"))?;
    let mut text = String::from_utf8(bytes).map_err(|_| format!("secret file {shown} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("secret file {shown} is empty"));
    }
    if text.trim().is_empty() {
        return Err(format!("secret file {shown} holds only whitespace"));
    }
    Ok(text)
}

impl Config {
    /// Every item of `nets` must be a CIDR network or an address.
    fn check_nets(&self, key: &str, nets: &[String], errors: &mut Vec<ConfigError>) {
        for (i, net) in nets.iter().enumerate() {
            if parse_net(net).is_none() {
                errors
                    .push(self.error(&format!("{key}[{i}]"), format!("\"{net}\" is not a CIDR network or IP address")));
            }
        }
    }
}

/// Most deliveries one batch may carry (`batch.max_events`).
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Largest `batch.max_bytes`: 64 MiB.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;
/// Longest `batch.max_wait`.
pub const MAX_BATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Smallest `sources.<name>.rate_limit.per_second`: one request a day.
pub const MIN_SOURCE_RATE: f64 = 1.0 / 86_400.0;

/// The error of a secret that is empty or only whitespace.
const BLANK_SECRET: &str = "must not be empty or only whitespace";

/// Largest config file read, in bytes. Default 1 MiB: some 25,000 lines, a hundred times the
/// bundled example and as much as a Kubernetes ConfigMap holds; a larger file (or one that never
/// ends, such as `/dev/zero`) is refused before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Whether a text holds nothing but whitespace, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// Why a file could not be read by [`read_limited`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not a regular file (a device, a pipe, a directory): what kind it is.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    /// Over the limit: the file's size if known before reading.
    #[error("the file is {}over the {limit}-byte limit for {what}", size.map(|s| format!("{s} bytes, ")).unwrap_or_default())]
    TooLarge { size: Option<u64>, limit: u64, what: &'static str },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Which files [`read_limited`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regular {
    /// Regular files only.
    Required,
    /// Anything but a directory; a file that is not regular (a pipe from a templating command)
    /// is read up to the limit.
    Preferred,
}

/// Reads the file at `path` if it holds at most `limit` bytes. A regular file's size is checked
/// on the open file before anything is read; whatever is read stops one byte past the limit, so
/// a file that never ends costs `limit` bytes at most. `what` names the file in the error
/// ("a plugin file").
pub fn read_limited(path: &Path, limit: u64, regular: Regular, what: &'static str) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    let not_regular = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_fifo() {
        Some("a named pipe")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    match not_regular {
        None if meta.len() > limit => return Err(ReadError::TooLarge { size: Some(meta.len()), limit, what }),
        Some(kind) if regular == Regular::Required || kind == "a directory" => return Err(ReadError::NotRegular(kind)),
        _ => {}
    }
    let mut bytes = Vec::with_capacity(if not_regular.is_none() { meta.len() as usize } else { 0 });
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { size: None, limit, what });
    }
    Ok(bytes)
}

/// Most problems reported for one item (a source, a destination, a route, a section): past a
/// hundred, the item is not worth reading further, and the bound keeps re-reading it cheap.
const MAX_PROBLEMS_PER_ITEM: usize = 100;

fn segment_name(s: &Segment) -> String {
    match s {
        Segment::Seq { index } => format!("[{index}]"),
        Segment::Map { key } => key.clone(),
        Segment::Enum { variant } => variant.clone(),
        Segment::Unknown => "?".to_string(),
    }
}

/// Takes the key at `path` out of its mapping in `v`; false if `path` does not end at a mapping's
/// key (an item of a list, or the value itself).
fn remove_key(v: &mut Value, path: &[Segment]) -> bool {
    let Some((Segment::Map { key }, parents)) = path.split_last() else {
        return false;
    };
    let mut at = v;
    for s in parents {
        let next = match s {
            Segment::Seq { index } => at.as_array_mut().and_then(|a| a.get_mut(*index)),
            Segment::Map { key } => at.as_object_mut().and_then(|m| m.get_mut(key)),
            Segment::Enum { .. } | Segment::Unknown => None,
        };
        let Some(next) = next else { return false };
        at = next;
    }
    at.as_object_mut().is_some_and(|m| m.remove(key).is_some())
}

fn declared_names(v: &Value) -> Vec<String> {
    v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// A route with its index in the file's `routes` list.
pub type RouteEntry = (usize, RouteConfig);

/// Parses `10.0.0.0/8` or a single address (`::1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>().ok().or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// serde's messages name Rust types; users see YAML.
fn clean_serde_message(msg: &str) -> String {
    msg.replace("struct ", "").replace("a map", "a mapping").replace("a sequence", "a list")
}

/// ` (did you mean "x"?)` when a known name is within a small edit distance, else empty.
pub fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
