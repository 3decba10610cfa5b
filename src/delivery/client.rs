//! The HTTP client of one destination: its own connection pool, rustls for `https://` (webpki roots
//! plus an optional CA file, and an optional client certificate for mutual TLS), and the egress
//! guard in its resolver.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::{self, PemObject};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{AlertDescription, InconsistentKeys};

use super::egress::{EgressPolicy, EgressRefused, GuardedResolver, find_refusal};
use super::retry::{AttemptOutcome, parse_retry_after};
pub use crate::tls::{TlsRoots, read_pem_file};
use crate::tls::{crypto_provider, parse_certificates, pem_problem};

/// Most response-body bytes read from a destination (the rest of a larger body is discarded with
/// the connection): responses are only kept for diagnostics.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What an exchange got: the outcome, the start of the body, the headers.
type Exchanged = (AttemptOutcome, Bytes, Vec<(String, String)>);

/// The certificate chain and private key a destination's client presents when the server asks
/// for one (mutual TLS). Checked when built, so `check` finds a key that is not the certificate's.
#[derive(Clone)]
pub struct ClientIdentity(Arc<CertifiedKey>);

/// Which of the two files of a [`ClientIdentity`] is at fault, and why (the message names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

impl ClientIdentity {
    /// The chain in `cert_pem` (read from `cert_path`) with the key in `key_pem` (from `key_path`);
    /// a problem in each file is reported.
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Self, Vec<IdentityError>> {
        let chain = parse_certificates(cert_path, cert_pem).map_err(IdentityError::Cert);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            IdentityError::Key(match e {
                pem::Error::NoItemsFound => format!(
                    "{}: no private key found (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
                    key_path.display()
                ),
                other => pem_problem(key_path, other),
            })
        });
        let (chain, key) = match (chain, key) {
            (Ok(chain), Ok(key)) => (chain, key),
            (chain, key) => return Err(chain.err().into_iter().chain(key.err()).collect()),
        };
        let key = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| vec![IdentityError::Key(format!("{}: unusable private key: {e}", key_path.display()))])?;
        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            // rustls cannot tell for some key types; the handshake will
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(vec![IdentityError::Key(format!(
                    "{}: the key does not match the certificate in {}",
                    key_path.display(),
                    cert_path.display()
                ))]);
            }
            Err(e) => {
                return Err(vec![IdentityError::Cert(format!("{}: invalid certificate: {e}", cert_path.display()))]);
            }
        }
        Ok(ClientIdentity(Arc::new(certified)))
    }
}

/// A pooled HTTP/1.1 client (HTTPS via rustls) whose connections pass the egress guard.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    policy: Arc<EgressPolicy>,
    /// Whether a client certificate is configured: it decides what a TLS alert is blamed on.
    has_identity: bool,
}

/// The connection pools of a destination whose URL is a template: one [`HttpClient`] per host
/// (scheme, host, port), at most `max` of them; the least recently used one is dropped (its idle
/// connections close) when another host comes. Bounded memory and sockets however many hosts the
/// events name.
pub struct HostPools {
    max: usize,
    make: Box<dyn Fn() -> Result<HttpClient, String> + Send + Sync>,
    pools: std::sync::Mutex<HostLru>,
}

#[derive(Default)]
struct HostLru {
    tick: u64,
    clients: std::collections::HashMap<String, (HttpClient, u64)>,
}

impl HostPools {
    pub fn new(
        max: usize,
        policy: Arc<EgressPolicy>,
        roots: &TlsRoots,
        identity: Option<&ClientIdentity>,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<HostPools, String> {
        let (roots, identity) = (roots.clone(), identity.cloned());
        let make = move || HttpClient::new(policy.clone(), &roots, identity.as_ref(), pool_size, connect_timeout);
        make()?; // the TLS setup is checked once, when the config is built
        Ok(HostPools { max: max.max(1), make: Box::new(make), pools: Default::default() })
    }

    /// The client of `uri`'s host, made (and the least recently used dropped) if need be.
    pub fn client(&self, uri: &http::Uri) -> Result<HttpClient, String> {
        let host = format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map_or("", |a| a.as_str()));
        let mut lru = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((client, used)) = lru.clients.get_mut(&host) {
            *used = tick;
            return Ok(client.clone());
        }
        if lru.clients.len() >= self.max
            && let Some(oldest) = lru.clients.iter().min_by_key(|(_, (_, used))| *used).map(|(h, _)| h.clone())
        {
            lru.clients.remove(&oldest);
        }
        let client = (self.make)()?;
        lru.clients.insert(host, (client.clone(), tick));
        Ok(client)
    }

    /// The hosts with a pool, least recently used first.
    pub fn hosts(&self) -> Vec<String> {
        let lru = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mut hosts: Vec<(&String, u64)> = lru.clients.iter().map(|(h, (_, used))| (h, *used)).collect();
        hosts.sort_by_key(|(_, used)| *used);
        hosts.into_iter().map(|(h, _)| h.clone()).collect()
    }
}

/// What an attempt saw, for logs (and, later, the attempt log of the store).
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub latency: Duration,
    /// Start of the response body (at most [`MAX_RESPONSE_BYTES`]).
    pub response_body: Bytes,
    /// The response's headers (at most [`MAX_RESPONSE_HEADERS`]): a later step of a chain may
    /// read them.
    pub response_headers: Vec<(String, String)>,
}

/// Most response headers an attempt keeps.
pub const MAX_RESPONSE_HEADERS: usize = 64;

impl AttemptReport {
    /// An attempt that was not made: no request left, for `reason`.
    pub fn refused(reason: String) -> AttemptReport {
        AttemptReport {
            outcome: AttemptOutcome::Failed { status: None, reason },
            latency: Duration::ZERO,
            response_body: Bytes::new(),
            response_headers: Vec::new(),
        }
    }
}

impl HttpClient {
    pub fn new(
        policy: Arc<EgressPolicy>,
        roots: &TlsRoots,
        identity: Option<&ClientIdentity>,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots.0.clone());
        let tls = match identity {
            Some(id) => tls.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(id.0.clone()))),
            None => tls.with_no_client_auth(),
        };
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(pool_size)
            .build(https);
        Ok(HttpClient { client, policy, has_identity: identity.is_some() })
    }

    /// Sends one request with a deadline covering connect, response head and body.
    pub async fn send(&self, req: Request<Full<Bytes>>, timeout: Duration) -> AttemptReport {
        let started = Instant::now();
        let outcome = match self.check_literal(&req) {
            Err(refused) => Err(AttemptOutcome::Failed { status: None, reason: refused.to_string() }),
            Ok(()) => match tokio::time::timeout(timeout, self.exchange(req)).await {
                Err(_) => Err(AttemptOutcome::Retryable {
                    status: None,
                    retry_after: None,
                    throttled: true,
                    reason: format!("timed out after {} ms", timeout.as_millis()),
                }),
                Ok(r) => r,
            },
        };
        let (outcome, response_body, response_headers) = match outcome {
            Ok(got) => got,
            Err(o) => (o, Bytes::new(), Vec::new()),
        };
        AttemptReport { outcome, latency: started.elapsed(), response_body, response_headers }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Exchanged, AttemptOutcome> {
        let resp = self.client.request(req).await.map_err(|e| classify_error(&e, self.has_identity))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let headers = resp
            .headers()
            .iter()
            .take(MAX_RESPONSE_HEADERS)
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(data) = f.data_ref() {
                        let room = MAX_RESPONSE_BYTES - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                        if kept.len() >= MAX_RESPONSE_BYTES {
                            break; // dropping the body closes the connection instead of reading on
                        }
                    }
                }
                Err(_) => break, // the status already tells the outcome
            }
        }
        Ok((AttemptOutcome::from_status(status, retry_after), Bytes::from(kept), headers))
    }

    /// IP-literal URLs do not go through the resolver, so they are checked here.
    fn check_literal(&self, req: &Request<Full<Bytes>>) -> Result<(), EgressRefused> {
        let Some(host) = req.uri().host() else {
            return Ok(());
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => self.policy.check(ip).map_err(|kind| EgressRefused { host: host.to_string(), ip, kind }),
            Err(_) => Ok(()),
        }
    }
}

fn classify_error(e: &hyper_util::client::legacy::Error, has_identity: bool) -> AttemptOutcome {
    if let Some(refused) = find_refusal(e) {
        return AttemptOutcome::Failed { status: None, reason: refused.to_string() };
    }
    let mut reason = e.to_string();
    let mut alert = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        // rustls errors reach here inside an io::Error, whose `source` skips them
        if let Some(rustls::Error::AlertReceived(a)) =
            s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|e| e.downcast_ref())
        {
            alert = Some(*a);
        }
        source = s.source();
    }
    if let Some(hint) = alert.and_then(|a| client_certificate_hint(a, has_identity)) {
        reason.push_str(hint);
    }
    AttemptOutcome::Retryable { status: None, retry_after: None, throttled: false, reason }
}

/// What a server's TLS alert says about our client certificate, when it says something: the
/// alert names only a code, and an operator has to know which setting it points at. Retried all
/// the same: fixing the files and reloading lets the delivery through.
fn client_certificate_hint(alert: AlertDescription, has_identity: bool) -> Option<&'static str> {
    use AlertDescription as A;
    match alert {
        A::CertificateRequired if !has_identity => {
            Some(" (the destination requires a client certificate: set tls.client_cert and tls.client_key)")
        }
        A::CertificateRequired
        | A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
            if has_identity =>
        {
            Some(" (the destination refused the client certificate in tls.client_cert)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{ClientIdentity, IdentityError};

    /// Throw-away keys and self-signed certificates made by `openssl` (`ecparam -genkey -noout`,
    /// `genrsa -traditional`), for the key formats rcgen does not write.
    fn fixture(name: &str) -> (std::path::PathBuf, Vec<u8>) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls").join(name);
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    fn identity(cert: &str, key: &str) -> Result<ClientIdentity, Vec<IdentityError>> {
        let ((cp, c), (kp, k)) = (fixture(cert), fixture(key));
        ClientIdentity::from_pem(&cp, &c, &kp, &k)
    }

    #[test]
    fn host_pools_keep_the_most_recently_used_hosts() {
        let policy = std::sync::Arc::new(super::EgressPolicy::new(Vec::new()));
        let pools =
            super::HostPools::new(2, policy, &super::TlsRoots::webpki(), None, 4, std::time::Duration::from_secs(1))
                .unwrap();
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        pools.client(&uri("https://a.example.com/x")).unwrap();
        pools.client(&uri("https://b.example.com/y")).unwrap();
        pools.client(&uri("https://a.example.com/z")).unwrap(); // a is used again: b is the oldest
        pools.client(&uri("https://c.example.com:8443/")).unwrap();
        assert_eq!(pools.hosts(), ["https://a.example.com", "https://c.example.com:8443"]);
        pools.client(&uri("http://a.example.com/")).unwrap(); // another scheme is another pool
        assert_eq!(pools.hosts(), ["https://c.example.com:8443", "http://a.example.com"]);
    }

    #[test]
    fn accepts_sec1_and_pkcs1_keys() {
        assert!(identity("ec.pem", "ec-sec1.key").is_ok(), "SEC1 (EC PRIVATE KEY)");
        assert!(identity("rsa.pem", "rsa-pkcs1.key").is_ok(), "PKCS#1 (RSA PRIVATE KEY)");
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (cert, _) = fixture("ec.pem");
        let (key, _) = fixture("rsa-pkcs1.key");
        let want = format!("{}: the key does not match the certificate in {}", key.display(), cert.display());
        assert_eq!(identity("ec.pem", "rsa-pkcs1.key").err(), Some(vec![IdentityError::Key(want)]));
    }
}
