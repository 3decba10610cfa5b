//! `hookyard run`

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, Ordering};

use hookyard::admin::Admin;
use hookyard::delivery::{Dispatcher, HttpTransport};
use hookyard::reload::Reloader;
use hookyard::server::listener::{ConnectionBudget, raise_open_file_limit};
use hookyard::server::{self, Gateway};
use hookyard::store::{Queue, Store, StoreOptions, now_ms};
use tracing::{error, info, warn};

pub fn run(config: &Path) -> anyhow::Result<ExitCode> {
    let metrics = match hookyard::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("warning: metrics disabled: {e}");
            None
        }
    };
    let snapshot = match hookyard::runtime::build(config) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            anyhow::bail!("{} has {} problem(s); nothing started", config.display(), errors.0.len());
        }
    };
    for w in &snapshot.warnings {
        warn!(problem = %w, "config warning");
    }
    let nofile = open_file_limit();
    super::runtime()?.block_on(async move {
        let budget = ConnectionBudget::plan(
            nofile,
            snapshot.delivery.max_in_flight,
            snapshot.server.max_connections,
            snapshot.admin.max_connections,
        );
        log_budget(nofile, &budget);
        let listen = snapshot.server.listen;
        let grace = snapshot.server.shutdown_grace.0;
        let storage = snapshot.storage.clone();
        let store = Store::open_with(
            &storage.path,
            StoreOptions { sync: storage.sync, commit_timeout: storage.commit_timeout.0, ..StoreOptions::default() },
        )?;
        let dispatcher = Dispatcher::new(
            store.clone(),
            HttpTransport,
            &snapshot.destinations,
            snapshot.delivery.max_in_flight,
            snapshot.delivery.max_pending,
        )
        .await?;
        let listener = server::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let admin_cfg = snapshot.admin.clone();
        let admin_listener = if admin_cfg.enabled {
            let l = server::bind(admin_cfg.listen).await.with_context(|| format!("cannot listen on {} (admin.listen)", admin_cfg.listen))?;
            if admin_cfg.token.is_none() {
                warn!(addr = %admin_cfg.listen, "the admin API has no token; it is open to every local process (set admin.token)");
            }
            Some(l)
        } else {
            None
        };
        let pending = dispatcher.stats().pending;
        info!(%addr, config = %config.display(), version = %snapshot.version, store = %storage.path.display(), pending, "hookyard listening");
        let gateway = Arc::new(Gateway { snapshot: ArcSwap::from_pointee(snapshot), dispatcher: dispatcher.clone() });
        let reloader = Reloader::new(config, gateway.clone());
        let shutting_down = Arc::new(AtomicBool::new(false));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let poller = {
            let d = dispatcher.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { d.run(stop).await })
        };
        if let Some(handle) = metrics.clone() {
            tokio::spawn(hookyard::metrics::upkeep(handle, stopped(stop_rx.clone())));
        }
        let purger = tokio::spawn(purge_loop(store.clone(), storage.retention.0, storage.purge_interval.0, stopped(stop_rx.clone())));
        tokio::spawn(reloader.clone().on_sighup(stopped(stop_rx.clone())));
        let plugin_files = gateway.snapshot.load().plugin_files.clone();
        tokio::spawn(reloader.clone().watch(plugin_files, stopped(stop_rx.clone())));

        super::announce(addr);
        // The admin listener (health, readiness, metrics) stops last, after the attempts in
        // flight: while they finish, probes get `/readyz` 503 rather than a refused connection.
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::watch::channel(false);
        let admin_task = match admin_listener {
            Some(l) => {
                let admin_addr = l.local_addr()?;
                let admin = Arc::new(Admin { gateway: gateway.clone(), reloader: reloader.clone(), metrics, shutting_down: shutting_down.clone() });
                let task = tokio::spawn(hookyard::admin::serve(l, admin, budget.admin, stopped(admin_stop_rx), grace));
                println!("admin listening on {admin_addr}");
                Some(task)
            }
            None => None,
        };
        let flag = shutting_down.clone();
        let signal = async move {
            shutdown_signal().await;
            flag.store(true, Ordering::Release);
        };
        server::serve(listener, gateway, budget.ingress, signal, grace).await;
        info!("stopped accepting; finishing delivery attempts in flight");
        let _ = stop_tx.send(true);
        let _ = poller.await;
        let _ = purger.await;
        let running = dispatcher.drain(grace).await;
        if running > 0 {
            warn!(running, "attempts still running at the end of the grace period; they stay due in the store");
        }
        let _ = admin_stop_tx.send(true);
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        let pending = dispatcher.stats().pending;
        info!(pending, "stopped; pending deliveries stay due in the store");
        Ok(ExitCode::SUCCESS)
    })
}

/// Raises the soft open-file limit to the hard one (see `raise_open_file_limit`) and returns the
/// limit in force (`None`: unlimited or unknown).
fn open_file_limit() -> Option<u64> {
    let l = raise_open_file_limit();
    match (&l.error, l.raised_from, l.soft) {
        (Some(e), _, soft) => warn!(error = %e, soft, "could not raise the open-file limit (RLIMIT_NOFILE)"),
        (None, Some(from), Some(to)) => info!(from, to, "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"),
        _ => {}
    }
    l.soft
}

/// Logs the connection limits in force and what the open-file limit made of them.
fn log_budget(nofile: Option<u64>, b: &ConnectionBudget) {
    info!(
        nofile,
        ingress = b.ingress,
        admin = b.admin,
        "connection limits (server.max_connections, admin.max_connections)"
    );
    if b.ingress_over {
        warn!(
            nofile,
            available = b.available,
            ingress = b.ingress,
            "server.max_connections is more than the descriptors left for connections; raise the hard open-file limit (LimitNOFILE=, ulimit -Hn) or lower it"
        );
    }
    if b.admin_lowered {
        warn!(admin = b.admin, "admin.max_connections lowered so that ingress keeps its connections");
    }
}

/// Deletes finished events older than the retention, at start and then every `interval`.
async fn purge_loop(
    store: Store,
    retention: std::time::Duration,
    interval: std::time::Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        match store.purge(now_ms() - retention.as_millis() as i64).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, "retention purge deleted finished events"),
            Err(e) => error!(error = %e, "retention purge failed"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
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
