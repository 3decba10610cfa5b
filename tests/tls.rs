//! Outbound HTTPS with real TLS: a destination served by a rustls server on loopback with a
//! certificate from a throw-away CA, trusted through `tls.ca_file`; the same destination without
//! the CA is refused (the webpki roots do not know it).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Gateway;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA, and a TLS server for `localhost` signed by it that reports each request's path and body.
async fn tls_sink() -> (String, u16, mpsc::UnboundedReceiver<(String, Bytes)>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&leaf_key, &issuer).unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                // a failed handshake (the untrusted case) just ends this connection
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send((path, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (ca.pem(), port, rx)
}

fn config(port: u16, ca_file: Option<&str>) -> String {
    let tls = ca_file.map(|f| format!("tls: {{ ca_file: \"{f}\" }}")).unwrap_or_default();
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

#[tokio::test]
async fn delivers_over_https_to_a_destination_trusted_by_ca_file() {
    let (ca_pem, port, mut rx) = tls_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let gw = Gateway::start(&config(port, Some(ca_path.to_str().unwrap()))).await;
    let answer = gw.post("/in", &[("content-type", "application/json")], "{\"tls\":true}").await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let (path, body) =
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("delivery over TLS").unwrap();
    assert_eq!(path, "/hook");
    assert_eq!(&body[..], b"{\"tls\":true}");
}

#[tokio::test]
async fn refuses_a_certificate_no_trusted_root_signed() {
    let (_ca_pem, port, mut rx) = tls_sink().await;
    let gw = Gateway::start(&config(port, None)).await;
    assert_eq!(gw.post("/in", &[], "{}").await.status, 202);
    let line = gw.wait_for_log("will retry", Duration::from_secs(10)).await;
    assert!(line.contains("invalid peer certificate") || line.contains("UnknownIssuer"), "{line}");
    assert!(rx.try_recv().is_err(), "nothing was delivered over an untrusted connection");
}
