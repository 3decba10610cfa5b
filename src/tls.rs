//! Trusted roots and PEM files for outbound TLS, shared by the destinations' HTTP clients
//! (`delivery::client`) and the PostgreSQL store's connections: webpki's Mozilla roots plus any
//! CA file, read bounded and parsed with errors in words.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};

/// Most bytes read from one PEM file (`ca_file`, `client_cert`, `client_key`): the whole Mozilla
/// root bundle is about 220 KB, so 1 MiB leaves room while a path naming a log or a device by
/// mistake costs little.
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// Reads a PEM file, bounded by [`MAX_PEM_FILE_BYTES`]; the error names the file.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use crate::config::{ReadError, Regular, read_limited};
    read_limited(path, MAX_PEM_FILE_BYTES, Regular::Preferred, "a PEM file").map_err(|e| match e {
        ReadError::Io(e) => format!("cannot read {}: {e}", path.display()),
        other => format!("{}: {other}", path.display()),
    })
}

/// rustls's PEM errors quote raw bytes; these say what is wrong in words.
pub(crate) fn pem_problem(path: &Path, e: pem::Error) -> String {
    let what = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_string(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".to_string(),
        other => other.to_string(),
    };
    format!("{}: invalid PEM: {what}", path.display())
}

/// Every `CERTIFICATE` block of a PEM text, in order.
pub(crate) fn parse_certificates(path: &Path, text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        CertificateDer::pem_slice_iter(text).collect::<Result<Vec<_>, _>>().map_err(|e| pem_problem(path, e))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found (expected a PEM \"CERTIFICATE\" block)", path.display()));
    }
    Ok(certs)
}

pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusted roots for outbound TLS, shared by destinations that add no CA file.
#[derive(Clone)]
pub struct TlsRoots(pub(crate) Arc<rustls::RootCertStore>);

impl TlsRoots {
    /// The Mozilla roots bundled by `webpki-roots`: no dependence on the host's CA store.
    pub fn webpki() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        TlsRoots(Arc::new(roots))
    }

    /// No roots at all (a private CA's file is then the only trust).
    pub fn empty() -> Self {
        TlsRoots(Arc::new(rustls::RootCertStore::empty()))
    }

    /// These roots plus every certificate of `pem`, the contents of the file at `path`.
    pub fn with_ca_pem(&self, path: &Path, pem: &[u8]) -> Result<Self, String> {
        let mut roots = (*self.0).clone();
        for cert in parse_certificates(path, pem)? {
            roots.add(cert).map_err(|e| format!("{}: invalid certificate: {e}", path.display()))?;
        }
        Ok(TlsRoots(Arc::new(roots)))
    }
}
