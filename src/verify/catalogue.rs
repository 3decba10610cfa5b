//! The inbound provider catalogue: one row per provider, as data. A row says where the provider
//! puts its signature and timestamp, what it signs (a recipe of [`Part`]s), its clock tolerance,
//! the handshake it runs before sending events, and where its event type and event id are. The
//! verifier ([`super::Verifier`]) interprets the rows; no provider has code of its own, except
//! the few handshakes, which are behaviours ([`super::handshake`]).
//!
//! `hookyard providers` prints this table; docs/providers.md has a `sources:` block per row.

use http::HeaderName;

/// A header name, lower case (`HeaderName` cannot live in a `static`).
pub type Hdr = &'static str;

use super::{Algorithm, Encoding};

/// One provider's way of signing and announcing webhooks.
#[derive(Debug)]
pub struct Preset {
    /// The `verify.scheme` value.
    pub name: &'static str,
    /// Who sends this way.
    pub provider: &'static str,
    /// What to put in `verify.secret`.
    pub secret: &'static str,
    pub check: Check,
    /// Default clock tolerance in seconds, for presets whose requests carry a signed timestamp.
    pub tolerance: Option<u64>,
    pub handshake: Option<Handshake>,
    /// Where the event type is: the first of these that the event has.
    pub event_type: &'static [Field],
    /// Where the provider's own event id is (for `dedupe:`).
    pub event_id: Option<Field>,
    /// Whether the provider sends only JSON objects, so that anything else is refused before its
    /// signature is checked (X: its CRC answer is an HMAC of a token the caller chooses, in the
    /// signature's own format; a token can never start with `{`, so no answer signs an event).
    pub json_object_only: bool,
    /// Whether the signature covers the public URL, which `verify.url` must then give.
    /// ([`Part::Url`] or [`Part::HubspotUrl`] in the recipe.)
    pub needs_url: bool,
}

/// A header (lower case) or a JSONPath into the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Header(&'static str),
    Path(&'static str),
}

/// How a request proves it comes from the provider.
#[derive(Debug)]
pub enum Check {
    /// An HMAC of `signed`, presented as `sig` says, with an optional signed timestamp.
    Mac { algorithm: Algorithm, encoding: Encoding, sig: Sig, signed: &'static [Part], time: Time },
    /// A static token in a header, compared with the secrets (GitLab).
    Token { header: Hdr },
    /// Standard Webhooks' three headers: `v1` HMAC-SHA256 (`whsec_` secrets) and `v1a` ed25519
    /// (`whpk_` public keys) signatures of `{id}.{timestamp}.{body}`.
    Webhooks { id: Hdr, timestamp: Hdr, signature: Hdr },
    /// A base64 DER ECDSA P-256/SHA-256 signature of `{timestamp}{body}` (SendGrid); the secret is
    /// the public key.
    Ecdsa { signature: Hdr, timestamp: Hdr },
    /// Every `$.value[*].clientState` of the body equals a secret (Microsoft Graph).
    ClientState,
    /// `timestamp`, `token` and `signature` (hex HMAC-SHA256 of timestamp + token) in the body,
    /// under `$.signature` of a JSON body or as form fields (Mailgun).
    BodySignature,
}

/// Where a MAC is presented.
#[derive(Debug)]
pub enum Sig {
    /// One header: `prefix` then the encoded MAC.
    Header { name: Hdr, prefix: &'static str },
    /// `key=value` fields separated by `sep`: the timestamp in `ts`, signatures in `sig` (any
    /// number of them; any may match).
    Fields { name: Hdr, sep: char, ts: &'static str, sig: &'static str },
    /// Signatures `prefix<MAC>` separated by `sep` (any may match).
    List { name: Hdr, sep: char, prefix: &'static str },
}

/// One piece of a signed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Lit(&'static str),
    /// The timestamp's text as sent.
    Timestamp,
    Body,
    /// `verify.url`, then `?` and the request's query when it has one.
    Url,
    /// [`Part::Url`] with HubSpot's list of percent-escapes decoded (`%3A` `%2F` `%3F` `%40`
    /// `%21` `%24` `%27` `%28` `%29` `%2A` `%2C` `%3B`), as its v3 signature takes the URI.
    HubspotUrl,
    /// The request method.
    Method,
    /// Twilio: a form body's parameters sorted by name, each name then value (decoded); nothing for
    /// another body, whose SHA-256 must then equal the URL's `bodySHA256` parameter.
    TwilioParams,
}

/// Where a signed timestamp is.
#[derive(Debug)]
pub enum Time {
    None,
    /// In a header, in seconds or milliseconds.
    Header(Hdr, Unit),
    /// In the signature header's `ts` field ([`Sig::Fields`]).
    Field,
    /// A top-level number of milliseconds in the JSON body (Linear's `webhookTimestamp`); checked,
    /// not part of the signed string (the body is).
    BodyMillis(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Millis,
}

/// A handshake a provider runs before it sends events; answered by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Slack: a signed POST `{"type":"url_verification","challenge":C}` → `{"challenge":C}`.
    SlackChallenge,
    /// Zoom: a signed POST `endpoint.url_validation` with `payload.plainToken` P →
    /// `{"plainToken":P,"encryptedToken":hex HMAC-SHA256(secret, P)}`.
    ZoomValidation,
    /// Meta: `GET ?hub.mode=subscribe&hub.verify_token=T&hub.challenge=C` → `C`, if T matches.
    MetaHub,
    /// X: `GET ?crc_token=T` → `{"response_token":"sha256=<base64 HMAC-SHA256(secret, T)>"}`.
    XCrc,
    /// Microsoft Graph: `POST ?validationToken=T` → `T` as text.
    GraphValidation,
    /// Dropbox: `GET ?challenge=C` → `C` as text.
    DropboxChallenge,
}

impl Handshake {
    /// Whether the handshake comes as a GET (the others are POSTs).
    pub fn is_get(self) -> bool {
        matches!(self, Handshake::MetaHub | Handshake::XCrc | Handshake::DropboxChallenge)
    }

    pub fn name(self) -> &'static str {
        match self {
            Handshake::SlackChallenge => "slack url_verification",
            Handshake::ZoomValidation => "zoom endpoint.url_validation",
            Handshake::MetaHub => "meta hub.challenge",
            Handshake::XCrc => "x crc_token",
            Handshake::GraphValidation => "microsoft-graph validationToken",
            Handshake::DropboxChallenge => "dropbox challenge",
        }
    }
}

const fn h(name: &'static str) -> Hdr {
    name
}

use Field::{Header as H, Path as P};
use Part::{Body, HubspotUrl, Lit, Method, Timestamp, TwilioParams, Url};

/// An HMAC-SHA256 of the body alone.
const fn body_mac(encoding: Encoding, name: &'static str, prefix: &'static str) -> Check {
    Check::Mac {
        algorithm: Algorithm::Sha256,
        encoding,
        sig: Sig::Header { name: h(name), prefix },
        signed: &[Body],
        time: Time::None,
    }
}

/// Every preset, in the order `hookyard providers` lists them.
pub static PRESETS: &[Preset] = &[
    Preset {
        name: "github",
        provider: "GitHub",
        secret: "the webhook's secret",
        check: body_mac(Encoding::Hex, "x-hub-signature-256", "sha256="),
        tolerance: None,
        handshake: None,
        event_type: &[H("x-github-event")],
        event_id: Some(H("x-github-delivery")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "gitlab",
        provider: "GitLab",
        secret: "the webhook's secret token",
        check: Check::Token { header: h("x-gitlab-token") },
        tolerance: None,
        handshake: None,
        event_type: &[H("x-gitlab-event")],
        event_id: Some(H("x-gitlab-event-uuid")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "bitbucket",
        provider: "Bitbucket Cloud",
        secret: "the webhook's secret",
        check: body_mac(Encoding::Hex, "x-hub-signature", "sha256="),
        tolerance: None,
        handshake: None,
        event_type: &[H("x-event-key")],
        event_id: Some(H("x-request-uuid")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "stripe",
        provider: "Stripe",
        secret: "the endpoint's signing secret (whsec_…, used as is)",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Fields { name: h("stripe-signature"), sep: ',', ts: "t", sig: "v1" },
            signed: &[Timestamp, Lit("."), Body],
            time: Time::Field,
        },
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$.type")],
        event_id: Some(P("$.id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "shopify",
        provider: "Shopify",
        secret: "the app's client secret (or the store's webhook signing key)",
        check: body_mac(Encoding::Base64, "x-shopify-hmac-sha256", ""),
        tolerance: None,
        handshake: None,
        event_type: &[H("x-shopify-topic")],
        event_id: Some(H("x-shopify-webhook-id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "slack",
        provider: "Slack (Events API, slash commands, interactivity)",
        secret: "the app's signing secret",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Header { name: h("x-slack-signature"), prefix: "v0=" },
            signed: &[Lit("v0:"), Timestamp, Lit(":"), Body],
            time: Time::Header(h("x-slack-request-timestamp"), Unit::Seconds),
        },
        tolerance: Some(300),
        handshake: Some(Handshake::SlackChallenge),
        event_type: &[P("$.event.type"), P("$.type"), P("$.command")],
        event_id: Some(P("$.event_id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "standard-webhooks",
        provider: "Standard Webhooks senders (v1 HMAC and v1a ed25519)",
        secret: "whsec_… (HMAC) or whpk_… (the sender's ed25519 public key)",
        check: Check::Webhooks {
            id: h("webhook-id"),
            timestamp: h("webhook-timestamp"),
            signature: h("webhook-signature"),
        },
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$.type")],
        event_id: Some(H("webhook-id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "svix",
        provider: "Svix-signed senders (Clerk, Resend, Brex, …)",
        secret: "the endpoint's signing secret (whsec_…)",
        check: Check::Webhooks { id: h("svix-id"), timestamp: h("svix-timestamp"), signature: h("svix-signature") },
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$.type")],
        event_id: Some(H("svix-id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "zoom",
        provider: "Zoom",
        secret: "the app's secret token",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Header { name: h("x-zm-signature"), prefix: "v0=" },
            signed: &[Lit("v0:"), Timestamp, Lit(":"), Body],
            time: Time::Header(h("x-zm-request-timestamp"), Unit::Seconds),
        },
        tolerance: Some(300),
        handshake: Some(Handshake::ZoomValidation),
        event_type: &[P("$.event")],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "meta",
        provider: "Meta (Facebook, Instagram, WhatsApp, Messenger)",
        secret: "the app secret (and verify.verify_token: the token you gave Meta)",
        check: body_mac(Encoding::Hex, "x-hub-signature-256", "sha256="),
        tolerance: None,
        handshake: Some(Handshake::MetaHub),
        event_type: &[P("$.object")],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "x",
        provider: "X (Twitter) Account Activity API",
        secret: "the app's consumer secret",
        check: body_mac(Encoding::Base64, "x-twitter-webhooks-signature", "sha256="),
        tolerance: None,
        handshake: Some(Handshake::XCrc),
        event_type: &[],
        event_id: None,
        json_object_only: true,
        needs_url: false,
    },
    Preset {
        name: "microsoft-graph",
        provider: "Microsoft Graph change notifications",
        secret: "the subscription's clientState",
        check: Check::ClientState,
        tolerance: None,
        handshake: Some(Handshake::GraphValidation),
        event_type: &[P("$.value[0].changeType")],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "dropbox",
        provider: "Dropbox",
        secret: "the app secret",
        check: body_mac(Encoding::Hex, "x-dropbox-signature", ""),
        tolerance: None,
        handshake: Some(Handshake::DropboxChallenge),
        event_type: &[],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "twilio",
        provider: "Twilio (voice, messaging)",
        secret: "the account's auth token (and verify.url: the URL configured in Twilio)",
        check: Check::Mac {
            algorithm: Algorithm::Sha1,
            encoding: Encoding::Base64,
            sig: Sig::Header { name: h("x-twilio-signature"), prefix: "" },
            signed: &[Url, TwilioParams],
            time: Time::None,
        },
        tolerance: None,
        handshake: None,
        event_type: &[],
        event_id: Some(H("i-twilio-idempotency-token")),
        json_object_only: false,
        needs_url: true,
    },
    Preset {
        name: "sendgrid",
        provider: "SendGrid event webhook",
        secret: "the verification key (base64 DER or PEM of the ECDSA P-256 public key)",
        check: Check::Ecdsa {
            signature: h("x-twilio-email-event-webhook-signature"),
            timestamp: h("x-twilio-email-event-webhook-timestamp"),
        },
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$[0].event")],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "paddle",
        provider: "Paddle Billing",
        secret: "the notification destination's secret key",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Fields { name: h("paddle-signature"), sep: ';', ts: "ts", sig: "h1" },
            signed: &[Timestamp, Lit(":"), Body],
            time: Time::Field,
        },
        tolerance: Some(5),
        handshake: None,
        event_type: &[P("$.event_type")],
        event_id: Some(P("$.event_id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "linear",
        provider: "Linear",
        secret: "the webhook's signing secret",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Header { name: h("linear-signature"), prefix: "" },
            signed: &[Body],
            time: Time::BodyMillis("webhookTimestamp"),
        },
        tolerance: Some(60),
        handshake: None,
        event_type: &[H("linear-event")],
        event_id: Some(H("linear-delivery")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "intercom",
        provider: "Intercom",
        secret: "the app's client secret",
        check: Check::Mac {
            algorithm: Algorithm::Sha1,
            encoding: Encoding::Hex,
            sig: Sig::Header { name: h("x-hub-signature"), prefix: "sha1=" },
            signed: &[Body],
            time: Time::None,
        },
        tolerance: None,
        handshake: None,
        event_type: &[P("$.topic")],
        event_id: Some(P("$.id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "square",
        provider: "Square",
        secret: "the subscription's signature key (and verify.url: its notification URL)",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            sig: Sig::Header { name: h("x-square-hmacsha256-signature"), prefix: "" },
            signed: &[Url, Body],
            time: Time::None,
        },
        tolerance: None,
        handshake: None,
        event_type: &[P("$.type")],
        event_id: Some(P("$.event_id")),
        json_object_only: false,
        needs_url: true,
    },
    Preset {
        name: "mailgun",
        provider: "Mailgun",
        secret: "the HTTP webhook signing key",
        check: Check::BodySignature,
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$['event-data'].event"), P("$.event")],
        event_id: Some(P("$.signature.token")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "pagerduty",
        provider: "PagerDuty (v3 webhooks)",
        secret: "the subscription's secret",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::List { name: h("x-pagerduty-signature"), sep: ',', prefix: "v1=" },
            signed: &[Body],
            time: Time::None,
        },
        tolerance: None,
        handshake: None,
        event_type: &[P("$.event.event_type")],
        event_id: Some(P("$.event.id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "typeform",
        provider: "Typeform",
        secret: "the webhook's secret",
        check: body_mac(Encoding::Base64, "typeform-signature", "sha256="),
        tolerance: None,
        handshake: None,
        event_type: &[P("$.event_type")],
        event_id: Some(P("$.event_id")),
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "calendly",
        provider: "Calendly",
        secret: "the webhook signing key",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            sig: Sig::Fields { name: h("calendly-webhook-signature"), sep: ',', ts: "t", sig: "v1" },
            signed: &[Timestamp, Lit("."), Body],
            time: Time::Field,
        },
        tolerance: Some(180),
        handshake: None,
        event_type: &[P("$.event")],
        event_id: None,
        json_object_only: false,
        needs_url: false,
    },
    Preset {
        name: "hubspot",
        provider: "HubSpot (v3 signatures)",
        secret: "the app's client secret (and verify.url: the webhook URL set in HubSpot)",
        check: Check::Mac {
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Base64,
            sig: Sig::Header { name: h("x-hubspot-signature-v3"), prefix: "" },
            signed: &[Method, HubspotUrl, Body, Timestamp],
            time: Time::Header(h("x-hubspot-request-timestamp"), Unit::Millis),
        },
        tolerance: Some(300),
        handshake: None,
        event_type: &[P("$[0].subscriptionType")],
        event_id: None,
        json_object_only: false,
        needs_url: true,
    },
];

/// HubSpot's v3 URI: the URL with these escapes decoded.
pub fn hubspot_uri(url: &str) -> String {
    const DECODED: [(&str, &str); 12] = [
        ("%3A", ":"),
        ("%2F", "/"),
        ("%3F", "?"),
        ("%40", "@"),
        ("%21", "!"),
        ("%24", "$"),
        ("%27", "'"),
        ("%28", "("),
        ("%29", ")"),
        ("%2A", "*"),
        ("%2C", ","),
        ("%3B", ";"),
    ];
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        match DECODED.iter().find(|(e, _)| e.eq_ignore_ascii_case(escape)) {
            Some((_, c)) => {
                out.push_str(c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[test]
fn hubspot_uri_decodes_only_its_list() {
    assert_eq!(hubspot_uri("https://x.io/h?a=%3A%2f%40%20%25&b=%2C%3B%"), "https://x.io/h?a=:/@%20%25&b=,;%");
}

/// The preset named `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Every `verify.scheme`: the generic schemes (configured by keys rather than a catalogue row),
/// then the presets in catalogue order (a test checks that this list and [`PRESETS`] agree).
pub static SCHEME_NAMES: &[&str] = &[
    "none",
    "hmac",
    "basic",
    "api-key",
    "github",
    "gitlab",
    "bitbucket",
    "stripe",
    "shopify",
    "slack",
    "standard-webhooks",
    "svix",
    "zoom",
    "meta",
    "x",
    "microsoft-graph",
    "dropbox",
    "twilio",
    "sendgrid",
    "paddle",
    "linear",
    "intercom",
    "square",
    "mailgun",
    "pagerduty",
    "typeform",
    "calendly",
    "hubspot",
];

/// How many of [`SCHEME_NAMES`] are generic.
pub const GENERIC: usize = 4;

#[cfg(test)]
#[test]
fn scheme_names_are_the_generic_ones_then_the_catalogue() {
    let presets: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(&SCHEME_NAMES[GENERIC..], presets.as_slice());
}

impl Preset {
    /// The headers that carry this preset's signature (never stored or forwarded).
    pub fn signature_headers(&self) -> Vec<HeaderName> {
        match &self.check {
            Check::Mac { sig, time, .. } => {
                let mut out = vec![match sig {
                    Sig::Header { name, .. } | Sig::Fields { name, .. } | Sig::List { name, .. } => *name,
                }];
                if let Time::Header(t, _) = time {
                    out.push(*t);
                }
                out.into_iter().map(HeaderName::from_static).collect()
            }
            Check::Token { header } => vec![HeaderName::from_static(header)],
            Check::Webhooks { signature, .. } => vec![HeaderName::from_static(signature)],
            Check::Ecdsa { signature, .. } => vec![HeaderName::from_static(signature)],
            Check::ClientState | Check::BodySignature => Vec::new(),
        }
    }

    /// One line on how a request is signed, for `hookyard providers`.
    pub fn describe(&self) -> String {
        fn parts(signed: &[Part]) -> String {
            signed
                .iter()
                .map(|p| match p {
                    Lit(s) => format!("\"{s}\""),
                    Timestamp => "timestamp".into(),
                    Body => "body".into(),
                    Url => "url".into(),
                    HubspotUrl => "url (HubSpot's escapes decoded)".into(),
                    Method => "method".into(),
                    TwilioParams => "sorted form params".into(),
                })
                .collect::<Vec<_>>()
                .join(" + ")
        }
        match &self.check {
            Check::Mac { algorithm, encoding, sig, signed, time } => {
                let alg = match algorithm {
                    Algorithm::Sha1 => "HMAC-SHA1",
                    Algorithm::Sha256 => "HMAC-SHA256",
                    Algorithm::Sha512 => "HMAC-SHA512",
                };
                let enc = match encoding {
                    Encoding::Hex => "hex",
                    Encoding::Base64 => "base64",
                };
                let mac = format!("{enc} {alg}({})", parts(signed));
                let mut line = match sig {
                    Sig::Header { name, prefix } => format!("{name}: {prefix}<{mac}>"),
                    Sig::Fields { name, sep, ts, sig } => format!("{name}: {ts}=<timestamp>{sep}{sig}=<{mac}>"),
                    Sig::List { name, sep, prefix } => format!("{name}: {prefix}<{mac}>[{sep}{prefix}…]"),
                };
                match time {
                    Time::Header(t, Unit::Seconds) => line.push_str(&format!("; {t}: <unix seconds>")),
                    Time::Header(t, Unit::Millis) => line.push_str(&format!("; {t}: <unix ms>")),
                    Time::BodyMillis(key) => line.push_str(&format!("; body $.{key}: <unix ms>")),
                    Time::None | Time::Field => {}
                }
                line
            }
            Check::Token { header } => format!("{header}: <secret>"),
            Check::Webhooks { id, timestamp, signature } => format!(
                "{id}, {timestamp}, {signature}: v1,<base64 HMAC-SHA256(id.timestamp.body)> or v1a,<base64 ed25519>"
            ),
            Check::Ecdsa { signature, timestamp } => {
                format!("{signature}: <base64 DER ECDSA-P256-SHA256(timestamp + body)>; {timestamp}: <unix seconds>")
            }
            Check::ClientState => "every $.value[*].clientState equals the secret".into(),
            Check::BodySignature => {
                "body signature.{timestamp, token, signature: hex HMAC-SHA256(timestamp + token)}".into()
            }
        }
    }
}
