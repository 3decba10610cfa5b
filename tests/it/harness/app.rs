//! The gateway in process: `hookyard::app::start`, the composition root `hookyard run` uses, on
//! a runtime thread of its own (one worker, as the process tests give `hookyard run`).
//!
//! Why its own thread rather than the test's runtime: the tests' runtimes are current-thread, so
//! a gateway on them would share one thread with the test's sinks and clients (a plugin call or
//! a store read would stall them, which the real process never does); and a `Drop` can then stop
//! the gateway in order and wait for it, which it cannot do with tasks on the runtime it is
//! dropped on.
//!
//! What stays a process test (`Gateway`): kill -9 and crash recovery, signals, the CLI, log
//! output, memory measurements, open-file limits. The in-process gateway's logs go nowhere and
//! its metrics are process-wide (one Prometheus recorder): a test asserting a metric value uses
//! labels no other test uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::config::Config;
use super::{Answer, RawResponse, START_TIMEOUT, WAIT, exchange, http_client, raw_exchange};

/// A gateway started in this process from a config in its own temp dir.
pub struct App {
    pub addr: SocketAddr,
    running: Option<Thread>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The config and the default store; removed after the gateway stopped.
    _dir: tempfile::TempDir,
}

/// The thread a gateway runs on, and how to stop it.
struct Thread {
    /// Dropped: stop without grace. (A `stop().await` for tests of an in-process shutdown would
    /// send `Some(grace)`, or `None` for the configured `server.shutdown_grace`.)
    stop: tokio::sync::oneshot::Sender<Option<Duration>>,
    done: std::sync::mpsc::Receiver<()>,
    handle: std::thread::JoinHandle<()>,
}

impl App {
    /// Starts the config the builder renders.
    pub async fn start(config: Config) -> App {
        App::start_yaml(&config.render()).await
    }

    /// Writes `yaml` to a temp dir and starts it. As with `Gateway::start`, an admin listener on
    /// `127.0.0.1:0` is added unless the config has an `admin:` section; the store is the
    /// default one, in the temp dir.
    pub async fn start_yaml(yaml: &str) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("routes.yaml");
        let mut yaml = yaml.to_string();
        if !yaml.lines().any(|l| l.starts_with("admin:")) {
            yaml.push_str("\nadmin: { listen: \"127.0.0.1:0\" }\n");
        }
        std::fs::write(&config_path, yaml).expect("write config");
        App::start_at(dir, config_path).await
    }

    /// Starts the config already written at `config_path` (inside `dir`, which the gateway keeps).
    pub async fn start_at(dir: tempfile::TempDir, config_path: PathBuf) -> App {
        let (running, addr) = spawn(&config_path).await.unwrap_or_else(|e| panic!("{e}"));
        App { addr, running: Some(running), client: http_client(), _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What failure messages show in place of a process's stderr.
    pub fn logs(&self) -> String {
        format!("(gateway in process on {}: its logs are not captured)", self.addr)
    }

    /// POSTs `body` with `headers` to `path`.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Answer {
        self.request(Method::POST, path, headers, body).await
    }

    /// Sends one request with a plain HTTP/1.1 client (a `Content-Length` body).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        exchange(&self.client, method, &self.url(path), headers, body.into(), || self.logs()).await
    }

    /// As `Gateway::raw`: a hand-written request on a new connection.
    pub async fn raw(&self, head: &str, body: &[u8]) -> RawResponse {
        raw_exchange(self.addr, head, body).await
    }
}

impl Drop for App {
    /// Stops the gateway without grace (the sender dropped) and waits for its thread, boundedly.
    fn drop(&mut self) {
        if let Some(t) = self.running.take() {
            drop(t.stop);
            let wait = if std::thread::panicking() { Duration::from_secs(2) } else { WAIT };
            if t.done.recv_timeout(wait).is_ok() {
                let _ = t.handle.join();
            } else if !std::thread::panicking() {
                panic!("the gateway on {} did not stop within {wait:?} of the end of the test", self.addr);
            }
        }
    }
}

/// Starts the gateway at `config` on a thread of its own; returns once it listens, or what
/// `hookyard::app::start` said.
async fn spawn(config: &Path) -> Result<(Thread, SocketAddr), String> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<Option<Duration>>();
    let (done_tx, done) = std::sync::mpsc::channel();
    let path = config.to_path_buf();
    let handle = std::thread::Builder::new()
        .name(format!("gateway {}", config.display()))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the gateway's runtime");
            rt.block_on(async move {
                match hookyard::app::start(&path).await {
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                    }
                    Ok(running) => {
                        let _ = started_tx.send(Ok(running.addr()));
                        let grace = match stop_rx.await {
                            Ok(Some(grace)) => grace,
                            Ok(None) => running.configured_grace(),
                            Err(_) => Duration::ZERO,
                        };
                        running.shutdown(grace).await;
                    }
                }
            });
            drop(rt);
            let _ = done_tx.send(());
        })
        .expect("spawn the gateway thread");
    let started = tokio::time::timeout(START_TIMEOUT, started_rx)
        .await
        .unwrap_or_else(|_| panic!("the gateway on {} did not start within {START_TIMEOUT:?}", config.display()))
        .unwrap_or_else(|_| panic!("the gateway thread for {} died while starting", config.display()));
    match started {
        Ok(addr) => Ok((Thread { stop, done, handle }, addr)),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}
