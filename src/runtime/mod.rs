//! Turns a config file into one immutable, compiled [`Snapshot`]: verifiers, compiled conditions,
//! signers and destination clients. `hookyard check`, `run`, `dry-run` and (later) hot reload all go
//! through [`build`], so what `check` accepts is exactly what `run` serves.
//!
//! A request reads one snapshot at its start and uses it to the end.

mod event;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

pub use event::{Event, EventId};

use crate::config::OnError;
use crate::config::{
    AdminConfig, AlgorithmName, Config, ConfigError, ConfigErrors, DeliveryConfig, DeliveryMethod, DestinationConfig,
    EncodingName, ServerConfig, SignSchemeName, SourceConfig, StorageConfig, TlsConfig, VerifySchemeName,
    default_schedule, parse_net,
};
use crate::delivery::egress::EgressPolicy;
use crate::delivery::{
    Backoff, BreakerSettings, ClientIdentity, Destination, HttpClient, IdentityError, NEVER_FORWARDED, RateLimiter,
    RetryPolicy, TlsRoots, forwardable, message_id, read_pem_file,
};
use crate::plugin::{EventRef, Limits, Outcome, Plugin, PluginHost, run_chain};
use crate::rules::{EventView, JsonPath, Rule};
use crate::server::guard::{AllowList, RateLimit};
use crate::sign::{SignScheme, Signer};
use crate::store::{DueDelivery, NewDelivery};
use crate::verify::{Algorithm, Encoding, Scheme, Verifier};

/// Default clock tolerance for timestamped verification schemes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

pub struct Snapshot {
    /// First 12 hex digits of the SHA-256 of the config text.
    pub version: String,
    pub loaded_at: SystemTime,
    pub file: String,
    pub server: ServerConfig,
    pub delivery: DeliveryConfig,
    /// `storage`, with `path` resolved against the config file's directory.
    pub storage: StorageConfig,
    pub sources: Vec<Source>,
    pub routes: Vec<Route>,
    pub destinations: Vec<Arc<Destination>>,
    pub admin: AdminConfig,
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
    pub warnings: Vec<ConfigError>,
}

pub struct Source {
    pub name: Arc<str>,
    pub path: String,
    pub verifier: Verifier,
    /// Indexes into `Snapshot::routes` of the routes of this source, in file order.
    pub routes: Vec<usize>,
    /// Whether any of those routes reads the JSON body (if not, the body is never parsed).
    pub needs_body: bool,
    /// What the routes' conditions and the dedupe key can read of a body: only that is parsed.
    pub projection: crate::rules::Projection,
    /// Sender headers not forwarded to destinations (nor stored).
    pub never_forward: Vec<HeaderName>,
    pub dedupe: Option<Dedupe>,
    /// `allow_ips`: who may post here (`None`: everyone).
    pub allow_ips: Option<AllowList>,
    /// `rate_limit`; shared with the previous snapshot's source across a reload that keeps it.
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// Where a source's own event id is found, and for how long it is remembered.
pub struct Dedupe {
    pub key: DedupeKey,
    pub window: Duration,
}

pub enum DedupeKey {
    Header(HeaderName),
    Path(JsonPath),
}

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
}

/// The process's plugin host: one wasmtime engine, created on first use, so a config without
/// transforms never starts wasmtime. Compiled plugins are cached on disk next to the store
/// (`<storage dir>/plugin-cache`, or `HOOKYARD_PLUGIN_CACHE`) by content hash, so restarts and
/// reloads do not recompile unchanged plugins.
fn plugin_host(cache_dir: Option<PathBuf>) -> Result<&'static PluginHost, String> {
    static HOST: OnceLock<Result<PluginHost, String>> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(cache_dir)).as_ref().map_err(Clone::clone)
}

/// Reads and compiles a config file.
pub fn build(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let text = Config::read_text(path).map_err(|e| ConfigErrors(vec![e]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    build_from_text(&path.display().to_string(), &base, &text, &|k| std::env::var(k).ok())
}

/// Parses and compiles config text; every problem is returned, parse and compile errors alike.
pub fn build_from_text(
    file: &str,
    base_dir: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Snapshot, ConfigErrors> {
    let (cfg, mut errors) = Config::parse(file, base_dir, text, env);
    // the version covers the config text and every file it names (plugins, TLS files, secret
    // files), so a reload after a certificate, plugin or secret changed is not taken for "unchanged"
    let mut version_hash = Sha256::new();
    version_hash.update(text.as_bytes());
    let mut secret_files: Vec<PathBuf> = Vec::new();
    for f in &cfg.secret_files {
        version_hash.update(f.path.as_os_str().as_encoded_bytes());
        version_hash.update(f.sha256.unwrap_or_default());
        if !secret_files.contains(&f.path) {
            secret_files.push(f.path.clone());
        }
    }
    let mut plugin_files = Vec::new();

    let policy = Arc::new(EgressPolicy::new(cfg.egress.allow.iter().filter_map(|s| parse_net(s)).collect()));
    let roots = TlsRoots::webpki();
    let mut destinations = Vec::new();
    let mut warnings = Vec::new();
    for (name, d) in &cfg.destinations {
        if let Some(w) = egress_warning(&policy, &d.url) {
            warnings.push(cfg.error(&format!("destinations.{name}.url"), w));
        }
        let mut files = TlsFiles { version: &mut version_hash, watched: &mut plugin_files };
        match build_destination(&cfg, name, d, &policy, &roots, &mut files) {
            Ok(dest) => destinations.push(Arc::new(dest)),
            Err(e) => errors.extend(e),
        }
    }

    let mut routes: Vec<Route> = Vec::new();
    let mut route_sources: Vec<&str> = Vec::new();
    for (index, r) in &cfg.routes {
        let key = format!("routes[{index}]");
        let rule = match crate::rules::compile(&r.when) {
            Ok(rule) => rule,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| cfg.error(&format!("{key}.when{}", e.path), e.message)));
                continue;
            }
        };
        let dests = r.to.iter().filter_map(|t| destinations.iter().position(|d| &*d.name == t)).collect();
        let mut plugins = Vec::new();
        for (j, t) in r.transform.iter().enumerate() {
            let k = format!("{key}.transform[{j}].plugin");
            let path = cfg.base_dir.join(&t.plugin);
            plugin_files.push(path.clone());
            // read once, bounded: what is hashed into the version is what is compiled
            let bytes = match crate::plugin::read_plugin_file(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    errors.push(cfg.error(&k, format!("route \"{}\": {}: {e}", r.name, path.display())));
                    continue;
                }
            };
            version_hash.update(&bytes);
            let d = Limits::default();
            let limits = Limits {
                timeout_ms: t.limits.timeout_ms.unwrap_or(d.timeout_ms),
                memory_mb: t.limits.memory_mb.unwrap_or(d.memory_mb),
                max_output_bytes: t.limits.max_output_bytes.unwrap_or(d.max_output_bytes),
                max_outputs: t.limits.max_outputs.unwrap_or(d.max_outputs),
                // a raised max_output_bytes raises the default total with it
                max_total_output_bytes: t
                    .limits
                    .max_total_output_bytes
                    .unwrap_or(d.max_total_output_bytes.max(t.limits.max_output_bytes.unwrap_or(d.max_output_bytes))),
            };
            let config: Vec<(String, String)> = t
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            let cache = std::env::var_os("HOOKYARD_PLUGIN_CACHE")
                .map(PathBuf::from)
                .or_else(|| storage_dir(&cfg).map(|d| d.join("plugin-cache")));
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let loaded = plugin_host(cache).and_then(|h| {
                h.load_bytes(&name, &bytes, config, limits, r.to.clone())
                    .map_err(|e| format!("route \"{}\": {}: {e}", r.name, path.display()))
            });
            match loaded {
                Ok(p) => plugins.push(p),
                Err(m) => errors.push(cfg.error(&k, m)),
            }
        }
        if plugins.len() != r.transform.len() {
            continue;
        }
        let chain_label = plugins.iter().map(|p| p.name()).collect::<Vec<_>>().join("+");
        routes.push(Route {
            name: r.name.as_str().into(),
            rule,
            destinations: dests,
            plugins,
            chain_label,
            on_error: r.on_error,
        });
        route_sources.push(&r.source);
    }

    let mut sources = Vec::new();
    for (name, s) in &cfg.sources {
        let dedupe = match &s.dedupe {
            None => None,
            Some(d) => {
                let key = match (&d.header, &d.path) {
                    (Some(h), _) => HeaderName::try_from(h.as_str()).map(DedupeKey::Header).map_err(|_| {
                        (format!("sources.{name}.dedupe.header"), format!("\"{h}\" is not a valid header name"))
                    }),
                    (None, Some(p)) => {
                        JsonPath::parse(p).map(DedupeKey::Path).map_err(|m| (format!("sources.{name}.dedupe.path"), m))
                    }
                    (None, None) => Err((format!("sources.{name}.dedupe"), String::new())), // reported by config
                };
                match key {
                    Ok(key) => Some(Dedupe { key, window: d.window.0 }),
                    Err((k, m)) => {
                        if !m.is_empty() {
                            errors.push(cfg.error(&k, m));
                        }
                        None
                    }
                }
            }
        };
        match build_verifier(s) {
            Ok(verifier) => {
                let mine: Vec<usize> = (0..routes.len()).filter(|i| route_sources[*i] == name).collect();
                let needs_body = mine.iter().any(|i| routes[*i].rule.needs_body());
                let mut never_forward: Vec<HeaderName> =
                    NEVER_FORWARDED.iter().map(|h| HeaderName::from_static(h)).collect();
                if let Some(h) = s.verify.header.as_deref().and_then(|h| HeaderName::try_from(h).ok()) {
                    never_forward.push(h);
                }
                let needs_body = needs_body || matches!(dedupe, Some(Dedupe { key: DedupeKey::Path(_), .. }));
                let mut projection = crate::rules::Projection::default();
                mine.iter().for_each(|i| routes[*i].rule.read_by(&mut projection));
                if let Some(Dedupe { key: DedupeKey::Path(p), .. }) = &dedupe {
                    p.read_by(&mut projection);
                }
                sources.push(Source {
                    name: name.as_str().into(),
                    path: s.path.clone(),
                    verifier,
                    routes: mine,
                    needs_body,
                    projection,
                    never_forward,
                    dedupe,
                    // entries that do not parse are reported by config
                    allow_ips: s
                        .allow_ips
                        .as_ref()
                        .map(|n| AllowList::new(n.iter().filter_map(|n| parse_net(n)).collect())),
                    rate_limit: s.rate_limit.map(|r| Arc::new(RateLimit::new(r.per_second, r.burst()))),
                });
            }
            Err((key, msg)) => errors.push(cfg.error(&format!("sources.{name}.verify{key}"), msg)),
        }
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
    let version = hex::encode(&version_hash.finalize()[..6]);
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
            ..cfg.storage.clone()
        },
        sources,
        routes,
        destinations,
        admin: cfg.admin.clone(),
        log_redact,
        plugin_files,
        secret_files,
        trusted_proxies: cfg.server.trusted_proxies.iter().filter_map(|n| parse_net(n)).collect(),
        warnings,
    })
}

/// Why deliveries to `url` will all be refused by the egress guard, if its host says so without
/// DNS: an IP literal the policy refuses, or `localhost` (and `*.localhost`, which resolve to
/// loopback) when neither `127.0.0.1` nor `::1` is allowed. A host name is otherwise only known
/// at delivery time, when the guard checks every address it resolves to.
fn egress_warning(policy: &EgressPolicy, url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let consequence = "egress.allow does not include it, so every delivery will be refused";
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        let kind = policy.check(ip).err()?;
        let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        return Some(format!("{ip} is {article} {kind} address; {consequence}"));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let loopback_name = name == "localhost" || name.ends_with(".localhost");
    let refused = |ip: &str| policy.check(ip.parse().expect("a valid address")).is_err();
    (loopback_name && refused("127.0.0.1") && refused("::1"))
        .then(|| format!("{host} is a loopback name; {consequence}"))
}

fn algorithm(a: Option<AlgorithmName>) -> Algorithm {
    match a.unwrap_or_default() {
        AlgorithmName::Sha256 => Algorithm::Sha256,
        AlgorithmName::Sha512 => Algorithm::Sha512,
    }
}

fn encoding(e: Option<EncodingName>) -> Encoding {
    match e.unwrap_or_default() {
        EncodingName::Hex => Encoding::Hex,
        EncodingName::Base64 => Encoding::Base64,
    }
}

fn header_name(h: Option<&str>, default: Option<&'static str>) -> Result<HeaderName, (String, String)> {
    match (h, default) {
        (Some(h), _) => {
            HeaderName::try_from(h).map_err(|_| (".header".into(), format!("\"{h}\" is not a valid header name")))
        }
        (None, Some(d)) => Ok(HeaderName::from_static(d)),
        (None, None) => {
            Err((".header".into(), "this scheme needs `header:`, the header carrying the signature".into()))
        }
    }
}

/// The directory of the store (where the plugin cache lives), `None` for `:memory:`.
fn storage_dir(cfg: &Config) -> Option<PathBuf> {
    (cfg.storage.path.as_os_str() != ":memory:")
        .then(|| cfg.base_dir.join(&cfg.storage.path).parent().map(Path::to_path_buf))
        .flatten()
}

/// Builds a source's verifier; on error, the key suffix under `verify` and the message.
fn build_verifier(s: &SourceConfig) -> Result<Verifier, (String, String)> {
    let v = &s.verify;
    let scheme = match v.scheme {
        VerifySchemeName::None => Scheme::None,
        VerifySchemeName::Github => Scheme::Github,
        VerifySchemeName::Stripe => Scheme::Stripe,
        VerifySchemeName::Shopify => Scheme::Shopify,
        VerifySchemeName::Slack => Scheme::Slack,
        VerifySchemeName::StandardWebhooks => Scheme::StandardWebhooks,
        VerifySchemeName::Hmac => Scheme::Hmac {
            header: header_name(v.header.as_deref(), None)?,
            algorithm: algorithm(v.algorithm),
            encoding: encoding(v.encoding),
            prefix: v.prefix.clone().unwrap_or_default(),
        },
        VerifySchemeName::Basic => Scheme::Basic,
        VerifySchemeName::ApiKey => Scheme::ApiKey { header: header_name(v.header.as_deref(), Some("x-api-key"))? },
    };
    let hmac_only =
        [(v.algorithm.is_some(), "algorithm"), (v.encoding.is_some(), "encoding"), (v.prefix.is_some(), "prefix")];
    for (set, key) in hmac_only {
        if set && v.scheme != VerifySchemeName::Hmac {
            return Err((format!(".{key}"), "only the hmac scheme takes this key".into()));
        }
    }
    if v.header.is_some() && !matches!(v.scheme, VerifySchemeName::Hmac | VerifySchemeName::ApiKey) {
        return Err((".header".into(), "only the hmac and api-key schemes take this key".into()));
    }
    let timestamped =
        matches!(v.scheme, VerifySchemeName::Stripe | VerifySchemeName::Slack | VerifySchemeName::StandardWebhooks);
    if v.tolerance.is_some() && !timestamped {
        return Err((
            ".tolerance".into(),
            "only timestamped schemes (stripe, slack, standard-webhooks) take a tolerance".into(),
        ));
    }
    let secrets: Vec<String> = v.secret.iter().chain(v.secrets.iter()).map(|s| s.0.clone()).collect();
    if v.scheme == VerifySchemeName::None && !secrets.is_empty() {
        return Err((".secret".into(), "scheme none takes no secret".into()));
    }
    let tolerance = v.tolerance.map(|d| d.0).unwrap_or(DEFAULT_TOLERANCE);
    Verifier::new(scheme, &secrets, tolerance).map_err(|m| (String::new(), m))
}

/// Where the TLS files a destination reads go besides its client: into the config's version and
/// the reload watcher's list.
struct TlsFiles<'a> {
    version: &'a mut Sha256,
    watched: &'a mut Vec<PathBuf>,
}

impl TlsFiles<'_> {
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, String> {
        self.watched.push(path.to_path_buf());
        let bytes = read_pem_file(path)?;
        self.version.update(&bytes);
        Ok(bytes)
    }
}

/// `destinations.<name>.tls`: the trusted roots and the client certificate, each file read and
/// parsed here so `check` reports what is wrong with it. Every problem is returned.
fn build_tls(
    cfg: &Config,
    key: &str,
    tls: &TlsConfig,
    roots: &TlsRoots,
    files: &mut TlsFiles<'_>,
) -> Result<(TlsRoots, Option<ClientIdentity>), Vec<ConfigError>> {
    let err = |k: &str, m: String| cfg.error(&format!("{key}.tls.{k}"), m);
    let mut errors = Vec::new();
    let roots = match &tls.ca_file {
        Some(f) => {
            let path = cfg.base_dir.join(f);
            match files.read(&path).and_then(|pem| roots.with_ca_pem(&path, &pem)) {
                Ok(roots) => roots,
                Err(m) => {
                    errors.push(err("ca_file", m));
                    roots.clone()
                }
            }
        }
        None => roots.clone(),
    };
    let identity = match (&tls.client_cert, &tls.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(err("client_cert", "client_cert needs client_key (give both or neither)".into()));
            None
        }
        (None, Some(_)) => {
            errors.push(err("client_key", "client_key needs client_cert (give both or neither)".into()));
            None
        }
        (Some(c), Some(k)) => {
            let (cert_path, key_path) = (cfg.base_dir.join(c), cfg.base_dir.join(k));
            let cert = files.read(&cert_path).map_err(|m| err("client_cert", m));
            let key = files.read(&key_path).map_err(|m| err("client_key", m));
            match (cert, key) {
                (Ok(cert), Ok(key)) => match ClientIdentity::from_pem(&cert_path, &cert, &key_path, &key) {
                    Ok(id) => Some(id),
                    Err(problems) => {
                        errors.extend(problems.into_iter().map(|p| match p {
                            IdentityError::Cert(m) => err("client_cert", m),
                            IdentityError::Key(m) => err("client_key", m),
                        }));
                        None
                    }
                },
                (cert, key) => {
                    errors.extend(cert.err().into_iter().chain(key.err()));
                    None
                }
            }
        }
    };
    if errors.is_empty() { Ok((roots, identity)) } else { Err(errors) }
}

/// `url`, `headers` and `sign` of a destination.
fn destination_basics(
    cfg: &Config,
    key: &str,
    d: &DestinationConfig,
) -> Result<(http::Uri, HeaderMap, Signer), ConfigError> {
    let err = |k: &str, m: String| cfg.error(&format!("{key}{k}"), m);
    let url: http::Uri = d.url.parse().map_err(|e| err(".url", format!("invalid URL: {e}")))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &d.headers {
        let hk = format!(".headers.{k}");
        let n =
            HeaderName::try_from(k.as_str()).map_err(|_| err(&hk, format!("\"{k}\" is not a valid header name")))?;
        if NEVER_FORWARDED.contains(&n.as_str()) || n == http::header::CONTENT_TYPE {
            return Err(err(&hk, format!("\"{k}\" is set by hookyard itself and cannot be configured")));
        }
        let v = HeaderValue::from_str(v).map_err(|_| err(&hk, "header values must be visible ASCII".into()))?;
        headers.insert(n, v);
    }
    let s = &d.sign;
    let scheme = match s.scheme {
        SignSchemeName::None => SignScheme::None,
        SignSchemeName::StandardWebhooks => SignScheme::StandardWebhooks,
        SignSchemeName::Github => SignScheme::Github,
        SignSchemeName::Hmac => SignScheme::Hmac {
            header: header_name(s.header.as_deref(), None).map_err(|(k, m)| err(&format!(".sign{k}"), m))?,
            algorithm: algorithm(s.algorithm),
            encoding: encoding(s.encoding),
            prefix: s.prefix.clone().unwrap_or_default(),
        },
    };
    if s.scheme != SignSchemeName::Hmac
        && (s.header.is_some() || s.algorithm.is_some() || s.encoding.is_some() || s.prefix.is_some())
    {
        return Err(err(".sign", "header, algorithm, encoding and prefix apply to the hmac scheme only".into()));
    }
    let signer = Signer::new(scheme, s.secret.as_ref().map(|s| s.0.as_str())).map_err(|m| err(".sign", m))?;
    Ok((url, headers, signer))
}

fn build_destination(
    cfg: &Config,
    name: &str,
    d: &DestinationConfig,
    policy: &Arc<EgressPolicy>,
    roots: &TlsRoots,
    files: &mut TlsFiles<'_>,
) -> Result<Destination, Vec<ConfigError>> {
    let key = format!("destinations.{name}");
    let ((url, headers, signer), (roots, identity)) =
        match (destination_basics(cfg, &key, d), build_tls(cfg, &key, &d.tls, roots, files)) {
            (Ok(basics), Ok(tls)) => (basics, tls),
            (basics, tls) => return Err(basics.err().into_iter().chain(tls.err().into_iter().flatten()).collect()),
        };
    let timeout = Duration::from_millis(d.timeout_ms);
    let client = HttpClient::new(policy.clone(), &roots, identity.as_ref(), d.max_in_flight, timeout)
        .map_err(|m| vec![cfg.error(&format!("{key}.tls"), m)])?;
    Ok(Destination {
        name: name.into(),
        url,
        method: match d.method {
            DeliveryMethod::Post => http::Method::POST,
            DeliveryMethod::Put => http::Method::PUT,
        },
        headers,
        signer,
        timeout,
        retry: RetryPolicy {
            backoff: match (&d.retry.exponential, &d.retry.schedule) {
                (Some(e), _) => Backoff::Exponential {
                    base: e.base.0,
                    factor: e.factor,
                    cap: e.cap.0,
                    max_attempts: e.max_attempts,
                },
                (None, Some(s)) => Backoff::Schedule(s.iter().map(|d| d.0).collect()),
                (None, None) => Backoff::Schedule(default_schedule()),
            },
            jitter: d.retry.jitter,
            max_retry_after: d.retry.max_retry_after.0,
            throttle_floor: d.retry.throttle_floor.0,
        },
        limit: tokio::sync::Semaphore::new(d.max_in_flight),
        client,
        breaker: BreakerSettings {
            enabled: d.breaker.enabled,
            failure_rate: d.breaker.failure_rate,
            min_requests: d.breaker.min_requests,
            window: d.breaker.window.0,
            cooldown: d.breaker.cooldown.0,
        },
        rate: d.rate_limit.map(RateLimiter::new),
    })
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

    /// A body for a debug log line: JSON with the `server.log_redact` paths masked, else a note.
    /// Parsed whole here (the routing parse keeps only what conditions read).
    pub fn loggable_body(&self, body: &[u8]) -> String {
        let mut v = match serde_json::from_slice(body).ok() {
            Some(v) => v,
            None => return format!("<{} bytes, not JSON>", body.len()),
        };
        let mask = serde_json::Value::String("[redacted]".into());
        for p in &self.log_redact {
            p.replace_all(&mut v, &mask);
        }
        v.to_string()
    }

    /// The JSON body, parsed only when a route or the dedupe key of `source` needs it, and then
    /// only the parts they can read (see [`crate::rules::Projection`]): a large body costs its
    /// bytes, not a tree of every value in it. A body that is not JSON gives `None`: it simply
    /// fails every body condition.
    pub fn parse_body(&self, source: &Source, event: &Event) -> Option<serde_json::Value> {
        if source.needs_body { source.projection.parse(&event.body) } else { None }
    }

    /// Indexes of the routes of `source` that `event` matches.
    pub fn matching_routes(&self, source: &Source, event: &Event, json: Option<&serde_json::Value>) -> Vec<usize> {
        let view = EventView { headers: &event.headers, body: json };
        source.routes.iter().copied().filter(|i| self.routes[*i].rule.matches(&view)).collect()
    }

    /// The source's own id of this event, if it names one and the event carries it.
    pub fn dedupe_key(&self, source: &Source, event: &Event, json: Option<&serde_json::Value>) -> Option<String> {
        let d = source.dedupe.as_ref()?;
        match &d.key {
            DedupeKey::Header(h) => event.headers.get(h)?.to_str().ok().map(str::to_string),
            DedupeKey::Path(p) => match p.first(json?)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }

    /// The deliveries of `routes` without transforms: one per (route, destination).
    fn plan_plain(&self, route: &Route, id_key: &str, out: &mut Vec<NewDelivery>) {
        for &d in &route.destinations {
            let destination = &self.destinations[d].name;
            out.push(NewDelivery {
                route: route.name.to_string(),
                destination: destination.to_string(),
                msg_id: message_id(id_key, &route.name, destination),
                body: None,
                headers: None,
                failed: None,
            });
        }
    }

    /// Plans the deliveries of `event` for the matching `routes`: one per (route, destination),
    /// after running each route's transform chain. A transform output goes to the destinations it
    /// names (a subset of the route's) or to all of the route's; a drop plans nothing; a failure
    /// follows the route's `on_error`. `id_key` seeds the `webhook-id`s (the event id, or a fresh
    /// key when re-routing). `stored_headers` are the event's headers as stored (see
    /// [`Snapshot::stored_headers`]): plugins see those, never credentials or signatures. Notes
    /// say what transforms did, for logs and `dry-run`.
    pub async fn plan_event(
        &self,
        source: &Source,
        event: &Event,
        stored_headers: &[(String, String)],
        routes: &[usize],
        id_key: &str,
    ) -> Plan {
        let mut plan = Plan::default();
        for &r in routes {
            let route = &self.routes[r];
            if route.plugins.is_empty() {
                self.plan_plain(route, id_key, &mut plan.deliveries);
                continue;
            }
            // Borrowed: the chain lowers these into each plugin's memory without copying them here.
            let input = EventRef {
                id: &event.id.0,
                source: &source.name,
                received_at_ms: crate::store::to_ms(event.received_at) as u64,
                method: "POST",
                path: &source.path,
                headers: stored_headers,
                body: &event.body,
            };
            let started = std::time::Instant::now();
            let result = run_chain(&route.plugins, input).await;
            let seconds = started.elapsed().as_secs_f64();
            match result {
                Ok(Outcome::Emit(outputs)) => {
                    crate::metrics::plugin_call(&route.chain_label, "emit", seconds);
                    for (i, output) in outputs.into_iter().enumerate() {
                        // the first output keeps the untransformed id scheme; a split's others get their own
                        let route_key = if i == 0 { route.name.to_string() } else { format!("{}#{i}", route.name) };
                        // what the transform left as it was is not stored again: an unchanged
                        // body is the event's, no headers is none
                        let body = (output.body != event.body).then_some(&output.body);
                        let headers = (!output.headers.is_empty()).then_some(&output.headers);
                        for &d in &route.destinations {
                            let destination = &self.destinations[d].name;
                            if output
                                .destinations
                                .as_ref()
                                .is_some_and(|names| !names.iter().any(|n| n == &**destination))
                            {
                                continue;
                            }
                            plan.deliveries.push(NewDelivery {
                                route: route.name.to_string(),
                                destination: destination.to_string(),
                                msg_id: message_id(id_key, &route_key, destination),
                                body: body.cloned(),
                                headers: headers.cloned(),
                                failed: None,
                            });
                        }
                    }
                }
                Ok(Outcome::Drop(reason)) => {
                    crate::metrics::plugin_call(&route.chain_label, "drop", seconds);
                    plan.notes.push(RouteNote {
                        route: route.name.to_string(),
                        note: format!("dropped by transform: {reason}"),
                    });
                }
                Err(e) => {
                    crate::metrics::plugin_call(&route.chain_label, e.error.label(), seconds);
                    let reason = format!("transform failed ({}): {e}", e.error.label());
                    plan.notes.push(RouteNote {
                        route: route.name.to_string(),
                        note: format!("{reason} (on_error: {:?})", route.on_error),
                    });
                    match route.on_error {
                        OnError::Drop => {}
                        OnError::DeliverOriginal => self.plan_plain(route, id_key, &mut plan.deliveries),
                        OnError::Fail => {
                            let start = plan.deliveries.len();
                            self.plan_plain(route, id_key, &mut plan.deliveries);
                            plan.deliveries[start..].iter_mut().for_each(|d| d.failed = Some(reason.clone()));
                        }
                    }
                }
            }
        }
        plan
    }

    pub fn destination(&self, name: &str) -> Option<&Arc<Destination>> {
        self.destinations.iter().find(|d| &*d.name == name)
    }

    /// The headers of an event that are stored and forwarded.
    pub fn stored_headers(&self, source: &Source, headers: &HeaderMap) -> Vec<(String, String)> {
        forwardable(headers, &source.never_forward)
    }

    /// A planned delivery as the dispatcher would see it (for `dry-run`).
    pub fn preview(&self, source: &Source, event: &Event, d: &NewDelivery) -> DueDelivery {
        DueDelivery {
            id: crate::ids::DeliveryId(0),
            event_id: event.id.clone(),
            route: d.route.as_str().into(),
            destination: d.destination.as_str().into(),
            msg_id: d.msg_id.as_str().into(),
            attempts: 0,
            headers: Arc::new(self.stored_headers(source, &event.headers)),
            extra_headers: d.headers.clone().map(Arc::new),
            body: d.body.clone().unwrap_or_else(|| event.body.clone()),
        }
    }

    /// `ok — N sources, N destinations, N routes` for `check`.
    /// The label of each route's plugin chain (`a+b`), for routes with a transform.
    pub fn plugin_chains(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().filter(|r| !r.plugins.is_empty()).map(|r| r.chain_label.as_str())
    }

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

/// What [`Snapshot::plan_event`] decided.
#[derive(Debug, Default)]
pub struct Plan {
    pub deliveries: Vec<NewDelivery>,
    /// What transforms did (dropped, failed), per route.
    pub notes: Vec<RouteNote>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteNote {
    pub route: String,
    pub note: String,
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
        build_from_text("routes.yaml", Path::new("."), &text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
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
