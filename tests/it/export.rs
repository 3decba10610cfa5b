//! The event log as a source of truth: `hookyard export` and `GET /api/v1/export` (every stored
//! event as stored, in accept order, filtered, a page at a time in bounded memory), and `hookyard
//! replay --reroute --since` (a time range of history through today's routes, one route, or one
//! destination; paced; counted first), against a real gateway and real loopback receivers. What
//! reads the store runs on both backends: the SQLite file and a PostgreSQL schema of its own.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::harness::admin_api::write_in_place;
use crate::harness::postgres::PgSchema;
use crate::harness::*;

/// Where a test's gateway (and the CLI pointed at its config) keeps the store: `None`, the SQLite
/// file beside the config.
type Backend = Option<PgSchema>;

fn storage(backend: &Backend) -> String {
    backend.as_ref().map(PgSchema::storage_yaml).unwrap_or_default()
}

/// Each named test as `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(None).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(Some(crate::harness::postgres::PgSchema::new())).await
            }
        }
    )*};
}

on_both_backends!(
    export_writes_each_event_as_stored_in_accept_order_with_its_filters,
    replay_reroute_feeds_a_new_route_from_a_range_of_history_and_nothing_else,
);

async fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(config);
    run_cli(cmd).await
}

/// The JSON lines of a successful command.
fn lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "exit {:?}; stderr:\n{}", out.code(), out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect()
}

/// Two sources: `app` routed to `old`, `pay` to `books`; `fresh` and the route `new` come later.
fn gateway_config(old: &Sink, books: &Sink, fresh: Option<&Sink>, backend: &Backend) -> String {
    let mut yaml = format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  app: {{ path: /in/app, verify: {{ scheme: none }} }}
  pay: {{ path: /in/pay, verify: {{ scheme: none }} }}
destinations:
  old: {{ url: "{old}", sign: {{ scheme: none }} }}
  books: {{ url: "{books}", sign: {{ scheme: none }} }}
"#,
        old = old.url("/old"),
        books = books.url("/books"),
    );
    if let Some(fresh) = fresh {
        yaml += &format!("  fresh: {{ url: \"{}\", sign: {{ scheme: none }} }}\n", fresh.url("/fresh"));
    }
    yaml += "routes:\n  - { name: main, source: app, to: [old] }\n  - { name: bill, source: pay, to: [books] }\n";
    if fresh.is_some() {
        yaml += "  - { name: new, source: app, to: [fresh] }\n";
    }
    yaml + &storage(backend)
}

/// Posts `n` events to `app` (bodies `{"n":i}`), one at a time, and returns their ids in accept
/// order. Each waits for its `202` and then 2 ms, so no two share a millisecond and accept order
/// is the order posted (within a millisecond it is the ids' order, which is random).
async fn post_app(gw: &App, from: usize, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in from..from + n {
        let body = format!("{{\"n\":{i}}}");
        let headers = [("content-type", "application/json"), ("x-kind", "order"), ("authorization", "Bearer s3cret")];
        ids.push(gw.post("/in/app", &headers, body).await.accepted_id());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    ids
}

/// The stored form of an event, as `hookyard event` shows it: what its export line must hold.
async fn stored(config: &Path, id: &str) -> Value {
    let out = cli(config, &["event", id]).await;
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

async fn export_writes_each_event_as_stored_in_accept_order_with_its_filters(backend: Backend) {
    let (old, books) = (Sink::start().await, Sink::start().await);
    let gw = App::start_yaml(&gateway_config(&old, &books, None, &backend)).await;
    let mut posted = post_app(&gw, 0, 2).await;
    // a body that is not UTF-8, on the other source
    let binary: &[u8] = b"\xff\xfe\x00raw";
    posted.push(gw.post("/in/pay", &[("content-type", "application/octet-stream")], binary).await.accepted_id());
    tokio::time::sleep(Duration::from_millis(2)).await;
    posted.extend(post_app(&gw, 2, 2).await);
    old.wait_for(4, WAIT).await;
    let sent = books.wait_for(1, WAIT).await;
    let config = &gw.config_path;

    let all = lines(&cli(config, &["export"]).await);
    assert_eq!(ids(&all), posted, "every event, in accept order");
    for line in &all {
        // the line is the event as stored: headers as stored (credentials removed), exact body
        let ev = stored(config, line["id"].as_str().unwrap()).await;
        let mut expected = json!({
            "id": ev["id"],
            "source": ev["source"],
            "received_at_ms": ev["received_at_ms"],
            "received_at": line["received_at"],
            "headers": ev["headers"],
        });
        match ev["body"].as_str() {
            Some(body) => expected["body"] = json!(body),
            None => expected["body_base64"] = ev["body_base64"].clone(),
        }
        assert_eq!(line, &expected);
        let ms = line["received_at_ms"].as_i64().unwrap();
        let at = time::OffsetDateTime::parse(
            line["received_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!((at.unix_timestamp_nanos() / 1_000_000) as i64, ms, "received_at is received_at_ms in RFC 3339");
    }
    assert_eq!(all[0]["body"], "{\"n\":0}");
    assert!(all[0]["headers"].as_array().unwrap().contains(&json!(["x-kind", "order"])));
    assert!(!all[0]["headers"].to_string().contains("s3cret"), "credentials are not stored, so not exported");
    assert_eq!(all[2]["body_base64"], base64::engine::general_purpose::STANDARD.encode(binary));
    assert_eq!(&sent[0].body[..], binary, "the bytes the export holds are the bytes delivered");

    let pay = lines(&cli(config, &["export", "--source", "pay"]).await);
    assert_eq!(ids(&pay), [posted[2].clone()]);
    // since inclusive (RFC 3339), until exclusive (unix ms)
    let since = all[1]["received_at"].as_str().unwrap().to_string();
    let until = all[4]["received_at_ms"].to_string();
    let range = lines(&cli(config, &["export", "--since", &since, "--until", &until]).await);
    assert_eq!(ids(&range), posted[1..4]);
    let billed = lines(&cli(config, &["export", "--route", "bill", "--deliveries"]).await);
    assert_eq!(ids(&billed), [posted[2].clone()]);
    let d = &billed[0]["deliveries"][0];
    assert_eq!(
        (&d["route"], &d["destination"], &d["status"], &d["attempts"]),
        (&json!("bill"), &json!("books"), &json!("delivered"), &json!(1))
    );
    assert_eq!(d["msg_id"].as_str(), sent[0].header("webhook-id"), "the webhook-id the receiver saw");
    assert_eq!(d["last_status"], 200);

    // the admin API streams the same lines
    let admin = gw.admin();
    for (query, args) in [
        ("", vec!["export"]),
        ("?route=bill&deliveries=true", vec!["export", "--route", "bill", "--deliveries"]),
        (
            &*format!("?since={}&until={until}", since.replace('+', "%2B")),
            vec!["export", "--since", &since, "--until", &until],
        ),
    ] {
        let api = admin.get(&format!("/api/v1/export{query}")).await;
        assert_eq!(api.status, 200, "{}", api.text());
        assert_eq!(api.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(api.text(), cli(config, &args).await.stdout, "GET /api/v1/export{query}");
    }
    let bad = admin.get("/api/v1/export?deliveries=yes").await;
    assert_eq!(
        (bad.status.as_u16(), bad.json()),
        (400, json!({"error": "deliveries must be true or false, not \"yes\""}))
    );
    let bad = admin.get(&format!("/api/v1/export?since={until}&until={}", all[0]["received_at_ms"])).await;
    assert_eq!(bad.status, 400, "{}", bad.text());

    // history outlives the config: a name it no longer has is exported with a warning
    let gone = cli(config, &["export", "--source", "gone"]).await;
    assert!(lines(&gone).is_empty());
    assert_eq!(
        gone.stderr,
        "warning: source \"gone\" is not in the current config; exporting what the store holds of it\n"
    );
    let bad = cli(config, &["export", "--since", "yesterday"]).await;
    assert_eq!(bad.code(), Some(1));
    assert_eq!(
        bad.stderr,
        "error: invalid duration \"yesterday\": expected a number and a unit (ms, s, m, h, d), e.g. \"5s\"\n"
    );
}

/// Runs `hookyard export --config CONFIG` to its end, reading its output as it comes, and
/// returns (lines, peak RSS in KiB, elapsed): the peak is the last `VmHWM` read before it exited
/// (a high-water mark, so it only grows), read every 2 ms.
async fn export_measured(config: &Path) -> (usize, u64, Duration) {
    let mut cmd = hookyard();
    cmd.arg("export").arg("--config").arg(config).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn hookyard export");
    let pid = child.id().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let reader = tokio::spawn(async move {
        let (mut n, mut line) = (0, String::new());
        while stdout.read_line(&mut line).await.unwrap() > 0 {
            n += 1;
            line.clear();
        }
        n
    });
    let mut peak = 0;
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(hwm) = proc_status_kib(pid, "VmHWM") {
                peak = peak.max(hwm);
            }
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the export finishes within 30 s");
    let elapsed = started.elapsed();
    assert!(status.success(), "export failed: {status}");
    (reader.await.unwrap(), peak, elapsed)
}

/// Writes `n` events of 1 KiB to the store a config names, straight through the store (posting
/// 20,000 would take most of a minute in a debug build), a thousand accepts at a time.
async fn fill(config: &Path, n: usize) {
    use hookyard::store::{Accepted, NewEvent, Queue, Store};
    let snap = hookyard::snapshot::build(config, &hookyard::snapshot::Plugins::from_env()).unwrap();
    let store = Store::connect(&snap.storage, hookyard::clock::Clock::System).await.unwrap();
    let body = bytes::Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(1012)));
    for chunk in 0..n.div_ceil(1000) {
        let accepts = (chunk * 1000..((chunk + 1) * 1000).min(n)).map(|i| {
            let store = store.clone();
            let event = NewEvent {
                id: hookyard::store::EventId::generate(),
                source: "app".into(),
                received_at_ms: 1_700_000_000_000 + i as i64,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.clone(),
                dedupe_key: None,
            };
            tokio::spawn(async move { store.accept(event, Vec::new(), None).await })
        });
        for a in accepts.collect::<Vec<_>>() {
            assert!(matches!(a.await.unwrap().unwrap(), Accepted::Stored(_)));
        }
    }
}

/// A config whose store `fill` fills: one source and route, an admin listener for a gateway.
fn store_only_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("routes.yaml");
    std::fs::write(
        &path,
        "server: { listen: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\nstorage: { sync: normal }\n\
         sources:\n  app: { path: /in, verify: { scheme: none } }\n\
         destinations:\n  out: { url: \"http://127.0.0.1:9/\", sign: { scheme: none } }\nroutes:\n  - { name: main, source: app, to: [out] }\n",
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_large_range_is_walked_a_page_at_a_time_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = store_only_config(dir.path());
    fill(&config, 20_000).await;

    // every page of the range routed once: the count is exact, and progress comes every 1000
    let started = Instant::now();
    let dry = cli(&config, &["replay", "--reroute", "--since", "1700000000000", "--dry-run"]).await;
    let took = started.elapsed();
    assert!(dry.status.success(), "{}", dry.stderr);
    assert_eq!(
        dry.stdout,
        "dry run: 20000 events in range would plan 20000 deliveries; 0 matched no route; 0 skipped (source not in the config)\n"
    );
    // reported after the page that passes each next thousand (pages of 64 at the default body limit)
    let progress: Vec<usize> = dry
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("progress: dry run: ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(progress.len(), 19, "{}", dry.stderr);
    assert!(progress.windows(2).all(|w| (1000..1064).contains(&(w[1] - w[0]))), "{progress:?}");
    eprintln!(
        "replay --reroute --dry-run routed 20,000 events in {took:?} ({:.0} events/s)",
        20_000.0 / took.as_secs_f64()
    );

    // a client of the admin API that goes away stops the export's reads (addressed to a loopback
    // name: without a token, the admin listener answers no other)
    let gw = App::start_file(config.clone()).await;
    let mut conn = tokio::net::TcpStream::connect(gw.admin_addr.unwrap()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET /api/v1/export HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut start = vec![0u8; 64 * 1024];
    conn.read_exact(&mut start).await.unwrap();
    assert!(String::from_utf8_lossy(&start).starts_with("HTTP/1.1 200 OK\r\n"));
    drop(conn);
    let line = gw.wait_for_log("export: the client went away; stopped", WAIT).await;
    let sent: usize = line.split("events=").nth(1).and_then(|n| n.split_whitespace().next()?.parse().ok()).unwrap();
    assert!(sent < 20_000, "stopped after {sent} events, before the end: {line}");
    eprintln!("the admin API's export stopped after {sent} of 20,000 events sent when its client went away");
}

#[tokio::test]
async fn export_memory_follows_a_page_not_the_log() {
    let (small, large) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (small, large) = (store_only_config(small.path()), store_only_config(large.path()));
    fill(&small, 2_000).await;
    fill(&large, 20_000).await;
    let (n_small, rss_small, _) = export_measured(&small).await;
    let (n_large, rss_large, took) = export_measured(&large).await;
    assert_eq!((n_small, n_large), (2_000, 20_000));
    eprintln!(
        "export peak RSS: {rss_small} KiB for 2,000 events, {rss_large} KiB for 20,000 (20 MiB of bodies); \
         20,000 in {took:?} ({:.0} events/s)",
        20_000.0 / took.as_secs_f64()
    );
    assert!(
        rss_large * 2 <= rss_small * 3,
        "peak RSS {rss_large} KiB for 20,000 events against {rss_small} KiB for 2,000: it grows with the log"
    );

    // a reader that goes away (`| head -1`) ends the export, successfully and at once
    let mut cmd = hookyard();
    cmd.arg("export").arg("--config").arg(&large).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).await.unwrap();
    drop(stdout);
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("ends once stdout is closed").unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(status.success() && stderr.is_empty(), "{status}: {stderr}");
}

/// The deliveries of `route`, oldest planned first (`(event id, webhook-id, status)`).
async fn planned(gw: &App, route: &str) -> Vec<(String, String, String)> {
    let mut rows = gw.admin().all_deliveries("", 1000).await;
    rows.retain(|r| r["route"] == route);
    rows.sort_by_key(|r| r["id"].as_i64().unwrap());
    let s = |v: &Value| v.as_str().unwrap().to_string();
    rows.iter().map(|r| (s(&r["event_id"]), s(&r["msg_id"]), s(&r["status"]))).collect()
}

async fn wait_delivered(gw: &App, route: &str, n: usize) -> Vec<(String, String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = planned(gw, route).await;
        if rows.len() == n && rows.iter().all(|(_, _, status)| status == "delivered") {
            return rows;
        }
        assert!(Instant::now() < deadline, "route {route}: {rows:?}, expected {n} delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn replay_reroute_feeds_a_new_route_from_a_range_of_history_and_nothing_else(backend: Backend) {
    let (old, books, fresh) = (Sink::start().await, Sink::start().await, Sink::start().await);
    let gw = App::start_yaml(&gateway_config(&old, &books, None, &backend)).await;
    let posted = post_app(&gw, 0, 6).await;
    gw.post("/in/pay", &[], "{\"paid\":1}").await.accepted_id();
    old.wait_for(6, WAIT).await;
    books.wait_for(1, WAIT).await;
    let config = gw.config_path.clone();
    let times: Vec<i64> =
        lines(&cli(&config, &["export"]).await).iter().map(|l| l["received_at_ms"].as_i64().unwrap()).collect();

    // a new downstream arrives: a destination and a route of its own
    write_in_place(&config, &gateway_config(&old, &books, Some(&fresh), &backend));
    let reload = gw.admin().post_json("/api/v1/reload", "").await;
    assert!(reload["result"] == "reloaded" || reload["result"] == "unchanged", "{reload}");
    gw.admin()
        .wait_json("/api/v1/destinations", "fresh in the gateway's config", WAIT, |v| {
            v.to_string().contains("\"fresh\"")
        })
        .await;

    // events 1..4 of app: counted first, nothing planned
    let (since, until) = (times[1].to_string(), times[4].to_string());
    let range = ["replay", "--reroute", "--since", &since, "--until", &until, "--route", "new"];
    let dry = cli(&config, &[&range[..], &["--dry-run"]].concat()).await;
    assert!(dry.status.success(), "{}", dry.stderr);
    assert_eq!(
        dry.stdout,
        "dry run: 3 events in range would plan 3 deliveries; 0 matched no route; 0 skipped (source not in the config)\n"
    );
    let api = gw
        .admin()
        .post_json(
            "/api/v1/replay",
            &format!(r#"{{"reroute": {{"since": "{since}", "until": "{until}", "route": "new"}}}}"#),
        )
        .await;
    assert_eq!(
        api,
        json!({"dry_run": true, "events": 3, "planned": 3, "unmatched": 0, "skipped": 0}),
        "the API counts unless told to act"
    );
    assert!(planned(&gw, "new").await.is_empty(), "a dry run plans nothing");

    let done = cli(&config, &range).await;
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        done.stdout,
        "3 events in range planned 3 deliveries; 0 matched no route; 0 skipped (source not in the config)\n"
    );
    let new = wait_delivered(&gw, "new", 3).await;
    assert_eq!(
        new.iter().map(|(event, _, _)| event.clone()).collect::<Vec<_>>(),
        posted[1..4],
        "planned in accept order, each once"
    );
    let got = fresh.wait_for(3, WAIT).await;
    let bodies: BTreeSet<String> = got.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
    assert_eq!(bodies, (1..4).map(|i| format!("{{\"n\":{i}}}")).collect());
    assert!(got.iter().all(|r| r.header("x-kind") == Some("order")), "the headers as stored are forwarded");
    // the old destination got nothing new (its six came before the replay, and it has no new delivery)
    assert_eq!(planned(&gw, "main").await.len(), 6);
    assert_eq!(old.requests().len(), 6);

    // straight into one destination: no route, the stored body, a fresh webhook-id each time
    let to = cli(&config, &["replay", "--reroute", "--since", &since, "--until", &until, "--to", "fresh"]).await;
    assert_eq!(
        to.stdout, "3 events in range planned 3 deliveries; 0 matched no route; 0 skipped (source not in the config)\n",
        "{}",
        to.stderr
    );
    let direct = wait_delivered(&gw, "(replay)", 3).await;
    assert_eq!(direct.iter().map(|(event, _, _)| event.clone()).collect::<Vec<_>>(), posted[1..4]);
    let msg_ids: BTreeSet<&String> = new.iter().chain(&direct).map(|(_, msg, _)| msg).collect();
    assert_eq!(msg_ids.len(), 6, "every replay has webhook-ids of its own");
    assert_eq!(fresh.wait_for(6, WAIT).await.len(), 6);

    // the admin API acts when told to, and the gateway sends what it planned
    let body = format!(
        r#"{{"reroute": {{"since": "{since}", "until": "{until}", "route": "new", "rate": 0, "dry_run": false}}}}"#
    );
    let api = gw.admin().post_json("/api/v1/replay", &body).await;
    assert_eq!(api, json!({"dry_run": false, "events": 3, "planned": 3, "unmatched": 0, "skipped": 0}));
    let again = wait_delivered(&gw, "new", 6).await;
    assert_eq!(again[3..].iter().map(|(event, _, _)| event.clone()).collect::<Vec<_>>(), posted[1..4]);
    assert_eq!(fresh.wait_for(9, WAIT).await.len(), 9);
    assert_eq!(old.requests().len(), 6, "the old destination still got nothing new");

    // a source that left the config: its events are skipped, counted and warned about
    write_in_place(
        &config,
        &gateway_config(&old, &books, Some(&fresh), &backend)
            .replace("  pay: { path: /in/pay, verify: { scheme: none } }\n", "")
            .replace("  - { name: bill, source: pay, to: [books] }\n", ""),
    );
    let all = cli(&config, &["replay", "--reroute", "--since", &times[0].to_string(), "--dry-run"]).await;
    assert!(all.status.success(), "{}", all.stderr);
    assert_eq!(
        all.stdout,
        "dry run: 7 events in range would plan 12 deliveries; 0 matched no route; 1 skipped (source not in the config)\n"
    );
    assert!(
        all.stderr.contains("re-route: the event's source is not in the current config; its events are skipped")
            && all.stderr.contains("source=pay"),
        "{}",
        all.stderr
    );
    // `--to` needs no source: the event goes as stored
    let paid_to = cli(
        &config,
        &["replay", "--reroute", "--since", &times[0].to_string(), "--source", "pay", "--to", "fresh", "--dry-run"],
    )
    .await;
    assert!(
        paid_to.stdout.starts_with("dry run: 1 event in range would plan 1 delivery;"),
        "{}{}",
        paid_to.stdout,
        paid_to.stderr
    );
    assert!(paid_to.stderr.is_empty(), "{}", paid_to.stderr);
}

#[tokio::test]
async fn replay_reroute_is_paced_and_refuses_what_it_cannot_do() {
    let (old, books, fresh) = (Sink::start().await, Sink::start().await, Sink::start().await);
    let gw = App::start_yaml(&gateway_config(&old, &books, Some(&fresh), &None)).await;
    let posted = post_app(&gw, 0, 30).await;
    fresh.wait_for(30, WAIT).await;
    let config = gw.config_path.clone();
    let first = lines(&cli(&config, &["export", "--source", "app"]).await)[0]["received_at_ms"].to_string();

    // 30 events at 20 a second: the last goes 29/20 s after the first
    let started = Instant::now();
    let paced = cli(&config, &["replay", "--reroute", "--since", &first, "--to", "fresh", "--rate", "20"]).await;
    let took = started.elapsed();
    assert!(paced.status.success(), "{}", paced.stderr);
    assert!(paced.stdout.starts_with("30 events in range planned 30 deliveries;"), "{}", paced.stdout);
    assert!(took >= Duration::from_millis(1_300), "30 events at --rate 20 took {took:?}");
    let direct = wait_delivered(&gw, "(replay)", 30).await;
    assert_eq!(direct.iter().map(|(event, _, _)| event.clone()).collect::<Vec<_>>(), posted);

    let refused = [
        (
            vec!["--since", "1h", "--to", "nowhere"],
            1,
            "error: unknown destination \"nowhere\"; destinations are: old, books, fresh\n",
        ),
        (vec!["--since", "1h", "--route", "nope"], 1, "error: unknown route \"nope\"; routes are: main, bill, new\n"),
        (
            vec!["--since", "2026-12-04T10:00:00Z", "--until", "2026-12-04T09:00:00Z"],
            1,
            "error: until (2026-12-04T09:00:00Z) is before since (2026-12-04T10:00:00Z): the range would be empty\n",
        ),
        (vec!["--until", "1h"], 1, "error: a time range needs --since (and --until, default now)\n"),
        (vec!["--since", "1h", &posted[0]], 1, "error: give either event ids or a time range (--since), not both\n"),
    ];
    for (args, code, message) in refused {
        let out = cli(&config, &[&["replay", "--reroute"][..], &args].concat()).await;
        assert_eq!((out.code(), out.stderr.as_str()), (Some(code), message), "replay --reroute {args:?}");
    }
    let both = cli(&config, &["replay", "--reroute", "--since", "1h", "--to", "fresh", "--route", "new"]).await;
    assert_eq!(both.code(), Some(2), "{}", both.stderr);
    assert!(
        both.stderr.starts_with("error: the argument '--to <TO>' cannot be used with '--route <ROUTE>'"),
        "{}",
        both.stderr
    );
    let api =
        gw.admin().post("/api/v1/replay", r#"{"reroute": {"since": "1h", "to": "nowhere", "dry_run": false}}"#).await;
    assert_eq!(
        (api.status.as_u16(), api.json()),
        (400, json!({"error": "unknown destination \"nowhere\"; destinations are: old, books, fresh"}))
    );
    assert_eq!(planned(&gw, "(replay)").await.len(), 30, "nothing refused planned anything");
}
