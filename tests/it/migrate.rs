//! `hookyard migrate` with the real binary: a gateway on SQLite keeps a queue for a destination
//! that is down, is stopped, its store is copied into PostgreSQL, and the gateway started on the
//! same config with `storage.postgres` delivers every pending event, with the `webhook-id` it was
//! given. And the refusals: no `storage.postgres`, no SQLite file, a target that is not empty.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::postgres::{self, PgSchema};
use crate::harness::*;

/// One source, one destination at `url` retried every second (twenty times: enough for the
/// stop, the copy and the start), then the `storage:` section given.
fn config(url: &str, storage: &str) -> String {
    format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  app: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  out:
    url: "{url}"
    sign: {{ scheme: none }}
    retry: {{ schedule: [1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], jitter: 0 }}
    breaker: {{ enabled: false }}
routes:
  - {{ name: main, source: app, to: [out] }}
{storage}"#
    )
}

/// A URL nothing listens on: connections are refused.
fn down_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/out", listener.local_addr().unwrap())
}

async fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(config);
    run_cli(cmd).await
}

/// `hookyard events --status STATUS --json` as rows.
async fn deliveries(config: &Path, status: &str) -> Vec<Value> {
    let out = cli(config, &["events", "--status", status, "--json"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_queue_kept_in_sqlite_is_delivered_from_postgres_after_migrate() {
    let mut gw = Gateway::start(&config(&down_url(), "")).await;
    let mut bodies = BTreeSet::new();
    for n in 0..3 {
        let body = format!("{{\"n\":{n}}}");
        gw.post("/in", &[("content-type", "application/json")], body.clone()).await.accepted_id();
        bodies.insert(body);
    }
    // each tried and refused at least once: pending work with attempts behind it
    gw.wait_for_log_lines(&["delivery attempt failed; will retry"], 3, WAIT).await;
    gw.terminate(WAIT).await;
    let pending = deliveries(&gw.config_path, "pending").await;
    let msg_ids: BTreeSet<String> = pending.iter().map(|d| d["msg_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(msg_ids.len(), 3, "{pending:?}");

    // the destination is up again, and the config moves to PostgreSQL
    let sink = Sink::start().await;
    let schema = PgSchema::new();
    std::fs::write(&gw.config_path, config(&sink.url("/out"), &schema.storage_yaml())).unwrap();
    let out = cli(&gw.config_path, &["migrate"]).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let db = gw.config_path.parent().unwrap().join("data/hookyard.db");
    let line = out.stdout.strip_prefix("copied 3 events, 3 deliveries (3 pending), ").unwrap_or_else(|| {
        panic!("{}", out.stdout);
    });
    let (attempts, rest) = line.split_once(' ').unwrap();
    assert!(attempts.parse::<u64>().unwrap() >= 3, "{}", out.stdout);
    assert_eq!(
        rest,
        format!(
            "attempts, 0 cancellations, 0 paused destinations from {} to {} (schema {})\n",
            db.display(),
            hookyard::store::postgres_display_url(&postgres::url()),
            schema.name
        )
    );

    // a second run finds the target holding a store, and copies nothing twice
    let again = cli(&gw.config_path, &["migrate"]).await;
    assert_eq!(again.code(), Some(1));
    assert!(
        again.stderr.contains(&format!(
            "error: the PostgreSQL schema \"{}\" already holds a store (events: 3, destination states: 0)",
            schema.name
        )),
        "{}",
        again.stderr
    );

    gw.restart().await;
    let got = sink.wait_for(3, Duration::from_secs(30)).await;
    // lost = 0: every body arrived, with the webhook-id it was given on SQLite
    let received: BTreeSet<String> = got.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert_eq!(received, bodies);
    let sent_ids: BTreeSet<String> = got.iter().map(|r| r.must("webhook-id").to_string()).collect();
    assert_eq!(sent_ids, msg_ids);
    // the results are committed after the answers
    let deadline = std::time::Instant::now() + WAIT;
    while deliveries(&gw.config_path, "delivered").await.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "not all recorded as delivered within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries(&gw.config_path, "pending").await.len(), 0);
    assert!(gw.logs_contain(&format!("(schema {})", schema.name)), "{}", gw.logs());
    // the gateway goes before its schema does
    gw.terminate(WAIT).await;
}

#[tokio::test]
async fn migrate_refuses_a_config_without_postgres_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, config(&down_url(), "")).unwrap();
    let out = cli(&path, &["migrate"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr,
        format!(
            "error: {} has no storage.postgres: migrate copies the SQLite store into the PostgreSQL database it \
             names; add it first (docs/operations.md, \"Moving from SQLite to PostgreSQL\")\n",
            path.display()
        )
    );

    let schema = PgSchema::new();
    std::fs::write(&path, config(&down_url(), &schema.storage_yaml())).unwrap();
    let out = cli(&path, &["migrate"]).await;
    assert_eq!(out.code(), Some(1));
    let default = dir.path().join("data/hookyard.db");
    assert_eq!(
        out.stderr,
        format!(
            "error: there is no SQLite store at {} (the config's storage.path); name the file with --from\n",
            default.display()
        )
    );
    let out = cli(&path, &["migrate", "--from", "nowhere.db"]).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr, "error: there is no SQLite store at nowhere.db\n");
    assert!(!default.exists(), "no store was created");
    let out = cli(&path, &["migrate", "--from"]).await;
    assert_eq!(out.code(), Some(2), "a usage error, as clap reports them: {}", out.stderr);
}
