//! TEMPORARY STUB (replaced by the real module).
#![allow(dead_code, unused_variables)]
use crate::verify;
pub enum SignScheme { None, StandardWebhooks, Github, Hmac { header: http::HeaderName, algorithm: verify::Algorithm, encoding: verify::Encoding, prefix: String } }
pub struct Signer;
impl Signer {
    pub fn new(scheme: SignScheme, secret: Option<&str>) -> Result<Signer, String> { Ok(Signer) }
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8], out: &mut http::HeaderMap) {}
    pub fn scheme_name(&self) -> &'static str { "none" }
}
