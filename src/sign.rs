//! Outbound re-signing: the signature headers we add to each delivery so that destinations can check
//! the request came from us, with the destination's secret rather than the original sender's.
//!
//! A [`Signer`] is built once per destination from config and [`Signer::sign`] is a pure function of
//! its inputs. This module must not do IO, log or read the clock (the caller chooses the message id
//! and timestamp and writes `webhook-id` and `webhook-timestamp` itself), and must not compute a MAC
//! or encode a signature itself: the scheme definitions live in [`crate::verify`] and its `mac`
//! helpers, so that what we sign is exactly what our own verifier accepts.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::verify::keys;
use crate::verify::mac::{self, Decimal, MacKey};
use crate::verify::{self, Algorithm, Encoding};

/// How deliveries to a destination are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignScheme {
    /// No signature header.
    None,
    /// Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
    /// with a `whsec_<base64 key>` secret, or `v1a,<base64 ed25519 signature>` of the same string
    /// with a `whsk_` key (the receiver verifies with its `whpk_` public key). During a rotation
    /// the header carries one signature per key, space-separated.
    StandardWebhooks,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
    Github,
    /// `<header>: <prefix><encoding of HMAC(secret, body)>`.
    Hmac { header: HeaderName, algorithm: verify::Algorithm, encoding: verify::Encoding, prefix: String },
}

impl SignScheme {
    /// The name used in config and logs.
    pub fn name(&self) -> &'static str {
        match self {
            SignScheme::None => "none",
            SignScheme::StandardWebhooks => "standard-webhooks",
            SignScheme::Github => "github",
            SignScheme::Hmac { .. } => "hmac",
        }
    }
}

/// A decoded signing key.
enum SignKey {
    Mac(MacKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SignKey {
    /// The Standard Webhooks entry (`v1,…` or `v1a,…`) for the signed string's parts.
    fn standard_webhooks_entry(&self, signed: &[&[u8]]) -> String {
        match self {
            SignKey::Mac(key) => {
                let value = key.tag(signed).header_value(verify::STANDARD_WEBHOOKS_PREFIX, Encoding::Base64);
                value.to_str().expect("base64 is ASCII").to_owned()
            }
            SignKey::Ed25519(key) => format!("v1a,{}", keys::sign_v1a(key, signed)),
        }
    }
}

/// A sign scheme with its decoded secret.
pub struct Signer {
    scheme: SignScheme,
    /// Present for every scheme but `None`.
    key: Option<SignKey>,
    /// Standard Webhooks only: keys being rotated out, each signing too until its Unix time.
    previous: Vec<(SignKey, i64)>,
}

impl fmt::Debug for Signer {
    /// Shows the scheme, never the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

impl Signer {
    /// Compiles `destinations.<name>.sign`; the error's key is relative to it (`""`, `.header`).
    pub fn from_config(s: &crate::config::SignConfig) -> Result<Signer, crate::config::KeyError> {
        use crate::config::{KeyError, SignSchemeName};
        let scheme = match s.scheme {
            SignSchemeName::None => SignScheme::None,
            SignSchemeName::StandardWebhooks => SignScheme::StandardWebhooks,
            SignSchemeName::Github => SignScheme::Github,
            SignSchemeName::Hmac => SignScheme::Hmac {
                header: verify::header_name(s.header.as_deref(), None)?,
                algorithm: s.algorithm.into(),
                encoding: s.encoding.into(),
                prefix: s.prefix.clone().unwrap_or_default(),
            },
        };
        if s.scheme != SignSchemeName::Hmac
            && (s.header.is_some() || s.algorithm.is_some() || s.encoding.is_some() || s.prefix.is_some())
        {
            return Err(KeyError::new("", "header, algorithm, encoding and prefix apply to the hmac scheme only"));
        }
        let signer = Signer::new(scheme, s.secret.as_ref().map(|s| s.0.as_str())).map_err(|m| KeyError::new("", m))?;
        let mut previous = Vec::with_capacity(s.previous.len());
        for (i, p) in s.previous.iter().enumerate() {
            let until = time::OffsetDateTime::parse(&p.until, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    KeyError::new(
                        format!(".previous[{i}].until"),
                        format!("{:?} is not an RFC 3339 time such as 2026-12-01T00:00:00Z", p.until),
                    )
                },
            )?;
            previous.push((p.secret.0.clone(), until.unix_timestamp()));
        }
        signer.with_previous(&previous).map_err(|(i, m)| KeyError::new(format!(".previous[{i}].secret"), m))
    }
}

impl Signer {
    /// Standard Webhooks needs a `whsec_` secret, GitHub and HMAC any non-empty secret, and `None`
    /// takes none (giving it one is an error, since the destination would expect a signature). The
    /// error is a sentence that never quotes the secret.
    pub fn new(scheme: SignScheme, secret: Option<&str>) -> Result<Signer, String> {
        let name = scheme.name();
        let key = match (&scheme, secret) {
            (SignScheme::None, None) => None,
            (SignScheme::None, Some(_)) => {
                return Err("sign scheme none takes no secret; choose a scheme or remove it".to_owned());
            }
            (_, None) => return Err(format!("sign scheme {name} needs a secret")),
            (_, Some("")) => return Err(format!("the {name} signing secret is empty")),
            (SignScheme::StandardWebhooks, Some(secret)) => Some(standard_webhooks_key(secret)?),
            (SignScheme::Github, Some(secret)) => Some(SignKey::Mac(MacKey::new(Algorithm::Sha256, secret.as_bytes()))),
            (SignScheme::Hmac { algorithm, prefix, .. }, Some(secret)) => {
                mac::check_prefix(prefix)?;
                Some(SignKey::Mac(MacKey::new(*algorithm, secret.as_bytes())))
            }
        };
        Ok(Signer { scheme, key, previous: Vec::new() })
    }

    /// Adds keys being rotated out, `(secret, until Unix seconds)`: until then each request
    /// carries their signatures beside the current one (Standard Webhooks only, whose header
    /// holds several). The error names the entry (from 0) and never quotes the secret.
    pub fn with_previous(mut self, previous: &[(String, i64)]) -> Result<Signer, (usize, String)> {
        if !previous.is_empty() && self.scheme != SignScheme::StandardWebhooks {
            let why = format!(
                "only standard-webhooks signs with several keys at once (its header carries several signatures); {} carries one",
                self.scheme.name()
            );
            return Err((0, why));
        }
        for (i, (secret, until)) in previous.iter().enumerate() {
            self.previous.push((standard_webhooks_key(secret).map_err(|m| (i, m))?, *until));
        }
        Ok(self)
    }

    /// Adds the signature header to `out`, replacing any header of that name (such as the original
    /// sender's signature passed through). The caller always sets `webhook-id` and
    /// `webhook-timestamp` itself; `msg_id` and `timestamp` must be the values it sends there.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8], out: &mut HeaderMap) {
        let Some(key) = &self.key else {
            return;
        };
        match &self.scheme {
            SignScheme::None => {}
            SignScheme::StandardWebhooks => {
                let ts = Decimal::new(timestamp);
                let signed = verify::standard_webhooks_signed(msg_id.as_bytes(), ts.as_bytes(), body);
                let value = match (key, self.previous.is_empty()) {
                    // the usual case: one HMAC, no string built
                    (SignKey::Mac(mac), true) => {
                        mac.tag(&signed).header_value(verify::STANDARD_WEBHOOKS_PREFIX, Encoding::Base64)
                    }
                    _ => {
                        let mut entries = vec![key.standard_webhooks_entry(&signed)];
                        // a rotated-out key signs until its time (the attempt's timestamp decides)
                        for (old, until) in &self.previous {
                            if timestamp < *until {
                                entries.push(old.standard_webhooks_entry(&signed));
                            }
                        }
                        HeaderValue::try_from(entries.join(" ")).expect("base64 entries are a valid header value")
                    }
                };
                out.insert(verify::WEBHOOK_SIGNATURE, value);
            }
            SignScheme::Github | SignScheme::Hmac { .. } => {
                let SignKey::Mac(key) = key else { return };
                let (name, value) = match &self.scheme {
                    SignScheme::Hmac { header, encoding, prefix, .. } => {
                        (header.clone(), key.tag(&[body]).header_value(prefix, *encoding))
                    }
                    _ => {
                        (verify::GITHUB_SIGNATURE, key.tag(&[body]).header_value(verify::GITHUB_PREFIX, Encoding::Hex))
                    }
                };
                out.insert(name, value);
            }
        }
    }

    pub fn scheme_name(&self) -> &'static str {
        self.scheme.name()
    }
}

/// A Standard Webhooks signing key: `whsec_` (HMAC) or `whsk_` (ed25519).
fn standard_webhooks_key(secret: &str) -> Result<SignKey, String> {
    if secret.starts_with(keys::WHSK_PREFIX) {
        return keys::decode_whsk(secret)
            .map(SignKey::Ed25519)
            .map_err(|why| format!("the signing key is not a valid whsk_ key: {why}"));
    }
    let key = mac::decode_whsec(secret)
        .map_err(|why| format!("the signing secret is not a valid whsec_ (or whsk_) secret: {why}"))?;
    Ok(SignKey::Mac(MacKey::new(Algorithm::Sha256, &key)))
}

#[cfg(test)]
mod tests {
    //! Expected values are Python-computed literals (one-liner next to each), never our own output.

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::verify::{Scheme, Verifier};

    const BODY: &[u8] = br#"{"event":"ping","id":42}"#;
    const SECRET: &str = "hy-secret-primary";
    const T: i64 = 1_700_000_000;
    // python3 -c 'import base64;print("whsec_"+base64.b64encode(b"hookyard-test-key-32-bytes-long!").decode())'
    const WHSEC: &str = "whsec_aG9va3lhcmQtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=";

    fn hmac512() -> SignScheme {
        SignScheme::Hmac {
            header: HeaderName::from_static("x-signature"),
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: "sha512=".to_owned(),
        }
    }

    struct Vector {
        scheme: SignScheme,
        secret: &'static str,
        msg_id: &'static str,
        timestamp: i64,
        body: &'static [u8],
        header: &'static str,
        want: &'static str,
    }

    // standard-webhooks:
    // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(base64.b64decode("aG9va3lhcmQtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE="),b"msg_1.1700000000.{\"event\":\"ping\",\"id\":42}",hashlib.sha256).digest()).decode())'
    // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",hashlib.sha256).digest()).decode())'
    // github:
    // python3 -c 'import hmac,hashlib;print(hmac.new(b"hy-secret-primary",b"{\"event\":\"ping\",\"id\":42}",hashlib.sha256).hexdigest())'
    // hmac (sha512, base64):
    // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"hy-secret-primary",b"{\"event\":\"ping\",\"id\":42}",hashlib.sha512).digest()).decode())'
    fn vectors() -> Vec<Vector> {
        vec![
            Vector {
                scheme: SignScheme::StandardWebhooks,
                secret: WHSEC,
                msg_id: "msg_1",
                timestamp: T,
                body: BODY,
                header: "webhook-signature",
                want: "v1,ls1mZFpTn5QzzwtpZRT0+RotSQnz48CkjmzDYNt+7k4=",
            },
            Vector {
                scheme: SignScheme::StandardWebhooks,
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                msg_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp: 1_614_265_330,
                body: br#"{"test": 2432232314}"#,
                header: "webhook-signature",
                want: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            },
            Vector {
                scheme: SignScheme::Github,
                secret: SECRET,
                msg_id: "msg_1",
                timestamp: T,
                body: BODY,
                header: "x-hub-signature-256",
                want: "sha256=b8b34f223cec39d000eca4be8dbb6ebd04fa19f2b49c8512876306d7e7e4ac6d",
            },
            Vector {
                scheme: hmac512(),
                secret: SECRET,
                msg_id: "msg_1",
                timestamp: T,
                body: BODY,
                header: "x-signature",
                want: "sha512=/NPJ+KXOdyvyI39TRJklZyMW2cbAFY8uL9nkTgl1OzHk1xMoNuX/S+3mWmk5fLLQ/xcppxYIYNLPvcNuWonWvw==",
            },
        ]
    }

    #[test]
    fn signatures_match_independent_values() {
        for Vector { scheme, secret, msg_id, timestamp, body, header, want } in vectors() {
            let name = scheme.name();
            let signer = Signer::new(scheme, Some(secret)).expect(name);
            let mut out = HeaderMap::new();
            signer.sign(msg_id, timestamp, body, &mut out);
            assert_eq!(out.len(), 1, "{name}: {out:?}");
            assert_eq!(out.get(header).and_then(|v| v.to_str().ok()), Some(want), "{name}");
        }
    }

    /// What we sign, our own verifier of the matching scheme accepts.
    #[test]
    fn signatures_verify() {
        let verifier_scheme = |scheme: &SignScheme| match scheme {
            SignScheme::StandardWebhooks => Scheme::preset("standard-webhooks"),
            SignScheme::Github => Scheme::preset("github"),
            SignScheme::Hmac { header, algorithm, encoding, prefix } => Scheme::Hmac {
                header: header.clone(),
                algorithm: *algorithm,
                encoding: *encoding,
                prefix: prefix.clone(),
            },
            SignScheme::None => Scheme::None,
        };
        for Vector { scheme, secret, msg_id, timestamp, body, .. } in vectors() {
            let name = scheme.name();
            let verifier =
                Verifier::new(verifier_scheme(&scheme), &[secret.to_owned()], Duration::from_secs(300)).expect(name);
            let signer = Signer::new(scheme, Some(secret)).expect(name);
            let mut out = HeaderMap::new();
            // As the delivery code does: it sets id and timestamp, the signer the signature.
            out.insert("webhook-id", HeaderValue::from_str(msg_id).expect("ascii"));
            out.insert("webhook-timestamp", HeaderValue::from(timestamp));
            signer.sign(msg_id, timestamp, body, &mut out);
            let now = UNIX_EPOCH + Duration::from_secs(timestamp.unsigned_abs());
            assert!(verifier.verify(&out, body, now).is_ok(), "{name}");
        }
    }

    #[test]
    fn sign_replaces_a_passed_through_signature() {
        let signer = Signer::new(SignScheme::Github, Some(SECRET)).expect("valid");
        let mut out = HeaderMap::new();
        out.append("x-hub-signature-256", HeaderValue::from_static("sha256=from-the-original-sender"));
        out.append("x-hub-signature-256", HeaderValue::from_static("sha256=and-another"));
        signer.sign("msg_1", T, BODY, &mut out);
        let values: Vec<_> = out.get_all("x-hub-signature-256").iter().collect();
        assert_eq!(values, ["sha256=b8b34f223cec39d000eca4be8dbb6ebd04fa19f2b49c8512876306d7e7e4ac6d"]);
    }

    #[test]
    fn none_adds_nothing() {
        let signer = Signer::new(SignScheme::None, None).expect("valid");
        let mut out = HeaderMap::new();
        signer.sign("msg_1", T, BODY, &mut out);
        assert!(out.is_empty());
        assert_eq!(signer.scheme_name(), "none");
    }

    #[test]
    fn new_rejects_bad_configuration() {
        let bad_prefix = SignScheme::Hmac {
            header: HeaderName::from_static("x-signature"),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "v1=\r\n".to_owned(),
        };
        let table: Vec<(SignScheme, Option<&str>, &str)> = vec![
            (SignScheme::None, Some(SECRET), "takes no secret"),
            (SignScheme::Github, None, "sign scheme github needs a secret"),
            (hmac512(), Some(""), "the hmac signing secret is empty"),
            (SignScheme::StandardWebhooks, Some(SECRET), "not a valid whsec_ (or whsk_) secret: does not start with"),
            (SignScheme::StandardWebhooks, Some("whsec_%%%%"), "not a valid whsec_ (or whsk_) secret: the part after"),
            (bad_prefix, Some(SECRET), "signature prefix"),
        ];
        for (scheme, secret, want) in table {
            let name = scheme.name();
            let error = Signer::new(scheme, secret).expect_err(name);
            assert!(error.contains(want), "{name}: {error:?} lacks {want:?}");
            assert!(!error.contains(SECRET), "{name}: {error:?} quotes the secret");
        }
    }

    // seed bytes 0..32; python3 -c 'from cryptography.hazmat.primitives.asymmetric import ed25519;import base64;print(base64.b64encode(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))).sign(b"msg_1.1700000000.{\"event\":\"ping\",\"id\":42}")).decode())'
    const WHSK: &str = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const WHPK: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
    const V1A: &str = "v1a,MYBx4uubUMNKkJ3GxqXbubdgEmoVYqmtENofaU+0DHkIyBxSvwAcOiNjorE9rapBQNv3HHAygLpz0j0PKtwiBw==";
    const V1: &str = "v1,ls1mZFpTn5QzzwtpZRT0+RotSQnz48CkjmzDYNt+7k4=";

    fn signed(signer: &Signer, timestamp: i64) -> HeaderMap {
        let mut out = HeaderMap::new();
        out.insert("webhook-id", HeaderValue::from_static("msg_1"));
        out.insert("webhook-timestamp", HeaderValue::from(timestamp));
        signer.sign("msg_1", timestamp, BODY, &mut out);
        out
    }

    /// A `whsk_` key signs `v1a` (ed25519, deterministic: Python's `cryptography` gives the same
    /// bytes); a receiver with the `whpk_` key verifies it.
    #[test]
    fn a_whsk_key_signs_v1a() {
        let signer = Signer::new(SignScheme::StandardWebhooks, Some(WHSK)).unwrap();
        let out = signed(&signer, T);
        assert_eq!(out["webhook-signature"], V1A);
        let verifier =
            Verifier::new(Scheme::preset("standard-webhooks"), &[WHPK.to_owned()], Duration::from_secs(300)).unwrap();
        assert!(verifier.verify(&out, BODY, UNIX_EPOCH + Duration::from_secs(T as u64)).is_ok());
        // the 64-byte layout (seed + public key) is the same key
        // python3: "whsk_" + base64(seed + the public key's raw 32 bytes)
        let seed_and_public =
            "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==".to_owned();
        let signer = Signer::new(SignScheme::StandardWebhooks, Some(&seed_and_public)).unwrap();
        assert_eq!(signed(&signer, T)["webhook-signature"], V1A);
        let mut wrong = seed_and_public.clone();
        wrong.replace_range(wrong.len() - 4.., "AA==");
        let err = Signer::new(SignScheme::StandardWebhooks, Some(&wrong)).err().unwrap();
        assert_eq!(
            err,
            "the signing key is not a valid whsk_ key: the whsk_ key's public half does not belong to its seed"
        );
    }

    /// During the overlap each request carries the new and the old signature; after `until`,
    /// only the new one. Each verifies for a receiver holding only its own key.
    #[test]
    fn a_rotated_out_secret_signs_until_its_time() {
        let signer = Signer::new(SignScheme::StandardWebhooks, Some(WHSK))
            .unwrap()
            .with_previous(&[(WHSEC.to_owned(), T + 10)])
            .map_err(|(_, e)| e)
            .unwrap();
        let during = signed(&signer, T);
        assert_eq!(during["webhook-signature"], format!("{V1A} {V1}"));
        for key in [WHPK, WHSEC] {
            let verifier =
                Verifier::new(Scheme::preset("standard-webhooks"), &[key.to_owned()], Duration::from_secs(300))
                    .unwrap();
            assert!(verifier.verify(&during, BODY, UNIX_EPOCH + Duration::from_secs(T as u64)).is_ok(), "{key}");
        }
        let after = signed(&signer, T + 10);
        assert!(!after["webhook-signature"].to_str().unwrap().contains(' '), "only the new key after until");
        assert!(after["webhook-signature"].to_str().unwrap().starts_with("v1a,"));

        let github = Signer::new(SignScheme::Github, Some(SECRET)).unwrap();
        let err = github.with_previous(&[(SECRET.to_owned(), T)]).err().unwrap();
        assert_eq!(
            err.1,
            "only standard-webhooks signs with several keys at once (its header carries several signatures); github carries one"
        );
        let err = Signer::new(SignScheme::StandardWebhooks, Some(WHSEC))
            .unwrap()
            .with_previous(&[(WHSEC.to_owned(), T), ("nope".to_owned(), T)])
            .err()
            .unwrap();
        assert_eq!(
            err,
            (
                1,
                "the signing secret is not a valid whsec_ (or whsk_) secret: does not start with \"whsec_\"".to_owned()
            )
        );
    }

    #[test]
    fn scheme_names_and_debug() {
        let table = [
            (SignScheme::None, None, "none"),
            (SignScheme::StandardWebhooks, Some(WHSEC), "standard-webhooks"),
            (SignScheme::Github, Some(SECRET), "github"),
            (hmac512(), Some(SECRET), "hmac"),
        ];
        for (scheme, secret, want) in table {
            let signer = Signer::new(scheme, secret).expect(want);
            assert_eq!(signer.scheme_name(), want);
            let debug = format!("{signer:?}");
            assert!(!debug.contains(SECRET) && !debug.contains(WHSEC), "{debug}");
        }
    }
}
