//! Delivery: takes due deliveries from the store, turns them into signed HTTP requests, sends them,
//! records every attempt and retries on the destination's policy, behind circuit breakers and
//! rate limits.
//!
//! Knows nothing of how events arrived (no verification, no routing).

pub mod breaker;
mod client;
mod config;
mod dispatcher;
pub mod egress;
pub mod retry;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use sha2::{Digest, Sha256};

pub use breaker::{BreakerSettings, InFlightLimit, RateLimiter};
pub use client::{AttemptReport, ClientIdentity, HostPools, HttpClient, IdentityError, TlsRoots, read_pem_file};
pub use config::Network;
pub use dispatcher::{Dispatcher, DispatcherStats, HttpTransport, QueueFull, Transport};
pub use retry::{AttemptOutcome, Backoff, RetryPolicy};

use crate::store::{DueDelivery, MsgId};

use crate::sign::Signer;

/// `User-Agent` of every delivery.
pub const USER_AGENT_VALUE: &str = concat!("Hookyard/", env!("CARGO_PKG_VERSION"));

/// A configured destination, compiled: parsed URL, headers, signer, its own connection pool.
pub struct Destination {
    pub name: Arc<str>,
    /// The URL; `None` when it is a template (each delivery carries its rendered URL).
    pub url: Option<Uri>,
    /// Its `url`, `headers` and `body` templates (empty: none).
    pub templates: crate::template::Templates,
    /// The connection pools of a templated URL, one per host (see [`HostPools`]).
    pub hosts: Option<HostPools>,
    /// `POST` or `PUT` (`method:`); a standard method, so cloning it allocates nothing.
    pub method: Method,
    /// Extra headers from the config, set on every delivery.
    pub headers: HeaderMap,
    pub signer: Signer,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Bounds attempts in flight to this destination (`max_in_flight`, or this instance's share
    /// of it).
    pub limit: InFlightLimit,
    pub client: HttpClient,
    pub breaker: BreakerSettings,
    pub rate: Option<RateLimiter>,
    /// `ordering:`: per key, one delivery at a time, in accept order.
    pub ordering: Option<KeyOrder>,
    /// `batch:`: deliveries go in batches.
    pub batch: Option<crate::config::BatchConfig>,
}

/// A chain step's conditions on the response of the delivery it follows (`routes[].then[]`),
/// compiled: which 2xx statuses let it go (`None`: any), and its `when:` on that response.
pub struct StepRule {
    pub status: Option<Vec<u16>>,
    pub rule: crate::rules::Rule,
}

/// The steps of every route, by (route, step destination).
pub type StepRules = std::collections::HashMap<(Arc<str>, Arc<str>), Arc<StepRule>>;

/// A destination's `ordering:`, compiled: what a delivery's order key is, and what a head that
/// ends undelivered does to its key.
pub struct KeyOrder {
    pub key: OrderKey,
    pub on_dead: crate::config::OnDead,
}

pub enum OrderKey {
    /// One order for every delivery of the destination.
    Destination,
    /// A request header of the event.
    Header(http::HeaderName),
    /// A JSONPath into the delivered body, and the part of a body it reads (only that is parsed).
    Path(crate::rules::JsonPath, crate::rules::Projection),
}

impl KeyOrder {
    /// The order key of a delivery of `body` (as delivered) for an event that came with
    /// `headers`. An event without the key (no such header, no such value, a body that is not
    /// JSON) is ordered under the empty key, with every other such event: never out of order.
    pub fn key_of(&self, headers: &http::HeaderMap, body: &[u8]) -> String {
        match &self.key {
            OrderKey::Destination => String::new(),
            OrderKey::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string(),
            OrderKey::Path(path, projection) => match projection.parse(body).as_ref().and_then(|v| path.first(v)) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            },
        }
    }

    /// Whether a head that ends undelivered holds its key (`on_dead: block`).
    pub fn blocks(&self) -> bool {
        self.on_dead == crate::config::OnDead::Block
    }
}

/// A transform's headers with a template's over them (same name: the template's value).
pub fn merge_headers(base: Option<Vec<(String, String)>>, over: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = base
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)))
        .collect();
    merged.extend(over);
    merged
}

/// `msg_` + 24 hex digits of SHA-256(event id, route, destination): deterministic, so a retry or
/// replay carries the same id and receivers can deduplicate, while two routes delivering one
/// event to one destination carry different ids (both are meant to arrive).
pub fn message_id(event_id: &str, route: &str, destination: &str) -> MsgId {
    let mut h = Sha256::new();
    for part in [event_id, route, destination] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    MsgId(format!("msg_{}", hex::encode(&digest[..12])).into())
}

impl Destination {
    /// Where a delivery goes: the URL rendered for it when it was planned (a templated URL), else
    /// the destination's. One planned before the URL became a template, or whose rendering failed
    /// and that an operator replayed as planned, has none to go to.
    pub fn target(&self, d: &DueDelivery) -> Result<Uri, String> {
        match (&d.url, &self.url) {
            (Some(rendered), _) => {
                rendered.parse().map_err(|e| format!("the stored URL \"{rendered}\" is not a valid URL: {e}"))
            }
            (None, Some(url)) => Ok(url.clone()),
            (None, None) => Err(format!(
                "no URL was rendered for this delivery, and destinations.{}.url is a template: `hookyard replay --reroute EVENT` plans it again",
                self.name
            )),
        }
    }

    /// The client (connection pool) for `uri`: the destination's own, or its host's.
    pub fn client_for(&self, uri: &Uri) -> Result<HttpClient, String> {
        match &self.hosts {
            Some(hosts) => hosts.client(uri),
            None => Ok(self.client.clone()),
        }
    }
}

/// The exact request an attempt sends at `now` to `uri` (see [`Destination::target`]): the
/// event's forwarded headers, a transform's (or a template's) headers, the destination's headers,
/// then `webhook-id`, `webhook-timestamp` and the signature, which always win.
pub fn build_request(dest: &Destination, d: &DueDelivery, uri: Uri, now: SystemTime) -> Request<Full<Bytes>> {
    let mut headers = HeaderMap::with_capacity(d.headers.len() + dest.headers.len() + 4);
    let extra = d.extra_headers.as_deref().map(Vec::as_slice).unwrap_or_default();
    // the sender's headers keep every value of a repeated header; a transform's headers replace
    for (k, v) in d.headers.iter() {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_bytes(v.as_bytes())) {
            headers.append(k, v);
        }
    }
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_bytes(v.as_bytes())) {
            headers.insert(k, v);
        }
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    for (k, v) in &dest.headers {
        headers.insert(k.clone(), v.clone());
    }
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    let timestamp = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    headers.insert(WEBHOOK_ID, HeaderValue::from_str(&d.msg_id).expect("msg ids are ascii"));
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
    dest.signer.sign(&d.msg_id, timestamp, &d.body, &mut headers);
    let mut req = Request::new(Full::new(d.body.clone()));
    *req.method_mut() = dest.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");

/// Headers never copied from a sender's request to a delivery: hop-by-hop headers (RFC 9110 §7.6.1),
/// ones the client sets itself, credentials, and every provider's signature headers, which would be
/// wrong (or a leaked credential) on the re-signed request. The source's own signature header (for
/// `hmac` and `api-key`) is added to this list per source.
pub const NEVER_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "cookie",
    "set-cookie",
    "authorization",
    "user-agent",
    "x-hub-signature",
    "x-hub-signature-256",
    "stripe-signature",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-api-key",
];

/// The headers of `incoming` that may be forwarded (and are stored with the event), in order,
/// repeated headers included: skips `never` and the headers the sender's `Connection` header names
/// (hop-by-hop by declaration, RFC 9110 §7.6.1). Values are kept as UTF-8 (`café` passes as is);
/// the rare value that is not UTF-8 is converted lossily.
pub fn forwardable(incoming: &HeaderMap, never: &[HeaderName]) -> Vec<(String, String)> {
    let declared: Vec<String> = incoming
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    incoming
        .iter()
        .filter(|(k, _)| !never.contains(k) && !declared.iter().any(|d| d == k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_distinct() {
        let a = message_id("evt_1", "route-a", "chat");
        assert_eq!(a, message_id("evt_1", "route-a", "chat"));
        assert_eq!(a.len(), 4 + 24);
        assert_ne!(a, message_id("evt_1", "route-b", "chat"));
        assert_ne!(a, message_id("evt_1", "route-a", "billing"));
        // the separator keeps ("ab","c") and ("a","bc") apart
        assert_ne!(message_id("e", "ab", "c"), message_id("e", "a", "bc"));
    }

    #[test]
    fn strips_credentials_signatures_and_hop_by_hop() {
        let never: Vec<HeaderName> = NEVER_FORWARDED.iter().map(|h| HeaderName::from_static(h)).collect();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("x-github-event", "push"),
            ("x-github-delivery", "123"),
            ("x-hub-signature-256", "sha256=abc"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("host", "gw"),
            ("content-length", "10"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwardable(&h, &never);
        let mut names: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "x-github-delivery", "x-github-event"]);
    }
}
