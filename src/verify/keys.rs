//! Public keys of asymmetric signatures: ed25519 (Standard Webhooks `v1a`, `whpk_` keys) and ECDSA
//! P-256 (SendGrid), with the private halves `hookyard send` and the tests sign with. The curves
//! are RustCrypto's and dalek's; nothing here is hand-rolled.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};

/// The prefix of a Standard Webhooks ed25519 public key; the rest is base64 of its 32 bytes.
pub const WHPK_PREFIX: &str = "whpk_";
/// The prefix of a Standard Webhooks ed25519 private key (the 32-byte seed, base64).
pub const WHSK_PREFIX: &str = "whsk_";

pub struct Ed25519Public(ed25519_dalek::VerifyingKey);

impl Ed25519Public {
    /// `whpk_<base64 of 32 bytes>`; the error completes "secret N ...".
    pub fn decode_whpk(secret: &str) -> Result<Ed25519Public, String> {
        let encoded = secret.strip_prefix(WHPK_PREFIX).unwrap_or(secret);
        let bytes = BASE64.decode(encoded).map_err(|e| format!("is not a valid whpk_ key: not base64 ({e})"))?;
        let bytes: [u8; 32] =
            bytes.try_into().map_err(|_| "is not a valid whpk_ key: an ed25519 public key is 32 bytes".to_owned())?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Ed25519Public)
            .map_err(|_| "is not a valid whpk_ key: not a point on the curve".to_owned())
    }

    /// A `v1a` signature: base64 of 64 bytes.
    pub fn decode_signature(text: &str) -> Option<ed25519_dalek::Signature> {
        let mut bytes = [0u8; 64];
        if BASE64.decode_slice(text, &mut bytes).ok()? != 64 {
            return None;
        }
        Some(ed25519_dalek::Signature::from_bytes(&bytes))
    }

    /// Strict verification (no malleable signatures, no small-order keys).
    pub fn verifies(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

pub struct P256Public(p256::ecdsa::VerifyingKey);

impl P256Public {
    /// A PEM `PUBLIC KEY`, or base64 of its DER (how SendGrid shows its verification key); the
    /// error completes "secret N ...".
    pub fn decode(secret: &str) -> Result<P256Public, String> {
        let key = if secret.trim_start().starts_with("-----BEGIN") {
            p256::PublicKey::from_public_key_pem(secret.trim()).map_err(|e| e.to_string())
        } else {
            BASE64
                .decode(secret.trim())
                .map_err(|e| format!("not base64 ({e})"))
                .and_then(|der| p256::PublicKey::from_public_key_der(&der).map_err(|e| e.to_string()))
        };
        key.map(|k| P256Public(k.into()))
            .map_err(|why| format!("is not an ECDSA P-256 public key (PEM, or base64 of DER): {why}"))
    }

    /// Base64 of a DER signature; high-S signatures are accepted as their low-S twins, as
    /// SendGrid's own libraries do.
    pub fn decode_signature(value: &[u8]) -> Option<p256::ecdsa::Signature> {
        let der = BASE64.decode(value).ok()?;
        let sig = p256::ecdsa::Signature::from_der(&der).ok()?;
        Some(sig.normalize_s().unwrap_or(sig))
    }

    pub fn verifies(&self, message: &[u8], signature: &p256::ecdsa::Signature) -> bool {
        self.0.verify(message, signature).is_ok()
    }
}

/// A private key for signing as an asymmetric provider would (`hookyard send --private-key`).
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    P256(p256::ecdsa::SigningKey),
}

impl PrivateKey {
    /// `whsk_<base64>` of an ed25519 key: its 32-byte seed, or the 64 bytes seed + public key
    /// (libsodium's layout; the public half must match); or a PKCS#8 PEM P-256 key.
    pub fn decode(text: &str) -> Result<PrivateKey, String> {
        let text = text.trim();
        if text.starts_with(WHSK_PREFIX) {
            return Ok(PrivateKey::Ed25519(decode_whsk(text)?));
        }
        p256::ecdsa::SigningKey::from_pkcs8_pem(text)
            .map(PrivateKey::P256)
            .map_err(|e| format!("neither whsk_… nor a PKCS#8 PEM P-256 key: {e}"))
    }

    /// A new ed25519 key from the operating system's randomness.
    pub fn generate_ed25519() -> Result<PrivateKey, String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness from the operating system: {e}"))?;
        Ok(PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// `whsk_<base64 seed>` of an ed25519 key.
    pub fn whsk(&self) -> Option<String> {
        match self {
            PrivateKey::Ed25519(k) => Some(format!("{WHSK_PREFIX}{}", BASE64.encode(k.to_bytes()))),
            PrivateKey::P256(_) => None,
        }
    }

    /// The `v1a` signature (base64) of `message`, for ed25519 keys.
    pub fn sign_v1a(&self, message: &[u8]) -> Option<String> {
        match self {
            PrivateKey::Ed25519(k) => Some(sign_v1a(k, &[message])),
            PrivateKey::P256(_) => None,
        }
    }

    /// Base64 of a DER ECDSA signature of `message`, for P-256 keys.
    pub fn sign_ecdsa(&self, message: &[u8]) -> Option<String> {
        match self {
            PrivateKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                Some(BASE64.encode(sig.to_der().as_bytes()))
            }
            PrivateKey::Ed25519(_) => None,
        }
    }

    /// The public half as a secret for `verify.secret`: `whpk_…`, or base64 DER.
    pub fn public_secret(&self) -> String {
        use p256::pkcs8::EncodePublicKey;
        match self {
            PrivateKey::Ed25519(k) => format!("{WHPK_PREFIX}{}", BASE64.encode(k.verifying_key().to_bytes())),
            PrivateKey::P256(k) => {
                let der = p256::PublicKey::from(k.verifying_key()).to_public_key_der().expect("a P-256 key encodes");
                BASE64.encode(der.as_bytes())
            }
        }
    }
}

/// An ed25519 signing key `whsk_<base64>`: the 32-byte seed, or seed + public key (64 bytes).
/// The error never quotes the key.
pub fn decode_whsk(text: &str) -> Result<ed25519_dalek::SigningKey, String> {
    let encoded =
        text.trim().strip_prefix(WHSK_PREFIX).ok_or_else(|| format!("does not start with {WHSK_PREFIX:?}"))?;
    let bytes = BASE64.decode(encoded).map_err(|e| format!("the whsk_ key is not base64 ({e})"))?;
    let seed: [u8; 32] =
        bytes.get(..32).and_then(|s| s.try_into().ok()).filter(|_| matches!(bytes.len(), 32 | 64)).ok_or_else(
            || format!("a whsk_ key is 32 bytes (the seed) or 64 (seed and public key), not {}", bytes.len()),
        )?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    if bytes.len() == 64 && key.verifying_key().as_bytes() != &bytes[32..] {
        return Err("the whsk_ key's public half does not belong to its seed".to_owned());
    }
    Ok(key)
}

/// The `v1a` signature (base64) of `parts` joined, with an ed25519 key.
pub fn sign_v1a(key: &ed25519_dalek::SigningKey, parts: &[&[u8]]) -> String {
    BASE64.encode(key.sign(&parts.concat()).to_bytes())
}
