//! The handshakes providers run before they send events (see [`Handshake`]), answered by the
//! gateway itself: pure functions of the request and the source's secrets. A handshake is never
//! stored or delivered, and is refused when the provider's own check fails (Meta's verify token,
//! Slack's and Zoom's signatures, which [`super::Verifier::verify_request`] checks first).

use bytes::Bytes;
use http::HeaderMap;

use super::catalogue::Handshake;
use super::mac::{self, Tag};
use super::{Encoding, Keys, Verifier, is_form};

/// The gateway's answer to a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub handshake: Handshake,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Answer {
    /// A text echo: served with `x-content-type-options: nosniff` too (the value is the caller's).
    pub fn is_text(&self) -> bool {
        self.content_type == "text/plain"
    }
}

/// Longest token a handshake echoes or signs.
const MAX_TOKEN: usize = 1024;
/// X's crc_token: a short token of the base64 alphabets (never a JSON body, which needs `{`, so
/// the answer cannot be used as the signature of an event).
const MAX_CRC_TOKEN: usize = 256;

/// What a request with a handshake's query parameters gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Answer(Answer),
    /// The request is a handshake that fails the provider's check (or is malformed), and why
    /// (for the log).
    Refused {
        handshake: Handshake,
        why: &'static str,
    },
}

impl Verifier {
    /// Of Zoom's secrets, the first whose `v0` signature of the request matches.
    fn signing_key<'k>(&self, headers: &HeaderMap, body: &[u8], keys: &'k [mac::MacKey]) -> Option<&'k mac::MacKey> {
        let timestamp = headers.get("x-zm-request-timestamp")?.as_bytes();
        let presented = headers.get("x-zm-signature")?.as_bytes().strip_prefix(b"v0=")?;
        let presented = Tag::decode(Encoding::Hex, presented, 32)?;
        keys.iter().find(|k| k.tag(&[b"v0:", timestamp, b":", body]).matches(&presented))
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn text(handshake: Handshake, token: String) -> Outcome {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Outcome::Refused { handshake, why: "the token is empty or longer than 1024 bytes" };
    }
    Outcome::Answer(Answer { handshake, content_type: "text/plain", body: Bytes::from(token) })
}

fn json(handshake: Handshake, body: String) -> Outcome {
    Outcome::Answer(Answer { handshake, content_type: "application/json", body: Bytes::from(body) })
}

/// A JSON string literal.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

impl Verifier {
    /// The answer to a handshake that comes before any body is read: a GET (Meta, X, Dropbox) or
    /// Graph's `POST ?validationToken=`. `None` when the request does not carry the handshake's
    /// parameter (it is not a handshake).
    pub fn handshake_by_query(&self, method: &http::Method, query: Option<&str>) -> Option<Outcome> {
        let handshake = self.handshake()?;
        let get = method == http::Method::GET;
        match handshake {
            Handshake::MetaHub if get => {
                let mode = query_param(query, "hub.mode");
                let token = query_param(query, "hub.verify_token");
                let challenge = query_param(query, "hub.challenge");
                if mode.is_none() && token.is_none() && challenge.is_none() {
                    return None;
                }
                if mode.as_deref() != Some("subscribe") {
                    return Some(Outcome::Refused { handshake, why: "hub.mode is not subscribe" });
                }
                let (Some(token), Some(expected)) = (token, self.verify_token) else {
                    return Some(Outcome::Refused { handshake, why: "no hub.verify_token" });
                };
                if !mac::digests_equal(&mac::sha256(token.as_bytes()), &expected) {
                    return Some(Outcome::Refused {
                        handshake,
                        why: "hub.verify_token does not match verify.verify_token",
                    });
                }
                Some(text(handshake, challenge.unwrap_or_default()))
            }
            Handshake::XCrc if get => {
                let token = query_param(query, "crc_token")?;
                let allowed = |b: u8| b.is_ascii_alphanumeric() || b"+/=_-".contains(&b);
                if token.is_empty() || token.len() > MAX_CRC_TOKEN || !token.bytes().all(allowed) {
                    return Some(Outcome::Refused {
                        handshake,
                        why: "crc_token is not 1-256 characters of [A-Za-z0-9+/=_-]",
                    });
                }
                let Keys::Mac(keys) = &self.keys else { return Some(Outcome::Refused { handshake, why: "no key" }) };
                let tag: Tag = keys.first()?.tag(&[token.as_bytes()]);
                let value = tag.header_value("sha256=", Encoding::Base64);
                let value = value.to_str().expect("base64 is ASCII");
                Some(json(handshake, format!("{{\"response_token\":{}}}", quoted(value))))
            }
            Handshake::DropboxChallenge if get => Some(text(handshake, query_param(query, "challenge")?)),
            Handshake::GraphValidation if method == http::Method::POST => {
                Some(text(handshake, query_param(query, "validationToken")?))
            }
            _ => None,
        }
    }

    /// The answer to a handshake that comes as a signed POST (Slack, Zoom), for a request that
    /// has passed [`Verifier::verify_request`]; `None` for an event.
    pub fn handshake_by_body(&self, headers: &HeaderMap, body: &[u8]) -> Option<Answer> {
        let handshake = self.handshake()?;
        if !matches!(handshake, Handshake::SlackChallenge | Handshake::ZoomValidation) || is_form(headers) {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let answer = match handshake {
            Handshake::SlackChallenge => {
                if json.get("type")?.as_str()? != "url_verification" {
                    return None;
                }
                let challenge = json.get("challenge")?.as_str()?;
                format!("{{\"challenge\":{}}}", quoted(challenge))
            }
            Handshake::ZoomValidation => {
                if json.get("event")?.as_str()? != "endpoint.url_validation" {
                    return None;
                }
                let plain = json.get("payload")?.get("plainToken")?.as_str()?;
                let Keys::Mac(keys) = &self.keys else { return None };
                // the secret that signed this request (while a secret rolls, Zoom signs with one
                // of two and expects the answer from the same one)
                let key = self.signing_key(headers, body, keys)?;
                let tag = key.tag(&[plain.as_bytes()]);
                let encrypted = tag.header_value("", Encoding::Hex);
                format!(
                    "{{\"plainToken\":{},\"encryptedToken\":{}}}",
                    quoted(plain),
                    quoted(encrypted.to_str().expect("hex is ASCII"))
                )
            }
            _ => return None,
        };
        Some(Answer { handshake, content_type: "application/json", body: Bytes::from(answer) })
    }
}
