//! Hot reload: a new snapshot is built off the request path by the same `snapshot::build` as at
//! start, then swapped in atomically. Requests in flight finish on the snapshot they loaded; new
//! requests see the new one. A reload that fails changes nothing and is reported (log, metric,
//! status). Triggers: file changes (notify, debounced), SIGHUP, and the admin API.
//!
//! Settings that cannot change live keep their running values and are reported as "needs
//! restart" (the list is [`keep_restart_only_settings`]): the listeners (`server.listen`,
//! `server.max_connections`, `server.max_header_bytes`, the `admin` listener settings; the admin
//! token does change live), the store (`storage.path`, `storage.sync`, `storage.postgres`, `storage.commit_timeout`),
//! the dispatcher's bounds (`delivery.max_in_flight`, `delivery.max_pending`) and `telemetry` (the
//! span exporter is part of the process's logging). Everything else applies to the next request,
//! the next delivery attempt and the next retention purge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info, warn};

use crate::app::State;
use crate::snapshot::Snapshot;

/// Quiet time after the last file event before a reload starts (editors write in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    pub file: String,
    /// The store in use: the SQLite file, or the PostgreSQL database and schema (never the
    /// password). Fixed until a restart.
    pub store: String,
    /// Content hash of the active config.
    pub version: String,
    /// When the active config was loaded (unix ms).
    pub loaded_at_ms: i64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The last failed reload: when, and every problem (`file:line:col: key: message`).
    pub last_error: Option<ReloadError>,
    /// Settings changed in the file that only take effect after a restart.
    pub needs_restart: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReloadError {
    pub at_ms: i64,
    pub trigger: String,
    pub errors: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Reloaded { version: String, needs_restart: Vec<String> },
    Unchanged { version: String },
    Failed { errors: Vec<String> },
}

pub struct Reloader {
    path: PathBuf,
    state: Arc<State>,
    status: Mutex<ReloadStatus>,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: &Path, state: Arc<State>) -> Arc<Reloader> {
        let snap = state.snapshot.load();
        let status = ReloadStatus {
            file: snap.file.clone(),
            store: crate::store::Store::describe(&snap.storage),
            version: snap.version.clone(),
            loaded_at_ms: crate::store::to_ms(snap.loaded_at),
            ..Default::default()
        };
        crate::metrics::config_version(None, &snap.version);
        crate::metrics::register_known(snap.plugin_chains());
        Arc::new(Reloader {
            path: path.to_path_buf(),
            state,
            status: Mutex::new(status),
            running: tokio::sync::Mutex::new(()),
        })
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds a new snapshot from the file and swaps it in, or reports why not.
    pub async fn reload(&self, trigger: &str) -> ReloadOutcome {
        let _one = self.running.lock().await;
        let path = self.path.clone();
        let plugins = self.state.plugins.clone();
        // compiling (regexes, JSONPaths, TLS roots, plugins) is CPU work: off the async workers
        let built = tokio::task::spawn_blocking(move || crate::snapshot::build(&path, &plugins)).await;
        let old = self.state.snapshot.load_full();
        match built {
            Ok(Ok(mut new)) => {
                if new.version == old.version {
                    crate::metrics::reload("unchanged");
                    return ReloadOutcome::Unchanged { version: new.version };
                }
                // A save cut short before `sources:` is a valid config that would answer every
                // webhook with 404. Starting without sources is allowed; losing them all is not.
                if new.sources.is_empty() && !old.sources.is_empty() {
                    let problem = crate::config::ConfigError {
                        file: new.file.clone(),
                        mark: None,
                        key: "sources".to_string(),
                        message: "the new config has no sources, so every webhook would get 404; the running config \
                                  stays (restart hookyard to run without sources)"
                            .to_string(),
                    }
                    .to_string();
                    error!(trigger, problem = %problem, "config reload failed; the running config stays");
                    return self.failed(trigger, vec![problem]);
                }
                for w in &new.warnings {
                    warn!(problem = %w, "config warning");
                }
                let needs_restart = keep_restart_only_settings(&old, &mut new);
                for setting in &needs_restart {
                    warn!(setting = %setting, "changed in the config file but needs a restart; the running value stays");
                }
                new.inherit(&old);
                let version = new.version.clone();
                crate::metrics::register_known(new.plugin_chains());
                self.state.dispatcher.set_destinations(&new.destinations);
                self.state.dispatcher.set_steps(new.step_rules());
                self.state.snapshot.store(Arc::new(new));
                crate::metrics::reload("reloaded");
                crate::metrics::config_version(Some(&old.version), &version);
                let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
                st.version = version.clone();
                st.loaded_at_ms = crate::store::now_ms();
                st.reloads_ok += 1;
                st.needs_restart = needs_restart.clone();
                info!(trigger, old = %old.version, new = %version, "config reloaded");
                ReloadOutcome::Reloaded { version, needs_restart }
            }
            Ok(Err(errors)) => {
                let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for e in &errors {
                    error!(trigger, problem = %e, "config reload failed; the running config stays");
                }
                self.failed(trigger, errors)
            }
            Err(join) => self.failed(trigger, vec![format!("reload task failed: {join}")]),
        }
    }

    fn failed(&self, trigger: &str, errors: Vec<String>) -> ReloadOutcome {
        crate::metrics::reload("failed");
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.reloads_failed += 1;
        st.last_error =
            Some(ReloadError { at_ms: crate::store::now_ms(), trigger: trigger.to_string(), errors: errors.clone() });
        ReloadOutcome::Failed { errors }
    }

    /// Reloads on SIGHUP until `stop` resolves.
    pub async fn on_sighup(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            error!("cannot install the SIGHUP handler");
            return;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                got = hup.recv() => {
                    if got.is_none() { return; }
                    info!("SIGHUP received; reloading");
                    self.reload("sighup").await;
                }
            }
        }
    }

    /// Watches the config file's directory, the directories of `extra` files (e.g. plugins) and
    /// of the files the running config reads (plugins, `${file:…}` secrets; looked up again after
    /// every reload), and reloads after a quiet period. Watching directories rather than files
    /// handles editors that save by writing a new file and renaming it over the old one, and
    /// Kubernetes ConfigMaps and Secrets that swap a `..data` symlink; a reload that finds the
    /// same content is a no-op.
    ///
    /// The watches are registered and the files' content noted here, before the returned future
    /// first runs: a file saved just after the gateway started (once `start` returned) is seen,
    /// never taken for the content it started with.
    pub fn watch(
        self: Arc<Self>,
        extra: Vec<PathBuf>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut files = self.watched_files(&extra);
        let names = Arc::new(Mutex::new(file_names(&files)));
        let ours = names.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            // only our files, or a Kubernetes ConfigMap's or Secret's `..data` symlink swap
            let names = ours.lock().unwrap_or_else(|p| p.into_inner());
            let ours = event
                .paths
                .iter()
                .filter_map(|p| p.file_name())
                .any(|n| names.iter().any(|m| m == n) || n.to_string_lossy().starts_with("..data"));
            if ours {
                let _ = tx.send(());
            }
        });
        let mut watched: Vec<PathBuf> = Vec::new();
        let mut watcher = match watcher {
            Ok(mut w) => {
                watch_dirs(&mut w, &files, &mut watched);
                Some(w)
            }
            Err(e) => {
                error!(error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
                None
            }
        };
        let mut last_seen = content_hash(&files);
        async move {
            let Some(watcher) = watcher.as_mut() else { return };
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    got = rx.recv() => {
                        if got.is_none() { return; }
                        // debounce: wait until the files have been quiet for DEBOUNCE
                        while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                        // touch, chmod or a save without changes: nothing to do (and a broken file is
                        // reported once, not at every event)
                        let now = content_hash(&files);
                        if now == last_seen {
                            continue;
                        }
                        last_seen = now;
                        self.reload("file change").await;
                        // the config may name other files now (a new secret, a secret directory
                        // swapped to a new timestamped one): watch those too
                        let now_named = self.watched_files(&extra);
                        if now_named != files {
                            files = now_named;
                            *names.lock().unwrap_or_else(|p| p.into_inner()) = file_names(&files);
                            watch_dirs(watcher, &files, &mut watched);
                            last_seen = content_hash(&files);
                        }
                    }
                }
            }
        }
    }

    /// The config file, `extra`, and the files the running config reads; a symlinked file is
    /// watched where the link is and where it points.
    fn watched_files(&self, extra: &[PathBuf]) -> Vec<PathBuf> {
        let snap = self.state.snapshot.load();
        let mut files: Vec<PathBuf> = std::iter::once(self.path.clone())
            .chain(extra.iter().cloned())
            .chain(snap.plugin_files.iter().cloned())
            .chain(snap.secret_files.iter().cloned())
            .collect();
        files.dedup();
        let targets: Vec<PathBuf> =
            files.iter().filter_map(|f| std::fs::canonicalize(f).ok()).filter(|t| !files.contains(t)).collect();
        files.extend(targets);
        files
    }
}

fn file_names(files: &[PathBuf]) -> Vec<std::ffi::OsString> {
    files.iter().filter_map(|f| f.file_name().map(|n| n.to_os_string())).collect()
}

/// The directories of `files`, each once.
/// Watches the directories of `files` not watched yet.
fn watch_dirs(watcher: &mut impl notify::Watcher, files: &[PathBuf], watched: &mut Vec<PathBuf>) {
    for d in directories(files) {
        if watched.contains(&d) {
            continue;
        }
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %d.display(), error = %e, "cannot watch directory");
        }
        watched.push(d);
    }
}

fn directories(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|p| p.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A hash of the files' contents (a missing file hashes as empty). Streamed, and no further
/// than the largest file a build would read: a file swapped for a huge one (or a link to
/// `/dev/zero`) costs the watcher neither memory nor endless reading; the build that follows
/// refuses it. Only regular files are read (opening a pipe would block the watcher).
fn content_hash(files: &[PathBuf]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let limit = crate::config::MAX_CONFIG_BYTES.max(crate::plugin::MAX_PLUGIN_FILE_BYTES) + 1;
    let mut h = Sha256::new();
    for f in files {
        if let Ok(meta) = std::fs::metadata(f) {
            h.update(meta.len().to_le_bytes());
            if meta.is_file()
                && let Ok(file) = std::fs::File::open(f)
            {
                let _ = std::io::copy(&mut file.take(limit), &mut h);
            }
        }
        h.update([0]);
    }
    h.finalize().into()
}

/// Copies settings that need a restart from the running snapshot into the new one; returns the
/// names of those that differed.
fn keep_restart_only_settings(old: &Snapshot, new: &mut Snapshot) -> Vec<String> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push(format!("server.listen ({} → {})", old.server.listen, new.server.listen));
        new.server.listen = old.server.listen;
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("server.max_connections".to_string());
        new.server.max_connections = old.server.max_connections;
    }
    if old.server.max_header_bytes != new.server.max_header_bytes {
        changed.push("server.max_header_bytes".to_string());
        new.server.max_header_bytes = old.server.max_header_bytes;
    }
    let admin_listener = |a: &crate::config::AdminConfig| (a.listen, a.enabled, a.max_connections, a.request_timeout);
    if admin_listener(&old.admin) != admin_listener(&new.admin) {
        changed.push("admin.listen / enabled / max_connections / request_timeout".to_string());
        let token = new.admin.token.take();
        let tokens = std::mem::take(&mut new.admin.tokens);
        new.admin = crate::config::AdminConfig { token, tokens, ..old.admin.clone() };
    }
    if old.storage.path != new.storage.path || old.storage.sync != new.storage.sync {
        changed.push("storage.path / storage.sync".to_string());
        new.storage = old.storage.clone();
    }
    if old.storage.postgres != new.storage.postgres {
        changed.push("storage.postgres".to_string());
        new.storage.postgres = old.storage.postgres.clone();
    }
    if old.storage.commit_timeout.0 != new.storage.commit_timeout.0 {
        changed.push("storage.commit_timeout".to_string());
        new.storage.commit_timeout = old.storage.commit_timeout;
    }
    if old.delivery.max_in_flight != new.delivery.max_in_flight || old.delivery.max_pending != new.delivery.max_pending
    {
        changed.push("delivery.max_in_flight / delivery.max_pending".to_string());
        new.delivery = old.delivery.clone();
    }
    if old.telemetry != new.telemetry {
        changed.push("telemetry".to_string());
        new.telemetry = old.telemetry.clone();
    }
    changed
}
