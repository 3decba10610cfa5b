//! The integration-test harness: the gateway in process (`App`, in `app`: `hookyard::app::start`
//! on a runtime thread of its own, with its logs captured) or the real `hookyard` binary in a child
//! process (`Gateway`, for tests where the process is the point: signals, kill -9, the CLI, log
//! output, memory), in-process fixture servers that record what the gateway sends them, and signing helpers written independently of
//! the crate (straight `hmac` + `sha2`, never `hookyard::verify` or `hookyard::sign`), so a bug
//! shared by the gateway's signer and verifier cannot hide itself.
//!
//! Rules every helper keeps:
//! - every wait is bounded and fails the test with what was observed instead of hanging;
//! - nothing sleeps for a guessed time: waits are on a recorded request, a process line or a log
//!   line (polled), never on the clock alone;
//! - every listener binds `127.0.0.1:0` and every config lives in its own temp dir, so tests run
//!   in parallel;
//! - a fixture that fails (a panicking sink task, a gateway that dies or panics) fails the test.
//!
//! The whole suite is one test crate (`tests/it/main.rs`), so this harness compiles once; the
//! admin API client and config-file helpers are in `admin_api`.

pub mod admin_api;
pub mod app;
pub mod config;
pub mod postgres;

pub use app::App;
pub use config::{Config, Dest, Route, Source};

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Sha256, Sha512};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest time a process gets to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound of every wait for something the gateway does (a delivery, a log line).
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound of one HTTP exchange with the gateway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test (built by cargo for integration tests).
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hookyard")
}

/// Directory of the crate (for the bundled `routes.yaml` and `examples/`).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A `hookyard` command with a predictable environment: plain-text logs at `info`, no colours,
/// one worker thread (the machine is shared), and none of the bundled config's secret variables
/// inherited from the developer's shell.
pub fn hookyard() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("RUST_LOG", "info")
        // one plugin cache for every test gateway: compiling a plugin takes seconds in a debug build
        .env("HOOKYARD_PLUGIN_CACHE", manifest_dir().join("target/plugin-cache-tests"))
        .env("NO_COLOR", "1")
        .env("HOOKYARD_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in [
        "GITHUB_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "SHOPIFY_WEBHOOK_SECRET",
        "SLACK_SIGNING_SECRET",
        "DEPLOYS_SIGNING_SECRET",
        "REVIEWS_SIGNING_SECRET",
        "BILLING_SIGNING_SECRET",
        "ORDERS_SIGNING_SECRET",
        "CHAT_SIGNING_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs a `hookyard` command to completion (bounded by `WAIT`).
pub async fn run_cli(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn hookyard");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("hookyard {cmd:?} did not finish within {WAIT:?}"))
        .expect("wait for hookyard");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`) in case a logger emits them anyway.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Long-running processes (`run`, `receive`)

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, …), or `None` once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `hookyard` process that announced `listening on ADDR`. Killed on drop; its stderr is kept in
/// a file for assertions on logs, and its later stdout lines in memory.
pub struct Process {
    pub addr: SocketAddr,
    child: Child,
    stderr_path: PathBuf,
    stdout: Arc<Mutex<String>>,
    _stdout_task: JoinHandle<()>,
    what: String,
    /// Set once the test has stopped the process itself.
    stopped: bool,
}

impl Process {
    /// Spawns `cmd` and waits (at most `START_TIMEOUT`) for its first stdout line, which must be
    /// `listening on ADDR`. Stderr goes to `stderr_path`.
    pub async fn spawn(mut cmd: Command, stderr_path: PathBuf) -> Process {
        let what = format!("{cmd:?}");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let logs = || strip_ansi(&std::fs::read_to_string(&stderr_path).unwrap_or_default());
        let line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                panic!("{what} exited ({status:?}) before listening; stderr:\n{}", logs())
            }
            Ok(Err(e)) => panic!("{what}: reading stdout: {e}; stderr:\n{}", logs()),
            Err(_) => panic!("{what} printed no line within {START_TIMEOUT:?}; stderr:\n{}", logs()),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: first stdout line is {line:?}, expected `listening on ADDR`"));
        // Keep reading stdout so the child never blocks on a full pipe, and keep it for assertions.
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let stdout_task = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Process { addr, child, stderr_path, stdout, _stdout_task: stdout_task, what, stopped: false }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }

    /// The process's resident set size now, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS").expect("VmRSS in /proc status")
    }

    /// Everything written to stderr so far (colour codes removed).
    pub fn logs(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default())
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
                    "waited {timeout:?} for {n} log line(s) with {needles:?} from {}; logs:\n{}",
                    self.what,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the process to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().expect("the process is still running");
        let kill = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await.expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{} did not exit within {timeout:?} of SIGTERM; stderr:\n{}", self.what, self.logs())
            })
            .expect("wait for the process");
        self.stopped = true;
        status
    }

    /// SIGKILL (nothing runs after it: no shutdown, no log line), and waits for the process to be gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("kill -9");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("a killed process is gone within 10 s")
            .expect("wait for the process");
        self.stopped = true;
    }

    /// Stdout lines after the `listening on` line.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` (polled every 20 ms, at most `timeout`) and returns
    /// the logs; panics with the logs if it never appears.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            if Instant::now() >= deadline {
                panic!("{:?} never appeared in the logs of {} within {timeout:?}; logs:\n{logs}", needle, self.what);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let exited = if self.stopped { None } else { self.child.try_wait().ok().flatten() };
        let _ = self.child.start_kill();
        let logs = self.logs();
        if std::thread::panicking() {
            eprintln!("---- stderr of {} ----\n{logs}---- end ----", self.what);
            return;
        }
        // A fixture that died or panicked (even in a task it survived) fails the test.
        if let Some(status) = exited {
            panic!("{} exited during the test ({status}); stderr:\n{logs}", self.what);
        }
        if logs.contains("panicked at") {
            panic!("{} panicked during the test; stderr:\n{logs}", self.what);
        }
    }
}

/// A running gateway (`hookyard run`) with its config in its own temp dir.
pub struct Gateway {
    pub process: Process,
    pub config_path: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    restarts: usize,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Gateway {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Gateway {
    /// Writes `yaml` to a temp dir and runs `hookyard run --config` on it. The config should
    /// listen on `127.0.0.1:0`. Unless it has an `admin:` section, the admin listener is put on
    /// `127.0.0.1:0` too (its default, a fixed port, would make parallel gateways collide); the
    /// store is the default one, in the temp dir.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_env(yaml, &[]).await
    }

    /// [`Gateway::start`] with these environment variables set for the process (not for a
    /// [`Gateway::restart`]).
    pub async fn start_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("routes.yaml");
        let mut yaml = yaml.to_string();
        if !yaml.lines().any(|l| l.starts_with("admin:")) {
            yaml.push_str("\nadmin: { listen: \"127.0.0.1:0\" }\n");
        }
        std::fs::write(&config_path, yaml).expect("write config");
        let mut cmd = hookyard();
        cmd.arg("run").arg("--config").arg(&config_path).envs(env.iter().copied());
        let process = Process::spawn(cmd, dir.path().join("stderr.log")).await;
        Gateway { process, config_path, client: http_client(), restarts: 0, _dir: dir }
    }

    /// Starts the gateway again on the same config (and so the same store), stopping the running
    /// process first if the test has not. The new process has a new port and a new log.
    pub async fn restart(&mut self) {
        if !self.process.stopped {
            self.process.terminate(WAIT).await;
        }
        self.restarts += 1;
        let mut cmd = hookyard();
        cmd.arg("run").arg("--config").arg(&self.config_path);
        let log = self._dir.path().join(format!("stderr-{}.log", self.restarts));
        self.process = Process::spawn(cmd, log).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.process.addr)
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
}

/// One request to a gateway (in process or not); a failure panics with the gateway's `logs`.
async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    logs: impl Fn() -> String,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("valid request");
    let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
    })
    .await;
    match result {
        Ok(Ok((parts, body))) => Answer { status: parts.status, headers: parts.headers, body },
        Ok(Err(e)) => panic!("request to {url} failed: {e:?}; gateway stderr:\n{}", logs()),
        Err(_) => panic!("request to {url} got no answer within {REQUEST_TIMEOUT:?}; gateway stderr:\n{}", logs()),
    }
}

/// A response from the gateway or another server.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }

    /// Asserts a `202 {"id":"evt_<32 hex>"}` and returns the id.
    pub fn accepted_id(&self) -> String {
        assert_eq!(self.status, StatusCode::ACCEPTED, "expected 202, body {:?}", self.text());
        let v = self.json();
        let id = v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string();
        assert!(is_event_id(&id), "{id:?} is not evt_ + 32 lower-case hex digits");
        assert_eq!(v, serde_json::json!({ "id": id }), "the 202 body holds the id only");
        id
    }
}

pub fn is_event_id(id: &str) -> bool {
    id.strip_prefix("evt_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

pub fn is_message_id(id: &str) -> bool {
    id.strip_prefix("msg_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A GET with a fresh client, for helper processes such as `hookyard receive`.
pub async fn get(url: &str) -> Answer {
    let req = Request::get(url).body(Full::new(Bytes::new())).expect("valid request");
    let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let resp = http_client().request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer { status: parts.status, headers: parts.headers, body })
    })
    .await;
    match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("GET {url} failed: {e:?}"),
        Err(_) => panic!("GET {url}: no answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The value of a header (case-insensitive name), if present once or more (first value).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

async fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = head.as_bytes().to_vec();
        request.extend_from_slice(body);
        stream.write_all(&request).await.expect("write request");
        // Read until the response is complete: headers, then Content-Length bytes of body.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")))
                    .map(|(_, v)| v.trim().parse::<usize>().expect("numeric content-length"));
                if let Some(len) = len
                    && buf.len() >= end + 4 + len
                {
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    return RawResponse { status, head, body };
                }
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before a whole response; got {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("no response on the raw connection within the timeout")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The sink: an in-process destination

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    /// Path and query, as requested.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the request's body had been fully received.
    pub at: Instant,
}

impl Recorded {
    /// The only value of a header; panics if it is sent more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} sent more than once: {:?}", self.headers);
        Some(first.to_str().expect("ASCII header"))
    }

    /// Like `header`, but the header must be present.
    pub fn must(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!("{} {} has no {name} header; headers: {:?}", self.method, self.path, self.headers)
        })
    }
}

/// What the sink answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// How long to hold the answer back (to make the gateway time out).
    pub delay: Duration,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    pub fn status(status: u16) -> Reply {
        Reply { status, headers: Vec::new(), delay: Duration::ZERO }
    }

    pub fn delayed(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }

    pub fn retry_after(self, secs: u64) -> Reply {
        self.header("retry-after", &secs.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

struct SinkInner {
    recorded: Vec<Recorded>,
    script: VecDeque<Reply>,
}

struct SinkState {
    inner: Mutex<SinkInner>,
    count: watch::Sender<usize>,
    failures: Mutex<Vec<String>>,
}

impl SinkState {
    /// Records a request and picks its reply, atomically, so the n-th request gets the n-th reply.
    fn record(&self, r: Recorded) -> Reply {
        let mut inner = self.inner.lock().unwrap();
        inner.recorded.push(r);
        let n = inner.recorded.len();
        let reply = inner.script.pop_front().unwrap_or_else(Reply::ok);
        drop(inner);
        self.count.send_replace(n);
        reply
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// A destination on `127.0.0.1:0` that records every request and answers from a script (then
/// `200` forever).
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
    accept: JoinHandle<()>,
}

impl Sink {
    /// A sink that answers `200` to everything.
    pub async fn start() -> Sink {
        Sink::with_script(Vec::new()).await
    }

    /// A sink that answers the n-th request with `script[n]`, and `200` once the script is spent.
    pub async fn with_script(script: Vec<Reply>) -> Sink {
        Sink::at("127.0.0.1:0", script).await.expect("bind sink")
    }

    /// A sink listening on `addr` (another loopback address, a given port), if it can bind it.
    pub async fn at(addr: &str, script: Vec<Reply>) -> std::io::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr().expect("sink address");
        let state = Arc::new(SinkState {
            inner: Mutex::new(SinkInner { recorded: Vec::new(), script: script.into() }),
            count: watch::Sender::new(0),
            failures: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        st.fail(format!("sink accept failed: {e}"));
                        return;
                    }
                };
                let st2 = st.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st2.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    // Connection errors (the gateway closing a pooled connection) are not failures.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                let st3 = st.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await
                        && e.is_panic()
                    {
                        st3.fail(format!("a sink connection task panicked: {e}"));
                    }
                });
            }
        });
        Ok(Sink { addr, state, accept })
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.check();
        self.state.inner.lock().unwrap().recorded.clone()
    }

    /// Waits (at most `timeout`) until at least `n` requests have arrived and returns all of them.
    /// Panics, listing what did arrive, on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, &format!("{n} request(s)"), |r| r.len() >= n).await
    }

    /// Waits until `done` holds for the requests received so far (checked on every arrival).
    pub async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        match self.try_wait_until(timeout, done).await {
            Ok(recorded) => recorded,
            Err(recorded) => {
                let got: Vec<String> = recorded.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
                panic!("sink {}: waited {timeout:?} for {what}; received {} request(s): {got:?}", self.addr, got.len())
            }
        }
    }

    /// Like `wait_until`, but a timeout is `Err` with what did arrive, for tests that report a
    /// more useful difference themselves.
    pub async fn try_wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Result<Vec<Recorded>, Vec<Recorded>> {
        let mut rx = self.state.count.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                {
                    let inner = self.state.inner.lock().unwrap();
                    if done(&inner.recorded) {
                        return inner.recorded.clone();
                    }
                }
                rx.changed().await.expect("sink state lives as long as the sink");
            }
        })
        .await;
        self.check();
        waited.map_err(|_| self.requests())
    }

    /// Fails the test if a fixture task failed.
    fn check(&self) {
        let failures = self.state.failures.lock().unwrap().clone();
        if !failures.is_empty() && !std::thread::panicking() {
            panic!("sink {} failed: {failures:?}", self.addr);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
        self.check();
    }
}

async fn handle(state: &SinkState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            state.fail(format!("reading the body of {} {}: {e}", parts.method, parts.uri));
            return Response::builder().status(500).body(Full::new(Bytes::new())).unwrap();
        }
    };
    let reply = state.record(Recorded {
        method: parts.method,
        path: parts.uri.path().to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
        at: Instant::now(),
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    resp.body(Full::new(Bytes::new())).expect("valid scripted reply")
}

// ---------------------------------------------------------------------------------------------
// Signatures, computed here from the providers' documentation

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

pub fn hmac_sha512(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), &[body])))
}

/// Stripe: `Stripe-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>` (the `whsec_`
/// secret is the key as is).
pub fn stripe_signature(secret: &str, t: u64, body: &[u8]) -> String {
    let t = t.to_string();
    format!("t={t},v1={}", hex::encode(hmac_sha256(secret.as_bytes(), &[t.as_bytes(), b".", body])))
}

/// Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`.
pub fn shopify_signature(secret: &str, body: &[u8]) -> String {
    b64(&hmac_sha256(secret.as_bytes(), &[body]))
}

/// Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{t}:{body}")>`.
pub fn slack_signature(secret: &str, t: u64, body: &[u8]) -> String {
    let t = t.to_string();
    format!("v0={}", hex::encode(hmac_sha256(secret.as_bytes(), &[b"v0:", t.as_bytes(), b":", body])))
}

/// The key of a `whsec_<base64>` secret.
pub fn whsec_key(secret: &str) -> Vec<u8> {
    let encoded = secret.strip_prefix("whsec_").expect("a whsec_ secret");
    BASE64.decode(encoded).expect("base64 after whsec_")
}

/// Standard Webhooks: `v1,<base64 HMAC-SHA256(key, "{id}.{t}.{body}")>`.
pub fn standard_webhooks_signature(secret: &str, id: &str, t: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(&whsec_key(secret), &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
    format!("v1,{}", b64(&mac))
}

/// `Authorization: Basic <base64 user:password>`.
pub fn basic_auth(user_password: &str) -> String {
    format!("Basic {}", b64(user_password.as_bytes()))
}

/// Asserts that a delivery carries a valid Standard Webhooks signature for `secret`, a
/// `msg_<24 hex>` id and a current timestamp; returns the webhook-id.
pub fn assert_standard_webhooks(r: &Recorded, secret: &str) -> String {
    let id = r.must("webhook-id");
    let t = r.must("webhook-timestamp");
    assert!(is_message_id(id), "webhook-id {id:?} is not msg_ + 24 hex digits");
    let ts: u64 = t.parse().unwrap_or_else(|_| panic!("webhook-timestamp {t:?} is not Unix seconds"));
    assert!(ts.abs_diff(now_unix()) <= 60, "webhook-timestamp {ts} is not now ({})", now_unix());
    let want = standard_webhooks_signature(secret, id, t, &r.body);
    assert_eq!(r.must("webhook-signature"), want, "webhook-signature of {} {}", r.method, r.path);
    id.to_string()
}

/// The header map of a recorded request as sorted `(name, value)` strings, for messages.
pub fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    v.sort();
    v
}

/// A gateway an event can be posted to, in process ([`App`]) or not ([`Gateway`]), for helpers
/// shared by tests of both kinds.
pub trait Ingress {
    fn post_body(&self, path: &str, headers: &[(&str, &str)], body: String) -> impl Future<Output = Answer>;
}

impl Ingress for App {
    fn post_body(&self, path: &str, headers: &[(&str, &str)], body: String) -> impl Future<Output = Answer> {
        App::post(self, path, headers, body)
    }
}

impl Ingress for Gateway {
    fn post_body(&self, path: &str, headers: &[(&str, &str)], body: String) -> impl Future<Output = Answer> {
        Gateway::post(self, path, headers, body)
    }
}
