//! TEMPORARY STUB (replaced by the real module).
#![allow(dead_code, unused_variables)]
use std::time::{Duration, SystemTime};
use http::{HeaderMap, HeaderName, HeaderValue};
pub enum Algorithm { Sha256, Sha512 }
pub enum Encoding { Hex, Base64 }
pub enum Scheme { None, Github, Stripe, Shopify, Slack, StandardWebhooks,
    Hmac { header: HeaderName, algorithm: Algorithm, encoding: Encoding, prefix: String }, Basic, ApiKey { header: HeaderName } }
pub struct Verifier;
#[derive(Debug, thiserror::Error)]
pub enum VerifyError { #[error("missing header {0}")] MissingHeader(String), #[error("mismatch")] Mismatch }
impl VerifyError { pub fn reason(&self) -> &'static str { "mismatch" } }
impl Verifier {
    pub fn new(scheme: Scheme, secrets: &[String], tolerance: Duration) -> Result<Verifier, String> { Ok(Verifier) }
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), VerifyError> { Ok(()) }
    pub fn scheme_name(&self) -> &'static str { "none" }
    pub fn provider_headers(&self, body: &[u8], now: SystemTime, msg_id: &str) -> Vec<(HeaderName, HeaderValue)> { vec![] }
}
