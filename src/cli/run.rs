//! `hookyard run`: start the gateway (`hookyard::app`), wait for SIGTERM or SIGINT, stop it.

use std::path::Path;
use std::process::ExitCode;

use hookyard::app::{self, StartError};
use tracing::info;

pub fn run(config: &Path) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
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
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down"),
        _ = term.recv() => info!("SIGTERM received; shutting down"),
    }
}
