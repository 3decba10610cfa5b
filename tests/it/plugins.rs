//! Transform plugins end to end: every example plugin through the real gateway to a real loopback
//! destination, chains and splits, and each `on_error` policy with hostile plugins, while good
//! events keep flowing. Needs `plugins/build.sh` to have run (CI and scripts/test.sh do).

use std::path::PathBuf;
use std::time::Duration;

use crate::harness::{App, Sink, WAIT, manifest_dir};
use serde_json::Value;

fn dist(name: &str) -> String {
    let p = manifest_dir().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run plugins/build.sh first", p.display());
    p.display().to_string()
}

/// Compiles a hostile WAT fixture to a component file in `dir`.
fn fixture(dir: &std::path::Path, name: &str) -> String {
    let src = manifest_dir().join("tests/fixtures/plugins").join(format!("{name}.wat"));
    let wasm = wat::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out: PathBuf = dir.join(format!("{name}.wasm"));
    std::fs::write(&out, wasm).unwrap();
    out.display().to_string()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(manifest_dir().join("examples").join(name)).unwrap()
}

#[tokio::test]
async fn every_example_plugin_end_to_end() {
    let sink = Sink::start().await;
    let config = format!(
        r##"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  github: {{ path: /github, verify: {{ scheme: none }} }}
  shop: {{ path: /shop, verify: {{ scheme: none }} }}
  stripe: {{ path: /stripe, verify: {{ scheme: none }} }}
destinations:
  chat: {{ url: "{chat}", sign: {{ scheme: none }} }}
  analytics: {{ url: "{analytics}", sign: {{ scheme: none }} }}
  billing: {{ url: "{billing}", sign: {{ scheme: none }} }}
  big: {{ url: "{big}", sign: {{ scheme: none }} }}
  small: {{ url: "{small}", sign: {{ scheme: none }} }}
routes:
  - name: chat
    source: github
    transform: [ {{ plugin: "{github_chat}", config: {{ channel: "#deploys" }} }} ]
    to: [chat]
  - name: redact
    source: shop
    transform: [ {{ plugin: "{redact}", config: {{ paths: "customer.email,customer.phone", scrub: true }} }} ]
    to: [analytics]
  - name: enrich
    source: stripe
    transform:
      - plugin: "{enrich}"
        config: {{ rename: "data.object.amount_paid:amount_paid_cents", cents_to_units: "data.object.amount_due", set.gateway: hookyard, header.X-Billing-Source: stripe }}
    to: [billing]
  - name: split-and-route
    source: shop
    transform:
      - {{ plugin: "{split}", config: {{ path: line_items }} }}
      - {{ plugin: "{route_by}", config: {{ field: sku, map.IPOD2008PINK: big, default: small }} }}
    to: [big, small]
"##,
        chat = sink.url("/chat"),
        analytics = sink.url("/analytics"),
        billing = sink.url("/billing"),
        big = sink.url("/big"),
        small = sink.url("/small"),
        github_chat = dist("github_chat"),
        redact = dist("redact"),
        enrich = dist("enrich"),
        split = dist("split"),
        route_by = dist("route_by"),
    );
    let gw = App::start_yaml(&config).await;
    let ct = [("content-type", "application/json")];
    assert_eq!(gw.post("/github", &ct, example("github-push.json")).await.status, 202);
    assert_eq!(gw.post("/shop", &ct, example("shopify-orders-create.json")).await.status, 202);
    assert_eq!(gw.post("/stripe", &ct, example("stripe-invoice.paid.json")).await.status, 202);
    let got = sink.wait_for(5, WAIT).await;
    let at = |path: &str| got.iter().filter(|r| r.path == path).collect::<Vec<_>>();

    // 1. github_chat: reshaped into a chat message
    let chat = json(&at("/chat")[0].body);
    assert_eq!(chat["channel"], "#deploys");
    assert!(chat["text"].as_str().unwrap().starts_with("monalisa pushed 1 commit to acme/hookyard (main)"), "{chat}");

    // 2. redact: PII masked, the rest intact
    let order = json(&at("/analytics")[0].body);
    assert_eq!(order["customer"]["email"], "[REDACTED]");
    assert_eq!(order["customer"]["phone"], "[REDACTED]");
    assert_eq!(order["email"], "[REDACTED]", "scrub masks emails anywhere");
    assert_eq!(order["total_price"], "403.00");

    // 3. enrich: renamed, converted, metadata and a header added
    let billing = &at("/billing")[0];
    let invoice = json(&billing.body);
    assert_eq!(invoice["data"]["object"]["amount_paid_cents"], 4900);
    assert!(invoice["data"]["object"].get("amount_paid").is_none());
    assert_eq!(invoice["data"]["object"]["amount_due"], 49.0);
    assert_eq!(invoice["gateway"], "hookyard");
    assert_eq!(billing.header("x-billing-source"), Some("stripe"));

    // 4 + 5. split into line items, each routed by its SKU; distinct webhook-ids per output
    let big = at("/big");
    let small = at("/small");
    assert_eq!((big.len(), small.len()), (1, 1));
    assert_eq!(json(&big[0].body)["sku"], "IPOD2008PINK");
    assert_eq!(json(&small[0].body)["sku"], "IPOD2008BLACK");
    assert_eq!(big[0].header("x-hookyard-split-index"), Some("0"));
    assert_ne!(big[0].header("webhook-id"), small[0].header("webhook-id"));
}

/// A config with one good route and one route whose plugin is hostile, with `on_error`.
fn hostile_config(sink: &Sink, plugin: &str, on_error: &str) -> String {
    format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  s: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  good: {{ url: "{good}", sign: {{ scheme: none }} }}
  bad: {{ url: "{bad}", sign: {{ scheme: none }} }}
routes:
  - name: good
    source: s
    transform: [ {{ plugin: "{noop}" }} ]
    to: [good]
  - name: hostile
    source: s
    transform: [ {{ plugin: "{plugin}", limits: {{ timeout_ms: 50, memory_mb: 4 }} }} ]
    on_error: {on_error}
    to: [bad]
"#,
        good = sink.url("/good"),
        bad = sink.url("/bad"),
        noop = dist("noop"),
    )
}

#[tokio::test]
async fn hostile_plugins_fail_only_their_event_and_follow_on_error() {
    let dir = tempfile::tempdir().unwrap();
    // (fixture, the failure label logged)
    // (fixture, the failure label, how the reason starts). The log and the store carry the
    // plugin's file name, which contains some labels (`memory_bomb`, `trap`, `bad_destination`):
    // the checks look at the reason itself, never at the whole log.
    let cases = [
        ("infinite_loop", "timeout", "plugin ran past its 50 ms deadline and was stopped"),
        ("memory_bomb", "memory", "plugin exceeded its memory limit of 4 MiB"),
        ("trap", "trap", "plugin trapped: wasm trap: wasm `unreachable` instruction executed"),
        ("huge_output", "output_too_large", "output 0 is 2097152 bytes, over the limit of 1048576 bytes"),
        (
            "bad_destination",
            "bad_destination",
            "output names destination `evil`, which is not one of the route's (bad)",
        ),
    ];
    for (name, label, why) in cases {
        let reason = format!("transform failed ({label}): transform 0 ({name}): {why}");
        let plugin = fixture(dir.path(), name);
        for on_error in ["drop", "deliver_original", "fail"] {
            let sink = Sink::start().await;
            let gw = App::start_yaml(&hostile_config(&sink, &plugin, on_error)).await;
            // the good route keeps flowing while the hostile one fails on every event
            for i in 0..4 {
                let answer = gw.post("/in", &[("content-type", "application/json")], format!("{{\"n\":{i}}}")).await;
                assert_eq!(answer.status, 202, "{name}/{on_error}: {}", answer.text());
            }
            let expected_bad = if on_error == "deliver_original" { 4 } else { 0 };
            let got = sink
                .wait_until(WAIT, "the good route's 4 deliveries", |r| {
                    r.iter().filter(|r| r.path == "/good").count() == 4
                })
                .await;
            // give the hostile route's deliveries (if any) the same chance to arrive
            let got = if expected_bad > 0 {
                sink.wait_until(WAIT, "the original events", |r| {
                    r.iter().filter(|r| r.path == "/bad").count() == expected_bad
                })
                .await
            } else {
                got
            };
            assert_eq!(got.iter().filter(|r| r.path == "/bad").count(), expected_bad, "{name}/{on_error}");
            // the `note` field of each of the 4 `transform` warnings is the reason
            let lines = gw.wait_for_log_lines(&["transform", "route=hostile"], 4, Duration::from_secs(5)).await;
            for line in &lines {
                let note = line.split_once(" note=").map(|(_, n)| n).unwrap_or_else(|| panic!("no note in {line}"));
                let policy = match on_error {
                    "drop" => "Drop",
                    "deliver_original" => "DeliverOriginal",
                    _ => "Fail",
                };
                assert_eq!(note, format!("{reason} (on_error: {policy})"), "{name}/{on_error}");
            }
            if on_error == "fail" {
                let status = crate::harness::hookyard()
                    .args(["events", "--status", "failed", "--json", "--config"])
                    .arg(&gw.config_path)
                    .output()
                    .await
                    .unwrap();
                let rows: Vec<Value> =
                    String::from_utf8_lossy(&status.stdout).lines().map(|l| json(l.as_bytes())).collect();
                assert_eq!(rows.len(), 4, "{name}: the 4 events are kept as failed for replay");
                for row in rows {
                    let error = row["last_error"].as_str().unwrap_or_else(|| panic!("{name}: no last_error in {row}"));
                    assert_eq!(error, reason, "{name}: the stored error");
                }
            }
        }
    }
}

#[tokio::test]
async fn check_reports_bad_plugin_files_with_route_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("notes.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let core = fixture(dir.path(), "core_module");
    let wrong = fixture(dir.path(), "wrong_world");
    let config = format!(
        r#"
sources:
  s: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  d: {{ url: "http://127.0.0.1:1/", sign: {{ scheme: none }} }}
routes:
  - {{ name: missing, source: s, to: [d], transform: [ {{ plugin: nope.wasm }} ] }}
  - {{ name: text, source: s, to: [d], transform: [ {{ plugin: "{not_wasm}" }} ] }}
  - {{ name: core, source: s, to: [d], transform: [ {{ plugin: "{core}" }} ] }}
  - {{ name: world, source: s, to: [d], transform: [ {{ plugin: "{wrong}" }} ] }}
"#,
        not_wasm = not_wasm.display()
    );
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, config).unwrap();
    let out = crate::harness::hookyard().args(["check", "--config"]).arg(&path).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].contains(":7:")
            && lines[0].contains("routes[0].transform[0].plugin: route \"missing\": ")
            && lines[0].contains("nope.wasm: file not found"),
        "{err}"
    );
    assert!(lines[1].contains("routes[1].transform[0].plugin") && lines[1].contains("not a WebAssembly file"), "{err}");
    assert!(
        lines[2].contains("routes[2].transform[0].plugin")
            && lines[2].contains("core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(
        lines[3].contains("routes[3].transform[0].plugin")
            && lines[3].contains("does not target hookyard:plugin/transform@0.1.0"),
        "{err}"
    );
    assert_eq!(lines[4], "4 problems found");
}

#[tokio::test]
async fn plugin_test_command_prints_outcome_logs_and_time() {
    let out = crate::harness::hookyard()
        .args(["plugin", "test", &dist("github_chat"), "--body"])
        .arg(manifest_dir().join("examples/github-push.json"))
        .args(["--header", "X-GitHub-Event: push", "--plugin-config", "channel=#ops"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["plugin"], "github_chat");
    assert_eq!(v["outcome"]["emit"][0]["body"]["channel"], "#ops");
    assert!(v["elapsed_us"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_plugins_example_config_is_valid() {
    let out = crate::harness::hookyard()
        .args(["check", "--config"])
        .arg(manifest_dir().join("examples/plugins.yaml"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok — 3 sources, 6 destinations, 4 routes"));
}

/// A transform's output is stored per delivery only where it differs from the event: a plugin
/// that passes the body through (noop) stores nothing extra, a formatter stores its message; both
/// deliver what the plugin emitted.
#[tokio::test]
async fn only_changed_bodies_are_stored_per_delivery() {
    let sink = Sink::start().await;
    let config = format!(
        r##"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  github: {{ path: /github, verify: {{ scheme: none }} }}
destinations:
  same: {{ url: "{same}", sign: {{ scheme: none }} }}
  chat: {{ url: "{chat}", sign: {{ scheme: none }} }}
routes:
  - name: passthrough
    source: github
    transform: [ {{ plugin: "{noop}" }} ]
    to: [same]
  - name: chat
    source: github
    transform: [ {{ plugin: "{github_chat}", config: {{ channel: "#deploys" }} }} ]
    to: [chat]
"##,
        same = sink.url("/same"),
        chat = sink.url("/chat"),
        noop = dist("noop"),
        github_chat = dist("github_chat"),
    );
    let gw = App::start_yaml(&config).await;
    let push = example("github-push.json");
    let answer =
        gw.post("/github", &[("content-type", "application/json"), ("x-github-event", "push")], push.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let id = json(answer.text().as_bytes())["id"].as_str().unwrap().to_string();
    let got = sink.wait_until(WAIT, "both deliveries", |r| r.len() == 2).await;
    let same = got.iter().find(|r| r.path == "/same").unwrap();
    assert_eq!(same.body, push, "the pass-through delivers the event's body");
    let chat = got.iter().find(|r| r.path == "/chat").unwrap();
    assert_eq!(json(&chat.body)["channel"], "#deploys");

    let mut cmd = crate::harness::hookyard();
    cmd.args(["event", &id, "--config"]).arg(&gw.config_path);
    let out = crate::harness::run_cli(cmd).await;
    assert!(out.status.success(), "{}", out.stderr);
    let detail = json(out.stdout.as_bytes());
    let stored = |dest: &str| {
        detail["deliveries"].as_array().unwrap().iter().find(|d| d["destination"] == dest).unwrap()["transformed_body"]
            .clone()
    };
    assert_eq!(stored("same"), Value::Null, "an unchanged body is not stored again");
    assert_eq!(json(stored("chat").as_str().unwrap().as_bytes())["channel"], "#deploys");
}

/// A plugin path must name a regular file of at most 64 MiB: a device such as `/dev/zero` never
/// ends, and the size is checked before anything is read (the sparse file costs nothing to make).
#[tokio::test]
async fn check_refuses_plugin_files_that_are_not_regular_or_too_large() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("huge.wasm")).unwrap().set_len((64 << 20) + 1).unwrap();
    let config = format!(
        r#"
sources:
  s: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  d: {{ url: "http://127.0.0.1:1/", sign: {{ scheme: none }} }}
routes:
  - {{ name: zero, source: s, to: [d], transform: [ {{ plugin: /dev/zero }} ] }}
  - {{ name: huge, source: s, to: [d], transform: [ {{ plugin: huge.wasm }} ] }}
  - {{ name: dir, source: s, to: [d], transform: [ {{ plugin: "{dir}" }} ] }}
"#,
        dir = dir.path().display()
    );
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, &config).unwrap();
    let started = std::time::Instant::now();
    let mut cmd = crate::harness::hookyard();
    cmd.args(["check", "--config"]).arg(&path);
    let out = crate::harness::run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    // file:line:col of the `plugin` key on each route's line
    let at = |route: &str| {
        let (n, line) =
            config.lines().enumerate().find(|(_, l)| l.contains(&format!("name: {route},"))).expect("route line");
        format!("{}:{}:{}", path.display(), n + 1, line.find("plugin").unwrap() + 1)
    };
    let d = dir.path().display();
    let want = [
        format!(
            "{}: routes[0].transform[0].plugin: route \"zero\": /dev/zero: not a regular file (a character device): a plugin must be a .wasm file",
            at("zero")
        ),
        format!(
            "{}: routes[1].transform[0].plugin: route \"huge\": {d}/huge.wasm: the file is 67108865 bytes, over the 67108864-byte limit for a plugin file",
            at("huge")
        ),
        format!(
            "{}: routes[2].transform[0].plugin: route \"dir\": {d}: not a regular file (a directory): a plugin must be a .wasm file",
            at("dir")
        ),
        "3 problems found".to_string(),
    ];
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), want);
    assert!(started.elapsed() < Duration::from_secs(5), "check took {:?}", started.elapsed());
}

/// A plugin that emits ten 1 MB outputs per event (each within `max_output_bytes`, together
/// within `max_outputs`) would store 10 MB per event: the total of one event's outputs is
/// limited too (4 MiB by default), and crossing it fails the transform like any other plugin
/// failure, following the route's `on_error`.
#[tokio::test]
async fn outputs_over_the_per_event_total_fail_the_transform() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = fixture(dir.path(), "many_outputs");
    let sink = Sink::start().await;
    let config = format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  s: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  good: {{ url: "{good}", sign: {{ scheme: none }} }}
  bad: {{ url: "{bad}", sign: {{ scheme: none }} }}
routes:
  - name: good
    source: s
    to: [good]
  - name: fanout
    source: s
    transform: [ {{ plugin: "{plugin}" }} ]
    on_error: fail
    to: [bad]
  - name: raised
    source: s
    transform: [ {{ plugin: "{plugin}", limits: {{ max_total_output_bytes: 10000000 }} }} ]
    to: [good]
"#,
        good = sink.url("/good"),
        bad = sink.url("/bad"),
    );
    let gw = App::start_yaml(&config).await;
    for i in 0..2 {
        let answer = gw.post("/in", &[("content-type", "application/json")], format!("{{\"n\":{i}}}")).await;
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    // the good route's 2 events, plus 10 outputs per event where the limit is raised to fit them
    let got =
        sink.wait_until(WAIT, "22 deliveries to /good", |r| r.iter().filter(|r| r.path == "/good").count() == 22).await;
    assert!(got.iter().filter(|r| r.path == "/good").all(|r| r.body.len() == 1_000_000 || r.body.len() < 10));
    assert_eq!(got.iter().filter(|r| r.path == "/bad").count(), 0);
    let reason = "transform failed (outputs_too_large): transform 0 (many_outputs): \
                  the outputs total 10000000 bytes, over the limit of 4194304 bytes for one event";
    let out = crate::harness::hookyard()
        .args(["events", "--status", "failed", "--json", "--config"])
        .arg(&gw.config_path)
        .output()
        .await
        .unwrap();
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| json(l.as_bytes())).collect();
    assert_eq!(rows.len(), 2, "one failed delivery per event: {rows:?}");
    for row in rows {
        assert_eq!((row["route"].as_str(), row["last_error"].as_str()), (Some("fanout"), Some(reason)), "{row}");
    }
}
