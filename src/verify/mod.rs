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

mod config;
pub(crate) mod mac;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};

use mac::{Decimal, MacKey, Tag};

pub use config::DEFAULT_TOLERANCE;
pub(crate) use config::header_name;

/// Hash function of an HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
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

/// How a sender proves a request is theirs.
///
/// Timestamped schemes (Stripe, Slack, Standard Webhooks) also reject requests whose timestamp is
/// further than the tolerance from `now`, in either direction, which bounds replays. Where a scheme
/// signs the timestamp, the signed string uses the header's text exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// No verification at all: every request is accepted. Takes no secrets.
    None,
    /// GitHub. `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    Github,
    /// Stripe. `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=...]`, where each `v1`
    /// is `hex HMAC-SHA256(secret, "{t}.{body}")`; any `v1` may match (Stripe sends several while
    /// its secrets roll), other keys are ignored, and `t` must be within the tolerance. The secret,
    /// `whsec_` prefix included, is the HMAC key as is.
    Stripe,
    /// Shopify. `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`.
    Shopify,
    /// Slack. `X-Slack-Request-Timestamp: <unix seconds>` and
    /// `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{timestamp}:{body}")>`; the timestamp
    /// must be within the tolerance.
    Slack,
    /// Standard Webhooks (also Svix). `webhook-id: <msg id>`, `webhook-timestamp: <unix seconds>` and
    /// `webhook-signature: v1,<base64>[ v1,<base64>...]`, space-separated, where each `v1` is
    /// `base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")`; any `v1` may match and other versions
    /// (such as `v1a` asymmetric signatures) are ignored. Secrets must be `whsec_<base64 key>`; the
    /// key is the decoded part. The timestamp must be within the tolerance.
    StandardWebhooks,
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

impl Scheme {
    /// The name used in config, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::None => "none",
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Shopify => "shopify",
            Scheme::Slack => "slack",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Hmac { .. } => "hmac",
            Scheme::Basic => "basic",
            Scheme::ApiKey { .. } => "api-key",
        }
    }
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
        }
    }

    fn malformed(header: &HeaderName, reason: &str) -> VerifyError {
        VerifyError::MalformedHeader { header: header.as_str().to_owned(), reason: reason.to_owned() }
    }
}

pub(crate) const GITHUB_SIGNATURE: HeaderName = HeaderName::from_static("x-hub-signature-256");
const STRIPE_SIGNATURE: HeaderName = HeaderName::from_static("stripe-signature");
const SHOPIFY_SIGNATURE: HeaderName = HeaderName::from_static("x-shopify-hmac-sha256");
const SLACK_SIGNATURE: HeaderName = HeaderName::from_static("x-slack-signature");
const SLACK_TIMESTAMP: HeaderName = HeaderName::from_static("x-slack-request-timestamp");
pub(crate) const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub(crate) const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub(crate) const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// GitHub's value prefix, shared with outbound signing.
pub(crate) const GITHUB_PREFIX: &str = "sha256=";
/// Standard Webhooks' version tag for HMAC-SHA256 signatures, shared with outbound signing.
pub(crate) const STANDARD_WEBHOOKS_PREFIX: &str = "v1,";
const SLACK_PREFIX: &str = "v0=";

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
}

/// The decoded secrets in the form each comparison needs, in config order.
enum Keys {
    None,
    /// Pre-keyed HMAC states.
    Mac(Vec<MacKey>),
    /// Basic and API-key secrets: the raw secret (to produce provider headers) and its SHA-256, which
    /// is what requests are compared against.
    Credentials(Vec<Credential>),
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
        };
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &secrets)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// Several secrets allow rotation: any one that matches verifies.
    ///
    /// The error is one sentence listing every problem (secrets are numbered from 1 and never
    /// quoted): secrets given to `none` or missing for any other scheme, an empty secret, a bad
    /// `whsec_` secret, a Basic secret without `:`, an API key or prefix that cannot be a header value.
    pub fn new(scheme: Scheme, secrets: &[String], tolerance: Duration) -> Result<Verifier, String> {
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
                Ok(bytes) => decoded.push(bytes),
                Err(why) => problems.push(format!("secret {} {why}", i + 1)),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }

        let keys = match &scheme {
            Scheme::None => Keys::None,
            Scheme::Basic | Scheme::ApiKey { .. } => Keys::Credentials(
                decoded.into_iter().map(|raw| Credential { digest: mac::sha256(&raw), raw }).collect(),
            ),
            _ => {
                let algorithm = mac_algorithm(&scheme);
                Keys::Mac(decoded.iter().map(|key| MacKey::new(algorithm, key)).collect())
            }
        };
        Ok(Verifier { scheme, keys, tolerance })
    }

    /// `Ok` if the request carries a valid signature (or credentials) for one of the secrets.
    ///
    /// Headers are read case-insensitively; each header must appear at most once. Checks run from
    /// cheap to expensive: header syntax, then the timestamp, then one HMAC per secret.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        match &self.scheme {
            Scheme::None => Ok(()),
            Scheme::Github => {
                let presented =
                    single_signature(headers, &GITHUB_SIGNATURE, GITHUB_PREFIX, Encoding::Hex, Algorithm::Sha256)?;
                self.match_any(&[body], || [presented].into_iter())
            }
            Scheme::Shopify => {
                let presented = single_signature(headers, &SHOPIFY_SIGNATURE, "", Encoding::Base64, Algorithm::Sha256)?;
                self.match_any(&[body], || [presented].into_iter())
            }
            Scheme::Hmac { header, algorithm, encoding, prefix } => {
                let presented = single_signature(headers, header, prefix, *encoding, *algorithm)?;
                self.match_any(&[body], || [presented].into_iter())
            }
            Scheme::Slack => {
                let (timestamp, t) = timestamp_header(headers, &SLACK_TIMESTAMP)?;
                let presented =
                    single_signature(headers, &SLACK_SIGNATURE, SLACK_PREFIX, Encoding::Hex, Algorithm::Sha256)?;
                self.check_timestamp(t, now)?;
                self.match_any(&[b"v0:", timestamp.as_bytes(), b":", body], || [presented].into_iter())
            }
            Scheme::Stripe => self.verify_stripe(headers, body, now),
            Scheme::StandardWebhooks => self.verify_standard_webhooks(headers, body, now),
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
        }
    }

    fn verify_stripe(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        let value = header_str(headers, &STRIPE_SIGNATURE)?;
        let malformed = |reason| VerifyError::malformed(&STRIPE_SIGNATURE, reason);
        let mut timestamp = None;
        let mut signatures = 0;
        for field in stripe_fields(value) {
            match field {
                Some(("t", _)) if timestamp.is_some() => return Err(malformed("more than one t")),
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", sig)) => {
                    decode_v1(Encoding::Hex, sig).ok_or_else(|| malformed("a v1 signature is not 64 hex digits"))?;
                    signatures += 1;
                }
                Some(_) => {}
                None => return Err(malformed("expected comma-separated key=value fields")),
            }
        }
        let timestamp = timestamp.ok_or_else(|| malformed("no t= timestamp"))?;
        let t = parse_timestamp(timestamp).ok_or_else(|| malformed("t is not a Unix timestamp"))?;
        if signatures == 0 {
            return Err(malformed("no v1 signature"));
        }
        self.check_timestamp(t, now)?;
        self.match_any(&[timestamp.as_bytes(), b".", body], || {
            stripe_fields(value).filter_map(|field| match field {
                Some(("v1", sig)) => decode_v1(Encoding::Hex, sig),
                _ => None,
            })
        })
    }

    fn verify_standard_webhooks(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> {
        let id = header_bytes(headers, &WEBHOOK_ID)?;
        let (timestamp, t) = timestamp_header(headers, &WEBHOOK_TIMESTAMP)?;
        let value = header_str(headers, &WEBHOOK_SIGNATURE)?;
        let malformed = |reason| VerifyError::malformed(&WEBHOOK_SIGNATURE, reason);
        let mut signatures = 0;
        for entry in standard_webhooks_entries(value) {
            match entry {
                Some(("v1", sig)) => {
                    decode_v1(Encoding::Base64, sig)
                        .ok_or_else(|| malformed("a v1 signature is not base64 of 32 bytes"))?;
                    signatures += 1;
                }
                Some(_) => {}
                None => {
                    return Err(malformed("expected space-separated version,signature entries"));
                }
            }
        }
        if signatures == 0 {
            return Err(malformed("no v1 signature"));
        }
        self.check_timestamp(t, now)?;
        self.match_any(&standard_webhooks_signed(id, timestamp.as_bytes(), body), || {
            standard_webhooks_entries(value).filter_map(|entry| match entry {
                Some(("v1", sig)) => decode_v1(Encoding::Base64, sig),
                _ => None,
            })
        })
    }

    /// One HMAC per secret over `signed`, each compared with every presented signature. `presented`
    /// is called once per secret and re-decodes, which is cheaper than storing an unbounded list.
    fn match_any<I: Iterator<Item = Tag>>(
        &self,
        signed: &[&[u8]],
        presented: impl Fn() -> I,
    ) -> Result<(), VerifyError> {
        let Keys::Mac(keys) = &self.keys else {
            return Err(VerifyError::Mismatch);
        };
        for key in keys {
            let expected = key.tag(signed);
            if presented().any(|tag| expected.matches(&tag)) {
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

    /// The headers the real provider would send for this body, signed with the first secret, for
    /// `hookyard send` and tests. Timestamped schemes use `now`; `msg_id` is used by Standard
    /// Webhooks only (it must be a valid header value, as our UUIDs are; otherwise `webhook-id` is
    /// left out and the request will not verify). Basic gives `Authorization`, API key its header,
    /// none nothing.
    pub fn provider_headers(&self, body: &[u8], now: SystemTime, msg_id: &str) -> Vec<(HeaderName, HeaderValue)> {
        match &self.keys {
            Keys::None => Vec::new(),
            Keys::Credentials(creds) => creds.first().map_or_else(Vec::new, |c| self.credential_headers(&c.raw)),
            Keys::Mac(keys) => keys
                .first()
                .map_or_else(Vec::new, |key| self.mac_headers(key, body, Decimal::new(unix_seconds(now)), msg_id)),
        }
    }

    fn credential_headers(&self, raw: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        let (name, value) = match &self.scheme {
            Scheme::Basic => (AUTHORIZATION, HeaderValue::try_from(format!("Basic {}", mac::base64_encode(raw)))),
            // `new` checked that the key is a valid header value.
            Scheme::ApiKey { header } => (header.clone(), HeaderValue::from_bytes(raw)),
            _ => return Vec::new(),
        };
        value.map(|value| vec![(name, value)]).unwrap_or_default()
    }

    fn mac_headers(
        &self,
        key: &MacKey,
        body: &[u8],
        timestamp: Decimal,
        msg_id: &str,
    ) -> Vec<(HeaderName, HeaderValue)> {
        match &self.scheme {
            Scheme::Github => {
                vec![(GITHUB_SIGNATURE, key.tag(&[body]).header_value(GITHUB_PREFIX, Encoding::Hex))]
            }
            Scheme::Shopify => vec![(SHOPIFY_SIGNATURE, key.tag(&[body]).header_value("", Encoding::Base64))],
            Scheme::Hmac { header, encoding, prefix, .. } => {
                vec![(header.clone(), key.tag(&[body]).header_value(prefix, *encoding))]
            }
            Scheme::Slack => {
                let tag = key.tag(&[b"v0:", timestamp.as_bytes(), b":", body]);
                vec![
                    (SLACK_TIMESTAMP, timestamp.header_value()),
                    (SLACK_SIGNATURE, tag.header_value(SLACK_PREFIX, Encoding::Hex)),
                ]
            }
            Scheme::Stripe => {
                let tag = key.tag(&[timestamp.as_bytes(), b".", body]);
                let t: String = timestamp.as_bytes().iter().map(|&b| char::from(b)).collect();
                vec![(STRIPE_SIGNATURE, tag.header_value(&format!("t={t},v1="), Encoding::Hex))]
            }
            Scheme::StandardWebhooks => {
                let signed = standard_webhooks_signed(msg_id.as_bytes(), timestamp.as_bytes(), body);
                let signature = key.tag(&signed).header_value(STANDARD_WEBHOOKS_PREFIX, Encoding::Base64);
                let mut headers = Vec::with_capacity(3);
                if let Ok(id) = HeaderValue::from_str(msg_id) {
                    headers.push((WEBHOOK_ID, id));
                }
                headers.push((WEBHOOK_TIMESTAMP, timestamp.header_value()));
                headers.push((WEBHOOK_SIGNATURE, signature));
                headers
            }
            Scheme::None | Scheme::Basic | Scheme::ApiKey { .. } => Vec::new(),
        }
    }
}

/// The HMAC algorithm of a MAC scheme (only the generic scheme lets config choose).
fn mac_algorithm(scheme: &Scheme) -> Algorithm {
    match scheme {
        Scheme::Hmac { algorithm, .. } => *algorithm,
        _ => Algorithm::Sha256,
    }
}

/// Turns a configured secret into key bytes, or says what is wrong with it (completing the sentence
/// "secret N ...") without repeating it.
fn decode_secret(scheme: &Scheme, secret: &str) -> Result<Vec<u8>, String> {
    if secret.is_empty() {
        return Err("is empty".to_owned());
    }
    match scheme {
        Scheme::StandardWebhooks => {
            mac::decode_whsec(secret).map_err(|why| format!("is not a valid whsec_ secret: {why}"))
        }
        Scheme::Basic if !secret.contains(':') => Err("is not of the form user:password".to_owned()),
        Scheme::ApiKey { .. } if HeaderValue::from_str(secret).is_err() => {
            Err("cannot be sent in a header (use visible ASCII)".to_owned())
        }
        _ => Ok(secret.as_bytes().to_vec()),
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

/// Stripe's `key=value` fields; `None` for a field without `=`.
fn stripe_fields(value: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    value.split(',').map(|field| field.trim().split_once('='))
}

/// Standard Webhooks' `version,signature` entries; `None` for an entry without `,`.
fn standard_webhooks_entries(value: &str) -> impl Iterator<Item = Option<(&str, &str)>> {
    value.split(' ').filter(|entry| !entry.is_empty()).map(|entry| entry.split_once(','))
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}
