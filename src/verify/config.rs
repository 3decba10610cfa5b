//! A source's `verify:` section, compiled: [`Verifier::from_config`].

use http::HeaderName;

use super::catalogue::{self, Handshake};
use super::{Algorithm, Encoding, Options, Scheme, Verifier};
use crate::config::{AlgorithmName, EncodingName, KeyError, VerifyConfig};

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
        let name = v.scheme.as_str();
        let scheme = match name {
            "none" => Scheme::None,
            "hmac" => Scheme::Hmac {
                header: header_name(v.header.as_deref(), None)?,
                algorithm: v.algorithm.into(),
                encoding: v.encoding.into(),
                prefix: v.prefix.clone().unwrap_or_default(),
            },
            "basic" => Scheme::Basic,
            "api-key" => Scheme::ApiKey { header: header_name(v.header.as_deref(), Some("x-api-key"))? },
            _ => match catalogue::preset(name) {
                Some(p) => Scheme::Preset(p),
                None => unreachable!("config checked that {name} is one of SCHEME_NAMES"),
            },
        };
        let hmac_only =
            [(v.algorithm.is_some(), "algorithm"), (v.encoding.is_some(), "encoding"), (v.prefix.is_some(), "prefix")];
        for (set, key) in hmac_only {
            if set && name != "hmac" {
                return Err(KeyError::new(format!(".{key}"), "only the hmac scheme takes this key"));
            }
        }
        if v.header.is_some() && !matches!(name, "hmac" | "api-key") {
            return Err(KeyError::new(".header", "only the hmac and api-key schemes take this key"));
        }
        if v.tolerance.is_some() && !scheme.timestamped() {
            let timestamped: Vec<&str> =
                catalogue::PRESETS.iter().filter(|p| p.tolerance.is_some()).map(|p| p.name).collect();
            return Err(KeyError::new(
                ".tolerance",
                format!("only timestamped schemes ({}) take a tolerance", timestamped.join(", ")),
            ));
        }
        if let Scheme::Preset(p) = &scheme {
            if v.url.is_some() && !p.needs_url {
                return Err(KeyError::new(".url", format!("scheme {name} takes no url (it does not sign one)")));
            }
            if v.url.is_none() && p.needs_url {
                return Err(KeyError::new(
                    ".url",
                    format!(
                        "scheme {name} signs the public URL the provider calls: give it here (e.g. https://hooks.example.com{})",
                        "/path"
                    ),
                ));
            }
            if v.verify_token.is_some() && p.handshake != Some(Handshake::MetaHub) {
                return Err(KeyError::new(
                    ".verify_token",
                    format!("scheme {name} takes no verify_token (only meta does)"),
                ));
            }
            if v.verify_token.is_none() && p.handshake == Some(Handshake::MetaHub) {
                return Err(KeyError::new(
                    ".verify_token",
                    "scheme meta needs the token its hub.challenge handshake must carry",
                ));
            }
        } else if v.url.is_some() {
            return Err(KeyError::new(".url", format!("scheme {name} takes no url")));
        } else if v.verify_token.is_some() {
            return Err(KeyError::new(".verify_token", format!("scheme {name} takes no verify_token")));
        }
        let secrets: Vec<String> = v.secret.iter().chain(v.secrets.iter()).map(|s| s.0.clone()).collect();
        if name == "none" && !secrets.is_empty() {
            return Err(KeyError::new(".secret", "scheme none takes no secret"));
        }
        let options = Options {
            tolerance: v.tolerance.map(|d| d.0),
            url: v.url.clone(),
            verify_token: v.verify_token.as_ref().map(|t| t.0.clone()),
        };
        Verifier::with_options(scheme, &secrets, options).map_err(|m| KeyError::new("", m))
    }
}
