//! `hookyard plugin test`: run a plugin on one event and print its outcome, its logs and the time
//! it took, with the same host, limits and checks as the gateway.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine as _;
use bytes::Bytes;
use hookyard::plugin::{Limits, Outcome, PluginEvent, PluginHost};
use serde_json::{Value, json};

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Run a plugin on one event.
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The plugin component (`.wasm`).
    plugin: PathBuf,
    /// File holding the event body.
    #[arg(long)]
    body: PathBuf,
    /// A request header, `'Name: value'`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = super::parse_header)]
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A plugin setting `key=value` (what a transform's `config:` gives in routes.yaml);
    /// repeatable. (Formerly `--config`, which still works with a deprecation note: every other
    /// command's `--config` names the config file.)
    #[arg(long = "plugin-config", alias = "config", value_name = "KEY=VALUE", value_parser = parse_kv)]
    config: Vec<(String, String)>,
    /// A destination the route would have (outputs may pick among these); repeatable.
    #[arg(long = "destination")]
    destinations: Vec<String>,
    /// Source name the event claims.
    #[arg(long, default_value = "test")]
    source: String,
    #[arg(long, default_value_t = Limits::default().timeout_ms)]
    timeout_ms: u64,
    #[arg(long, default_value_t = Limits::default().memory_mb)]
    memory_mb: u64,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

fn body_json(body: &Bytes) -> Value {
    match std::str::from_utf8(body) {
        Ok(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string())),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(body)}),
    }
}

pub async fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    let PluginCommand::Test(a) = cmd;
    if std::env::args().any(|arg| arg == "--config" || arg.starts_with("--config=")) {
        eprintln!("warning: `plugin test --config key=value` is deprecated: write `--plugin-config key=value`");
    }
    let host = PluginHost::new(None).map_err(|e| anyhow::anyhow!(e))?;
    let limits = Limits { timeout_ms: a.timeout_ms, memory_mb: a.memory_mb, ..Limits::default() };
    let path = a.plugin.clone();
    let config = a.config.clone();
    let dests = a.destinations.clone();
    let plugin = tokio::task::spawn_blocking(move || host.load(&path, config, limits, dests))
        .await?
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.plugin.display()))?;
    let body = Bytes::from(std::fs::read(&a.body).with_context(|| format!("cannot read {}", a.body.display()))?);
    let event = PluginEvent {
        id: "evt_test".into(),
        source: a.source,
        received_at_ms: hookyard::store::now_ms() as u64,
        method: "POST".into(),
        path: "/test".into(),
        headers: a
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
    };
    let report = plugin.run_report(&event).await;
    let logs: Vec<Value> = report
        .logs
        .iter()
        .map(|l| json!({"level": format!("{:?}", l.level).to_lowercase(), "message": l.message}))
        .collect();
    let (ok, outcome) = match &report.result {
        Ok(Outcome::Emit(outputs)) => (
            true,
            json!({"emit": outputs.iter().map(|o| json!({"destinations": o.destinations, "headers": o.headers, "body": body_json(&o.body)})).collect::<Vec<_>>()}),
        ),
        Ok(Outcome::Drop(reason)) => (true, json!({"drop": reason})),
        Err(e) => (false, json!({"error": e.to_string(), "kind": e.label(), "retryable": e.retryable()})),
    };
    let out = json!({"plugin": plugin.name(), "outcome": outcome, "logs": logs, "elapsed_us": report.elapsed.as_micros() as u64});
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
