//! `hookyard send`: sign a file as the source's provider would and POST it to the running gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Source to sign for (its scheme and first secret are used, and its path is posted to).
    #[arg(long)]
    source: String,
    /// Base URL of the gateway. Default: `http://` + `server.listen` of the config.
    #[arg(long)]
    gateway: Option<String>,
    /// An extra request header, `'Name: value'`; repeatable (e.g. `-H 'X-GitHub-Event: push'`).
    #[arg(long = "header", short = 'H', value_parser = super::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A private key for providers that sign asymmetrically, whose configured secret is the public
    /// key: a `whsk_…` ed25519 key (Standard Webhooks v1a) or a PKCS#8 PEM P-256 key (SendGrid).
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// File holding the request body. A form body needs
    /// `-H 'content-type: application/x-www-form-urlencoded'` (signed as a form by Twilio and
    /// Mailgun).
    file: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snap = hookyard::snapshot::build(&args.config, &hookyard::snapshot::Plugins::from_env())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(source) = snap.source_by_name(&args.source) else {
        let names: Vec<&str> = snap.sources.iter().map(|s| &*s.name).collect();
        anyhow::bail!("unknown source {:?}; sources are: {}", args.source, names.join(", "));
    };
    let body = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let base = match args.gateway {
        Some(g) => g.trim_end_matches('/').to_string(),
        None => {
            let mut addr = snap.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let msg_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let mut extra = http::HeaderMap::new();
    for (k, v) in args.headers {
        extra.insert(k, v);
    }
    let form = hookyard::verify::is_form(&extra);
    let key = match &args.private_key {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                hookyard::verify::keys::PrivateKey::decode(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let signed = source
        .verifier
        .provider_request(&body, SystemTime::now(), &msg_id, form, key.as_ref())
        .map_err(|e| anyhow::anyhow!("cannot sign as {}: {e}", source.verifier.scheme_name()))?;
    let body = signed.body.unwrap_or(body);
    let url = match &signed.query {
        Some(q) => format!("{base}{}?{q}", source.path),
        None => format!("{base}{}", source.path),
    };
    let mut req = http::Request::post(&url).body(Full::new(Bytes::from(body)))?;
    let h = req.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    for (k, v) in signed.headers {
        h.insert(k, v);
    }
    for (k, v) in extra {
        if let Some(k) = k {
            h.insert(k, v);
        }
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp =
        client.request(req).await.with_context(|| format!("cannot POST to {url} (is `hookyard run` running?)"))?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    println!("{} {}", status.as_u16(), String::from_utf8_lossy(&text).trim_end());
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
