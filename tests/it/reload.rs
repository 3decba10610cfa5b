//! Hot reload (in process, except where a test signals the process, measures its memory or asserts
//! the process-wide reload counters): the file changed in place, renamed over, swapped by a
//! symlink (plain and Kubernetes `..data`), SIGHUP, the admin API and the `reload`/`status`
//! commands; a broken file keeps the old config and says where it is broken; settings that need a
//! restart are reported; queued deliveries follow the current config; a bounded load test and a
//! memory check over many reloads.
//!
//! "Which config is active" is observed two ways: the version in `/api/v1/status` (the one
//! `hookyard check` prints for the file), and behaviour: config A routes every event to
//! destination `a` (path `/a` of the sink), config B to `b` (`/b`). The load test's two configs
//! differ in several places that must change together (see `coupled`), and some of its requests
//! send their head before a swap and their body after it, so a request that saw half of each
//! config would show.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::admin_api::*;
use crate::harness::*;
use serde_json::{Value, json};

/// A config whose only route sends every event of source `app` to `to`. Both destinations exist
/// in every config, so deliveries planned under one config can be made under the other.
/// `server_extra` goes inside `server: { … }`; `retry` is the destinations' retry policy.
fn routes(sink: &Sink, to: &str, server_extra: &str) -> String {
    routes_with(sink, to, server_extra, "{ schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }")
}

fn routes_with(sink: &Sink, to: &str, server_extra: &str, retry: &str) -> String {
    format!(
        r#"# routes to {to}
server: {{ listen: "127.0.0.1:0"{server_extra} }}
admin: {{ listen: "127.0.0.1:0", token: "{TOKEN}" }}
storage: {{ path: hookyard.db, sync: normal }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: none }}
destinations:
  a:
    url: {a}
    sign: {{ scheme: none }}
    retry: {retry}
  b:
    url: {b}
    sign: {{ scheme: none }}
    retry: {retry}
routes:
  - name: main
    source: app
    to: [{to}]
"#,
        a = sink.url("/a"),
        b = sink.url("/b"),
    )
}

/// `file:line:col` of the first `needle` in `text` (1-based, as `check` reports).
fn location(file: &Path, text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the config"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
    format!("{}:{line}:{col}", file.display())
}

/// A gateway on a config file the test lays out itself (for symlinks), with its admin API.
struct Node {
    process: Gw,
    admin: AdminApi,
    config: PathBuf,
    dir: ConfigDir,
}

/// The gateway of a [`Node`]: a `hookyard run` process where the test signals it, measures its
/// memory or asserts the process-wide reload counters; otherwise in process.
enum Gw {
    Process(Process),
    App(App),
}

impl Gw {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Gw::Process(p) => p.addr,
            Gw::App(a) => a.addr,
        }
    }

    fn logs(&self) -> String {
        match self {
            Gw::Process(p) => p.logs(),
            Gw::App(a) => a.logs(),
        }
    }

    fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        match self {
            Gw::Process(p) => p.log_lines_with(needles),
            Gw::App(a) => a.log_lines_with(needles),
        }
    }

    async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        match self {
            Gw::Process(p) => p.wait_for_log(needle, timeout).await,
            Gw::App(a) => a.wait_for_log(needle, timeout).await,
        }
    }
}

impl Node {
    /// Runs `hookyard run --config CONFIG`; `config` must already exist in `dir`.
    async fn start(dir: ConfigDir, config: PathBuf) -> Node {
        let mut cmd = hookyard();
        cmd.arg("run").arg("--config").arg(&config);
        let process = Process::spawn(cmd, dir.path("stderr.log")).await;
        let admin = AdminApi::of(&process).await;
        Node { process: Gw::Process(process), admin, config, dir }
    }

    /// Starts the gateway on `config` (already in `dir`) in process.
    async fn start_in(dir: ConfigDir, config: PathBuf) -> Node {
        let app = App::start_file(config.clone()).await;
        let admin = app.admin();
        Node { process: Gw::App(app), admin, config, dir }
    }

    /// Writes `yaml` as `routes.yaml` in a new temp dir and runs the gateway on it.
    async fn with(yaml: &str) -> Node {
        let dir = ConfigDir::new();
        let config = dir.path("routes.yaml");
        std::fs::write(&config, yaml).unwrap();
        Node::start(dir, config).await
    }

    /// [`Node::with`] in process.
    async fn with_in(yaml: &str) -> Node {
        let dir = ConfigDir::new();
        let config = dir.path("routes.yaml");
        std::fs::write(&config, yaml).unwrap();
        Node::start_in(dir, config).await
    }

    /// Posts an event (`X-Case: case`) and returns its id.
    async fn send(&self, case: &str) -> String {
        post_to(self.process.addr(), "/hooks/app", &[("X-Case", case)], &format!(r#"{{"case":"{case}"}}"#))
            .await
            .accepted_id()
    }

    /// Waits until `/api/v1/status` shows `version`; returns the status and how long it took.
    async fn wait_version(&self, version: &str, since: Instant) -> (Value, Duration) {
        let st = self.admin.wait_status(&format!("version {version}"), |s| s["version"] == version).await;
        (st, since.elapsed())
    }

    fn pid(&self) -> u32 {
        pid_of(&self.config)
    }
}

/// Sends an event and returns the sink path it was delivered to (`/a` or `/b`).
async fn route_of(node: &Node, sink: &Sink, case: &str) -> String {
    node.send(case).await;
    let got = sink.wait_until(WAIT, case, |r| r.iter().any(|r| r.must("x-case") == case)).await;
    let paths: Vec<&str> = got.iter().filter(|r| r.must("x-case") == case).map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), 1, "{case} delivered once, got {paths:?}");
    paths[0].to_string()
}

// --- file changes -----------------------------------------------------------------------------

/// Starts on A, changes the file to B with `change`, and checks B is active within the bound.
async fn check_file_change(what: &str, change: impl FnOnce(&Node, &str)) {
    let sink = Sink::start().await;
    let (a, b) = (routes(&sink, "a", ""), routes(&sink, "b", ""));
    let node = Node::with(&a).await;
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();
    assert_eq!(route_of(&node, &sink, "before").await, "/a");

    let b_file = node.dir.path("b.yaml.check");
    std::fs::write(&b_file, &b).unwrap();
    let v_b = checked_version(&b_file).await;
    assert_ne!(v_a, v_b);
    let t = Instant::now();
    change(&node, &b);
    let (st, took) = node.wait_version(&v_b, t).await;
    eprintln!("{what}: new version active after {took:?}");
    assert_eq!(st["reloads_ok"], 1, "one reload for one change: {st}");
    assert_eq!(st["last_error"], Value::Null, "{st}");
    assert_eq!(route_of(&node, &sink, "after").await, "/b", "{what}: new events follow the new routes");
    let m = node.admin.metrics().await;
    assert_eq!(m.get("hookyard_config_info", &[("version", &v_b)]), 1.0, "{m:#?}");
    assert_eq!(m.get("hookyard_config_info", &[("version", &v_a)]), 0.0, "{m:#?}");
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "reloaded")]), 1.0);
}

#[tokio::test]
async fn an_edit_in_place_is_picked_up() {
    check_file_change("in place", |node, b| write_in_place(&node.config, b)).await;
}

#[tokio::test]
async fn a_file_renamed_over_the_config_is_picked_up() {
    check_file_change("rename over", |node, b| write_rename(&node.config, b)).await;
}

#[tokio::test]
async fn a_burst_of_writes_is_one_reload() {
    // An editor that truncates, writes in pieces and touches the file: one reload, of the end state.
    check_file_change("burst", |node, b| {
        write_in_place(&node.config, "");
        let half = b.len() / 2;
        write_in_place(&node.config, &b[..half]);
        write_in_place(&node.config, b);
        let f = std::fs::File::options().append(true).open(&node.config).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_symlink_swapped_to_another_directory_is_picked_up() {
    let sink = Sink::start().await;
    let dir = ConfigDir::new();
    for (sub, to) in [("v1", "a"), ("v2", "b")] {
        std::fs::create_dir(dir.path(sub)).unwrap();
        std::fs::write(dir.path(sub).join("routes.yaml"), routes(&sink, to, "")).unwrap();
    }
    let link = dir.path("routes.yaml");
    std::os::unix::fs::symlink(dir.path("v1/routes.yaml"), &link).unwrap();
    let v2 = checked_version(&dir.path("v2/routes.yaml")).await;
    let node = Node::start_in(dir, link.clone()).await;
    assert_eq!(route_of(&node, &sink, "v1").await, "/a");

    let t = Instant::now();
    swap_symlink(&link, &node.dir.path("v2/routes.yaml"));
    let (st, took) = node.wait_version(&v2, t).await;
    eprintln!("symlink swap: new version active after {took:?}");
    assert_eq!(st["needs_restart"], json!([]), "the store stays where it was (relative to the link): {st}");
    assert_eq!(route_of(&node, &sink, "v2").await, "/b");
    assert!(node.dir.path("hookyard.db").exists(), "storage.path is relative to the config path given");
}

#[tokio::test]
async fn a_kubernetes_configmap_swap_is_picked_up() {
    // The kubelet's layout: routes.yaml -> ..data/routes.yaml, ..data -> ..<timestamp>/; an update
    // writes a new timestamped dir and renames a new ..data link over the old one.
    let sink = Sink::start().await;
    let dir = ConfigDir::new();
    for (sub, to) in [("..2026_01_01_00_00_00.1", "a"), ("..2026_01_01_00_05_00.2", "b")] {
        std::fs::create_dir(dir.path(sub)).unwrap();
        std::fs::write(dir.path(sub).join("routes.yaml"), routes(&sink, to, "")).unwrap();
    }
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", dir.path("routes.yaml")).unwrap();
    let v2 = checked_version(&dir.path("..2026_01_01_00_05_00.2/routes.yaml")).await;
    let config = dir.path("routes.yaml");
    let node = Node::start_in(dir, config).await;
    assert_eq!(route_of(&node, &sink, "first").await, "/a");

    let t = Instant::now();
    let tmp = node.dir.path("..data_tmp");
    std::os::unix::fs::symlink("..2026_01_01_00_05_00.2", &tmp).unwrap();
    std::fs::rename(&tmp, node.dir.path("..data")).unwrap();
    let (_, took) = node.wait_version(&v2, t).await;
    eprintln!("..data swap: new version active after {took:?}");
    assert_eq!(route_of(&node, &sink, "second").await, "/b");
}

// --- broken edits -----------------------------------------------------------------------------

#[tokio::test]
async fn a_broken_edit_keeps_the_running_config_and_says_where() {
    let sink = Sink::start().await;
    let a = routes(&sink, "a", "");
    let node = Node::with(&a).await;
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();

    // 1. a route to a destination that does not exist
    let broken = routes(&sink, "nope", "");
    let where_ = location(&node.config, &broken, "nope]");
    write_in_place(&node.config, &broken);
    let st = node.admin.wait_status("a failed reload", |s| s["reloads_failed"] == 1).await;
    assert_eq!(st["version"], v_a.as_str(), "the running config stays: {st}");
    assert_eq!(st["reloads_ok"], 0);
    let err = &st["last_error"];
    assert_eq!(err["trigger"], "file change", "{st}");
    assert_eq!(err["errors"], json!([format!("{where_}: routes[0].to[0]: unknown destination \"nope\"")]), "{st:#}");
    assert_eq!(route_of(&node, &sink, "still-a").await, "/a", "the old routes keep serving");
    let m = node.admin.metrics().await;
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "failed")]), 1.0, "{m:#?}");
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "reloaded")]), 0.0);
    assert_eq!(m.get("hookyard_config_info", &[("version", &v_a)]), 1.0);
    let ready = node.admin.get_json("/readyz").await;
    assert_eq!(
        (ready["ready"].as_bool(), ready["config_version"].as_str()),
        (Some(true), Some(v_a.as_str())),
        "{ready}"
    );

    // 2. not YAML at all, and several problems at once: every one is reported
    let garbage = format!("{}\nsources: [\n", a.trim_end());
    write_in_place(&node.config, &garbage);
    let st = node.admin.wait_status("a second failed reload", |s| s["reloads_failed"] == 2).await;
    let errors: Vec<String> =
        st["last_error"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    assert!(
        errors.len() == 1
            && errors[0].starts_with(&format!("{}:", node.config.display()))
            && errors[0].contains("YAML"),
        "{errors:?}"
    );
    let a_url = format!("url: {}\n", sink.url("/a"));
    let many = routes(&sink, "nope", "").replace(&a_url, &format!("{a_url}    colour: blue\n"));
    write_in_place(&node.config, &many);
    let st = node.admin.wait_status("a third failed reload", |s| s["reloads_failed"] == 3).await;
    let errors = st["last_error"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "every problem, not just the first: {errors:?}");
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .unwrap()
            .contains(&format!("{}: destinations.a.colour", location(&node.config, &many, "colour")))),
        "{errors:?}"
    );
    assert_eq!(route_of(&node, &sink, "still-a-2").await, "/a");

    // 3. the fix is picked up; the last error stays on record
    let b = routes(&sink, "b", "");
    write_rename(&node.config, &b);
    let st = node.admin.wait_status("the fixed file", |s| s["reloads_ok"] == 1).await;
    assert_ne!(st["version"], v_a.as_str());
    assert_eq!(st["reloads_failed"], 3, "{st}");
    assert_eq!(route_of(&node, &sink, "now-b").await, "/b");
    let m = node.admin.metrics().await;
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "failed")]), 3.0, "{m:#?}");
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "reloaded")]), 1.0);
}

#[tokio::test]
async fn a_missing_environment_variable_fails_the_reload() {
    let sink = Sink::start().await;
    let node = Node::with_in(&routes(&sink, "a", "")).await;
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();
    let text = routes(&sink, "b", "").replace("sign: { scheme: none }\n    retry: { schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }\nroutes", "sign: { secret: \"${HOOKYARD_TEST_UNSET_SECRET}\" }\n    retry: { schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }\nroutes");
    assert!(text.contains("HOOKYARD_TEST_UNSET_SECRET"));
    let r = {
        write_rename(&node.config, &text);
        node.admin.wait_status("a failed reload", |s| s["reloads_failed"] == 1).await
    };
    assert_eq!(r["version"], v_a.as_str());
    let errors = r["last_error"]["errors"].to_string();
    assert!(errors.contains("HOOKYARD_TEST_UNSET_SECRET") && errors.contains("destinations.b.sign"), "{r:#}");
    assert_eq!(route_of(&node, &sink, "still-a").await, "/a");
}

// --- secrets from files -----------------------------------------------------------------------

/// A config whose source `app` verifies GitHub signatures with the secret in the file `secret`
/// (as written in `${file:…}`), routed nowhere.
fn github_from_file(secret: &str) -> String {
    format!(
        r#"server: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", token: "{TOKEN}" }}
storage: {{ path: hookyard.db, sync: normal }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: github, secret: "${{file:{secret}}}" }}
"#
    )
}

/// Posts an event signed with `secret` the way GitHub does; returns the status.
async fn post_signed(node: &Node, secret: &str) -> u16 {
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let sig = github_signature(secret, body.as_bytes());
    post_to(node.process.addr(), "/hooks/app", &[("X-Hub-Signature-256", &sig)], body).await.status.as_u16()
}

/// The errors `hookyard check` prints for `config`, which must fail.
async fn check_errors(config: &Path) -> String {
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(config);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "check must fail: {}{}", out.stdout, out.stderr);
    out.stderr
}

#[tokio::test]
async fn a_secret_from_a_file_verifies_and_a_rotated_file_is_picked_up_by_a_reload() {
    let dir = ConfigDir::new();
    std::fs::create_dir(dir.path("secrets")).unwrap();
    let secret = dir.path("secrets/github");
    // as Kubernetes and systemd write them: one trailing newline, which is not part of the secret
    std::fs::write(&secret, "first-secret-0123\n").unwrap();
    let config = dir.path("routes.yaml");
    let text = github_from_file("secrets/github");
    std::fs::write(&config, &text).unwrap();
    let v1 = checked_version(&config).await;
    let node = Node::start_in(dir, config.clone()).await;
    assert_eq!(node.admin.status().await["version"], v1.as_str());
    assert_eq!(post_signed(&node, "first-secret-0123").await, 202);
    assert_eq!(post_signed(&node, "first-secret-0123\n").await, 401, "the newline is not part of it");
    assert!(!node.process.logs().contains("first-secret-0123"), "never logged");

    // rotate: a new file renamed over the old one; `reload` must see it although the config text
    // did not change (the watcher may see it first: then the API finds it unchanged)
    let tmp = node.dir.path("secrets/.github.tmp");
    std::fs::write(&tmp, "second-secret-4567\n").unwrap();
    std::fs::rename(&tmp, &secret).unwrap();
    let v2 = checked_version(&node.config).await;
    assert_ne!(v1, v2, "the secret file's content is part of the version");
    let r = node.admin.post_json("/api/v1/reload", "").await;
    assert!(
        r == json!({"result": "reloaded", "version": v2, "needs_restart": []})
            || r == json!({"result": "unchanged", "version": v2}),
        "{r}"
    );
    assert_eq!(node.admin.status().await["version"], v2.as_str(), "status shows the new version");
    assert_eq!(post_signed(&node, "first-secret-0123").await, 401, "the old secret is refused");
    assert_eq!(post_signed(&node, "second-secret-4567").await, 202, "the new one verifies");

    // a missing or empty file fails the reload (and `check`) with the path, never the content;
    // the running config stays
    let at = location(&node.config, &text, "\"${file:");
    let shown = secret.display();
    std::fs::remove_file(&secret).unwrap();
    let want = format!(
        "{at}: sources.app.verify.secret: cannot read secret file {shown}: No such file or directory (os error 2)"
    );
    assert_eq!(check_errors(&node.config).await.trim_end(), format!("{want}\n1 problem found"));
    let a = node.admin.post("/api/v1/reload", "").await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.json()["errors"], json!([want]));
    std::fs::write(&secret, "\n").unwrap();
    let want = want.replace(
        &format!("cannot read secret file {shown}: No such file or directory (os error 2)"),
        &format!("secret file {shown} is empty"),
    );
    assert_eq!(check_errors(&node.config).await.trim_end(), format!("{want}\n1 problem found"));
    let a = node.admin.post("/api/v1/reload", "").await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.json()["errors"], json!([want]));
    let st = node.admin.status().await;
    assert_eq!(st["version"], v2.as_str(), "{st}");
    assert_eq!(post_signed(&node, "second-secret-4567").await, 202, "the running config stays");
}

#[tokio::test]
async fn a_kubernetes_secret_swap_is_picked_up_without_a_trigger() {
    // The kubelet's layout for a Secret volume: token -> ..data/token, ..data -> ..<timestamp>/;
    // a rotation writes a new timestamped dir and renames a new ..data link over the old one.
    let dir = ConfigDir::new();
    std::fs::create_dir(dir.path("secrets")).unwrap();
    for (sub, value) in [("..2026_01_01_00_00_00.1", "k8s-secret-one"), ("..2026_01_01_00_05_00.2", "k8s-secret-two")] {
        std::fs::create_dir(dir.path(&format!("secrets/{sub}"))).unwrap();
        std::fs::write(dir.path(&format!("secrets/{sub}/token")), value).unwrap();
    }
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.path("secrets/..data")).unwrap();
    std::os::unix::fs::symlink("..data/token", dir.path("secrets/token")).unwrap();
    let config = dir.path("routes.yaml");
    std::fs::write(&config, github_from_file(&dir.path("secrets/token").display().to_string())).unwrap();
    let v1 = checked_version(&config).await;
    let node = Node::start_in(dir, config).await;
    assert_eq!(node.admin.status().await["version"], v1.as_str());
    assert_eq!(post_signed(&node, "k8s-secret-one").await, 202);

    let t = Instant::now();
    let tmp = node.dir.path("secrets/..data_tmp");
    std::os::unix::fs::symlink("..2026_01_01_00_05_00.2", &tmp).unwrap();
    std::fs::rename(&tmp, node.dir.path("secrets/..data")).unwrap();
    let v2 = checked_version(&node.config).await;
    assert_ne!(v1, v2);
    let (st, took) = node.wait_version(&v2, t).await;
    eprintln!("secret ..data swap: new version active after {took:?}");
    assert_eq!(st["reloads_ok"], 1, "{st}");
    assert_eq!(post_signed(&node, "k8s-secret-one").await, 401);
    assert_eq!(post_signed(&node, "k8s-secret-two").await, 202);
}

/// 1 KB of YAML ("billion laughs") that would expand to 9^9 scalars, as in `tests/it/cli.rs`.
fn alias_bomb() -> String {
    let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        let items = vec![format!("*{prev}"); 9].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    text
}

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM").unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// The file watcher applies every save, so an alias bomb saved over the config must fail the
/// reload as fast as `check` refuses it, without the gateway's memory growing.
#[tokio::test]
async fn an_alias_bomb_fails_the_reload_fast_and_the_old_config_keeps_serving() {
    let sink = Sink::start().await;
    let node = Node::with(&routes(&sink, "a", "")).await;
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();
    assert_eq!(route_of(&node, &sink, "before").await, "/a");
    let peak_before = peak_rss_kib(node.pid());

    write_in_place(&node.config, &alias_bomb());
    let st = node.admin.wait_status("a failed reload", |s| s["reloads_failed"] == 1).await;
    assert_eq!(st["version"], v_a.as_str(), "the running config stays: {st}");
    assert_eq!(
        st["last_error"]["errors"],
        json!([format!(
            "{}:6:16: f[2]: aliases expand to more than 8 MiB of copied values (a limit against \"billion laughs\" files)",
            node.config.display()
        )]),
        "{st:#}"
    );
    let peak_after = peak_rss_kib(node.pid());
    eprintln!("alias bomb reload: peak RSS (VmHWM) {peak_before} KiB before, {peak_after} KiB after");
    assert!(peak_after < peak_before + 64 * 1024, "peak RSS grew from {peak_before} to {peak_after} KiB");
    assert_eq!(route_of(&node, &sink, "still-a").await, "/a", "the old routes keep serving");
    let m = node.admin.metrics().await;
    assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "failed")]), 1.0, "{m:#?}");
}

/// A truncated save (empty, comment-only, or cut before `sources:`) would turn every source into
/// a 404: each fails the reload with the reason in the status, the metric and the log, and
/// events keep being accepted on the running config.
#[tokio::test]
async fn an_empty_or_truncated_file_fails_the_reload() {
    let sink = Sink::start().await;
    let a = routes(&sink, "a", "");
    let node = Node::with(&a).await;
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();
    let f = node.config.display().to_string();
    let empty = format!(
        "{f}: the config is empty (nothing but whitespace or comments): it would serve no source (is the file truncated?)"
    );
    let truncated = a.split("sources:").next().unwrap().to_string();
    let no_sources = format!(
        "{f}: sources: the new config has no sources, so every webhook would get 404; the running config stays (restart hookyard to run without sources)"
    );
    let cases = [
        ("empty", String::new(), &empty),
        ("comments", "# routes.yaml\n#\n".to_string(), &empty),
        ("truncated", truncated, &no_sources),
    ];
    for (n, (what, text, reason)) in cases.iter().enumerate() {
        write_in_place(&node.config, text);
        let st = node.admin.wait_status(&format!("failed reload {}", n + 1), |s| s["reloads_failed"] == n + 1).await;
        assert_eq!(st["version"], v_a.as_str(), "{what}: the running config stays: {st}");
        assert_eq!(st["reloads_ok"], 0, "{what}: {st}");
        assert_eq!(st["last_error"]["errors"], json!([reason]), "{what}: {st:#}");
        assert_eq!(route_of(&node, &sink, &format!("still-a-{what}")).await, "/a", "{what}: events are still accepted");
        let m = node.admin.metrics().await;
        assert_eq!(m.get("hookyard_config_reloads_total", &[("result", "failed")]), (n + 1) as f64, "{what}");
    }
    let logged = node.process.log_lines_with(&["config reload failed", "every webhook would get 404"]);
    assert_eq!(logged.len(), 1, "{}", node.process.logs());
}

// --- other triggers ---------------------------------------------------------------------------

/// A gateway whose `routes.yaml` is a symlink into `live/`, a directory the watcher does not
/// watch: an in-place edit of `live/routes.yaml` is seen by nothing but an explicit trigger.
async fn unwatched(sink: &Sink, in_process: bool) -> (Node, PathBuf) {
    let dir = ConfigDir::new();
    std::fs::create_dir(dir.path("live")).unwrap();
    let target = dir.path("live/routes.yaml");
    std::fs::write(&target, routes(sink, "a", "")).unwrap();
    let link = dir.path("routes.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let node = if in_process { Node::start_in(dir, link).await } else { Node::start(dir, link).await };
    (node, target)
}

#[tokio::test]
async fn sighup_reloads() {
    let sink = Sink::start().await;
    let (node, target) = unwatched(&sink, false).await;
    write_in_place(&target, &routes(&sink, "b", ""));
    let v_b = checked_version(&target).await;
    let t = Instant::now();
    signal(node.pid(), "-HUP").await;
    let (st, took) = node.wait_version(&v_b, t).await;
    eprintln!("SIGHUP: new version active after {took:?}");
    assert_eq!(st["reloads_ok"], 1);
    assert_eq!(route_of(&node, &sink, "after-hup").await, "/b");
    node.process.wait_for_log("SIGHUP received", WAIT).await;
    assert_eq!(node.process.log_lines_with(&["config reloaded", "sighup"]).len(), 1, "{}", node.process.logs());

    // A broken file on SIGHUP: reported with its trigger, nothing changes.
    write_in_place(&target, &routes(&sink, "nope", ""));
    signal(node.pid(), "-HUP").await;
    let st = node.admin.wait_status("a failed reload", |s| s["reloads_failed"] == 1).await;
    assert_eq!(st["last_error"]["trigger"], "sighup", "{st}");
    assert_eq!(st["version"], v_b.as_str());
    assert_eq!(route_of(&node, &sink, "still-b").await, "/b");
}

#[tokio::test]
async fn the_admin_api_and_the_reload_command_reload() {
    let sink = Sink::start().await;
    let (node, target) = unwatched(&sink, true).await;
    let admin_url = format!("http://{}", node.admin.addr);
    let v_a = node.admin.status().await["version"].as_str().unwrap().to_string();

    // POST /api/v1/reload
    write_in_place(&target, &routes(&sink, "b", ""));
    let v_b = checked_version(&target).await;
    let r = node.admin.post_json("/api/v1/reload", "").await;
    assert_eq!(r, json!({"result": "reloaded", "version": v_b, "needs_restart": []}));
    assert_eq!(route_of(&node, &sink, "api").await, "/b");

    // `hookyard reload` (token from the config file)
    write_in_place(&target, &routes(&sink, "a", ""));
    let mut cmd = hookyard();
    cmd.arg("reload").arg("--config").arg(&node.config).arg("--admin").arg(&admin_url);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let printed: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(printed, json!({"result": "reloaded", "version": v_a, "needs_restart": []}));
    assert_eq!(route_of(&node, &sink, "cli").await, "/a");
    let mut cmd = hookyard();
    cmd.arg("reload").arg("--config").arg(&node.config).arg("--admin").arg(&admin_url);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["result"], "unchanged");

    // `hookyard status`, with the token from HOOKYARD_ADMIN_TOKEN too
    let mut cmd = hookyard();
    cmd.arg("status")
        .arg("--config")
        .arg(&node.config)
        .arg("--admin")
        .arg(&admin_url)
        .env("HOOKYARD_ADMIN_TOKEN", TOKEN);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let st: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!((st["version"].as_str(), st["reloads_ok"].as_u64()), (Some(v_a.as_str()), Some(2)), "{st}");
    let mut cmd = hookyard();
    cmd.arg("status")
        .arg("--config")
        .arg(&node.config)
        .arg("--admin")
        .arg(&admin_url)
        .env("HOOKYARD_ADMIN_TOKEN", "not-the-token-at-all");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "a wrong token fails: {}", out.stdout);
    assert!(out.stdout.contains("missing or invalid bearer token"), "{}", out.stdout);

    // A broken file: `hookyard reload` exits 1 and prints every problem; nothing changes.
    let broken = routes(&sink, "nope", "");
    write_in_place(&target, &broken);
    let mut cmd = hookyard();
    cmd.arg("reload").arg("--config").arg(&node.config).arg("--admin").arg(&admin_url);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(printed["result"], "failed");
    assert_eq!(
        printed["errors"],
        json!([format!("{}: routes[0].to[0]: unknown destination \"nope\"", location(&node.config, &broken, "nope]"))])
    );
    let a = node.admin.post("/api/v1/reload", "").await;
    assert_eq!(a.status, 422, "{}", a.text());
    assert_eq!(a.json()["result"], "failed");
    assert_eq!(route_of(&node, &sink, "still-a").await, "/a");
}

#[tokio::test]
async fn settings_that_need_a_restart_are_reported_not_applied() {
    let sink = Sink::start().await;
    let node = Node::with_in(&routes(&sink, "a", "")).await;
    let changed = routes(&sink, "b", "")
        .replace("listen: \"127.0.0.1:0\" }", "listen: \"127.0.0.1:1\" }")
        .replace("path: hookyard.db", "path: elsewhere.db")
        .replace("admin: { listen: \"127.0.0.1:0\"", "admin: { listen: \"127.0.0.1:2\"")
        + "telemetry:\n  otlp: { endpoint: \"http://127.0.0.1:9\" }\n";
    assert_eq!(changed.matches(":1\"").count() + changed.matches(":2\"").count(), 2, "{changed}");
    write_rename(&node.config, &changed);
    let st = node.admin.wait_status("a reload", |s| s["reloads_ok"] == 1).await;
    let needs: Vec<&str> = st["needs_restart"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for setting in ["server.listen", "admin.listen", "storage.path", "telemetry"] {
        assert!(needs.iter().any(|n| n.starts_with(setting)), "{setting} in needs_restart: {needs:?}");
    }
    // The rest of the file is applied; the listeners and the store stay.
    assert_eq!(route_of(&node, &sink, "same-port").await, "/b", "ingress still on its port, new routes");
    assert!(!node.dir.path("elsewhere.db").exists(), "no second store");
    let st = node.admin.status().await;
    assert_eq!(st["needs_restart"].as_array().unwrap().len(), needs.len());
}

// --- deliveries across reloads ----------------------------------------------------------------

#[tokio::test]
async fn queued_deliveries_follow_the_current_config() {
    // Both first attempts fail; before their retries (3 s later) the config moves `a` to another
    // URL and removes `b`. The retry of a goes to the new URL as the same message; b's delivery
    // is kept as failed, visibly, for replay.
    let old = Sink::with_script(vec![Reply::status(503); 2]).await;
    let new = Sink::start().await;
    let retry = "{ schedule: [3s], jitter: 0, throttle_floor: 0s }";
    let first = routes_with(&old, "a, b", "", retry);
    let node = Node::with_in(&first).await;
    let id = node.send("queued").await;
    old.wait_for(2, WAIT).await;

    let second = routes_with(&new, "a", "", retry)
        .replace(&format!("  b:\n    url: {}\n    sign: {{ scheme: none }}\n    retry: {retry}\n", new.url("/b")), "");
    assert!(!second.contains("  b:"), "{second}");
    write_rename(&node.config, &second);
    node.admin.wait_status("the reload", |s| s["reloads_ok"] == 1).await;

    let got = new.wait_for(1, WAIT).await;
    assert_eq!(got[0].path, "/a");
    let first_try = old.requests().into_iter().find(|r| r.path == "/a").unwrap();
    assert_eq!(got[0].must("webhook-id"), first_try.must("webhook-id"), "the same message, at the new URL");
    let ev = node
        .admin
        .wait_json(&format!("/api/v1/events/{id}"), "a delivered and b failed", WAIT, |ev| {
            let st: BTreeMap<&str, &str> = ev["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d["destination"].as_str().unwrap(), d["status"].as_str().unwrap()))
                .collect();
            st.get("a") == Some(&"delivered") && st.get("b") == Some(&"failed")
        })
        .await;
    let b = ev["deliveries"].as_array().unwrap().iter().find(|d| d["destination"] == "b").unwrap();
    assert_eq!(b["last_error"], "destination \"b\" is not in the current config", "{ev:#}");
    assert_eq!(old.requests().len(), 2, "nothing more to the old URL");
}

// --- load -------------------------------------------------------------------------------------

/// The load test's configs differ in four places that must change together, so that a request
/// that saw half of one config and half of the other would show at the receiver:
/// - the source's verify secret: the sender signs each request with config A's or B's secret
///   (`X-Key` says which), and only the active config's secret verifies;
/// - the route's destination: A routes to `a`, B to `b` (so `a` must only get A-signed events);
/// - each destination's URL (`/a/A` under A, `/a/B` under B), its added header `X-Config`, and
///   its signing secret: one attempt must use all three from the same config.
fn coupled(sink: &Sink, config: char) -> String {
    let route_to = match config {
        'A' => "a",
        'B' => "b",
        _ => "nope", // refused: an unknown destination
    };
    let c = if config == 'B' { 'B' } else { 'A' };
    let mut yaml = format!(
        r#"# config {config}
server: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", token: "{TOKEN}" }}
storage: {{ path: hookyard.db, sync: normal }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: hmac, header: X-Signature, secret: {in_secret} }}
destinations:
"#,
        in_secret = inbound_secret(c),
    );
    for d in ['a', 'b'] {
        yaml.push_str(&format!(
            "  {d}:\n    url: {url}\n    headers: {{ X-Config: \"{c}\" }}\n    sign: {{ scheme: standard-webhooks, secret: \"{out}\" }}\n    retry: {{ schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }}\n",
            url = sink.url(&format!("/{d}/{c}")),
            out = outbound_secret(c),
        ));
    }
    yaml.push_str(&format!("routes:\n  - name: main\n    source: app\n    to: [{route_to}]\n"));
    yaml
}

fn inbound_secret(config: char) -> String {
    format!("load-inbound-secret-{config}")
}

fn outbound_secret(config: char) -> String {
    format!("whsec_{}", b64(format!("load-outbound-key-{config}-0123456789").as_bytes()))
}

struct Sent {
    seq: u64,
    /// The config whose inbound secret signed the request.
    key: char,
    id: String,
    start: Instant,
    end: Instant,
    reloading: bool,
}

/// A config change the load test made: when the write started, when the reload call returned,
/// and the active config (`'A'`/`'B'`) before and after.
struct Swap {
    start: Instant,
    end: Instant,
    from: char,
    to: char,
}

/// The configs that may have been active at some point between `start` and `end`: the one
/// active at `start`, and both sides of every swap that overlaps.
fn possible(swaps: &[Swap], start: Instant, end: Instant) -> Vec<char> {
    let mut p = vec![swaps.iter().rev().find(|w| w.end <= start).map_or('A', |w| w.to)];
    for w in swaps.iter().filter(|w| w.start < end && w.end > start && w.from != w.to) {
        p.extend([w.from, w.to]);
    }
    p.sort();
    p.dedup();
    p
}

/// A request whose head the gateway has taken (it answered `100 Continue`, so the handler has
/// loaded its config and is reading the body) and whose body is not sent yet.
struct Straddler {
    seq: u64,
    key: char,
    stream: tokio::net::TcpStream,
    body: String,
    start: Instant,
}

impl Straddler {
    async fn begin(addr: std::net::SocketAddr, seq: u64, key: char) -> Straddler {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let start = Instant::now();
        let body = format!(r#"{{"seq":{seq}}}"#);
        let signature = hex::encode(hmac_sha256(inbound_secret(key).as_bytes(), &[body.as_bytes()]));
        let head = format!(
            "POST /hooks/app HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
             X-Seq: {seq}\r\nX-Key: {key}\r\nX-Signature: {signature}\r\n\r\n",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write head");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        tokio::time::timeout(WAIT, async {
            while !got.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read 100 Continue");
                assert!(n > 0, "closed before 100 Continue: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("100 Continue within WAIT");
        assert_eq!(String::from_utf8_lossy(&got), "HTTP/1.1 100 Continue\r\n\r\n");
        Straddler { seq, key, stream, body, start }
    }

    /// Sends the body; returns when the request began, and the status and body of the answer.
    async fn finish(mut self) -> (Instant, u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(self.body.as_bytes()).await.expect("write body");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let answer = tokio::time::timeout(WAIT, async {
            loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok());
                    if len.is_some_and(|n| body.len() >= n) {
                        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                        return (status, body.to_string());
                    }
                }
                let n = self.stream.read(&mut buf).await.expect("read answer");
                assert!(n > 0, "closed before a whole answer: {text:?}");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("an answer within WAIT");
        (self.start, answer.0, answer.1)
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_survives_100_reloads_and_each_event_follows_its_config() {
    const SENDERS: usize = 8;
    const BASELINE: Duration = Duration::from_secs(3);
    const RELOADS: usize = 100;
    const PACE: Duration = Duration::from_millis(90);
    let sink = Sink::start().await;
    let configs = [('A', coupled(&sink, 'A')), ('B', coupled(&sink, 'B')), ('!', coupled(&sink, '!'))];
    let node = Node::with_in(&configs[0].1).await;
    let url = format!("http://{}/hooks/app", node.process.addr());

    let stop = Arc::new(AtomicBool::new(false));
    let reloading = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..SENDERS {
        let (stop, reloading, next, url) = (stop.clone(), reloading.clone(), next.clone(), url.clone());
        senders.spawn(async move {
            let client = http_client();
            let (mut sent, mut refused, mut failures) = (Vec::new(), Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                // signed for A or for B, alternately
                let key = if seq.is_multiple_of(2) { 'A' } else { 'B' };
                let during = reloading.load(Ordering::Relaxed);
                let body = format!(r#"{{"seq":{seq}}}"#);
                let signature = hex::encode(hmac_sha256(inbound_secret(key).as_bytes(), &[body.as_bytes()]));
                let (seq_text, key_text) = (seq.to_string(), key.to_string());
                let headers = [("X-Seq", seq_text.as_str()), ("X-Key", key_text.as_str()), ("X-Signature", &signature)];
                let start = Instant::now();
                let r = try_post(&client, &url, &headers, body).await;
                let end = Instant::now();
                match r {
                    Ok(a) if a.status == 202 => {
                        let id = a.json()["id"].as_str().unwrap_or_default().to_string();
                        sent.push(Sent { seq, key, id, start, end, reloading: during })
                    }
                    Ok(a) if a.status == 401 => {
                        refused.push(Sent { seq, key, id: String::new(), start, end, reloading: during })
                    }
                    Ok(a) => failures.push(format!("#{seq}: {} {}", a.status, a.text())),
                    Err(e) => failures.push(format!("#{seq}: {e}")),
                }
            }
            (sent, refused, failures)
        });
    }

    tokio::time::sleep(BASELINE).await;
    reloading.store(true, Ordering::Relaxed);
    let mut swaps = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut active = 'A';
    let (mut straddled, mut straddled_refused, mut straddle_problems) = (Vec::new(), 0, Vec::new());
    for i in 0..RELOADS {
        // B, broken, A, B, broken, A, …
        let (name, text) = &configs[[1, 2, 0][i % 3]];
        // Two requests straddle each swap: their head (and so their config) is taken before it,
        // their body sent after it; one is signed for the config going, one for the one coming.
        let mut straddling = Vec::new();
        if *name != '!' {
            for key in [active, *name] {
                straddling.push(Straddler::begin(node.process.addr(), next.fetch_add(1, Ordering::Relaxed), key).await);
            }
        }
        let start = Instant::now();
        write_rename(&node.config, text);
        let r = node.admin.post("/api/v1/reload", "").await;
        let end = Instant::now();
        let result = r.json()["result"].as_str().unwrap_or("?").to_string();
        match (result.as_str(), *name) {
            ("reloaded" | "unchanged", 'A' | 'B') => {
                swaps.push(Swap { start, end, from: active, to: *name });
            }
            ("failed", '!') => assert_eq!(r.status, 422),
            _ => panic!("reload {i} of {name}: {} {}", r.status, r.text()),
        }
        *outcomes.entry(result).or_default() += 1;
        for st in straddling {
            let (key, seq) = (st.key, st.seq);
            let (sent_at, status, body) = st.finish().await;
            match (key == active, status) {
                (true, 202) => {
                    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
                    straddled.push(Sent { seq, key, id, start: sent_at, end: Instant::now(), reloading: true });
                }
                (false, 401) => straddled_refused += 1,
                (going, status) => straddle_problems.push(format!(
                    "#{seq} signed for the config {} ({key}), head before the swap to {name}: {status} {body}",
                    if going { "going" } else { "coming" }
                )),
            }
        }
        if *name != '!' {
            active = *name;
        }
        tokio::time::sleep(PACE).await;
    }
    reloading.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut refused, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = senders.join_next().await {
        let (s, x, f) = r.expect("sender task");
        sent.extend(s);
        refused.extend(x);
        failures.extend(f);
    }
    let straddled_accepted = straddled.len();
    sent.extend(straddled);

    // Every accepted event arrives, once, at the sink of a config that was active while it was
    // being accepted, and every part of the request and of its delivery comes from one config.
    let total = sent.len();
    let seq_of = |r: &Recorded| -> u64 { r.must("x-seq").parse().unwrap() };
    let accepted: std::collections::BTreeSet<u64> = sent.iter().map(|s| s.seq).collect();
    let got = sink
        .try_wait_until(Duration::from_secs(15), |r| {
            let seen: std::collections::BTreeSet<u64> = r.iter().map(seq_of).collect();
            accepted.is_subset(&seen)
        })
        .await
        .unwrap_or_else(|r| r);
    let by_seq: BTreeMap<u64, &Sent> = sent.iter().map(|s| (s.seq, s)).collect();
    let config_of = |c: char| c.to_ascii_uppercase();
    let mut arrived: BTreeMap<u64, Vec<char>> = BTreeMap::new();
    let mut ids: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut mixed = Vec::new();
    for r in &got {
        let seq = seq_of(r);
        // /<destination>/<config of the attempt>
        let (dest, attempt) = match r.path.as_bytes() {
            [b'/', d @ (b'a' | b'b'), b'/', c @ (b'A' | b'B')] => (config_of(*d as char), *c as char),
            _ => panic!("unexpected path {}", r.path),
        };
        arrived.entry(seq).or_default().push(dest);
        ids.entry(seq).or_default().push(r.must("webhook-id").to_string());
        let key = r.must("x-key").chars().next().unwrap();
        // accepted: verified with `key`'s secret, so routed by `key`'s route
        if dest != key {
            mixed.push(format!("#{seq}: signed for {key} (verified by {key}) but routed to {}", r.path));
        }
        // attempted: URL, added header and signing secret of one config
        let header = r.must("x-config");
        let want = standard_webhooks_signature(
            &outbound_secret(attempt),
            r.must("webhook-id"),
            r.must("webhook-timestamp"),
            &r.body,
        );
        if header != attempt.to_string() || r.must("webhook-signature") != want {
            mixed.push(format!(
                "#{seq}: sent to {} with X-Config {header} and a signature {} config {attempt}'s",
                r.path,
                if r.must("webhook-signature") == want { "of" } else { "not of" }
            ));
        }
        // ... and of a config active between the request and the attempt
        if let Some(s) = by_seq.get(&seq)
            && !possible(&swaps, s.start, r.at).contains(&attempt)
        {
            mixed.push(format!("#{seq}: attempted under {attempt}, which was not active meanwhile"));
        }
    }
    let (mut wrong, mut missing, mut twice, mut ambiguous) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let mut per_sink: BTreeMap<char, usize> = BTreeMap::new();
    for s in &sent {
        let possible = possible(&swaps, s.start, s.end);
        if possible.len() > 1 {
            ambiguous += 1;
        }
        if !possible.contains(&s.key) {
            wrong.push(format!("#{} signed for {} accepted while only {possible:?} was active", s.seq, s.key));
        }
        match arrived.get(&s.seq).map(Vec::as_slice) {
            None => missing.push(s.seq),
            Some([one]) => {
                *per_sink.entry(*one).or_default() += 1;
                if !possible.contains(one) {
                    wrong.push(format!("#{} at {one}, accepted under {possible:?}", s.seq));
                }
            }
            Some(many) => {
                let ids = &ids[&s.seq];
                let same = if ids.iter().all(|i| *i == ids[0]) { "same webhook-id" } else { "different webhook-ids" };
                // what the store says about it, for the first few
                let attempts = if twice.len() < 3 {
                    let ev = node.admin.get_json(&format!("/api/v1/events/{}", s.id)).await;
                    ev["deliveries"][0]["attempt_log"].to_string()
                } else {
                    String::new()
                };
                twice.push(format!("#{} ({}): {many:?}, {same}; attempts recorded: {attempts}", s.seq, s.id));
            }
        }
    }
    // A 401 is right only when a config other than the one it was signed for may have been active.
    let wrongly_refused: Vec<String> = refused
        .iter()
        .filter(|s| possible(&swaps, s.start, s.end) == [s.key])
        .map(|s| format!("#{} signed for {} refused while {} was active", s.seq, s.key, s.key))
        .collect();
    let lat = |during: bool| {
        percentile(sent.iter().filter(|s| s.reloading == during).map(|s| s.end - s.start).collect(), 0.99)
    };
    let count = |during: bool| sent.iter().filter(|s| s.reloading == during).count();
    eprintln!(
        "load: {} requests accepted ({} without reloads, {} during), {} refused (signed for the other config), {} failed; \
         {RELOADS} reloads {outcomes:?}; p99 latency without reloads {:?}, during reloads {:?}; delivered to A {}, to B {}; \
         {ambiguous} accepted across a swap; {straddled_accepted} accepted and {straddled_refused} refused with their head before \
         a swap and their body after it; {} deliveries checked for a mix",
        total,
        count(false),
        count(true),
        refused.len(),
        failures.len(),
        lat(false),
        lat(true),
        per_sink.get(&'A').unwrap_or(&0),
        per_sink.get(&'B').unwrap_or(&0),
        got.len(),
    );
    // Every check, so one run shows every kind of problem.
    let mut problems = Vec::new();
    for (what, list) in [
        ("failed requests", &failures),
        ("requests across a swap answered against the config of their head", &straddle_problems),
        ("refused under the config they were signed for", &wrongly_refused),
        ("saw parts of both configs", &mixed),
        ("delivered more than once", &twice),
        ("delivered under a config that was not active", &wrong),
        ("accepted but never delivered", &missing.iter().map(|s| format!("#{s}")).collect()),
    ] {
        if !list.is_empty() {
            problems.push(format!("{} {what} (first 10): {:?}", list.len(), &list[..list.len().min(10)]));
        }
    }
    if outcomes.get("failed") != Some(&(RELOADS / 3)) {
        problems.push(format!("every broken file must be refused: {outcomes:?}"));
    }
    for c in ['A', 'B'] {
        let n = *per_sink.get(&c).unwrap_or(&0);
        if n * 5 < total {
            problems.push(format!("{c} did not get a fair share: {n} of {total}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(count(true) >= 200, "a steady stream during the reloads: {}", count(true));
    // the check above is not vacuous: requests did overlap swaps
    assert!(ambiguous >= 10, "only {ambiguous} requests were accepted across a swap");
}

#[tokio::test]
async fn memory_stays_flat_over_200_reloads() {
    let sink = Sink::start().await;
    let configs = [routes(&sink, "a", ""), routes(&sink, "b", "")];
    let node = Node::with(&configs[0]).await;
    let pid = node.pid();
    let reload = async |i: usize| {
        write_rename(&node.config, &configs[(i + 1) % 2]);
        let r = node.admin.post_json("/api/v1/reload", "").await;
        assert!(matches!(r["result"].as_str(), Some("reloaded" | "unchanged")), "{r}");
        if i.is_multiple_of(20) {
            node.send(&format!("m{i}")).await;
        }
    };
    for i in 0..20 {
        reload(i).await;
    }
    let before = rss_kib(pid);
    for i in 20..220 {
        reload(i).await;
    }
    let after = rss_kib(pid);
    let growth = after as i64 - before as i64;
    eprintln!("memory: VmRSS {before} KiB before 200 reloads, {after} KiB after ({growth:+} KiB)");
    assert!(growth < 30 * 1024, "RSS grew by {growth} KiB over 200 reloads");
    let st = node.admin.status().await;
    assert!(st["reloads_ok"].as_u64().unwrap() >= 200, "{st}");
}
