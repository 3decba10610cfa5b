//! A `destinations.<name>` section, compiled: [`Destination::from_config`]. Every file it reads
//! (TLS roots, client certificate and key) goes through [`Inputs`], so it is watched and part of
//! the config's version.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::egress::EgressPolicy;
use super::{
    Backoff, BreakerSettings, ClientIdentity, Destination, HostPools, HttpClient, IdentityError, InFlightLimit,
    KeyOrder, NEVER_FORWARDED, OrderKey, RateLimiter, RetryPolicy, TlsRoots, read_pem_file,
};
use crate::config::{DeliveryMethod, DestinationConfig, Inputs, KeyError, TlsConfig, default_schedule};
use crate::rules::{JsonPath, Projection};
use crate::sign::Signer;
use crate::template::{Template, Templates, is_template};

/// What every destination of a config shares: the egress policy (`egress.allow`) and the
/// trusted roots its TLS settings start from.
pub struct Network {
    pub policy: Arc<EgressPolicy>,
    pub roots: TlsRoots,
}

impl Network {
    pub fn new(policy: EgressPolicy) -> Network {
        Network { policy: Arc::new(policy), roots: TlsRoots::webpki() }
    }

    /// Why deliveries to `url` will all be refused by the egress guard, if its host says so
    /// without DNS: an IP literal the policy refuses, or `localhost` (and `*.localhost`, which
    /// resolve to loopback) when neither `127.0.0.1` nor `::1` is allowed. A host name is
    /// otherwise only known at delivery time, when the guard checks every address it resolves to.
    pub fn warning(&self, url: &str) -> Option<String> {
        let uri: http::Uri = url.parse().ok()?;
        let host = uri.host()?;
        let consequence = "egress.allow does not include it, so every delivery will be refused";
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
            let kind = self.policy.check(ip).err()?;
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            return Some(format!("{ip} is {article} {kind} address; {consequence}"));
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let loopback_name = name == "localhost" || name.ends_with(".localhost");
        let refused = |ip: &str| self.policy.check(ip.parse().expect("a valid address")).is_err();
        (loopback_name && refused("127.0.0.1") && refused("::1"))
            .then(|| format!("{host} is a loopback name; {consequence}"))
    }
}

impl Destination {
    /// Compiles `destinations.<name>`; every problem is returned, with keys relative to it.
    pub fn from_config(
        name: &str,
        d: &DestinationConfig,
        network: &Network,
        inputs: &mut Inputs,
    ) -> Result<Destination, Vec<KeyError>> {
        let ((url, headers, signer, templates), (roots, identity), ordering) =
            match (basics(d), tls(&d.tls, &network.roots, inputs), ordering(d)) {
                (Ok(basics), Ok(tls), Ok(ordering)) => (basics, tls, ordering),
                (basics, tls, ordering) => {
                    return Err(basics
                        .err()
                        .into_iter()
                        .chain(tls.err().into_iter().flatten())
                        .chain(ordering.err())
                        .collect());
                }
            };
        let timeout = Duration::from_millis(d.timeout_ms);
        let client = HttpClient::new(network.policy.clone(), &roots, identity.as_ref(), d.max_in_flight, timeout)
            .map_err(|m| vec![KeyError::new(".tls", m)])?;
        let hosts = match (&url, &templates.url) {
            (None, Some(_)) => Some(
                HostPools::new(
                    d.max_hosts,
                    network.policy.clone(),
                    &roots,
                    identity.as_ref(),
                    d.max_in_flight,
                    timeout,
                )
                .map_err(|m| vec![KeyError::new(".tls", m)])?,
            ),
            _ => None,
        };
        Ok(Destination {
            name: name.into(),
            url,
            templates,
            hosts,
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
            limit: InFlightLimit::new(d.max_in_flight),
            client,
            breaker: BreakerSettings {
                enabled: d.breaker.enabled,
                failure_rate: d.breaker.failure_rate,
                min_requests: d.breaker.min_requests,
                window: d.breaker.window.0,
                cooldown: d.breaker.cooldown.0,
            },
            rate: d.rate_limit.map(RateLimiter::new),
            ordering,
            batch: d.batch.clone(),
        })
    }
}

/// `ordering`: its key, a JSONPath (only what it reads of a body is parsed) or `header:Name`.
fn ordering(d: &DestinationConfig) -> Result<Option<KeyOrder>, KeyError> {
    let Some(o) = &d.ordering else { return Ok(None) };
    let key =
        match o.key.as_deref() {
            None => OrderKey::Destination,
            Some(k) => match k.strip_prefix("header:") {
                Some(h) => OrderKey::Header(HeaderName::try_from(h.trim()).map_err(|_| {
                    KeyError::new(".ordering.key", format!("\"{}\" is not a valid header name", h.trim()))
                })?),
                None if k.starts_with('$') => {
                    let path = JsonPath::parse(k).map_err(|m| KeyError::new(".ordering.key", m))?;
                    let mut projection = Projection::default();
                    path.read_by(&mut projection);
                    OrderKey::Path(path, projection)
                }
                None => {
                    return Err(KeyError::new(
                        ".ordering.key",
                        format!("\"{k}\" is neither a JSONPath (starting with `$`) nor `header:Name`"),
                    ));
                }
            },
        };
    Ok(Some(KeyOrder { key, on_dead: o.on_dead }))
}

/// `url`, `headers`, `body` and `sign`: the static URL and headers, and the templates.
fn basics(d: &DestinationConfig) -> Result<(Option<http::Uri>, HeaderMap, Signer, Templates), KeyError> {
    let mut templates = Templates::default();
    let url = if is_template(&d.url) {
        templates.url = Some(Template::url(&d.url).map_err(|e| KeyError::new(".url", e))?);
        None
    } else {
        Some(d.url.parse().map_err(|e| KeyError::new(".url", format!("invalid URL \"{}\": {e}", d.url)))?)
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &d.headers {
        let key = format!(".headers.{k}");
        let n = HeaderName::try_from(k.as_str())
            .map_err(|_| KeyError::new(&key, format!("\"{k}\" is not a valid header name")))?;
        if NEVER_FORWARDED.contains(&n.as_str()) || n == http::header::CONTENT_TYPE {
            return Err(KeyError::new(key, format!("\"{k}\" is set by hookyard itself and cannot be configured")));
        }
        if is_template(v) {
            templates.headers.push((n, Template::header(v).map_err(|e| KeyError::new(&key, e))?));
            continue;
        }
        let v = HeaderValue::from_str(v).map_err(|_| KeyError::new(&key, "header values must be visible ASCII"))?;
        headers.insert(n, v);
    }
    if let Some(b) = &d.body {
        templates.body = Some(Template::body(b).map_err(|e| KeyError::new(".body", e))?);
    }
    for t in templates
        .url
        .iter()
        .chain(templates.headers.iter().map(|(_, t)| t))
        .chain(templates.body.iter().map(|(t, _)| t))
    {
        t.read_by(&mut templates.projection);
    }
    let signer = Signer::from_config(&d.sign).map_err(|e| KeyError::new(format!(".sign{}", e.key), e.message))?;
    Ok((url, headers, signer, templates))
}

/// `tls`: the trusted roots and the client certificate, each file read and parsed here so `check`
/// reports what is wrong with it. Every problem is returned.
fn tls(
    tls: &TlsConfig,
    roots: &TlsRoots,
    inputs: &mut Inputs,
) -> Result<(TlsRoots, Option<ClientIdentity>), Vec<KeyError>> {
    let err = |k: &str, m: String| KeyError::new(format!(".tls.{k}"), m);
    let mut errors = Vec::new();
    let read = |inputs: &mut Inputs, f: &Path| {
        let path = inputs.resolve(f);
        inputs.read(&path, read_pem_file).map(|pem| (path, pem))
    };
    let roots = match &tls.ca_file {
        Some(f) => match read(inputs, f).and_then(|(path, pem)| roots.with_ca_pem(&path, &pem)) {
            Ok(roots) => roots,
            Err(m) => {
                errors.push(err("ca_file", m));
                roots.clone()
            }
        },
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
            let cert = read(inputs, c).map_err(|m| err("client_cert", m));
            let key = read(inputs, k).map_err(|m| err("client_key", m));
            match (cert, key) {
                (Ok((cert_path, cert)), Ok((key_path, key))) => {
                    match ClientIdentity::from_pem(&cert_path, &cert, &key_path, &key) {
                        Ok(id) => Some(id),
                        Err(problems) => {
                            errors.extend(problems.into_iter().map(|p| match p {
                                IdentityError::Cert(m) => err("client_cert", m),
                                IdentityError::Key(m) => err("client_key", m),
                            }));
                            None
                        }
                    }
                }
                (cert, key) => {
                    errors.extend(cert.err().into_iter().chain(key.err()));
                    None
                }
            }
        }
    };
    if errors.is_empty() { Ok((roots, identity)) } else { Err(errors) }
}
