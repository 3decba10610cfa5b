//! The gateway on PostgreSQL when the database goes away under load: while it is unreachable
//! ingress answers `503` with `Retry-After` (never `202`), within the commit timeout, and
//! `/readyz` says not ready; deliveries already handed to the dispatcher are still sent; when the
//! database returns the gateway recovers by itself (no restart) and every event that got a `202`
//! is delivered. The database is cut with a TCP relay in front of the real server
//! (`harness::postgres::Relay`), so the server the other tests use keeps running. (kill -9 under
//! load on PostgreSQL is in `crash.rs`; the store commands on PostgreSQL in `store_cli.rs`.)

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::harness::admin_api::{post_to, try_post};
use crate::harness::postgres::{Database, PgSchema, Relay};
use crate::harness::*;

/// Senders posting at once, throughout.
const SENDERS: usize = 4;
/// How long the database stays unreachable.
const OUTAGE: Duration = Duration::from_secs(3);
/// In the database URL; never shown.
const PASSWORD: &str = "pa55-w0rd-in-the-url";
/// `storage.commit_timeout` of the gateway: the longest a request may wait for its commit.
const COMMIT_TIMEOUT_MS: u64 = 1000;

/// One answer a sender got.
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    at: Instant,
    took: Duration,
    outcome: Result<(StatusCode, Option<String>), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_gets_503s_and_readiness_then_the_gateway_recovers_by_itself() {
    let schema = PgSchema::new();
    let relay = Relay::start().await;
    // deliveries take a while, so some are in flight when the database goes
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_millis(200)); 40]).await;
    let yaml = format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
storage:
  commit_timeout: {COMMIT_TIMEOUT_MS}ms
  postgres: {{ url: "{url}", pool: 4, schema: {schema}, connect_timeout: 1s, statement_timeout: 5s }}
sources:
  app: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  out:
    url: "{out}"
    sign: {{ scheme: none }}
    retry: {{ schedule: [200ms, 500ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], jitter: 0, throttle_floor: 0s }}
    breaker: {{ enabled: false }}
routes:
  - {{ name: main, source: app, to: [out] }}
"#,
        url = relay.url_with_password(PASSWORD),
        schema = schema.name,
        out = sink.url("/out"),
    );
    let gw = App::start_yaml(&yaml).await;
    let admin = gw.admin();
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);
    let status = admin.status().await;
    assert_eq!(
        status["store"],
        format!("postgres://postgres@{}/test (schema {})", relay.addr, schema.name),
        "the store without its password: {status}"
    );

    // senders post throughout: before, during and after the outage
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (sent, next, stop) = (sent.clone(), next.clone(), stop.clone());
            let url = gw.url("/in");
            tokio::spawn(async move {
                let client = http_client();
                while !stop.load(Ordering::SeqCst) {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    let at = Instant::now();
                    let answer = try_post(&client, &url, &[], format!("{{\"seq\":{seq}}}")).await;
                    let outcome = answer.map(|a| (a.status, a.header("retry-after").map(str::to_string)));
                    sent.lock().unwrap().push(Sent { seq, at, took: at.elapsed(), outcome });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let accepted_by = |until: Instant| -> BTreeSet<u64> {
        sent.lock()
            .unwrap()
            .iter()
            .filter(|s| s.at + s.took <= until && matches!(s.outcome, Ok((StatusCode::ACCEPTED, _))))
            .map(|s| s.seq)
            .collect()
    };

    // some load first
    sink.wait_until(WAIT, "deliveries before the outage", |r| r.len() >= 10).await;
    let cut_at = Instant::now();
    relay.cut().await;
    let before_cut = accepted_by(cut_at);

    // not ready within a few seconds of the outage
    admin
        .wait_answer("/readyz", "readyz 503 while the database is unreachable", |a| {
            a.status == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
    // deliveries accepted before the cut are still sent while the database is away
    sink.wait_until(Duration::from_secs(5), "the deliveries accepted before the outage", |r| {
        let got: BTreeSet<u64> = r.iter().filter_map(|q| seq_of(&q.body)).collect();
        before_cut.is_subset(&got)
    })
    .await;
    let elapsed = cut_at.elapsed();
    tokio::time::sleep(OUTAGE.saturating_sub(elapsed)).await;
    let restore_at = Instant::now();
    relay.restore();

    // ready again by itself, within seconds
    let recovered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if admin.get("/readyz").await.status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "not ready 15 s after the database returned; logs:\n{}", gw.logs());
    let ready_after = restore_at.elapsed();
    // and accepting again: the load goes on until a few more events got in
    let resumed = accepted_by(Instant::now() + Duration::from_secs(60)).len();
    let deadline = Instant::now() + Duration::from_secs(15);
    while accepted_by(Instant::now() + Duration::from_secs(60)).len() < resumed + 20 {
        assert!(Instant::now() < deadline, "no 202s after the database returned; logs:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.expect("a sender panicked");
    }

    let sent = sent.lock().unwrap().clone();
    // during the outage (from a moment after the cut, when requests already in their commit are
    // through, until the restore) no 202, and every refusal is a 503 with Retry-After, in time
    let settle = Duration::from_millis(COMMIT_TIMEOUT_MS + 1500);
    let mut refused = 0;
    for s in &sent {
        match &s.outcome {
            Ok((StatusCode::ACCEPTED, _)) => {
                assert!(
                    s.at + s.took < cut_at + settle || s.at + s.took > restore_at,
                    "a 202 while the database was unreachable: {s:?}"
                );
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, retry_after)) => {
                refused += 1;
                assert_eq!(retry_after.as_deref(), Some("5"), "503 without Retry-After: {s:?}");
            }
            other => panic!("unexpected answer {other:?} for {s:?}"),
        }
        assert!(s.took < Duration::from_millis(COMMIT_TIMEOUT_MS + 3000), "an answer took {:?}: {s:?}", s.took);
    }
    assert!(refused > 0, "no request met the outage");

    // every 202 is delivered (lost = 0); duplicates are allowed and reported
    let accepted: BTreeSet<u64> =
        sent.iter().filter(|s| matches!(s.outcome, Ok((StatusCode::ACCEPTED, _)))).map(|s| s.seq).collect();
    let got = sink
        .try_wait_until(Duration::from_secs(20), |r| {
            let got: BTreeSet<u64> = r.iter().filter_map(|q| seq_of(&q.body)).collect();
            accepted.is_subset(&got)
        })
        .await;
    let received: Vec<u64> = sink.requests().iter().filter_map(|q| seq_of(&q.body)).collect();
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    let lost: Vec<u64> = accepted.difference(&distinct).copied().collect();
    eprintln!(
        "postgres outage: sent={} accepted={} refused_503={refused} lost={} duplicates={} ready_again_after={ready_after:?}",
        sent.len(),
        accepted.len(),
        lost.len(),
        received.len() - distinct.len(),
    );
    assert!(got.is_ok() && lost.is_empty(), "lost {} accepted events: {lost:?}; logs:\n{}", lost.len(), gw.logs());
    assert!(!gw.logs().contains(PASSWORD), "the database password reached the log");
    // the store agrees: nothing it holds is still pending once all arrived
    let deadline = Instant::now() + WAIT;
    while schema.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").await > 0 {
        assert!(Instant::now() < deadline, "deliveries still pending in the store");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and the admin API reads it from PostgreSQL: one delivered delivery per accepted event
    let delivered = admin.all_deliveries("status=delivered", 100).await;
    let events: BTreeSet<&str> = delivered.iter().filter_map(|d| d["event_id"].as_str()).collect();
    assert_eq!((delivered.len(), events.len()), (accepted.len(), accepted.len()));
}

fn seq_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["seq"].as_u64()
}

/// The two lines the docs give (`docs/delivery.md`, "PostgreSQL"), as written: the `storage:`
/// line in a config and `DATABASE_URL` in the environment of `hookyard run`, on a database of its
/// own (the default schema `public`), which the test drops at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_two_lines_run_the_gateway_on_postgresql() {
    let docs = std::fs::read_to_string(manifest_dir().join("docs/delivery.md")).unwrap();
    let section = docs.split("\n## PostgreSQL\n").nth(1).expect("the PostgreSQL section");
    let yaml_line = section.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("its yaml");
    assert_eq!(yaml_line, "storage: { postgres: { url: \"${DATABASE_URL}\" } }\n");
    let sh = section.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("its command");
    assert!(sh.starts_with("DATABASE_URL=") && sh.contains(" hookyard run --config routes.yaml"), "{sh}");

    let database = Database::create().await;
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\negress: {{ allow: [\"127.0.0.0/8\"] }}\n{yaml_line}\
             sources:\n  app: {{ path: /in, verify: {{ scheme: none }} }}\n\
             destinations:\n  out: {{ url: \"{}\", sign: {{ scheme: none }} }}\n\
             \x20 down: {{ url: \"http://127.0.0.1:1/x\", sign: {{ scheme: none }}, retry: {{ schedule: [1h] }}, breaker: {{ enabled: false }} }}\n\
             routes:\n  - {{ name: main, source: app, to: [out, down] }}\n",
            sink.url("/out")
        ),
    )
    .unwrap();
    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&config).env("DATABASE_URL", &database.url);
    let mut gw = Process::spawn(cmd, dir.path().join("stderr.log")).await;
    let answer = post_to(gw.addr, "/in", &[], "{\"hello\":\"postgres\"}").await;
    let id = answer.accepted_id();
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].body, "{\"hello\":\"postgres\"}");
    let started = gw.wait_for_log("hookyard listening", WAIT).await;
    assert!(started.contains("store=postgres://postgres@"), "{started}");
    // a server without autovacuum is named at start (the machines' test server has it off)
    let autovacuum: String = database.client().await.query_one("SHOW autovacuum", &[]).await.unwrap().get(0);
    assert_eq!(
        gw.logs_contain("autovacuum is off on this PostgreSQL server"),
        autovacuum == "off",
        "autovacuum is {autovacuum}; logs:\n{}",
        gw.logs()
    );
    // the queue figures on /metrics come from PostgreSQL: `down` refuses connections, so its
    // delivery waits in the store for its retry in an hour
    let admin = crate::harness::admin_api::AdminApi::of(&gw).await;
    admin
        .wait_metrics("the queue depth of `down` from the store", |m| {
            m.get("hookyard_queue_depth", &[("destination", "down")]) == 1.0
                && m.get("hookyard_queue_depth", &[("destination", "out")]) == 0.0
        })
        .await;
    gw.terminate(WAIT).await;
    let stored: i64 = database
        .client()
        .await
        .query_one("SELECT COUNT(*) FROM public.events WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1, "the event is in the database's public schema");
}
