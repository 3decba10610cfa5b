//! The gateway in process: `hookyard::app::start_with`, the composition root `hookyard run` uses,
//! on a runtime thread of its own (one worker, as the process tests give `hookyard run`).
//!
//! Why its own thread rather than the test's runtime: the tests' runtimes are current-thread, so
//! a gateway on them would share one thread with the test's sinks and clients (a plugin call or
//! a store read would stall them, which the real process never does); and a `Drop` can then stop
//! the gateway in order and wait for it, which it cannot do with tasks on the runtime it is
//! dropped on.
//!
//! Logs: every thread of the gateway's runtime (the one it is started from, the worker, the
//! blocking pool) has a thread-default `tracing` subscriber that writes into the gateway's own
//! buffer, in the text format `hookyard run` writes to stderr (no target, no colours), filtered
//! at `info` unless the test says otherwise ([`App::start_yaml_log`], what `RUST_LOG` is to a
//! process). Threads the crate spawns itself (the store writer, the plugin epoch ticker) log
//! elsewhere. A panic on one of those runtime threads is written into the buffer as
//! `thread '…' panicked at …`, and a gateway whose buffer has one fails its test at drop, as a
//! process whose stderr has one does.
//!
//! Metrics are process-wide (one Prometheus recorder for every gateway of the test run): a test
//! asserting a metric value uses labels no other test uses, or asserts a difference.
//!
//! Plugins: every in-process gateway shares one plugin host ([`plugins`]) with one compile cache
//! for the whole run, so a plugin compiles once per test run.
//!
//! What stays a process test (`Gateway`): kill -9 and crash recovery, signals, the CLI itself,
//! the stderr format itself (`--log-format json`), memory measurements, open-file limits, the
//! README commands.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookyard::snapshot::Plugins;
use http::Method;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::admin_api::AdminApi;
use super::config::Config;
use super::{Answer, RawResponse, START_TIMEOUT, WAIT, exchange, http_client, manifest_dir, raw_exchange};

/// The plugin host every in-process gateway of this test run shares (one wasmtime engine, one
/// compile cache: the process tests' `HOOKYARD_PLUGIN_CACHE`).
pub fn plugins() -> Arc<Plugins> {
    static PLUGINS: OnceLock<Arc<Plugins>> = OnceLock::new();
    PLUGINS
        .get_or_init(|| Arc::new(Plugins::with_cache(Some(manifest_dir().join("target/plugin-cache-tests")))))
        .clone()
}

/// One gateway's log: what its threads wrote, as `hookyard run` writes it to stderr.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn append(&self, s: &str) {
        self.0.lock().unwrap().extend_from_slice(s.as_bytes());
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

thread_local! {
    /// On a gateway's runtime threads: its log, and the guard keeping its subscriber the
    /// thread's default for as long as the thread lives.
    static THREAD_LOG: RefCell<Option<(LogBuffer, tracing::dispatcher::DefaultGuard)>> = const { RefCell::new(None) };
}

/// Makes `dispatch` (writing to `log`) this thread's default subscriber, for the thread's life.
fn adopt(log: &LogBuffer, dispatch: &tracing::Dispatch) {
    let guard = tracing::dispatcher::set_default(dispatch);
    THREAD_LOG.with(|t| *t.borrow_mut() = Some((log.clone(), guard)));
}

/// Installs (once) a panic hook that also writes a panic on a gateway thread into its log, in
/// the words the default hook prints (`thread 'NAME' panicked at FILE:LINE:COL:`).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = THREAD_LOG.try_with(|t| {
                if let Ok(t) = t.try_borrow()
                    && let Some((log, _)) = t.as_ref()
                {
                    let thread = std::thread::current();
                    let name = thread.name().unwrap_or("<unnamed>");
                    let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                    let payload = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    log.append(&format!("thread '{name}' panicked at {at}:\n{payload}\n"));
                }
            });
            previous(info);
        }));
    });
}

/// The subscriber `hookyard run` installs for `--log-format text` with `RUST_LOG=filter`, writing
/// into `log`.
fn subscriber(filter: &str, log: &LogBuffer) -> tracing::Dispatch {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| panic!("log filter {filter:?}: {e}"));
    let s = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log.clone())
        .with_ansi(false)
        .with_target(false)
        .finish();
    tracing::Dispatch::new(s)
}

/// A gateway started in this process from a config in its own temp dir.
pub struct App {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub config_path: PathBuf,
    running: Option<Thread>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The log of the gateway running now (a restart starts a new one, as a new process's
    /// stderr is a new file).
    log: LogBuffer,
    /// The `RUST_LOG`-style filter its logs are written at.
    filter: String,
    /// The config and the default store; removed after the gateway stopped (`None`: the test
    /// keeps the config's directory itself).
    _dir: Option<tempfile::TempDir>,
}

/// The thread a gateway runs on, and how to stop it.
struct Thread {
    /// `Some(grace)`, or `None` for the configured `server.shutdown_grace`; dropped: no grace.
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
    /// default one, in the temp dir. Logs at `info`.
    pub async fn start_yaml(yaml: &str) -> App {
        App::start_yaml_log(yaml, "info").await
    }

    /// [`App::start_yaml`] with logs at `filter` (what `RUST_LOG` is to `hookyard run`).
    pub async fn start_yaml_log(yaml: &str, filter: &str) -> App {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("routes.yaml");
        let mut yaml = yaml.to_string();
        if !yaml.lines().any(|l| l.starts_with("admin:")) {
            yaml.push_str("\nadmin: { listen: \"127.0.0.1:0\" }\n");
        }
        std::fs::write(&config_path, yaml).expect("write config");
        App::start_at_log(dir, config_path, filter).await
    }

    /// Starts the config already written at `config_path` (inside `dir`, which the gateway
    /// keeps), with logs at `filter`.
    pub async fn start_at_log(dir: tempfile::TempDir, config_path: PathBuf, filter: &str) -> App {
        App::launch(Some(dir), config_path, filter).await
    }

    async fn launch(dir: Option<tempfile::TempDir>, config_path: PathBuf, filter: &str) -> App {
        let log = LogBuffer::default();
        let (running, addr, admin_addr) =
            spawn(&config_path, filter, &log).await.unwrap_or_else(|e| panic!("{e}\nlogs:\n{}", log.text()));
        App {
            addr,
            admin_addr,
            config_path,
            running: Some(running),
            client: http_client(),
            log,
            filter: filter.to_string(),
            _dir: dir,
        }
    }

    /// Starts the config at `config_path`, whose directory the test keeps (and removes) itself.
    pub async fn start_file(config_path: PathBuf) -> App {
        App::launch(None, config_path, "info").await
    }

    /// Stops the gateway in order, as SIGTERM stops `hookyard run` (the configured
    /// `server.shutdown_grace`), and starts it again on the same config (and so the same store).
    /// The new gateway has a new port and a new log.
    pub async fn restart(&mut self) {
        self.stop(None).await;
        let log = LogBuffer::default();
        let (running, addr, admin_addr) = spawn(&self.config_path, &self.filter, &log)
            .await
            .unwrap_or_else(|e| panic!("restart: {e}\nlogs:\n{}", log.text()));
        self.running = Some(running);
        self.addr = addr;
        self.admin_addr = admin_addr;
        self.log = log;
    }

    /// Stops the gateway in order with `grace` (`None`: the configured `server.shutdown_grace`)
    /// and waits for it (at most `WAIT` past the grace).
    pub async fn stop(&mut self, grace: Option<Duration>) {
        let Some(t) = self.running.take() else { return };
        let _ = t.stop.send(grace);
        let bound = WAIT + grace.unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + bound;
        loop {
            match t.done.try_recv() {
                Ok(()) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the gateway on {} did not stop within {bound:?}; logs:\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = t.handle.join();
    }

    /// The admin API client (`admin.token` `TOKEN`); the config must enable the admin listener.
    pub fn admin(&self) -> AdminApi {
        AdminApi::at(self.admin_addr.unwrap_or_else(|| panic!("the gateway on {} has no admin listener", self.addr)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the gateway logged so far, as `hookyard run` writes it to stderr.
    pub fn logs(&self) -> String {
        self.log.text()
    }

    pub fn logs_contain(&self, needle: &str) -> bool {
        self.logs().contains(needle)
    }

    /// The log lines that contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.logs().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).collect()
    }

    /// Waits until `n` log lines each contain all of `needles` (polled every 20 ms, at most
    /// `timeout`); returns those lines.
    pub async fn wait_for_log_lines(&self, needles: &[&str], n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines_with(needles);
            if lines.len() >= n {
                return lines;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {n} log line(s) with {needles:?} from the gateway on {}; logs:\n{}",
                    self.addr,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the logs contain `needle` (polled every 20 ms, at most `timeout`) and returns
    /// them; panics with the logs if it never appears.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{needle:?} never appeared in the logs of the gateway on {} within {timeout:?}; logs:\n{logs}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// Writes `head` (request line and headers, ending in the blank line) and then `body` on a
    /// new connection, leaving the request unfinished if `body` is short of what `head` promised,
    /// and reads the response until the gateway closes the connection. For limits that must be
    /// enforced before a request ends: nothing more is written once the gateway has answered.
    pub async fn raw(&self, head: &str, body: &[u8]) -> RawResponse {
        raw_exchange(self.addr, head, body).await
    }
}

impl Drop for App {
    /// Stops the gateway without grace (the sender dropped) and waits for its thread, boundedly;
    /// then fails the test if the gateway panicked (as `Process` does on `panicked at`).
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
        let logs = self.logs();
        if std::thread::panicking() {
            eprintln!("---- logs of the gateway on {} ----\n{logs}---- end ----", self.addr);
        } else if logs.contains("panicked at") {
            panic!("the gateway on {} panicked during the test; logs:\n{logs}", self.addr);
        }
    }
}

type Started = Result<(SocketAddr, Option<SocketAddr>), String>;

/// Starts the gateway at `config` on a thread of its own, logging into `log` at `filter`;
/// returns once it listens, or what `hookyard::app::start_with` said.
async fn spawn(
    config: &Path,
    filter: &str,
    log: &LogBuffer,
) -> Result<(Thread, SocketAddr, Option<SocketAddr>), String> {
    install_panic_hook();
    let dispatch = subscriber(filter, log);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Started>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<Option<Duration>>();
    let (done_tx, done) = std::sync::mpsc::channel();
    let path = config.to_path_buf();
    let log = log.clone();
    let handle = std::thread::Builder::new()
        .name(format!("gateway {}", config.display()))
        .spawn(move || {
            adopt(&log, &dispatch);
            let (thread_log, thread_dispatch) = (log.clone(), dispatch.clone());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("gateway-worker")
                .on_thread_start(move || adopt(&thread_log, &thread_dispatch))
                .on_thread_stop(|| THREAD_LOG.with(|t| drop(t.borrow_mut().take())))
                .enable_all()
                .build()
                .expect("the gateway's runtime");
            rt.block_on(async move {
                match hookyard::app::start_with(&path, plugins()).await {
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                    }
                    Ok(running) => {
                        // Let every task `start` spawned take its first step (the config watcher
                        // registers its directories and hashes the files there) before the test
                        // acts: they were spawned from here, into the runtime's FIFO injection
                        // queue, so a task spawned now runs after their first poll.
                        let _ = tokio::spawn(async {}).await;
                        let _ = started_tx.send(Ok((running.addr(), running.admin_addr())));
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
        Ok((addr, admin)) => Ok((Thread { stop, done, handle }, addr, admin)),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}

/// The harness's own check: what a gateway thread logs and a panic on it land in its buffer, in
/// the words a process's stderr has, so `App`'s drop fails a test whose gateway panicked.
#[test]
fn a_gateway_threads_logs_and_panics_are_in_its_log() {
    install_panic_hook();
    let log = LogBuffer::default();
    let dispatch = subscriber("info", &log);
    let thread_log = log.clone();
    let joined = std::thread::Builder::new()
        .name("gateway-worker".into())
        .spawn(move || {
            adopt(&thread_log, &dispatch);
            tracing::info!(destination = "d", "delivered");
            tracing::debug!("filtered out at info");
            panic!("boom in a gateway task");
        })
        .unwrap()
        .join();
    assert!(joined.is_err(), "the thread panicked");
    let text = log.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(" INFO delivered destination=\"d\""), "the text format of `hookyard run`: {text}");
    assert!(!text.contains("filtered out"), "{text}");
    assert!(text.contains("thread 'gateway-worker' panicked at tests/it/harness/app.rs:"), "{text}");
    assert!(text.contains("boom in a gateway task"), "{text}");
}
