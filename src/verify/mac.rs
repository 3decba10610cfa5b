//! HMAC and encoding helpers shared by inbound verification ([`crate::verify`]) and outbound signing
//! ([`crate::sign`]), so that both sides compute a scheme's signature with the same code.
//!
//! Computing, encoding, decoding and comparing a tag works on stack buffers and never allocates; only
//! building a `HeaderValue` does. Nothing here may compare a MAC with `==`: [`Tag::matches`] is the
//! constant-time comparison, and it is the only one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::{Algorithm, Encoding};

/// The longest tag any [`Algorithm`] produces: SHA-512's 64 bytes.
const MAX_TAG_LEN: usize = 64;
/// The longest encoded tag: 128 hex digits (base64 of 64 bytes takes 88 characters).
const MAX_ENCODED_LEN: usize = 2 * MAX_TAG_LEN;

/// The prefix that marks a Standard Webhooks secret; the rest is the base64 key.
const WHSEC_PREFIX: &str = "whsec_";

impl Algorithm {
    /// Length in bytes of this algorithm's HMAC output.
    pub(crate) const fn output_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// An HMAC key, absorbed into the hash state once when the verifier or signer is built, so that each
/// request only clones the keyed state instead of re-hashing the key.
#[derive(Clone)]
pub(crate) enum MacKey {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha512(Hmac<Sha512>),
}

impl fmt::Debug for MacKey {
    /// Names the algorithm only: the keyed state is derived from a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MacKey::Sha1(_) => f.write_str("MacKey(Sha1)"),
            MacKey::Sha256(_) => f.write_str("MacKey(Sha256)"),
            MacKey::Sha512(_) => f.write_str("MacKey(Sha512)"),
        }
    }
}

impl MacKey {
    pub(crate) fn new(algorithm: Algorithm, key: &[u8]) -> MacKey {
        // HMAC accepts keys of every length (longer ones are hashed first), so `new_from_slice`
        // cannot fail here; the `Result` exists for fixed-key-size MACs.
        const ANY_LEN: &str = "HMAC accepts keys of any length";
        match algorithm {
            Algorithm::Sha1 => MacKey::Sha1(Hmac::new_from_slice(key).expect(ANY_LEN)),
            Algorithm::Sha256 => MacKey::Sha256(Hmac::new_from_slice(key).expect(ANY_LEN)),
            Algorithm::Sha512 => MacKey::Sha512(Hmac::new_from_slice(key).expect(ANY_LEN)),
        }
    }

    /// The HMAC of the concatenation of `parts`. Taking the signed string in parts lets schemes that
    /// sign "{t}.{body}" avoid building it.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> Tag {
        fn run<M: Mac + Clone>(key: &M, parts: &[&[u8]]) -> Tag {
            let mut mac = key.clone();
            for part in parts {
                mac.update(part);
            }
            let out = mac.finalize().into_bytes();
            let mut tag = Tag { bytes: [0; MAX_TAG_LEN], len: out.len() };
            tag.bytes[..out.len()].copy_from_slice(&out);
            tag
        }
        match self {
            MacKey::Sha1(key) => run(key, parts),
            MacKey::Sha256(key) => run(key, parts),
            MacKey::Sha512(key) => run(key, parts),
        }
    }
}

/// A MAC, either computed by us or decoded from a request, held on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Tag {
    bytes: [u8; MAX_TAG_LEN],
    len: usize,
}

impl Tag {
    /// Decodes a presented signature, returning `None` unless it is valid `encoding` of exactly
    /// `len` bytes. Hex digits may be in either case.
    pub(crate) fn decode(encoding: Encoding, text: &[u8], len: usize) -> Option<Tag> {
        let mut tag = Tag { bytes: [0; MAX_TAG_LEN], len };
        let out = tag.bytes.get_mut(..len)?;
        match encoding {
            Encoding::Hex => {
                // `decode_to_slice` insists on `text.len() == 2 * out.len()`.
                hex::decode_to_slice(text, out).ok()?;
            }
            Encoding::Base64 => {
                // Decoding into a slice of exactly `len` bytes fails if the text holds more.
                if BASE64.decode_slice(text, out).ok()? != len {
                    return None;
                }
            }
        }
        Some(tag)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Constant-time comparison with a presented tag (lengths may differ; that is not secret).
    pub(crate) fn matches(&self, presented: &Tag) -> bool {
        self.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// Encodes into `buf`, returning the ASCII text written.
    fn encode<'b>(&self, encoding: Encoding, buf: &'b mut [u8; MAX_ENCODED_LEN]) -> &'b [u8] {
        const FITS: &str = "the buffer holds the longest encoded tag";
        let n = match encoding {
            Encoding::Hex => {
                let n = 2 * self.len;
                hex::encode_to_slice(self.as_bytes(), &mut buf[..n]).expect(FITS);
                n
            }
            Encoding::Base64 => BASE64.encode_slice(self.as_bytes(), &mut buf[..]).expect(FITS),
        };
        &buf[..n]
    }

    /// `prefix` followed by the encoded tag, as a header value: the one allocation of signing.
    ///
    /// `prefix` must have passed [`check_prefix`] (our own prefixes are literals that do).
    pub(crate) fn header_value(&self, prefix: &str, encoding: Encoding) -> HeaderValue {
        let mut buf = [0; MAX_ENCODED_LEN];
        let encoded = self.encode(encoding, &mut buf);
        let mut value = Vec::with_capacity(prefix.len() + encoded.len());
        value.extend_from_slice(prefix.as_bytes());
        value.extend_from_slice(encoded);
        HeaderValue::try_from(value).expect("a checked prefix followed by hex or base64 is a valid header value")
    }
}

/// A configured signature prefix must be sendable in a header (the encoded tag always is).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    match HeaderValue::from_str(prefix) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("the signature prefix {prefix:?} cannot appear in a header value")),
    }
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by the base64 key. The error says what is
/// wrong without repeating the secret.
pub(crate) fn decode_whsec(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(WHSEC_PREFIX) else {
        return Err(format!("does not start with {WHSEC_PREFIX:?}"));
    };
    let key = BASE64.decode(encoded).map_err(|e| format!("the part after {WHSEC_PREFIX:?} is not base64 ({e})"))?;
    if key.is_empty() {
        return Err(format!("the key after {WHSEC_PREFIX:?} is empty"));
    }
    Ok(key)
}

/// Plain base64 encoding, for the few values that are built once (Basic credentials).
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// SHA-256 of the base64-decoded `text`, decoded in quads on the stack so credentials of any length
/// need no allocation; `None` unless `text` is padded standard base64.
pub(crate) fn sha256_of_base64(text: &[u8]) -> Option<[u8; 32]> {
    use sha2::Digest as _;

    /// Input characters decoded per step; a multiple of 4 so every chunk but the last is whole quads.
    const CHUNK: usize = 64;
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = [0; CHUNK / 4 * 3];
    let mut chunks = text.chunks(CHUNK).peekable();
    while let Some(chunk) = chunks.next() {
        // Padding is only allowed at the very end; each chunk alone would accept it.
        if chunks.peek().is_some() && chunk.contains(&b'=') {
            return None;
        }
        let n = BASE64.decode_slice(chunk, &mut buf).ok()?;
        hasher.update(&buf[..n]);
    }
    Some(hasher.finalize().into())
}

/// SHA-256 of raw bytes: keys and credentials are compared as digests so that the comparison is
/// constant time and does not reveal the configured secret's length.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(bytes).into()
}

/// Constant-time equality of two digests.
pub(crate) fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The decimal text of a Unix timestamp, on the stack, for signed strings and headers.
pub(crate) struct Decimal {
    buf: [u8; 20],
    start: usize,
}

impl Decimal {
    pub(crate) fn new(n: i64) -> Decimal {
        // i64::MIN is the longest: a sign and 19 digits.
        let mut d = Decimal { buf: [0; 20], start: 20 };
        let mut rest = n.unsigned_abs();
        loop {
            d.start -= 1;
            d.buf[d.start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            d.start -= 1;
            d.buf[d.start] = b'-';
        }
        d
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).expect("decimal digits are a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_like_display() {
        for n in [0, 7, -7, 1_700_000_000, i64::MAX, i64::MIN] {
            assert_eq!(Decimal::new(n).as_bytes(), n.to_string().as_bytes(), "{n}");
        }
    }

    #[test]
    fn sha256_of_base64_matches_whole_decoding() {
        let long = "user:".repeat(40);
        for plain in ["", "a", "ab", "abc", "alice:wonderland", long.as_str()] {
            let text = BASE64.encode(plain);
            assert_eq!(sha256_of_base64(text.as_bytes()), Some(sha256(plain.as_bytes())), "{plain}");
        }
        // Padding in the middle, a missing pad, and a stray symbol are all rejected.
        let middle_pad = format!("YQ=={}", "A".repeat(64));
        for bad in [middle_pad.as_str(), "YQ=", "YW!j"] {
            assert_eq!(sha256_of_base64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn decode_rejects_wrong_lengths() {
        let hex64 = "ab".repeat(32);
        assert!(Tag::decode(Encoding::Hex, hex64.as_bytes(), 32).is_some());
        assert!(Tag::decode(Encoding::Hex, hex64.as_bytes(), 64).is_none());
        assert!(Tag::decode(Encoding::Hex, &hex64.as_bytes()[2..], 32).is_none());
        let b64 = BASE64.encode([1u8; 32]);
        assert!(Tag::decode(Encoding::Base64, b64.as_bytes(), 32).is_some());
        assert!(Tag::decode(Encoding::Base64, b64.as_bytes(), 31).is_none());
        assert!(Tag::decode(Encoding::Base64, b64.as_bytes(), 64).is_none());
    }
}
