//! The composition root: the one place that turns a config file into a running gateway
//! ([`start`]) and stops it in order ([`Running::shutdown`]). `hookyard run` is this plus signal
//! handling; the integration tests start the same thing in process.
//!
//! What it wires, in order: the config snapshot (`snapshot::build`, with the gateway's plugin host), the store, the dispatcher,
//! the ingress and admin listeners, the reloader (SIGHUP and file watch), the retention purge and
//! the metrics upkeep. Shutdown runs the other way: ingress stops accepting and finishes its
//! requests, the poller and purge stop, attempts in flight get the grace period, and the admin
//! listener (probes) stops last.
//!
//! `server`, `admin` and `reload` depend on [`State`], never on this module's wiring.

mod cluster;
mod state;

pub use cluster::{ClusterView, NodeView};
pub use state::State;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::delivery::{Dispatcher, HttpTransport};
use crate::reload::Reloader;
use crate::server::listener::{self, ConnectionBudget};
use crate::snapshot::Plugins;
use crate::store::{Queue, Store, StoreError, now_ms};

/// Why a gateway did not start. Nothing was left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has problems; each names its file, line and key.
    #[error("{}{file} has {} problem(s); nothing started", problems(.errors), .errors.len())]
    Config { file: String, errors: Vec<ConfigError> },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not bind (`what` names the key: `server.listen`, `admin.listen`).
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
}

fn problems(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

/// A started gateway. Dropping it without [`Running::shutdown`] aborts its tasks (tests); the
/// store keeps what was accepted either way.
pub struct Running {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    state: Arc<State>,
    reloader: Arc<Reloader>,
    config: PathBuf,
    /// `Some(grace)` stops the ingress listener (then the admin one) with that grace.
    stop_ingress: watch::Sender<Option<Duration>>,
    stop_admin: watch::Sender<Option<Duration>>,
    /// Stops the poller, the purge loop, the reload triggers and the metrics upkeep.
    stop_background: watch::Sender<bool>,
    ingress: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    poller: Option<JoinHandle<()>>,
    purger: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// Builds the config at `config` and starts everything it describes on the current tokio
/// runtime. Returns once both listeners are bound and accepting. Transforms are loaded with a
/// plugin host of its own (`HOOKYARD_PLUGIN_CACHE` is read here, once).
pub async fn start(config: &Path) -> Result<Running, StartError> {
    start_with(config, Arc::new(Plugins::from_env())).await
}

/// [`start`] with a given plugin host, which the gateway keeps for its reloads (several gateways
/// in one process may share one).
pub async fn start_with(config: &Path, plugins: Arc<Plugins>) -> Result<Running, StartError> {
    let metrics = match crate::metrics::install() {
        Ok(h) => Some(h),
        Err(e) => {
            warn!(error = %e, "metrics disabled");
            None
        }
    };
    let snapshot = crate::snapshot::build(config, &plugins)
        .map_err(|errors| StartError::Config { file: config.display().to_string(), errors: errors.0 })?;
    for w in &snapshot.warnings {
        warn!(problem = %w, "config warning");
    }
    let nofile = open_file_limit();
    let budget = ConnectionBudget::plan(
        nofile,
        snapshot.delivery.max_in_flight,
        snapshot.server.max_connections,
        snapshot.admin.max_connections,
    );
    log_budget(nofile, &budget);
    let mut storage = snapshot.storage.clone();
    if let Some(pg) = &mut storage.postgres
        && pg.node_id.is_none()
    {
        pg.node_id = crate::store::cluster::default_node_id(snapshot.server.listen);
    }
    let store = Store::connect(&storage, Clock::System).await?;
    for problem in store.warnings() {
        warn!(store = %Store::describe(&storage), %problem, "store warning");
    }
    let dispatcher = Dispatcher::new(
        store.clone(),
        HttpTransport,
        &snapshot.destinations,
        snapshot.delivery.max_in_flight,
        snapshot.delivery.max_pending,
    )
    .await?;
    dispatcher.set_steps(snapshot.step_rules());
    let listen = snapshot.server.listen;
    let ingress_listener =
        listener::bind(listen).map_err(|source| StartError::Bind { addr: listen, what: "server.listen", source })?;
    let addr = ingress_listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        what: "server.listen",
        source,
    })?;
    let admin_cfg = snapshot.admin.clone();
    let admin_listener = if admin_cfg.enabled {
        let bind_error = |source| StartError::Bind { addr: admin_cfg.listen, what: "admin.listen", source };
        let l = listener::bind(admin_cfg.listen).map_err(bind_error)?;
        if admin_cfg.token.is_none() && admin_cfg.tokens.is_empty() {
            warn!(addr = %admin_cfg.listen, "the admin API has no token; it is open to every local process (set admin.token)");
        }
        Some(l)
    } else {
        None
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()
        .map_err(|source| StartError::Bind { addr: admin_cfg.listen, what: "admin.listen", source })?;
    let pending = dispatcher.stats().pending;
    info!(%addr, config = %config.display(), version = %snapshot.version, store = %Store::describe(&storage), pending, "hookyard listening");

    let state = State::new(snapshot, dispatcher.clone(), plugins);
    let reloader = Reloader::new(config, state.clone());
    let (stop_background, stop_rx) = watch::channel(false);
    let mut background_first = Vec::new();
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // With other instances on the store: beat once before the first poll, so that this one starts
    // with its share of each destination's limits, not all of them
    if let Some(pg) = &storage.postgres
        && let Some(mut beat) = cluster::Heartbeat::new(
            state.clone(),
            addr.to_string(),
            admin_addr.map(|a| a.to_string()),
            pg.node_timeout.0,
        )
    {
        info!(node = store.node().unwrap_or_default(), "this instance's id among those sharing the database");
        beat.beat().await;
        background_first.push(tokio::spawn(beat.run(pg.heartbeat.0, stopped(stop_rx.clone()))));
    }
    let poller = {
        let d = dispatcher.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { d.run(stop).await })
    };
    let mut background = background_first;
    if let Some(handle) = metrics.clone() {
        background.push(tokio::spawn(crate::metrics::upkeep(handle, stopped(stop_rx.clone()))));
    }
    background.push(tokio::spawn(state.dispatcher.activity().clone().sample_every_step(stopped(stop_rx.clone()))));
    if storage.postgres.is_some() {
        background.push(tokio::spawn(cluster::listen(state.clone(), reloader.clone(), stopped(stop_rx.clone()))));
    }
    let purger = tokio::spawn(purge_loop(store, state.clone(), stopped(stop_rx.clone())));
    background.push(tokio::spawn(reloader.clone().on_sighup(stopped(stop_rx.clone()))));
    let plugin_files = state.snapshot.load().plugin_files.clone();
    background.push(tokio::spawn(reloader.clone().watch(plugin_files, stopped(stop_rx.clone()))));

    let granted = |mut rx: watch::Receiver<Option<Duration>>| async move {
        match rx.wait_for(Option::is_some).await {
            Ok(grace) => grace.unwrap_or_default(),
            Err(_) => Duration::ZERO,
        }
    };
    let (stop_admin, admin_rx) = watch::channel(None);
    let admin = admin_listener.map(|l| {
        let admin = Arc::new(Admin { state: state.clone(), reloader: reloader.clone(), metrics });
        tokio::spawn(crate::admin::serve(l, admin, budget.admin, granted(admin_rx)))
    });
    let (stop_ingress, ingress_rx) = watch::channel(None);
    let ingress =
        tokio::spawn(crate::server::serve(ingress_listener, state.clone(), budget.ingress, granted(ingress_rx)));
    Ok(Running {
        addr,
        admin_addr,
        state,
        reloader,
        config: config.to_path_buf(),
        stop_ingress,
        stop_admin,
        stop_background,
        ingress: Some(ingress),
        admin,
        poller: Some(poller),
        purger: Some(purger),
        background,
    })
}

impl Running {
    /// The ingress address (`server.listen`, with port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address, if `admin.enabled`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// The config file it was started from.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// `server.shutdown_grace` of the config in force.
    pub fn configured_grace(&self) -> Duration {
        self.state.snapshot.load().server.shutdown_grace.0
    }

    /// Stops in order: readiness turns 503; ingress stops accepting and gives its requests up to
    /// `grace`; the poller and the purge stop; attempts in flight get up to `grace` (what is still
    /// running then stays due in the store); the admin listener stops last, so probes see 503
    /// rather than a refused connection while attempts finish.
    pub async fn shutdown(mut self, grace: Duration) {
        self.state.begin_shutdown();
        let _ = self.stop_ingress.send(Some(grace));
        if let Some(t) = self.ingress.take() {
            let _ = t.await;
        }
        info!("stopped accepting; finishing delivery attempts in flight");
        let _ = self.stop_background.send(true);
        for t in [self.poller.take(), self.purger.take()].into_iter().flatten() {
            let _ = t.await;
        }
        let running = self.state.dispatcher.drain(grace).await;
        if running > 0 {
            warn!(running, "attempts still running at the end of the grace period; they stay due in the store");
        }
        // other instances sharing the store take what this one leased at once, not when the
        // leases run out
        // deliveries of attempts still running keep their leases (they run out by themselves)
        let keep = if running > 0 { self.state.dispatcher.claimed() } else { Vec::new() };
        match self.state.dispatcher.store().leave(keep).await {
            Ok(0) => {}
            Ok(n) => info!(deliveries = n, "gave up the leases on deliveries not attempted; other instances take them"),
            Err(e) => {
                warn!(error = %e, "could not give up this instance's leases; other instances take its deliveries when they run out")
            }
        }
        let _ = self.stop_admin.send(Some(grace));
        if let Some(t) = self.admin.take() {
            let _ = t.await;
        }
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        let pending = self.state.dispatcher.stats().pending;
        info!(pending, "stopped; pending deliveries stay due in the store");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let tasks = [self.ingress.take(), self.admin.take(), self.poller.take(), self.purger.take()];
        for t in tasks.into_iter().flatten().chain(self.background.drain(..)) {
            t.abort();
        }
    }
}

/// Raises the soft open-file limit to the hard one (see `raise_open_file_limit`) and returns the
/// limit in force (`None`: unlimited or unknown).
fn open_file_limit() -> Option<u64> {
    let l = listener::raise_open_file_limit();
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

/// Deletes finished events older than `storage.retention`, at start and then every
/// `storage.purge_interval`, both read from the config in force at each round (a reload changes them).
async fn purge_loop(store: Store, state: Arc<State>, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (retention, interval) = {
            let snap = state.snapshot.load();
            (snap.storage.retention.0, snap.storage.purge_interval.0)
        };
        // one instance at a time among those sharing the store
        match store.exclusive("purge", store.purge(now_ms() - retention.as_millis() as i64)).await {
            Ok(None) | Ok(Some(Ok(0))) => {}
            Ok(Some(Ok(n))) => info!(events = n, "retention purge deleted finished events"),
            Ok(Some(Err(e))) | Err(e) => error!(error = %e, "retention purge failed"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
