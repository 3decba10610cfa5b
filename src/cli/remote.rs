//! `hookyard reload` and `hookyard status`: talk to the running instance's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Base URL of the admin API. Default: `http://` + `admin.listen` of the config. The token is
    /// `admin.token` of the config, or HOOKYARD_ADMIN_TOKEN.
    #[arg(long)]
    admin: Option<String>,
}

pub async fn call(args: Args, method: http::Method, path: &str) -> anyhow::Result<ExitCode> {
    let (cfg, errors) = hookyard::config::Config::load(&args.config);
    // the file may be broken (that may be why you ask): use what parsed, defaults for the rest
    let Some(cfg) = cfg else {
        anyhow::bail!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    };
    let base = args.admin.unwrap_or_else(|| format!("http://{}", cfg.admin.listen));
    let token = std::env::var("HOOKYARD_ADMIN_TOKEN").ok().or(cfg.admin.token.map(|t| t.0));
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = http::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::new()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the admin API at {url} (is `hookyard run` running?)"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(_) => println!("{}", String::from_utf8_lossy(&body)),
    }
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
