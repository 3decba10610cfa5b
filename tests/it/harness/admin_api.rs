//! What the admin API and reload tests need on top of the harness: an admin API client that finds
//! the admin address on the gateway's stdout, a Prometheus text parser, atomic ways of changing a
//! config file (in place, rename over, symlink swap), and a process's pid and memory from `/proc`.
//!
//! Same rules as the harness: every wait is bounded and reports what it saw; no guessed sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;

use super::{Answer, Process, WAIT, http_client};

/// The bearer token every test config gives `admin.token` (at least 16 characters).
pub const TOKEN: &str = "admin-test-token-0123456789";

/// Bound of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits (at most `WAIT`) for the `admin listening on ADDR` line the gateway prints after its
/// `listening on` line.
pub async fn admin_addr(p: &Process) -> SocketAddr {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = p.stdout();
        if let Some(addr) = out.lines().find_map(|l| l.strip_prefix("admin listening on ")) {
            return addr.parse().unwrap_or_else(|_| panic!("bad admin address in {out:?}"));
        }
        assert!(Instant::now() < deadline, "no `admin listening on` line within {WAIT:?}; stdout {out:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client of one gateway's admin API.
pub struct AdminApi {
    pub addr: SocketAddr,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminApi {
    /// The admin API of `p`, sending `TOKEN`.
    pub async fn of(p: &Process) -> AdminApi {
        AdminApi::at(admin_addr(p).await)
    }

    /// The admin API at `addr` (an in-process gateway's), sending `TOKEN`.
    pub fn at(addr: SocketAddr) -> AdminApi {
        AdminApi { addr, token: Some(TOKEN.to_string()), client: http_client() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One request with exactly the `Authorization` header given (none if `None`).
    pub async fn send(&self, method: Method, path: &str, authorization: Option<&str>, body: &str) -> Answer {
        let mut req = Request::builder().method(method.clone()).uri(self.url(path));
        if let Some(a) = authorization {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).expect("valid request");
        let result = tokio::time::timeout(ADMIN_TIMEOUT, async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await;
        match result {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => panic!("admin {method} {path} failed: {e:?}"),
            Err(_) => panic!("admin {method} {path}: no answer within {ADMIN_TIMEOUT:?}"),
        }
    }

    fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, self.bearer().as_deref(), "").await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        self.send(Method::POST, path, self.bearer().as_deref(), body).await
    }

    /// GET `path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let a = self.get(path).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text());
        a.json()
    }

    /// POST `path`, which must answer 200 with JSON.
    pub async fn post_json(&self, path: &str, body: &str) -> Value {
        let a = self.post(path, body).await;
        assert_eq!(a.status, 200, "POST {path} {body}: {}", a.text());
        a.json()
    }

    pub async fn status(&self) -> Value {
        self.get_json("/api/v1/status").await
    }

    pub async fn metrics(&self) -> Metrics {
        let a = self.get("/metrics").await;
        assert_eq!(a.status, 200, "GET /metrics: {}", a.text());
        Metrics::parse(&a.text())
    }

    /// Polls `GET path` (every 20 ms, at most `timeout`) until `done` holds for its JSON.
    pub async fn wait_json(&self, path: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.get_json(path).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what} at {path}; last answer {v:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET path` (every 20 ms, at most `WAIT`) until `done` holds for the answer.
    pub async fn wait_answer(&self, path: &str, what: &str, done: impl Fn(&Answer) -> bool) -> Answer {
        let deadline = Instant::now() + WAIT;
        loop {
            let a = self.get(path).await;
            if done(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what} at {path}; last answer {} {}",
                a.status,
                a.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/api/v1/status` until `done` holds.
    pub async fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_json("/api/v1/status", what, WAIT, done).await
    }

    /// Polls `/metrics` until `done` holds; returns the last scrape.
    pub async fn wait_metrics(&self, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.metrics().await;
            if done(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "waited {WAIT:?} for metrics: {what}; last scrape:\n{m:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every delivery matching `query` (e.g. `destination=a`), following `next` with `limit`.
    pub async fn all_deliveries(&self, query: &str, limit: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut before: Option<i64> = None;
        for _ in 0..1000 {
            let mut q = format!("limit={limit}");
            if !query.is_empty() {
                q.push('&');
                q.push_str(query);
            }
            if let Some(b) = before {
                q.push_str(&format!("&before={b}"));
            }
            let page = self.get_json(&format!("/api/v1/deliveries?{q}")).await;
            out.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next"].as_i64() {
                Some(n) => before = Some(n),
                None => return out,
            }
        }
        panic!("more than 1000 pages for {query}")
    }
}

/// A Prometheus text exposition as `name{k="v",…}` (labels sorted) → value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut map = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad exposition line {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let key = match series.split_once('{') {
                None => series.to_string(),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                    key(name, &split_labels(labels).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
                }
            };
            assert!(map.insert(key.clone(), value).is_none(), "series {key} appears twice");
        }
        Metrics(map)
    }

    /// The value of one series, 0 when absent (a counter that never moved is not exported).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.0.contains_key(&key(name, labels))
    }

    /// The sum of every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name)
            .filter(|(l, _)| labels.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every series of `name` with its labels.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (BTreeMap<String, String>, f64)> + 'a {
        self.0.iter().filter_map(move |(k, v)| {
            let labels = match k.split_once('{') {
                None if k == name => "",
                Some((n, rest)) if n == name => rest.strip_suffix('}')?,
                _ => return None,
            };
            Some((split_labels(labels).into_iter().collect(), *v))
        })
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let mut l: Vec<(&str, &str)> = labels.to_vec();
    l.sort();
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// `a="x",b="y\"z"` → pairs (label values are unescaped).
fn split_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad labels {s:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {s:?}"));
        out.push((k.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Changing a config file the ways editors and deployments do

/// Rewrites the file in place (truncate and write, same inode).
pub fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).expect("open config");
    f.write_all(text.as_bytes()).expect("write config");
    f.sync_all().expect("sync config");
}

/// Writes a sibling temp file and renames it over `path`, as editors and `kubectl cp` do.
pub fn write_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename over config");
}

/// Points the symlink `link` at `target` atomically: a new symlink renamed over the old one.
pub fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_file_name(format!("{}.tmp-link", link.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("create new symlink");
    std::fs::rename(&tmp, link).expect("rename symlink over the old one");
}

/// The version `hookyard check` reports for a config file (the one `/api/v1/status` must show
/// once that file is active).
pub async fn checked_version(path: &Path) -> String {
    let mut cmd = super::hookyard();
    cmd.arg("check").arg("--config").arg(path);
    let out = super::run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "check {}: {}{}", path.display(), out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    all.split("(version ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no version in check output {all:?}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// The gateway process as the OS sees it

/// The pid of the `hookyard run --config CONFIG` process (config paths are unique temp paths, so
/// there is exactly one).
pub fn pid_of(config: &Path) -> u32 {
    let want = config.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 4 && args[1] == b"run" && args.windows(2).any(|w| w[0] == b"--config" && w[1] == want) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "expected one `hookyard run --config {}`, found pids {found:?}", config.display());
    found[0]
}

/// Sends `signal` (e.g. `-HUP`) to the process `pid` (one this test started).
pub async fn signal(pid: u32, signal: &str) {
    let st = tokio::process::Command::new("kill").arg(signal).arg(pid.to_string()).status().await.expect("run kill");
    assert!(st.success(), "kill {signal} {pid} failed");
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    super::proc_status_kib(pid, "VmRSS").unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// A POST that reports failures instead of panicking (for load tests that count them).
pub async fn try_post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> Result<Answer, String> {
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let r = tokio::time::timeout(ADMIN_TIMEOUT, async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>(Answer { status: parts.status, headers: parts.headers, body })
    })
    .await;
    r.unwrap_or_else(|_| Err(format!("no answer within {ADMIN_TIMEOUT:?}")))
}

/// A POST to `addr` that must succeed at the HTTP level.
pub async fn post_to(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    try_post(&http_client(), &format!("http://{addr}{path}"), headers, body.to_string())
        .await
        .unwrap_or_else(|e| panic!("POST {path} to {addr}: {e}"))
}

/// A temp dir that outlives a test's gateway, with the path of its config file.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
