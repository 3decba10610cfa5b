//! The store commands of the CLI against a real gateway's store: `events`, `event`, `replay` (as
//! planned, `--dead`, `--reroute`), `pause` and `resume`, `cancel` and `purge`. Each test runs on
//! both backends: the SQLite file and a PostgreSQL schema of its own.

use std::time::Duration;

use crate::harness::postgres::PgSchema;
use crate::harness::*;
use serde_json::Value;

/// Where a test's gateway (and the CLI pointed at its config) keeps the store.
enum Backend {
    /// The default: a SQLite file beside the config.
    Sqlite,
    Postgres(PgSchema),
}

impl Backend {
    fn yaml(&self) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres(schema) => schema.storage_yaml(),
        }
    }
}

/// Each named test as `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres(crate::harness::postgres::PgSchema::new())).await
            }
        }
    )*};
}

on_both_backends!(
    dead_letters_are_listed_inspected_and_replayed,
    a_paused_destination_holds_its_deliveries_until_resumed,
    cancel_counts_first_keeps_who_and_why_and_the_cancelled_can_be_replayed,
    purge_counts_first_then_deletes_dead_letters_and_events_left_empty,
);

async fn cli(gw: &App, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(&gw.config_path);
    run_cli(cmd).await
}

fn rows(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn config(sink: &Sink, other: &Sink, backend: &Backend) -> String {
    let yaml = format!(
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
    );
    yaml + &backend.yaml()
}

async fn dead_letters_are_listed_inspected_and_replayed(backend: Backend) {
    // two 500s exhaust the schedule (one retry); then the destination recovers
    let sink = Sink::with_script(vec![Reply::status(500), Reply::status(500)]).await;
    let other = Sink::start().await;
    let gw = App::start_yaml(&config(&sink, &other, &backend)).await;
    let id = gw.post("/in", &[("content-type", "application/json")], "{\"n\":1}").await.accepted_id();
    let first = sink.wait_for(2, WAIT).await;
    wait_for_status(&gw, &id, "out", "dead").await;

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
    // the receiver has it; the gateway commits the result after the answer
    wait_for_status(&gw, &id, "out", "delivered").await;
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

async fn a_paused_destination_holds_its_deliveries_until_resumed(backend: Backend) {
    let sink = Sink::start().await;
    let other = Sink::start().await;
    let mut gw = App::start_yaml(&config(&sink, &other, &backend)).await;
    gw.stop(None).await;
    let paused = cli(&gw, &["pause", "out", "--reason", "maintenance"]).await;
    assert!(paused.status.success(), "{}", paused.stderr);
    assert_eq!(paused.stdout.trim(), "out paused: its deliveries wait in the store");
    let unknown = cli(&gw, &["pause", "nope"]).await;
    assert!(unknown.stderr.contains("unknown destination \"nope\""), "{}", unknown.stderr);

    gw.restart().await;
    let id = gw.post("/in", &[], "{}").await.accepted_id();
    // the other route's delivery arrives (and is committed); the paused one is still pending
    other.wait_for(1, WAIT).await;
    wait_for_status(&gw, &id, "other", "delivered").await;
    let pending = rows(&cli(&gw, &["events", "--status", "pending", "--json"]).await);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["destination"], "out");
    assert!(sink.requests().is_empty(), "delivered while paused");

    assert!(cli(&gw, &["resume", "out"]).await.status.success());
    // the running gateway sees the resume at its next poll (within a second)
    sink.wait_for(1, Duration::from_secs(10)).await;
}

/// `hookyard ARGS --config <gw's config>` run as the login `alice`.
async fn cli_as_alice(gw: &App, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(&gw.config_path).env("USER", "alice");
    run_cli(cmd).await
}

/// `hookyard event ID` as JSON.
async fn event_json(gw: &App, id: &str) -> Value {
    let out = cli(gw, &["event", id]).await;
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// The delivery of event `id` to `destination`.
async fn delivery_of(gw: &App, id: &str, destination: &str) -> Value {
    let ev = event_json(gw, id).await;
    ev["deliveries"].as_array().unwrap().iter().find(|d| d["destination"] == destination).unwrap().clone()
}

/// Waits (at most `WAIT`) until the delivery of event `id` to `destination` has `status` in the
/// store: the log line of a final outcome is written before its commit.
async fn wait_for_status(gw: &App, id: &str, destination: &str, status: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let d = delivery_of(gw, id, destination).await;
        if d["status"] == status {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "waited {WAIT:?} for {status}: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel_counts_first_keeps_who_and_why_and_the_cancelled_can_be_replayed(backend: Backend) {
    let sink = Sink::start().await;
    let other = Sink::start().await;
    let mut gw = App::start_yaml(&config(&sink, &other, &backend)).await;
    // `out` paused before the gateway reads the store, so its deliveries wait, pending
    gw.stop(None).await;
    assert!(cli(&gw, &["pause", "out"]).await.status.success());
    gw.restart().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(gw.post("/in", &[], format!("{{\"n\":{n}}}")).await.accepted_id());
    }
    other.wait_for(3, WAIT).await;

    // a dry run by default: counts, changes nothing
    let out = cli_as_alice(&gw, &["cancel", "--destination", "out"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "would cancel 3 pending deliveries; add --yes to cancel them\n");
    assert_eq!(delivery_of(&gw, &ids[0], "out").await["status"], "pending");

    // one by id, with a reason
    let first = delivery_of(&gw, &ids[0], "out").await["id"].as_i64().unwrap().to_string();
    let out = cli_as_alice(&gw, &["cancel", &first]).await;
    assert_eq!(out.stdout, "would cancel 1 pending delivery; add --yes to cancel it\n");
    let out = cli_as_alice(&gw, &["cancel", &first, "--reason", "sent by hand", "--yes"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "cancelled 1 delivery (by cli:alice: sent by hand)\n");
    // the rest of the destination
    let out = cli_as_alice(&gw, &["cancel", "--destination", "out", "--yes"]).await;
    assert_eq!(out.stdout, "cancelled 2 deliveries (by cli:alice)\n");
    let out = cli_as_alice(&gw, &["cancel", "--destination", "out"]).await;
    assert_eq!(out.stdout, "would cancel 0 pending deliveries; add --yes to cancel them\n");

    // visible as cancelled, with who and why; the other destination's deliveries untouched
    let d = delivery_of(&gw, &ids[0], "out").await;
    assert_eq!(d["status"], "cancelled", "{d}");
    assert_eq!(d["cancelled"]["by"], "cli:alice", "{d}");
    assert_eq!(d["cancelled"]["reason"], "sent by hand", "{d}");
    let d = delivery_of(&gw, &ids[1], "out").await;
    assert_eq!((d["status"].as_str(), d["cancelled"]["reason"].as_str()), (Some("cancelled"), None), "{d}");
    wait_for_status(&gw, &ids[1], "other", "delivered").await;
    let listed = cli(&gw, &["events", "--status", "cancelled", "--json"]).await;
    assert!(listed.status.success(), "{}", listed.stderr);
    assert_eq!(listed.stdout.matches("\"status\":\"cancelled\"").count(), 3, "{}", listed.stdout);

    // refusals, with what is wrong
    let out = cli(&gw, &["cancel", "--yes"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr, "error: nothing selected: give ids, a filter (destination, source, since) or all\n");
    let out = cli(&gw, &["cancel", "evt_nope", "--yes"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr, "error: no deliveries for: evt_nope\n");

    // resumed, nothing cancelled is sent; a cancelled delivery replayed by id is
    assert!(cli(&gw, &["resume", "out"]).await.status.success());
    let out = cli(&gw, &["replay", &first]).await;
    assert_eq!(out.stdout, "1 delivery queued\n");
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].body, "{\"n\":0}");
    let d = delivery_of(&gw, &ids[0], "out").await;
    assert!(d["cancelled"].is_null(), "no longer shown as cancelled: {d}");
    for id in &ids[1..] {
        assert_eq!(delivery_of(&gw, id, "out").await["status"], "cancelled");
    }
    assert_eq!(sink.requests().len(), 1, "only the replayed delivery was sent");
}

async fn purge_counts_first_then_deletes_dead_letters_and_events_left_empty(backend: Backend) {
    // every attempt fails: one retry, then a dead letter
    let sink = Sink::with_script(vec![Reply::status(500); 4]).await;
    let other = Sink::start().await;
    let yaml = config(&sink, &other, &backend).replace("  - { name: copy, source: app, to: [other] }\n", "");
    let gw = App::start_yaml(&yaml).await;
    let a = gw.post("/in", &[], "{\"n\":1}").await.accepted_id();
    let b = gw.post("/in", &[], "{\"n\":2}").await.accepted_id();
    sink.wait_for(4, WAIT).await;
    wait_for_status(&gw, &a, "out", "dead").await;
    wait_for_status(&gw, &b, "out", "dead").await;

    let out = cli(&gw, &["purge", "--destination", "out"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "would purge 2 dead letters; add --yes to delete them\n");
    let out = cli(&gw, &["purge", "--older-than", "1h"]).await;
    assert_eq!(out.stdout, "would purge 0 dead letters; add --yes to delete them\n");
    let out = cli(&gw, &["purge", "--destination", "other", "--yes"]).await;
    assert_eq!(out.stdout, "purged 0 dead letters and 0 events left without deliveries\n");
    assert_eq!(delivery_of(&gw, &a, "out").await["status"], "dead");

    let out = cli(&gw, &["purge", "--destination", "out", "--yes"]).await;
    assert_eq!(out.stdout, "purged 2 dead letters and 2 events left without deliveries\n");
    for id in [&a, &b] {
        let gone = cli(&gw, &["event", id]).await;
        assert_eq!(gone.code(), Some(1));
        assert_eq!(gone.stderr, format!("error: no event {id}\n"));
    }
    let out = cli(&gw, &["purge", "--older-than", "soon"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr,
        "error: invalid duration \"soon\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\"\n"
    );
}
