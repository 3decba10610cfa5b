//! `hookyard run`

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use hookyard::delivery::{Engine, HttpTransport};
use hookyard::server::{self, Gateway};
use tracing::{info, warn};

pub fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let snapshot = match hookyard::runtime::build(config) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            anyhow::bail!(
                "{} has {} problem(s); nothing started",
                config.display(),
                errors.0.len()
            );
        }
    };
    super::runtime()?.block_on(async move {
        let listen = snapshot.server.listen;
        let grace = snapshot.server.shutdown_grace.0;
        let engine = Engine::new(HttpTransport, snapshot.delivery.max_in_flight, snapshot.delivery.max_pending);
        let listener = server::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        info!(%addr, config = %config.display(), version = %snapshot.version, sources = snapshot.sources.len(), routes = snapshot.routes.len(), "hookyard listening");
        let gateway = Arc::new(Gateway { snapshot: ArcSwap::from_pointee(snapshot), engine: engine.clone() });
        super::announce(addr);
        server::serve(listener, gateway, shutdown_signal(), grace).await;
        info!("stopped accepting; waiting for queued deliveries");
        let left = engine.drain(grace).await;
        if left > 0 {
            warn!(pending = left, "exiting with deliveries still pending; they are lost (the queue is in memory in this release)");
        }
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
