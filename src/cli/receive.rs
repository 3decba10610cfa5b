//! `hookyard receive`: a local destination that prints what it gets and checks Standard Webhooks
//! signatures. `GET /stats` returns counters as JSON (used by the benchmarks and tests).

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hookyard::verify::{Scheme, Verifier};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// `whsec_…` secret to verify `webhook-signature` with; repeatable.
    #[arg(long)]
    secret: Vec<String>,
    /// Status code to answer POSTs with.
    #[arg(long, default_value_t = 200)]
    status: u16,
    /// Print nothing per request (for load tests; counters stay available at GET /stats).
    #[arg(long)]
    quiet: bool,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    verified: AtomicU64,
    invalid: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let verifier = if args.secret.is_empty() {
        None
    } else {
        Some(
            Verifier::new(Scheme::preset("standard-webhooks"), &args.secret, Duration::from_secs(300))
                .map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        )
    };
    let status = StatusCode::from_u16(args.status)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    super::announce(listener.local_addr()?);
    let state = Arc::new((verifier, Stats::default(), args.quiet, status));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let (verifier, stats, quiet, status) = &*state;
                    if req.method() == Method::GET && req.uri().path() == "/stats" {
                        let body = format!(
                            "{{\"received\":{},\"verified\":{},\"invalid\":{}}}",
                            stats.received.load(Ordering::Relaxed),
                            stats.verified.load(Ordering::Relaxed),
                            stats.invalid.load(Ordering::Relaxed)
                        );
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))));
                    }
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    let verdict = match verifier {
                        None => "not checked (no --secret)".to_string(),
                        Some(v) => match v.verify(&parts.headers, &body, SystemTime::now()) {
                            Ok(()) => {
                                stats.verified.fetch_add(1, Ordering::Relaxed);
                                "valid".to_string()
                            }
                            Err(e) => {
                                stats.invalid.fetch_add(1, Ordering::Relaxed);
                                format!("INVALID ({e})")
                            }
                        },
                    };
                    if !quiet {
                        print_request(&parts, &body, &verdict);
                    }
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = *status;
                    Ok(r)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn print_request(parts: &http::request::Parts, body: &[u8], verdict: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {} ({} bytes) signature: {verdict}", parts.method, parts.uri, body.len());
    for (k, v) in &parts.headers {
        let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
    let text = String::from_utf8_lossy(body);
    let shown: String = text.chars().take(2000).collect();
    let _ = writeln!(out, "  {shown}{}", if text.chars().count() > 2000 { " …" } else { "" });
    let _ = writeln!(out);
    let _ = out.flush();
}
