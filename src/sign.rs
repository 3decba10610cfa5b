//! Outbound re-signing: the signature headers we add to each delivery so that destinations can check
//! the request came from us, with the destination's secret rather than the original sender's.
//!
//! A [`Signer`] is built once per destination from config and [`Signer::sign`] is a pure function of
//! its inputs. This module must not do IO, log or read the clock (the caller chooses the message id
//! and timestamp and writes `webhook-id` and `webhook-timestamp` itself), and must not compute a MAC
//! or encode a signature itself: the scheme definitions live in [`crate::verify`] and its `mac`
//! helpers, so that what we sign is exactly what our own verifier accepts.

use std::fmt;

use http::{HeaderMap, HeaderName};

use crate::verify::mac::{self, Decimal, MacKey};
use crate::verify::{self, Algorithm, Encoding};

/// How deliveries to a destination are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignScheme {
    /// No signature header.
    None,
    /// Standard Webhooks: `webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`
    /// with a `whsec_<base64 key>` secret.
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

/// A sign scheme with its decoded secret.
pub struct Signer {
    scheme: SignScheme,
    /// Present for every scheme but `None`.
    key: Option<MacKey>,
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
        Signer::new(scheme, s.secret.as_ref().map(|s| s.0.as_str())).map_err(|m| KeyError::new("", m))
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
            (SignScheme::StandardWebhooks, Some(secret)) => {
                let key = mac::decode_whsec(secret)
                    .map_err(|why| format!("the signing secret is not a valid whsec_ secret: {why}"))?;
                Some(MacKey::new(Algorithm::Sha256, &key))
            }
            (SignScheme::Github, Some(secret)) => Some(MacKey::new(Algorithm::Sha256, secret.as_bytes())),
            (SignScheme::Hmac { algorithm, prefix, .. }, Some(secret)) => {
                mac::check_prefix(prefix)?;
                Some(MacKey::new(*algorithm, secret.as_bytes()))
            }
        };
        Ok(Signer { scheme, key })
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
                let timestamp = Decimal::new(timestamp);
                let signed = verify::standard_webhooks_signed(msg_id.as_bytes(), timestamp.as_bytes(), body);
                let value = key.tag(&signed).header_value(verify::STANDARD_WEBHOOKS_PREFIX, Encoding::Base64);
                out.insert(verify::WEBHOOK_SIGNATURE, value);
            }
            SignScheme::Github => {
                let value = key.tag(&[body]).header_value(verify::GITHUB_PREFIX, Encoding::Hex);
                out.insert(verify::GITHUB_SIGNATURE, value);
            }
            SignScheme::Hmac { header, encoding, prefix, .. } => {
                out.insert(header.clone(), key.tag(&[body]).header_value(prefix, *encoding));
            }
        }
    }

    pub fn scheme_name(&self) -> &'static str {
        self.scheme.name()
    }
}

#[cfg(test)]
mod tests {
    //! Expected values are Python-computed literals (one-liner next to each), never our own output.

    use std::time::{Duration, UNIX_EPOCH};

    use http::HeaderValue;

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
            (SignScheme::StandardWebhooks, Some(SECRET), "not a valid whsec_ secret: does not start with"),
            (SignScheme::StandardWebhooks, Some("whsec_%%%%"), "not a valid whsec_ secret: the part after"),
            (bad_prefix, Some(SECRET), "signature prefix"),
        ];
        for (scheme, secret, want) in table {
            let name = scheme.name();
            let error = Signer::new(scheme, secret).expect_err(name);
            assert!(error.contains(want), "{name}: {error:?} lacks {want:?}");
            assert!(!error.contains(SECRET), "{name}: {error:?} quotes the secret");
        }
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
