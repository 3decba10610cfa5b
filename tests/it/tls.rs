//! Outbound HTTPS with real TLS: a destination served by a rustls server on loopback with a
//! certificate from a throw-away CA, trusted through `tls.ca_file`; the same destination without
//! the CA is refused (the webpki roots do not know it). Client certificates (mTLS): a server that
//! requires one signed by its client CA sees the one in `tls.client_cert`, refuses a gateway that
//! has none or one from another CA, and sees a rotated one after a reload; `check` reports
//! missing, non-PEM, mismatched and half-given client certificate files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{App, hookyard, run_cli};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

/// A throw-away certificate authority.
struct TestCa(CertifiedIssuer<'static, KeyPair>);

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        TestCa(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn der(&self) -> CertificateDer<'static> {
        self.0.der().clone()
    }

    /// A client certificate with common name `cn`: (certificate PEM, PKCS#8 key PEM, certificate DER).
    fn client(&self, cn: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// What the TLS server saw of one request.
struct Seen {
    method: http::Method,
    path: String,
    body: Bytes,
    /// The end-entity certificate the client presented (DER), if any.
    client_cert: Option<Vec<u8>>,
}

/// A TLS server for `localhost` signed by its own CA (whose PEM it returns) that reports each
/// request, and each handshake it refused with rustls's reason. With `client_ca`, it requires a
/// client certificate signed by that CA.
struct TlsSink {
    ca_pem: String,
    port: u16,
    seen: mpsc::UnboundedReceiver<Seen>,
    refused: mpsc::UnboundedReceiver<String>,
}

async fn tls_sink(client_ca: Option<CertificateDer<'static>>) -> TlsSink {
    let ca = TestCa::new("test server CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &ca.0).unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, seen) = mpsc::unbounded_channel();
    let (refused_tx, refused) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let refused_tx = refused_tx.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = refused_tx.send(e.to_string());
                        return;
                    }
                };
                let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let client_cert = client_cert.clone();
                    async move {
                        let method = req.method().clone();
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(Seen { method, path, body, client_cert });
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    TlsSink { ca_pem: ca.pem(), port, seen, refused }
}

/// A gateway config with one unsigned source and one destination on `https://localhost:{port}`
/// with `tls` as its TLS settings (YAML flow mapping contents).
fn config(port: u16, tls: &str) -> String {
    let tls = if tls.is_empty() { String::new() } else { format!("tls: {{ {tls} }}") };
    format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8", "::1/128"] }}
sources:
  s: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  secure:
    url: "https://localhost:{port}/hook"
    sign: {{ scheme: none }}
    retry: {{ schedule: [100ms], jitter: 0 }}
    {tls}
routes:
  - {{ name: all, source: s, to: [secure] }}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn next_seen(sink: &mut TlsSink) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), sink.seen.recv()).await.expect("a delivery over TLS").unwrap()
}

async fn next_refusal(sink: &mut TlsSink) -> String {
    tokio::time::timeout(Duration::from_secs(10), sink.refused.recv()).await.expect("a refused handshake").unwrap()
}

#[tokio::test]
async fn delivers_over_https_to_a_destination_trusted_by_ca_file() {
    let mut sink = tls_sink(None).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &sink.ca_pem);
    let gw = App::start_yaml(&config(sink.port, &format!("ca_file: \"{ca}\""))).await;
    let answer = gw.post("/in", &[("content-type", "application/json")], "{\"tls\":true}").await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let seen = next_seen(&mut sink).await;
    assert_eq!(seen.method, http::Method::POST);
    assert_eq!(seen.path, "/hook");
    assert_eq!(&seen.body[..], b"{\"tls\":true}");
    assert_eq!(seen.client_cert, None, "no client certificate is configured, none is sent");
}

#[tokio::test]
async fn refuses_a_certificate_no_trusted_root_signed() {
    let mut sink = tls_sink(None).await;
    let gw = App::start_yaml(&config(sink.port, "")).await;
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    let line = gw.wait_for_log("will retry", Duration::from_secs(10)).await;
    assert!(line.contains("invalid peer certificate") || line.contains("UnknownIssuer"), "{line}");
    assert!(sink.seen.try_recv().is_err(), "nothing was delivered over an untrusted connection");
}

// --- client certificates (mTLS) ----------------------------------------------------------------

#[tokio::test]
async fn presents_the_client_certificate_a_destination_requires() {
    let client_ca = TestCa::new("test client CA");
    let mut sink = tls_sink(Some(client_ca.der())).await;
    let (cert_pem, key_pem, cert_der) = client_ca.client("hookyard-test-client");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &sink.ca_pem);
    let cert = write(dir.path(), "client.pem", &cert_pem);
    let key = write(dir.path(), "client.key", &key_pem);
    let tls = format!("ca_file: \"{ca}\", client_cert: \"{cert}\", client_key: \"{key}\"");
    let gw = App::start_yaml(&config(sink.port, &tls)).await;
    assert_eq!(gw.post("/in", &[], "{\"mtls\":1}").await.status, 202);
    let seen = next_seen(&mut sink).await;
    assert_eq!(&seen.body[..], b"{\"mtls\":1}");
    let presented = seen.client_cert.expect("the server saw a client certificate");
    assert_eq!(presented, cert_der, "the server saw the certificate of tls.client_cert");
    assert!(
        presented.windows(b"hookyard-test-client".len()).any(|w| w == b"hookyard-test-client"),
        "its subject is CN=hookyard-test-client"
    );
}

#[tokio::test]
async fn a_destination_requiring_a_client_certificate_refuses_a_gateway_without_one() {
    let client_ca = TestCa::new("test client CA");
    let mut sink = tls_sink(Some(client_ca.der())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &sink.ca_pem);
    let gw = App::start_yaml(&config(sink.port, &format!("ca_file: \"{ca}\""))).await;
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    assert_eq!(next_refusal(&mut sink).await, "peer sent no certificates");
    // TLS 1.3: the client learns of the refusal from the server's alert, and the attempt is
    // retried (fixing the config and reloading lets the delivery through)
    let line = gw.wait_for_log("will retry", Duration::from_secs(10)).await;
    assert!(
        line.contains(
            "received fatal alert: CertificateRequired (the destination requires a client certificate: set \
             tls.client_cert and tls.client_key)"
        ),
        "{line}"
    );
    assert!(sink.seen.try_recv().is_err(), "nothing was delivered without a client certificate");
}

#[tokio::test]
async fn a_destination_refuses_a_client_certificate_from_another_ca() {
    let client_ca = TestCa::new("test client CA");
    let other_ca = TestCa::new("some other CA");
    let mut sink = tls_sink(Some(client_ca.der())).await;
    let (cert_pem, key_pem, _) = other_ca.client("hookyard-test-client");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &sink.ca_pem);
    let cert = write(dir.path(), "client.pem", &cert_pem);
    let key = write(dir.path(), "client.key", &key_pem);
    let tls = format!("ca_file: \"{ca}\", client_cert: \"{cert}\", client_key: \"{key}\"");
    let gw = App::start_yaml(&config(sink.port, &tls)).await;
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    assert_eq!(next_refusal(&mut sink).await, "invalid peer certificate: UnknownIssuer");
    let line = gw.wait_for_log("will retry", Duration::from_secs(10)).await;
    assert!(
        line.contains(
            "received fatal alert: UnknownCA (the destination refused the client certificate in tls.client_cert)"
        ),
        "{line}"
    );
    assert!(sink.seen.try_recv().is_err(), "nothing was delivered with a certificate the server does not trust");
}

/// Certificates are rotated by replacing the files: the reload that follows (here the file
/// watcher's) builds a client with the new ones.
#[tokio::test]
async fn a_rotated_client_certificate_is_used_after_the_reload() {
    let client_ca = TestCa::new("test client CA");
    let mut sink = tls_sink(Some(client_ca.der())).await;
    let (cert_pem, key_pem, first) = client_ca.client("first");
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &sink.ca_pem);
    let cert = write(dir.path(), "client.pem", &cert_pem);
    let key = write(dir.path(), "client.key", &key_pem);
    let tls = format!("ca_file: \"{ca}\", client_cert: \"{cert}\", client_key: \"{key}\"");
    let gw = App::start_yaml(&config(sink.port, &tls)).await;
    assert_eq!(gw.post("/in", &[], "1").await.status, 202);
    assert_eq!(next_seen(&mut sink).await.client_cert.as_deref(), Some(&first[..]));

    let (cert_pem, key_pem, second) = client_ca.client("second");
    write(dir.path(), "client.key", &key_pem);
    write(dir.path(), "client.pem", &cert_pem);
    gw.wait_for_log("config reloaded", Duration::from_secs(10)).await;
    assert_eq!(gw.post("/in", &[], "2").await.status, 202);
    let seen = next_seen(&mut sink).await;
    assert_eq!(&seen.body[..], b"2");
    assert_eq!(seen.client_cert.as_deref(), Some(&second[..]), "the rotated certificate is presented");
}

// --- check ---------------------------------------------------------------------------------------

/// Runs `check` on a config whose destination has the given `tls:` block lines; returns stderr's
/// lines and the config's path.
async fn check_tls(dir: &Path, tls_lines: &[&str]) -> (Vec<String>, String) {
    let mut yaml = String::from(
        "sources:\n  s: { path: /in, verify: { scheme: none } }\ndestinations:\n  secure:\n    url: https://example.com/hook\n    sign: { scheme: none }\n    tls:\n",
    );
    for l in tls_lines {
        yaml.push_str(&format!("      {l}\n"));
    }
    yaml.push_str("routes:\n  - { name: all, source: s, to: [secure] }\n");
    let path = write(dir, "routes.yaml", &yaml);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    (out.stderr.lines().map(str::to_string).collect(), path)
}

#[tokio::test]
async fn check_reports_client_certificate_problems_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("test client CA");
    let (cert_pem, key_pem, _) = ca.client("c");
    let (_, other_key_pem, _) = ca.client("other");
    let cert = write(d, "client.pem", &cert_pem);
    let key = write(d, "client.key", &key_pem);
    let other_key = write(d, "other.key", &other_key_pem);
    let text = write(d, "notes.txt", "this is not PEM\n");
    let missing = d.join("missing.key").to_str().unwrap().to_string();

    // a missing key file (relative paths are the config directory's)
    let (lines, f) = check_tls(d, &[&format!("client_cert: {cert}"), "client_key: missing.key"]).await;
    assert_eq!(
        lines,
        [
            format!(
                "{f}:9:7: destinations.secure.tls.client_key: cannot read {missing}: No such file or directory (os error 2)"
            ),
            "1 problem found".to_string()
        ]
    );

    // files that hold no PEM, both reported
    let (lines, f) = check_tls(d, &[&format!("client_cert: {text}"), &format!("client_key: {text}")]).await;
    assert_eq!(
        lines,
        [
            format!(
                "{f}:8:7: destinations.secure.tls.client_cert: {text}: no certificate found (expected a PEM \"CERTIFICATE\" block)"
            ),
            format!(
                "{f}:9:7: destinations.secure.tls.client_key: {text}: no private key found (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
            ),
            "2 problems found".to_string()
        ]
    );

    // a PEM block whose contents are not base64
    let broken = write(d, "broken.pem", "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n");
    let (lines, f) = check_tls(d, &[&format!("client_cert: {broken}"), &format!("client_key: {key}")]).await;
    assert_eq!(
        lines,
        [
            format!(
                "{f}:8:7: destinations.secure.tls.client_cert: {broken}: invalid PEM: a section is not valid base64"
            ),
            "1 problem found".to_string()
        ]
    );

    // a key that is not the certificate's
    let (lines, f) = check_tls(d, &[&format!("client_cert: {cert}"), &format!("client_key: {other_key}")]).await;
    assert_eq!(
        lines,
        [
            format!(
                "{f}:9:7: destinations.secure.tls.client_key: {other_key}: the key does not match the certificate in {cert}"
            ),
            "1 problem found".to_string()
        ]
    );

    // both or neither
    let (lines, f) = check_tls(d, &[&format!("client_cert: {cert}")]).await;
    assert_eq!(
        lines,
        [
            format!(
                "{f}:8:7: destinations.secure.tls.client_cert: client_cert needs client_key (give both or neither)"
            ),
            "1 problem found".to_string()
        ]
    );
    let (lines, f) = check_tls(d, &[&format!("client_key: {key}")]).await;
    assert_eq!(
        lines,
        [
            format!("{f}:8:7: destinations.secure.tls.client_key: client_key needs client_cert (give both or neither)"),
            "1 problem found".to_string()
        ]
    );
}
