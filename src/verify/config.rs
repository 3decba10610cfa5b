//! A source's `verify:` section, compiled: [`Verifier::from_config`].

use http::HeaderName;

use super::{Algorithm, Encoding, Scheme, Verifier};
use crate::config::{AlgorithmName, EncodingName, KeyError, VerifyConfig, VerifySchemeName};

/// Default clock tolerance for timestamped verification schemes.
pub const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

impl From<Option<AlgorithmName>> for Algorithm {
    fn from(a: Option<AlgorithmName>) -> Algorithm {
        match a.unwrap_or_default() {
            AlgorithmName::Sha256 => Algorithm::Sha256,
            AlgorithmName::Sha512 => Algorithm::Sha512,
        }
    }
}

impl From<Option<EncodingName>> for Encoding {
    fn from(e: Option<EncodingName>) -> Encoding {
        match e.unwrap_or_default() {
            EncodingName::Hex => Encoding::Hex,
            EncodingName::Base64 => Encoding::Base64,
        }
    }
}

/// The header `h` names, else `default`; a scheme without a default needs one (key `.header`).
pub(crate) fn header_name(h: Option<&str>, default: Option<&'static str>) -> Result<HeaderName, KeyError> {
    match (h, default) {
        (Some(h), _) => {
            HeaderName::try_from(h).map_err(|_| KeyError::new(".header", format!("\"{h}\" is not a valid header name")))
        }
        (None, Some(d)) => Ok(HeaderName::from_static(d)),
        (None, None) => Err(KeyError::new(".header", "this scheme needs `header:`, the header carrying the signature")),
    }
}

impl Verifier {
    /// Compiles `sources.<name>.verify`; the error's key is relative to it.
    pub fn from_config(v: &VerifyConfig) -> Result<Verifier, KeyError> {
        let scheme = match v.scheme {
            VerifySchemeName::None => Scheme::None,
            VerifySchemeName::Github => Scheme::Github,
            VerifySchemeName::Stripe => Scheme::Stripe,
            VerifySchemeName::Shopify => Scheme::Shopify,
            VerifySchemeName::Slack => Scheme::Slack,
            VerifySchemeName::StandardWebhooks => Scheme::StandardWebhooks,
            VerifySchemeName::Hmac => Scheme::Hmac {
                header: header_name(v.header.as_deref(), None)?,
                algorithm: v.algorithm.into(),
                encoding: v.encoding.into(),
                prefix: v.prefix.clone().unwrap_or_default(),
            },
            VerifySchemeName::Basic => Scheme::Basic,
            VerifySchemeName::ApiKey => Scheme::ApiKey { header: header_name(v.header.as_deref(), Some("x-api-key"))? },
        };
        let hmac_only =
            [(v.algorithm.is_some(), "algorithm"), (v.encoding.is_some(), "encoding"), (v.prefix.is_some(), "prefix")];
        for (set, key) in hmac_only {
            if set && v.scheme != VerifySchemeName::Hmac {
                return Err(KeyError::new(format!(".{key}"), "only the hmac scheme takes this key"));
            }
        }
        if v.header.is_some() && !matches!(v.scheme, VerifySchemeName::Hmac | VerifySchemeName::ApiKey) {
            return Err(KeyError::new(".header", "only the hmac and api-key schemes take this key"));
        }
        let timestamped =
            matches!(v.scheme, VerifySchemeName::Stripe | VerifySchemeName::Slack | VerifySchemeName::StandardWebhooks);
        if v.tolerance.is_some() && !timestamped {
            return Err(KeyError::new(
                ".tolerance",
                "only timestamped schemes (stripe, slack, standard-webhooks) take a tolerance",
            ));
        }
        let secrets: Vec<String> = v.secret.iter().chain(v.secrets.iter()).map(|s| s.0.clone()).collect();
        if v.scheme == VerifySchemeName::None && !secrets.is_empty() {
            return Err(KeyError::new(".secret", "scheme none takes no secret"));
        }
        let tolerance = v.tolerance.map(|d| d.0).unwrap_or(DEFAULT_TOLERANCE);
        Verifier::new(scheme, &secrets, tolerance).map_err(|m| KeyError::new("", m))
    }
}
