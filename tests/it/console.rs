//! The admin console (`/console/`) in a real browser: a gateway with real receivers, events posted
//! through ingress (orders, dead letters, another source, hostile bodies and headers), then
//! `tests/console/console.test.mjs` (Chromium through playwright-core) signs in and works every
//! page; afterwards the receivers say what its clicks did (a replay arrived again as the same
//! message, the dead letters were delivered, the live tail's events were delivered).
//!
//! Needs Node, `tests/console/node_modules` and Chromium: `bash scripts/browser.sh` installs
//! them. Without them this test fails (it never passes silently). Screenshots of every page go to
//! `target/console-shots/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::harness::admin_api::TOKEN;
use crate::harness::*;

/// Bound of the whole browser run (its own hard timeout is 120 s).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

/// Dead letters made at `flaky`: each dies after 3 attempts answered `503`.
const DEAD: usize = 2;

/// Two sources; `good` and `other` answer `200`, `flaky` answers `503` to its first
/// `3 * DEAD` requests (3 attempts each, 100 ms apart), then `200`.
fn config(good: &Sink, flaky: &Sink, other: &Sink) -> String {
    format!(
        r#"server: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0", token: "{TOKEN}" }}
storage: {{ path: hookyard.db, sync: normal }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app: {{ path: /hooks/app, verify: {{ scheme: none }} }}
  shop: {{ path: /hooks/shop, verify: {{ scheme: none }} }}
destinations:
  good: {{ url: "{good}", sign: {{ scheme: none }} }}
  flaky:
    url: "{flaky}"
    sign: {{ scheme: none }}
    retry: {{ schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }}
    breaker: {{ enabled: false }}
  other: {{ url: "{other}", sign: {{ scheme: none }} }}
routes:
  - name: orders
    source: app
    when: [{{ header: X-Kind, equals: order }}]
    to: [good]
  - name: flaky-things
    source: app
    when: [{{ header: X-Kind, equals: flaky }}]
    to: [flaky]
  - name: shop-all
    source: shop
    to: [good, other]
  - name: shop-refunds
    source: shop
    when: [{{ header: X-Kind, equals: refund }}]
    to: [other]
"#,
        good = good.url("/good"),
        flaky = flaky.url("/flaky"),
        other = other.url("/other"),
    )
}

/// The target directory this test binary was built into (`…/target/debug/deps/it-…`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|t| t.is_dir())
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// Fails, saying how to install them, unless Node, playwright-core and Chromium are there.
fn browser_prerequisites() -> PathBuf {
    let install = "run `bash scripts/browser.sh` (installs Chromium and tests/console/node_modules)";
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "`node` is not installed: {install}");
    let module = manifest_dir().join("tests/console/node_modules/playwright-core");
    assert!(module.is_dir(), "{} is missing: {install}", module.display());
    let chromium = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(chromium.exists(), "{} is missing: {install}", chromium.display());
    chromium
}

fn body_has(r: &Recorded, needle: &str) -> bool {
    String::from_utf8_lossy(&r.body).contains(needle)
}

async fn post(gw: &App, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    gw.post_body(path, headers, body.to_string()).await.accepted_id()
}

#[tokio::test]
async fn the_console_works_every_page_in_a_browser() {
    let chromium = browser_prerequisites();
    let good = Sink::start().await;
    let flaky = Sink::with_script(vec![Reply::status(503); 3 * DEAD]).await;
    let other = Sink::start().await;
    let gw = App::start_yaml(&config(&good, &flaky, &other)).await;
    let admin = gw.admin();
    let json = [("Content-Type", "application/json")];

    // The event the browser opens and replays one delivery of.
    let order = post(&gw, "/hooks/app", &[json[0], ("X-Kind", "order")], r#"{"case":"replay-me","amount":42}"#).await;
    // Dead letters at `flaky`.
    let mut dead = Vec::new();
    for i in 0..DEAD {
        dead.push(post(&gw, "/hooks/app", &[json[0], ("X-Kind", "flaky")], &format!(r#"{{"case":"dead-{i}"}}"#)).await);
    }
    // Another source, and hostile text in a body (JSON and not), a header, and a header the
    // routing explanation quotes back (`X-Kind`).
    let mut shop = Vec::new();
    shop.push(post(&gw, "/hooks/shop", &[json[0], ("X-Kind", "sale")], r#"{"case":"sale"}"#).await);
    let script = "<script>window.__xss=1</script>";
    let img = r#""><img src=x onerror="window.__xss=1">"#;
    let xss = [
        post(&gw, "/hooks/shop", &[("Content-Type", "text/html"), ("X-Kind", img)], script).await,
        post(
            &gw,
            "/hooks/shop",
            &[json[0], ("X-Kind", script), ("X-Note", img)],
            &serde_json::json!({"case": "xss", "html": script, "attr": img}).to_string(),
        )
        .await,
    ];
    shop.extend(xss.iter().cloned());

    // Everything settled before the browser looks: the order delivered, the dead letters dead.
    admin
        .wait_json("/api/v1/destinations", "every delivery settled, the dead letters dead", WAIT, |v| {
            let items = v["items"].as_array().unwrap();
            items.iter().all(|d| d["pending"] == 0)
                && items.iter().any(|d| d["name"] == "flaky" && d["dead"] == DEAD as u64)
        })
        .await;

    let shots = target_dir().join("console-shots");
    let _ = std::fs::remove_dir_all(&shots);
    let admin_addr = gw.admin_addr.expect("an admin listener");
    let script_path = manifest_dir().join("tests/console/console.test.mjs");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&script_path)
        .current_dir(manifest_dir().join("tests/console"))
        .env("CHROMIUM", &chromium)
        .env("CONSOLE_URL", format!("http://{admin_addr}/console/"))
        .env("ADMIN_TOKEN", TOKEN)
        .env("INGRESS_URL", format!("http://{}", gw.addr))
        .env("SHOTS_DIR", &shots)
        .env("EVENT_ID", &order)
        .env("ROUTE_MATCHED", "orders")
        .env("ROUTE_UNMATCHED", "flaky-things")
        .env("DEAD_DESTINATION", "flaky")
        .env("DEAD_EVENT_IDS", dead.join(","))
        .env("PAUSE_DESTINATION", "other")
        .env("SHOP_EVENT_IDS", shop.join(","))
        .env("XSS_EVENT_IDS", xss.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn node");
    let out = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("the browser test did not end within {BROWSER_TIMEOUT:?}; gateway logs:\n{}", gw.logs())
        })
        .expect("wait for node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed ({}); screenshots in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- gateway logs\n{}",
        out.status,
        shots.display(),
        gw.logs()
    );

    // What the clicks did, as the receivers saw it.
    let replayed: Vec<Recorded> = good.requests().into_iter().filter(|r| body_has(r, "replay-me")).collect();
    assert_eq!(replayed.len(), 2, "the order's delivery arrived once, then again after the replay");
    assert_eq!(replayed[0].must("webhook-id"), replayed[1].must("webhook-id"), "a replay is the same message");
    let got = flaky.wait_for(3 * DEAD + DEAD, WAIT).await;
    for i in 0..DEAD {
        let n = got.iter().filter(|r| body_has(r, &format!("dead-{i}"))).count();
        assert_eq!(n, 4, "dead-{i}: 3 failed attempts, then the bulk replay's");
    }
    for case in ["tail-1", "tail-2"] {
        good.wait_until(WAIT, case, |rs| rs.iter().any(|r| body_has(r, case))).await;
    }
    let d: Value = admin.get_json("/api/v1/destinations").await;
    for item in d["items"].as_array().unwrap() {
        assert_eq!(item["paused"], false, "{item}");
        assert_eq!(item["dead"], 0, "{item}");
    }
    for name in ["login", "overview", "events", "event", "destinations", "routes"] {
        let png = shots.join(format!("{name}.png"));
        assert!(is_png(&png), "no screenshot {}", png.display());
    }
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}
