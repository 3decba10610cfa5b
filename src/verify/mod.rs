//! Inbound signature verification: did this request come from the sender we share a secret with?
//!
//! A [`Verifier`] is built once per route from config ([`Verifier::new`] decodes and checks every
//! secret) and then [`Verifier::verify`] answers for each request as a pure function of the headers,
//! the body, the secrets and the `now` it is given.
//!
//! This module must not do IO, log, spawn tasks or read the clock (`now` is a parameter, so replay
//! windows are testable). It must not compare MACs or keys with `==`: every comparison goes through
//! `mac::Tag::matches` or `mac::digests_equal`, which are constant time. Its errors are logged, so
//! they must never carry a secret or a presented signature.

pub mod catalogue;
mod config;
mod handshake;
pub mod keys;
pub(crate) mod mac;
mod provide;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use catalogue::{Check, Part, Sig, Time, Unit};
use mac::{MacKey, Tag};

pub use catalogue::{Handshake, Preset};
pub use config::DEFAULT_TOLERANCE;
pub(crate) use config::header_name;
pub use handshake::{Answer, Outcome as HandshakeOutcome};
pub use provide::ProviderRequest;

/// Hash function of an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Only for providers that still sign with it (Intercom, Twilio); not offered to config.
    Sha1,
    Sha256,
    Sha512,
}

/// Text encoding of a MAC in a header. Decoding accepts hex digits in either case; base64 is the
/// standard alphabet with padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// How a sender proves a request is theirs: a provider of the catalogue ([`catalogue::PRESETS`],
/// e.g. GitHub, Stripe, Slack, Standard Webhooks, Twilio) or a generic scheme configured by keys.
///
/// Timestamped presets also reject requests whose timestamp is further than the tolerance from
/// `now`, in either direction, which bounds replays. Where a scheme signs the timestamp, the signed
/// string uses the header's text exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// No verification at all: every request is accepted. Takes no secrets.
    None,
    /// A provider of the catalogue.
    Preset(&'static Preset),
    /// Any single-header HMAC of the body: `<header>: <prefix><encoding of HMAC(secret, body)>`.
    /// The prefix may be empty and must match exactly.
    Hmac { header: HeaderName, algorithm: Algorithm, encoding: Encoding, prefix: String },
    /// HTTP Basic authentication (the body is not protected). `Authorization: Basic
    /// <base64 "user:password">`; each secret is a `user:password`. The scheme word is
    /// case-insensitive.
    Basic,
    /// A static key (the body is not protected): the value of `header` must equal one of the secrets
    /// exactly.
    ApiKey { header: HeaderName },
}

impl PartialEq for Preset {
    fn eq(&self, other: &Preset) -> bool {
        self.name == other.name
    }
}
impl Eq for Preset {}

impl Scheme {
    /// The catalogue's preset `name`; panics on a name not in it (for code and tests naming a
    /// provider; config goes through [`catalogue::preset`]).
    pub fn preset(name: &str) -> Scheme {
        Scheme::Preset(catalogue::preset(name).unwrap_or_else(|| panic!("no preset {name:?} in the catalogue")))
    }

    /// The name used in config, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Preset(p) => p.name,
            Scheme::Hmac { .. } => "hmac",
            Scheme::Basic => "basic",
            Scheme::ApiKey { .. } => "api-key",
        }
    }

    /// Whether requests carry a signed timestamp (and so a tolerance applies).
    pub fn timestamped(&self) -> bool {
        matches!(self, Scheme::Preset(p) if p.tolerance.is_some())
    }
}

/// One inbound request as verification sees it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl<'a> Inbound<'a> {
    /// A POST without a query string.
    pub fn post(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
        Inbound { method: "POST", query: None, headers, body }
    }

    /// Whether the body is form-encoded (`application/x-www-form-urlencoded`).
    pub fn is_form(&self) -> bool {
        is_form(self.headers)
    }
}

/// Whether `headers` declare a form-encoded body.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// Why a request failed verification. Every variant is the sender's fault (or an impostor's), and
/// retrying the same request can never succeed.
///
/// The `Display` text is for our logs only, never for the response, and never contains a secret or
/// a presented signature.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("malformed header {header}: {reason}")]
    MalformedHeader { header: String, reason: String },
    /// `skew_secs` is `now - timestamp`: positive when the request is too old, negative when it
    /// claims to come from the future.
    #[error("timestamp {} outside the tolerance", describe_skew(*.skew_secs))]
    TimestampOutOfTolerance { skew_secs: i64 },
    #[error("signature does not match any configured secret")]
    Mismatch,
    /// Where the signature or a signed field is in the body (Mailgun, Graph, Linear).
    #[error("malformed body: {0}")]
    MalformedBody(String),
}

fn describe_skew(skew_secs: i64) -> String {
    if skew_secs >= 0 {
        format!("is {skew_secs}s old,")
    } else {
        format!("is {}s in the future,", skew_secs.unsigned_abs())
    }
}

impl VerifyError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::MalformedHeader { .. } => "malformed_header",
            VerifyError::TimestampOutOfTolerance { .. } => "timestamp",
            VerifyError::Mismatch => "mismatch",
            VerifyError::MalformedBody(_) => "malformed_body",
        }
    }

    fn malformed(header: &HeaderName, reason: &str) -> VerifyError {
        VerifyError::MalformedHeader { header: header.as_str().to_owned(), reason: reason.to_owned() }
    }
}

pub(crate) const GITHUB_SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
pub(crate) const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// GitHub's value prefix, shared with outbound signing.
pub(crate) const GITHUB_PREFIX: &str = "sha256=";
/// Standard Webhooks' version tag for HMAC-SHA256 signatures, shared with outbound signing.
pub(crate) const STANDARD_WEBHOOKS_PREFIX: &str = "v1,";

/// The string Standard Webhooks signs, `{id}.{timestamp}.{body}`, in parts; shared with outbound
/// signing so both sides sign the same thing.
pub(crate) fn standard_webhooks_signed<'a>(id: &'a [u8], timestamp: &'a [u8], body: &'a [u8]) -> [&'a [u8]; 5] {
    [id, b".", timestamp, b".", body]
}

/// A scheme plus its decoded secrets, ready to check requests.
pub struct Verifier {
    scheme: Scheme,
    keys: Keys,
    tolerance: Duration,
    /// `verify.url`: the public URL a provider signs (Twilio, Square, HubSpot).
    url: Option<String>,
    /// `verify.verify_token` (Meta's handshake), as a digest.
    verify_token: Option<[u8; 32]>,
}

/// Options of a source's verification beyond the scheme and its secrets.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub tolerance: Option<Duration>,
    pub url: Option<String>,
    pub verify_token: Option<String>,
}

/// The decoded secrets in the form each comparison needs, in config order.
enum Keys {
    None,
    /// Pre-keyed HMAC states.
    Mac(Vec<MacKey>),
    /// Basic, API-key, token and clientState secrets: the raw secret (to produce provider headers)
    /// and its SHA-256, which is what requests are compared against.
    Credentials(Vec<Credential>),
    /// Standard Webhooks: `whsec_` HMAC keys and `whpk_` ed25519 public keys.
    Webhooks {
        mac: Vec<MacKey>,
        ed25519: Vec<keys::Ed25519Public>,
    },
    /// ECDSA P-256 public keys (SendGrid).
    Ecdsa(Vec<keys::P256Public>),
}

struct Credential {
    raw: Vec<u8>,
    digest: [u8; 32],
}

impl fmt::Debug for Verifier {
    /// Shows the scheme and how many secrets, never the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets = match &self.keys {
            Keys::None => 0,
            Keys::Mac(keys) => keys.len(),
            Keys::Credentials(creds) => creds.len(),
            Keys::Webhooks { mac, ed25519 } => mac.len() + ed25519.len(),
            Keys::Ecdsa(keys) => keys.len(),
        };
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme.name())
            .field("secrets", &secrets)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

/// Most signatures one header may present (Stripe and Paddle send two while a secret rolls).
const MAX_PRESENTED: usize = 8;

/// Signatures presented by a request, on the stack.
struct Presented {
    tags: [Option<Tag>; MAX_PRESENTED],
}

impl Presented {
    fn one(tag: Tag) -> Presented {
        let mut p = Presented { tags: [None; MAX_PRESENTED] };
        p.tags[0] = Some(tag);
        p
    }

    fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.tags.iter().flatten()
    }
}

impl Verifier {
    /// Several secrets allow rotation: any one that matches verifies.
    ///
    /// The error is one sentence listing every problem (secrets are numbered from 1 and never
    /// quoted): secrets given to `none` or missing for any other scheme, an empty secret, a bad
    /// `whsec_` secret, a Basic secret without `:`, an API key or prefix that cannot be a header value.
    pub fn new(scheme: Scheme, secrets: &[String], tolerance: Duration) -> Result<Verifier, String> {
        Verifier::with_options(scheme, secrets, Options { tolerance: Some(tolerance), ..Options::default() })
    }

    /// [`Verifier::new`] with the options some presets need (`url`, `verify_token`).
    pub fn with_options(scheme: Scheme, secrets: &[String], options: Options) -> Result<Verifier, String> {
        let mut problems = Vec::new();
        match (&scheme, secrets.is_empty()) {
            (Scheme::None, false) => problems.push(
                "scheme none verifies nothing, so it takes no secrets; choose a scheme or remove them".to_owned(),
            ),
            (Scheme::None, true) => {}
            (_, true) => problems.push(format!("scheme {} needs at least one secret", scheme.name())),
            (_, false) => {}
        }
        if let Scheme::Hmac { prefix, .. } = &scheme
            && let Err(e) = mac::check_prefix(prefix)
        {
            problems.push(e);
        }
        let mut decoded = Vec::with_capacity(secrets.len());
        for (i, secret) in secrets.iter().enumerate() {
            match decode_secret(&scheme, secret) {
                Ok(key) => decoded.push(key),
                Err(why) => problems.push(format!("secret {} {why}", i + 1)),
            }
        }
        if let Scheme::Preset(p) = &scheme {
            match (&options.url, p.needs_url) {
                (None, true) => problems
                    .push(format!("scheme {} signs the public URL the provider calls: give it as verify.url", p.name)),
                (Some(_), false) => problems.push(format!("scheme {} takes no url", p.name)),
                (Some(u), true) if !(u.starts_with("https://") || u.starts_with("http://")) || u.contains('?') => {
                    problems.push(format!(
                        "url {u:?} must be an http(s) URL without a query (the request's query is appended)"
                    ))
                }
                _ => {}
            }
            match (&options.verify_token, p.handshake) {
                (None, Some(Handshake::MetaHub)) => problems
                    .push("scheme meta needs verify.verify_token, the token its hub.challenge must carry".to_owned()),
                (Some(t), Some(Handshake::MetaHub)) if t.is_empty() => {
                    problems.push("verify_token is empty".to_owned())
                }
                (Some(_), h) if h != Some(Handshake::MetaHub) => {
                    problems.push(format!("scheme {} takes no verify_token", p.name))
                }
                _ => {}
            }
        } else if options.url.is_some() || options.verify_token.is_some() {
            problems.push(format!("scheme {} takes no url or verify_token", scheme.name()));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let keys = match &scheme {
            Scheme::None => Keys::None,
            Scheme::Basic | Scheme::ApiKey { .. } => {
                Keys::Credentials(decoded.into_iter().map(Secret::credential).collect())
            }
            Scheme::Hmac { algorithm, .. } => {
                Keys::Mac(decoded.into_iter().map(|k| MacKey::new(*algorithm, &k.raw())).collect())
            }
            Scheme::Preset(p) => match &p.check {
                Check::Mac { algorithm, .. } => {
                    Keys::Mac(decoded.into_iter().map(|k| MacKey::new(*algorithm, &k.raw())).collect())
                }
                Check::BodySignature => {
                    Keys::Mac(decoded.into_iter().map(|k| MacKey::new(Algorithm::Sha256, &k.raw())).collect())
                }
                Check::Token { .. } | Check::ClientState => {
                    Keys::Credentials(decoded.into_iter().map(Secret::credential).collect())
                }
                Check::Webhooks { .. } => {
                    let (mut mac, mut ed25519) = (Vec::new(), Vec::new());
                    for k in decoded {
                        match k {
                            Secret::Ed25519(key) => ed25519.push(key),
                            other => mac.push(MacKey::new(Algorithm::Sha256, &other.raw())),
                        }
                    }
                    Keys::Webhooks { mac, ed25519 }
                }
                Check::Ecdsa { .. } => Keys::Ecdsa(
                    decoded
                        .into_iter()
                        .filter_map(|k| match k {
                            Secret::P256(key) => Some(key),
                            _ => None,
                        })
                        .collect(),
                ),
            },
        };
        let tolerance = options
            .tolerance
            .or_else(|| match &scheme {
                Scheme::Preset(p) => p.tolerance.map(Duration::from_secs),
                _ => None,
            })
            .unwrap_or(DEFAULT_TOLERANCE);
        Ok(Verifier {
            scheme,
            keys,
            tolerance,
            url: options.url,
            verify_token: options.verify_token.map(|t| mac::sha256(t.as_bytes())),
        })
    }

    /// [`Verifier::verify_request`] for a POST without a query string.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        self.verify_request(&Inbound::post(headers, body), now)
    }

    /// `Ok` if the request carries a valid signature (or credentials) for one of the secrets.
    ///
    /// Headers are read case-insensitively; each header must appear at most once. Checks run from
    /// cheap to expensive: header syntax, then the timestamp, then one MAC per secret.
    pub fn verify_request(&self, req: &Inbound<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let headers = req.headers;
        match &self.scheme {
            Scheme::None => Ok(()),
            Scheme::Hmac { header, algorithm, encoding, prefix } => {
                let presented = single_signature(headers, header, prefix, *encoding, *algorithm)?;
                self.match_any(&[req.body], &Presented::one(presented))
            }
            Scheme::Basic => {
                let value = header_bytes(headers, &AUTHORIZATION)?;
                let malformed =
                    || VerifyError::malformed(&AUTHORIZATION, "expected \"Basic <base64 of user:password>\"");
                let (word, credentials) = split_once(value, b' ').ok_or_else(malformed)?;
                if !word.eq_ignore_ascii_case(b"basic") {
                    return Err(malformed());
                }
                let digest = mac::sha256_of_base64(credentials.trim_ascii_start()).ok_or_else(malformed)?;
                self.match_credential(&digest)
            }
            Scheme::ApiKey { header } => {
                let digest = mac::sha256(header_bytes(headers, header)?);
                self.match_credential(&digest)
            }
            Scheme::Preset(p) if p.json_object_only && req.body.trim_ascii_start().first() != Some(&b'{') => {
                Err(VerifyError::MalformedBody(format!("{} sends JSON objects only", p.name)))
            }
            Scheme::Preset(p) => match &p.check {
                Check::Mac { algorithm, encoding, sig, signed, time } => {
                    self.verify_mac(req, now, *algorithm, *encoding, sig, signed, time)
                }
                Check::Token { header } => {
                    self.match_credential(&mac::sha256(header_bytes(headers, &HeaderName::from_static(header))?))
                }
                Check::Webhooks { id, timestamp, signature } => {
                    self.verify_webhooks(req, now, [id, timestamp, signature].map(|h| HeaderName::from_static(h)))
                }
                Check::Ecdsa { signature, timestamp } => self.verify_ecdsa(
                    req,
                    now,
                    &HeaderName::from_static(signature),
                    &HeaderName::from_static(timestamp),
                ),
                Check::ClientState => self.verify_client_state(req.body),
                Check::BodySignature => self.verify_body_signature(req, now),
            },
        }
    }

    /// A catalogue MAC: the presented signatures, the timestamp, then one MAC per secret.
    #[allow(clippy::too_many_arguments)]
    fn verify_mac(
        &self,
        req: &Inbound<'_>,
        now: SystemTime,
        algorithm: Algorithm,
        encoding: Encoding,
        sig: &Sig,
        signed: &[Part],
        time: &Time,
    ) -> Result<(), VerifyError> {
        let (presented, field_ts) = presented_signatures(req.headers, sig, encoding, algorithm)?;
        let timestamp: Option<&str> = match time {
            Time::None => None,
            Time::Header(name, unit) => {
                let (text, t) = timestamp_header(req.headers, &HeaderName::from_static(name))?;
                self.check_timestamp(if *unit == Unit::Millis { t / 1000 } else { t }, now)?;
                Some(text)
            }
            Time::Field => {
                let text = field_ts.expect("a Fields signature gives the timestamp");
                let t = parse_timestamp(text)
                    .ok_or_else(|| VerifyError::malformed(&sig_header(sig), "the timestamp is not a Unix timestamp"))?;
                self.check_timestamp(t, now)?;
                Some(text)
            }
            Time::BodyMillis(key) => {
                let ms = body_millis(req.body, key)?;
                self.check_timestamp(ms.div_euclid(1000), now)?;
                None
            }
        };
        let url = self.recipe_url(signed, req.query);
        let params =
            if signed.contains(&Part::TwilioParams) { Some(twilio_params(req, url.as_deref())?) } else { None };
        let mut parts: [&[u8]; 8] = [&[]; 8];
        for (slot, part) in parts.iter_mut().zip(signed) {
            *slot = match part {
                Part::Lit(s) => s.as_bytes(),
                Part::Timestamp => timestamp.unwrap_or_default().as_bytes(),
                Part::Body => req.body,
                Part::Url | Part::HubspotUrl => url.as_deref().unwrap_or_default().as_bytes(),
                Part::Method => req.method.as_bytes(),
                Part::TwilioParams => params.as_deref().unwrap_or_default(),
            };
        }
        self.match_any(&parts[..signed.len()], &presented)
    }

    /// The URL a recipe signs, if it signs one: [`Part::Url`] or [`Part::HubspotUrl`].
    fn recipe_url(&self, signed: &[Part], query: Option<&str>) -> Option<String> {
        if signed.contains(&Part::HubspotUrl) {
            Some(catalogue::hubspot_uri(&self.public_url(query)))
        } else {
            signed.contains(&Part::Url).then(|| self.public_url(query))
        }
    }

    /// `verify.url`, then `?query` when the request has one.
    fn public_url(&self, query: Option<&str>) -> String {
        let base = self.url.as_deref().unwrap_or_default();
        match query {
            Some(q) if !q.is_empty() => format!("{base}?{q}"),
            _ => base.to_owned(),
        }
    }

    fn verify_webhooks(
        &self,
        req: &Inbound<'_>,
        now: SystemTime,
        [id_h, ts_h, sig_h]: [HeaderName; 3],
    ) -> Result<(), VerifyError> {
        let id = header_bytes(req.headers, &id_h)?;
        let (timestamp, t) = timestamp_header(req.headers, &ts_h)?;
        let value = header_str(req.headers, &sig_h)?;
        let malformed = |reason| VerifyError::malformed(&sig_h, reason);
        let mut signatures = 0;
        for entry in standard_webhooks_entries(value) {
            match entry {
                Some(("v1", sig)) => {
                    decode_v1(Encoding::Base64, sig)
                        .ok_or_else(|| malformed("a v1 signature is not base64 of 32 bytes"))?;
                    signatures += 1;
                }
                Some(("v1a", sig)) => {
                    keys::Ed25519Public::decode_signature(sig)
                        .ok_or_else(|| malformed("a v1a signature is not base64 of 64 bytes"))?;
                    signatures += 1;
                }
                Some(_) => {}
                None => {
                    return Err(malformed("expected space-separated version,signature entries"));
                }
            }
        }
        if signatures == 0 {
            return Err(malformed("no v1 or v1a signature"));
        }
        self.check_timestamp(t, now)?;
        let Keys::Webhooks { mac, ed25519 } = &self.keys else {
            return Err(VerifyError::Mismatch);
        };
        let signed = standard_webhooks_signed(id, timestamp.as_bytes(), req.body);
        for key in mac {
            let expected = key.tag(&signed);
            let mut v1 = standard_webhooks_entries(value).filter_map(|entry| match entry {
                Some(("v1", sig)) => decode_v1(Encoding::Base64, sig),
                _ => None,
            });
            if v1.any(|tag| expected.matches(&tag)) {
                return Ok(());
            }
        }
        if !ed25519.is_empty() {
            let message = signed.concat();
            for entry in standard_webhooks_entries(value) {
                if let Some(("v1a", sig)) = entry
                    && let Some(sig) = keys::Ed25519Public::decode_signature(sig)
                    && ed25519.iter().any(|k| k.verifies(&message, &sig))
                {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::Mismatch)
    }

    fn verify_ecdsa(
        &self,
        req: &Inbound<'_>,
        now: SystemTime,
        sig_h: &HeaderName,
        ts_h: &HeaderName,
    ) -> Result<(), VerifyError> {
        let value = header_bytes(req.headers, sig_h)?;
        let (timestamp, t) = timestamp_header(req.headers, ts_h)?;
        let signature = keys::P256Public::decode_signature(value)
            .ok_or_else(|| VerifyError::malformed(sig_h, "expected base64 of a DER ECDSA signature"))?;
        self.check_timestamp(t, now)?;
        let Keys::Ecdsa(keys) = &self.keys else {
            return Err(VerifyError::Mismatch);
        };
        let message = [timestamp.as_bytes(), req.body].concat();
        if keys.iter().any(|k| k.verifies(&message, &signature)) { Ok(()) } else { Err(VerifyError::Mismatch) }
    }

    /// Microsoft Graph: every notification's `clientState` is a secret.
    fn verify_client_state(&self, body: &[u8]) -> Result<(), VerifyError> {
        let malformed = |why: &str| VerifyError::MalformedBody(why.to_owned());
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| malformed("not JSON (expected {\"value\":[…]})"))?;
        let items = json.get("value").and_then(|v| v.as_array()).filter(|v| !v.is_empty());
        let items = items.ok_or_else(|| malformed("no notifications in $.value"))?;
        for item in items {
            let state = item.get("clientState").and_then(|s| s.as_str());
            let state = state.ok_or_else(|| malformed("a notification has no clientState"))?;
            self.match_credential(&mac::sha256(state.as_bytes()))?;
        }
        Ok(())
    }

    /// Mailgun: `timestamp`, `token` and `signature` in the body (JSON `$.signature`, or form fields).
    fn verify_body_signature(&self, req: &Inbound<'_>, now: SystemTime) -> Result<(), VerifyError> {
        let malformed = |why: &str| VerifyError::MalformedBody(why.to_owned());
        let (timestamp, token, signature) = if req.is_form() {
            let mut fields = (None, None, None);
            for (k, v) in form_urlencoded::parse(req.body) {
                match &*k {
                    "timestamp" => fields.0 = Some(v.into_owned()),
                    "token" => fields.1 = Some(v.into_owned()),
                    "signature" => fields.2 = Some(v.into_owned()),
                    _ => {}
                }
            }
            fields
        } else {
            let json: serde_json::Value =
                serde_json::from_slice(req.body).map_err(|_| malformed("neither JSON nor a form"))?;
            let field = |k: &str| {
                json.get("signature").and_then(|s| s.get(k)).and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
            };
            (field("timestamp"), field("token"), field("signature"))
        };
        let (Some(timestamp), Some(token), Some(signature)) = (timestamp, token, signature) else {
            return Err(malformed("no signature.timestamp, signature.token and signature.signature"));
        };
        let t = parse_timestamp(&timestamp).ok_or_else(|| malformed("signature.timestamp is not a Unix timestamp"))?;
        let presented = Tag::decode(Encoding::Hex, signature.as_bytes(), 32)
            .ok_or_else(|| malformed("signature.signature is not 64 hex digits"))?;
        self.check_timestamp(t, now)?;
        self.match_any(&[timestamp.as_bytes(), token.as_bytes()], &Presented::one(presented))
    }

    /// One MAC per secret over `signed`, each compared with every presented signature.
    fn match_any(&self, signed: &[&[u8]], presented: &Presented) -> Result<(), VerifyError> {
        let Keys::Mac(keys) = &self.keys else {
            return Err(VerifyError::Mismatch);
        };
        for key in keys {
            let expected = key.tag(signed);
            if presented.iter().any(|tag| expected.matches(tag)) {
                return Ok(());
            }
        }
        Err(VerifyError::Mismatch)
    }

    fn match_credential(&self, digest: &[u8; 32]) -> Result<(), VerifyError> {
        let Keys::Credentials(creds) = &self.keys else {
            return Err(VerifyError::Mismatch);
        };
        if creds.iter().any(|c| mac::digests_equal(&c.digest, digest)) { Ok(()) } else { Err(VerifyError::Mismatch) }
    }

    fn check_timestamp(&self, t: i64, now: SystemTime) -> Result<(), VerifyError> {
        let skew_secs = unix_seconds(now).saturating_sub(t);
        if skew_secs.unsigned_abs() > self.tolerance.as_secs() {
            Err(VerifyError::TimestampOutOfTolerance { skew_secs })
        } else {
            Ok(())
        }
    }

    pub fn scheme_name(&self) -> &'static str {
        self.scheme.name()
    }

    /// The catalogue row, for a preset scheme.
    pub fn preset(&self) -> Option<&'static Preset> {
        match self.scheme {
            Scheme::Preset(p) => Some(p),
            _ => None,
        }
    }

    /// The handshake this source's provider runs, if any.
    pub fn handshake(&self) -> Option<Handshake> {
        self.preset().and_then(|p| p.handshake)
    }

    /// The headers the real provider would send for this body, signed with the first secret, for
    /// `hookyard send` and tests (see [`Verifier::provider_request`]).
    pub fn provider_headers(&self, body: &[u8], now: SystemTime, msg_id: &str) -> Vec<(HeaderName, HeaderValue)> {
        self.provider_request(body, now, msg_id, false, None).map(|r| r.headers).unwrap_or_default()
    }
}

fn unix_seconds(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The only value of `name`: missing and repeated headers are errors, since a repeated signature
/// header has no single meaning.
fn header_bytes<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h [u8], VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or_else(|| VerifyError::MissingHeader(name.as_str().to_owned()))?;
    if values.next().is_some() {
        return Err(VerifyError::malformed(name, "appears more than once"));
    }
    Ok(value.as_bytes())
}

/// [`header_bytes`] for headers that must be visible ASCII.
fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h str, VerifyError> {
    let value = header_bytes(headers, name)?;
    match std::str::from_utf8(value) {
        Ok(text) if text.is_ascii() => Ok(text),
        _ => Err(VerifyError::malformed(name, "not ASCII")),
    }
}

/// A header holding a Unix timestamp: its text (which is what gets signed) and its value.
fn timestamp_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<(&'h str, i64), VerifyError> {
    let text = header_str(headers, name)?;
    let t = parse_timestamp(text).ok_or_else(|| VerifyError::malformed(name, "not a Unix timestamp"))?;
    Ok((text, t))
}

/// Decimal seconds, digits only (no sign, no spaces).
fn parse_timestamp(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A one-signature header: `prefix` followed by one encoded MAC of `algorithm`'s length.
fn single_signature(
    headers: &HeaderMap,
    name: &HeaderName,
    prefix: &str,
    encoding: Encoding,
    algorithm: Algorithm,
) -> Result<Tag, VerifyError> {
    let value = header_bytes(headers, name)?;
    let encoded = value.strip_prefix(prefix.as_bytes()).ok_or_else(|| VerifyError::MalformedHeader {
        header: name.as_str().to_owned(),
        reason: format!("does not start with {prefix:?}"),
    })?;
    Tag::decode(encoding, encoded, algorithm.output_len()).ok_or_else(|| {
        let what = match encoding {
            Encoding::Hex => "hex digits",
            Encoding::Base64 => "base64 characters",
        };
        VerifyError::MalformedHeader {
            header: name.as_str().to_owned(),
            reason: format!("expected {what} of a {}-byte MAC", algorithm.output_len()),
        }
    })
}

/// A `v1` signature of Stripe or Standard Webhooks: an HMAC-SHA256.
fn decode_v1(encoding: Encoding, text: &str) -> Option<Tag> {
    Tag::decode(encoding, text.as_bytes(), Algorithm::Sha256.output_len())
}

/// Standard Webhooks' `version,signature` entries; `None` for an entry without `,`.
fn standard_webhooks_entries(value: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    value.split(' ').filter(|entry| !entry.is_empty()).map(|entry| entry.split_once(','))
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// A decoded secret.
enum Secret {
    /// Key bytes (HMAC keys, credentials, tokens).
    Raw(Vec<u8>),
    Ed25519(keys::Ed25519Public),
    P256(keys::P256Public),
}

impl Secret {
    fn raw(&self) -> Vec<u8> {
        match self {
            Secret::Raw(bytes) => bytes.clone(),
            Secret::Ed25519(_) | Secret::P256(_) => Vec::new(),
        }
    }

    fn credential(self) -> Credential {
        let raw = self.raw();
        Credential { digest: mac::sha256(&raw), raw }
    }
}

/// Turns a configured secret into key material, or says what is wrong with it (completing the
/// sentence "secret N ...") without repeating it.
fn decode_secret(scheme: &Scheme, secret: &str) -> Result<Secret, String> {
    if secret.is_empty() {
        return Err("is empty".to_owned());
    }
    let raw = || Ok(Secret::Raw(secret.as_bytes().to_vec()));
    match scheme {
        Scheme::Preset(p) => match &p.check {
            Check::Webhooks { .. } if secret.starts_with(keys::WHPK_PREFIX) => {
                keys::Ed25519Public::decode_whpk(secret).map(Secret::Ed25519)
            }
            Check::Webhooks { .. } => mac::decode_whsec(secret)
                .map(Secret::Raw)
                .map_err(|why| format!("is not a valid whsec_ (or whpk_) secret: {why}")),
            Check::Ecdsa { .. } => keys::P256Public::decode(secret).map(Secret::P256),
            Check::Token { .. } if HeaderValue::from_str(secret).is_err() => {
                Err("cannot be sent in a header (use visible ASCII)".to_owned())
            }
            _ => raw(),
        },
        Scheme::Basic if !secret.contains(':') => Err("is not of the form user:password".to_owned()),
        Scheme::ApiKey { .. } if HeaderValue::from_str(secret).is_err() => {
            Err("cannot be sent in a header (use visible ASCII)".to_owned())
        }
        _ => raw(),
    }
}

/// The header a [`Sig`] is in.
fn sig_header(sig: &Sig) -> HeaderName {
    match sig {
        Sig::Header { name, .. } | Sig::Fields { name, .. } | Sig::List { name, .. } => HeaderName::from_static(name),
    }
}

/// The signatures a request presents, and the timestamp field's text for [`Sig::Fields`].
fn presented_signatures<'h>(
    headers: &'h HeaderMap,
    sig: &Sig,
    encoding: Encoding,
    algorithm: Algorithm,
) -> Result<(Presented, Option<&'h str>), VerifyError> {
    let len = algorithm.output_len();
    let what = match encoding {
        Encoding::Hex => "hex digits",
        Encoding::Base64 => "base64 characters",
    };
    let header = sig_header(sig);
    match sig {
        Sig::Header { prefix, .. } => {
            Ok((Presented::one(single_signature(headers, &header, prefix, encoding, algorithm)?), None))
        }
        Sig::Fields { sep, ts, sig: key, .. } => {
            let value = header_str(headers, &header)?;
            let malformed =
                |reason: String| VerifyError::MalformedHeader { header: header.as_str().to_owned(), reason };
            let mut presented = Presented { tags: [None; MAX_PRESENTED] };
            let (mut timestamp, mut n) = (None, 0);
            for field in value.split(*sep) {
                let Some((k, v)) = field.trim().split_once('=') else {
                    return Err(malformed(format!("expected {sep:?}-separated key=value fields")));
                };
                if k == *ts {
                    if timestamp.replace(v).is_some() {
                        return Err(malformed(format!("more than one {ts}")));
                    }
                } else if k == *key {
                    let tag = Tag::decode(encoding, v.as_bytes(), len)
                        .ok_or_else(|| malformed(format!("a {key} signature is not {what} of a {len}-byte MAC")))?;
                    *presented.tags.get_mut(n).ok_or_else(|| malformed("too many signatures".into()))? = Some(tag);
                    n += 1;
                }
            }
            let timestamp = timestamp.ok_or_else(|| malformed(format!("no {ts}= timestamp")))?;
            if n == 0 {
                return Err(malformed(format!("no {key} signature")));
            }
            Ok((presented, Some(timestamp)))
        }
        Sig::List { sep, prefix, .. } => {
            let value = header_str(headers, &header)?;
            let malformed =
                |reason: String| VerifyError::MalformedHeader { header: header.as_str().to_owned(), reason };
            let mut presented = Presented { tags: [None; MAX_PRESENTED] };
            let mut n = 0;
            for entry in value.split(*sep).map(str::trim) {
                if let Some(encoded) = entry.strip_prefix(prefix) {
                    let tag = Tag::decode(encoding, encoded.as_bytes(), len)
                        .ok_or_else(|| malformed(format!("a {prefix} signature is not {what} of a {len}-byte MAC")))?;
                    *presented.tags.get_mut(n).ok_or_else(|| malformed("too many signatures".into()))? = Some(tag);
                    n += 1;
                }
            }
            if n == 0 {
                return Err(malformed(format!("no {prefix} signature")));
            }
            Ok((presented, None))
        }
    }
}

/// A top-level integer of a JSON body (Linear's `webhookTimestamp`, in milliseconds).
fn body_millis(body: &[u8], key: &str) -> Result<i64, VerifyError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| VerifyError::MalformedBody("not JSON".to_owned()))?;
    json.get(key)
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| VerifyError::MalformedBody(format!("no {key} (Unix milliseconds)")))
}

/// A form body's parameters sorted by name (then value), each name followed by its value
/// (decoded): what Twilio signs after the URL.
fn sorted_form_params(body: &[u8]) -> Vec<u8> {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    pairs.sort();
    pairs.into_iter().flat_map(|(k, v)| [k, v]).collect::<String>().into_bytes()
}

/// Twilio's signed parameters: a form body's, sorted by name (then value), each name followed by
/// its value; for another body nothing, and the URL's `bodySHA256` must be the body's SHA-256.
fn twilio_params(req: &Inbound<'_>, url: Option<&str>) -> Result<Vec<u8>, VerifyError> {
    if req.is_form() {
        return Ok(sorted_form_params(req.body));
    }
    let query = url.and_then(|u| u.split_once('?')).map(|(_, q)| q).unwrap_or_default();
    let declared = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v);
    let declared = declared.ok_or_else(|| {
        VerifyError::MalformedBody("a body that is not a form needs bodySHA256 in the URL's query".to_owned())
    })?;
    let mut expected = [0u8; 32];
    hex::decode_to_slice(declared.as_bytes(), &mut expected)
        .map_err(|_| VerifyError::MalformedBody("bodySHA256 is not 64 hex digits".to_owned()))?;
    if mac::digests_equal(&expected, &mac::sha256(req.body)) { Ok(Vec::new()) } else { Err(VerifyError::Mismatch) }
}
