//! The HTTP client of one destination: its own connection pool, rustls for `https://` (webpki roots
//! plus an optional CA file), and the egress guard in its resolver.

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
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::egress::{EgressPolicy, EgressRefused, GuardedResolver, find_refusal};
use super::retry::{AttemptOutcome, parse_retry_after};

/// Most response-body bytes read from a destination (the rest of a larger body is discarded with
/// the connection): responses are only kept for diagnostics.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Trusted roots for outbound TLS, shared by destinations that add no CA file.
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::RootCertStore>);

impl TlsRoots {
    /// The Mozilla roots bundled by `webpki-roots`: no dependence on the host's CA store.
    pub fn webpki() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        TlsRoots(Arc::new(roots))
    }

    /// These roots plus every certificate in a PEM file.
    pub fn with_ca_file(&self, path: &Path) -> Result<Self, String> {
        let mut roots = (*self.0).clone();
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))? {
            let cert = cert.map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("{}: invalid certificate: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no certificates found", path.display()));
        }
        Ok(TlsRoots(Arc::new(roots)))
    }
}

/// A pooled HTTP/1.1 client (HTTPS via rustls) whose connections pass the egress guard.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    policy: Arc<EgressPolicy>,
}

/// What an attempt saw, for logs (and, later, the attempt log of the store).
#[derive(Debug, Clone)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub latency: Duration,
    /// Start of the response body (at most [`MAX_RESPONSE_BYTES`]).
    pub response_body: Bytes,
}

impl HttpClient {
    pub fn new(
        policy: Arc<EgressPolicy>,
        roots: &TlsRoots,
        pool_size: usize,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots.0.clone())
            .with_no_client_auth();
        let https =
            HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(pool_size)
            .build(https);
        Ok(HttpClient { client, policy })
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
        let (outcome, response_body) = match outcome {
            Ok(pair) => pair,
            Err(o) => (o, Bytes::new()),
        };
        AttemptReport { outcome, latency: started.elapsed(), response_body }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<(AttemptOutcome, Bytes), AttemptOutcome> {
        let resp = self.client.request(req).await.map_err(|e| classify_error(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
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
        Ok((AttemptOutcome::from_status(status, retry_after), Bytes::from(kept)))
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

fn classify_error(e: &hyper_util::client::legacy::Error) -> AttemptOutcome {
    if let Some(refused) = find_refusal(e) {
        return AttemptOutcome::Failed { status: None, reason: refused.to_string() };
    }
    let mut reason = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    AttemptOutcome::Retryable { status: None, retry_after: None, throttled: false, reason }
}
