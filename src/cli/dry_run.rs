//! `hookyard dry-run`: one event through routing, nothing sent.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use hookyard::snapshot::{Event, EventId};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Source the event arrives at.
    #[arg(long)]
    source: String,
    /// A request header, `'Name: value'`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = super::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// File holding the request body.
    #[arg(long)]
    body: PathBuf,
    /// Event id to use (default: a new one), for reproducible output.
    #[arg(long)]
    event_id: Option<String>,
    /// Unix time to sign with (default: now), for reproducible output.
    #[arg(long)]
    timestamp: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let snap = match hookyard::snapshot::build(&args.config, &hookyard::snapshot::Plugins::from_env()) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    super::print_warnings(&snap);
    let Some(source) = snap.source_by_name(&args.source) else {
        let names: Vec<&str> = snap.sources.iter().map(|s| &*s.name).collect();
        anyhow::bail!("unknown source {:?}; sources are: {}", args.source, names.join(", "));
    };
    let body = Bytes::from(std::fs::read(&args.body).with_context(|| format!("cannot read {}", args.body.display()))?);
    let mut headers = http::HeaderMap::new();
    for (k, v) in args.headers {
        headers.append(k, v);
    }
    if !headers.contains_key(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    }
    let now = match args.timestamp {
        Some(t) => UNIX_EPOCH + Duration::from_secs(t),
        None => SystemTime::now(),
    };
    let id = args.event_id.map(|s| EventId(s.into())).unwrap_or_else(EventId::generate);
    let event = Event { id, source: source.name.clone(), received_at: now, headers, body };
    let out = super::runtime()?.block_on(hookyard::dry_run::run(&snap, source, &event));
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
