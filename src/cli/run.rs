//! `hookyard run`: start the gateway (`hookyard::app`), wait for SIGTERM or SIGINT, stop it.

use std::path::Path;
use std::process::ExitCode;

use hookyard::app::{self, StartError};
use hookyard::telemetry::Tracing;
use tracing::info;

pub fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let otlp = otlp_config(config);
    let tracing = match &otlp {
        Some(otlp) => Some(Tracing::start(otlp, runtime.handle().clone())?),
        None => None,
    };
    if let Some(otlp) = &otlp {
        info!(endpoint = %otlp.endpoint, service_name = %otlp.service_name, "exporting traces over OTLP");
    }
    runtime.block_on(async move {
        let running = match app::start(config).await {
            Ok(r) => r,
            Err(StartError::Config { file, errors }) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                anyhow::bail!("{file} has {} problem(s); nothing started", errors.len());
            }
            Err(e) => return Err(e.into()),
        };
        super::announce(running.addr());
        if let Some(admin) = running.admin_addr() {
            println!("admin listening on {admin}");
        }
        shutdown_signal().await;
        let grace = running.configured_grace();
        running.shutdown(grace).await;
        // last: the spans of the attempts that ended during the shutdown are sent too
        if let Some(tracing) = tracing {
            tracing.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `telemetry.otlp` of the config at `path`, read before the gateway starts: the exporter is the
/// process's, started once and stopped last (a reload cannot change it); a config with problems
/// has none (`app::start` reports them).
fn otlp_config(path: &Path) -> Option<hookyard::config::OtlpConfig> {
    match hookyard::config::Config::load(path) {
        (Some(config), errors) if errors.is_empty() => config.telemetry.otlp,
        _ => None,
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down"),
        _ = term.recv() => info!("SIGTERM received; shutting down"),
    }
}
