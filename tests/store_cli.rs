//! The store commands of the CLI against a real gateway's store: `events`, `event`, `replay` (as
//! planned, `--dead`, `--reroute`), `pause` and `resume`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn cli(gw: &Gateway, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(&gw.config_path);
    run_cli(cmd).await
}

fn rows(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn config(sink: &Sink, other: &Sink) -> String {
    format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  app: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  out:
    url: "{out}"
    sign: {{ scheme: none }}
    retry: {{ schedule: [100ms], jitter: 0, throttle_floor: 0s }}
    breaker: {{ enabled: false }}
  other: {{ url: "{other}", sign: {{ scheme: none }} }}
routes:
  - {{ name: main, source: app, to: [out] }}
  - {{ name: copy, source: app, to: [other] }}
"#,
        out = sink.url("/out"),
        other = other.url("/other"),
    )
}

#[tokio::test]
async fn dead_letters_are_listed_inspected_and_replayed() {
    // two 500s exhaust the schedule (one retry); then the destination recovers
    let sink = Sink::with_script(vec![Reply::status(500), Reply::status(500)]).await;
    let other = Sink::start().await;
    let gw = Gateway::start(&config(&sink, &other)).await;
    let id = gw.post("/in", &[("content-type", "application/json")], "{\"n\":1}").await.accepted_id();
    let first = sink.wait_for(2, WAIT).await;
    gw.wait_for_log("retries exhausted", WAIT).await;

    let dead = rows(&cli(&gw, &["events", "--status", "dead", "--json"]).await);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0]["event_id"].as_str(), dead[0]["destination"].as_str(), dead[0]["attempts"].as_u64()),
        (Some(id.as_str()), Some("out"), Some(2))
    );
    assert_eq!(dead[0]["last_error"], "HTTP 500");

    let detail: Value = serde_json::from_str(&cli(&gw, &["event", &id]).await.stdout).unwrap();
    let out = detail["deliveries"].as_array().unwrap().iter().find(|d| d["destination"] == "out").unwrap();
    let codes: Vec<u64> =
        out["attempt_log"].as_array().unwrap().iter().map(|a| a["status_code"].as_u64().unwrap()).collect();
    assert_eq!(codes, [500, 500]);
    assert_eq!(detail["body"], "{\"n\":1}");

    let replayed = cli(&gw, &["replay", "--dead", "--destination", "out"]).await;
    assert!(replayed.status.success(), "{}", replayed.stderr);
    assert_eq!(replayed.stdout.trim(), "1 delivery queued");
    let all = sink.wait_for(3, WAIT).await;
    assert_eq!(all[2].header("webhook-id"), first[0].header("webhook-id"), "a replay keeps the webhook-id");
    let delivered = rows(&cli(&gw, &["events", "--status", "delivered", "--destination", "out", "--json"]).await);
    assert_eq!(delivered.len(), 1);

    // replay as planned by event id: both deliveries go again, same ids
    let out = cli(&gw, &["replay", &id]).await;
    assert_eq!(out.stdout.trim(), "2 deliveries queued");
    sink.wait_for(4, WAIT).await;
    other.wait_for(2, WAIT).await;
    // re-route with the current config: new deliveries with new webhook-ids
    let out = cli(&gw, &["replay", "--reroute", &id]).await;
    assert_eq!(out.stdout.trim(), "2 deliveries queued");
    let got = sink.wait_for(5, WAIT).await;
    assert_ne!(got[4].header("webhook-id"), first[0].header("webhook-id"));

    let unknown = cli(&gw, &["replay", "evt_nope"]).await;
    assert!(!unknown.status.success());
    assert!(unknown.stderr.contains("no deliveries for: evt_nope"), "{}", unknown.stderr);
}

#[tokio::test]
async fn a_paused_destination_holds_its_deliveries_until_resumed() {
    let sink = Sink::start().await;
    let other = Sink::start().await;
    let mut gw = Gateway::start(&config(&sink, &other)).await;
    gw.terminate(WAIT).await;
    let paused = cli(&gw, &["pause", "out", "--reason", "maintenance"]).await;
    assert!(paused.status.success(), "{}", paused.stderr);
    assert_eq!(paused.stdout.trim(), "out paused: its deliveries wait in the store");
    let unknown = cli(&gw, &["pause", "nope"]).await;
    assert!(unknown.stderr.contains("unknown destination \"nope\""), "{}", unknown.stderr);

    gw.restart().await;
    gw.post("/in", &[], "{}").await.accepted_id();
    // the other route's delivery arrives; the paused one is still pending
    other.wait_for(1, WAIT).await;
    let pending = rows(&cli(&gw, &["events", "--status", "pending", "--json"]).await);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["destination"], "out");
    assert!(sink.requests().is_empty(), "delivered while paused");

    assert!(cli(&gw, &["resume", "out"]).await.status.success());
    // the running gateway sees the resume at its next poll (within a second)
    sink.wait_for(1, Duration::from_secs(10)).await;
}
