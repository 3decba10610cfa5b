//! The admin listener against the real binary: bearer-token auth on every route but `/healthz`,
//! each route's answer, cursor pagination, replay and pause reaching a real destination, metrics
//! that move with the traffic, the refusal of an open non-loopback listener, and SIGTERM losing
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::admin_api::*;
use crate::harness::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const API_KEY: &str = "ingress-api-key-0001";

/// A gateway with an unsigned source `app` and an api-key source `keyed`; each
/// `(name, url, extra YAML)` becomes a destination (unsigned, retried after 100 ms twice) and a
/// route `to-<name>` for events of either source whose `X-To` header names it (`X-To: a,b,`).
fn config(server_extra: &str, destinations: &[(&str, String, &str)]) -> String {
    let mut yaml = format!(
        "server: {{ listen: \"127.0.0.1:0\"{server_extra} }}\n\
         admin: {{ listen: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\n\
         storage: {{ path: hookyard.db, sync: normal }}\n\
         egress: {{ allow: [127.0.0.0/8] }}\n\
         sources:\n  app:\n    path: /hooks/app\n    verify: {{ scheme: none }}\n\
         \x20 keyed:\n    path: /hooks/keyed\n    verify: {{ scheme: api-key, secret: {API_KEY} }}\n\
         destinations:\n"
    );
    for (name, url, extra) in destinations {
        yaml.push_str(&format!(
            "  {name}:\n    url: {url}\n    sign: {{ scheme: none }}\n    retry: {{ schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }}\n"
        ));
        for line in extra.trim().lines() {
            yaml.push_str(&format!("    {}\n", line.trim()));
        }
    }
    yaml.push_str("routes:\n");
    for (name, ..) in destinations {
        for source in ["app", "keyed"] {
            yaml.push_str(&format!(
                "  - {{ name: {source}-to-{name}, source: {source}, when: [{{ header: X-To, contains: \"{name},\" }}], to: [{name}] }}\n"
            ));
        }
    }
    yaml
}

async fn start(destinations: &[(&str, String, &str)]) -> (App, AdminApi) {
    let gw = App::start_yaml(&config("", destinations)).await;
    let admin = gw.admin();
    (gw, admin)
}

/// [`start`] as a `hookyard run` process, for tests that assert absolute metric values of
/// destinations other tests also name (an in-process gateway shares its recorder with them).
async fn start_process(destinations: &[(&str, String, &str)]) -> (Gateway, AdminApi) {
    let gw = Gateway::start(&config("", destinations)).await;
    let admin = AdminApi::of(&gw).await;
    (gw, admin)
}

/// Posts an event to the destinations named; `case` goes in the body and `X-Case`.
async fn send(gw: &impl Ingress, to: &[&str], case: &str) -> String {
    let to: String = to.iter().map(|n| format!("{n},")).collect();
    gw.post_body("/hooks/app", &[("X-To", &to), ("X-Case", case)], format!(r#"{{"case":"{case}"}}"#))
        .await
        .accepted_id()
}

fn case_of(r: &Recorded) -> String {
    r.must("x-case").to_string()
}

// --- auth ---------------------------------------------------------------------------------------

/// Every route of the table in `src/admin/mod.rs` except `/healthz`.
const PROTECTED: &[(&str, &str, &str)] = &[
    ("GET", "/readyz", ""),
    ("GET", "/metrics", ""),
    ("GET", "/api/v1/status", ""),
    ("POST", "/api/v1/reload", ""),
    ("GET", "/api/v1/deliveries?limit=5", ""),
    ("GET", "/api/v1/events/evt_00000000000000000000000000000000", ""),
    ("POST", "/api/v1/replay", r#"{"ids":["evt_00000000000000000000000000000000"]}"#),
    ("GET", "/api/v1/export?since=1h", ""),
    ("POST", "/api/v1/replay", r#"{"reroute":{"since":"1h"}}"#),
    ("GET", "/api/v1/destinations", ""),
    ("POST", "/api/v1/destinations/out/pause", r#"{"reason":"not allowed"}"#),
    ("POST", "/api/v1/destinations/out/resume", ""),
    ("POST", "/api/v1/cancel", r#"{"destination":"out"}"#),
    ("POST", "/api/v1/purge", r#"{"destination":"out"}"#),
    ("POST", "/api/v1/skip", r#"{"ids":[1]}"#),
    ("GET", "/api/v1/whoami", ""),
    ("GET", "/api/v1/overview", ""),
    ("GET", "/api/v1/events?limit=5", ""),
    ("GET", "/api/v1/events/evt_00000000000000000000000000000000/explain", ""),
    ("POST", "/api/v1/dry-run", r#"{"source":"app","body":"{}"}"#),
    ("GET", "/api/v1/routes", ""),
    // (`/api/v1/tail` streams with the token: tests/it/console_api.rs checks its 401)
    // unknown paths too: no probing of what exists without the token
    ("GET", "/api/v1/nope", ""),
];

#[tokio::test]
async fn every_route_but_healthz_requires_the_bearer_token() {
    let sink = Sink::start().await;
    let (_gw, admin) = start(&[("out", sink.url("/out"), "")]).await;
    let wrong = [
        ("no Authorization header", None),
        ("a wrong token", Some(format!("Bearer {TOKEN}x"))),
        ("a prefix of the token", Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]))),
        ("an empty token", Some("Bearer ".to_string())),
        ("the token under another scheme", Some(format!("Basic {TOKEN}"))),
        ("the token without a scheme", Some(TOKEN.to_string())),
    ];
    let mut failures = Vec::new();
    for (method, path, body) in PROTECTED {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for (what, auth) in &wrong {
            let a = admin.send(method.clone(), path, auth.as_deref(), body).await;
            let ok = a.status == StatusCode::UNAUTHORIZED
                && a.header("www-authenticate") == Some("Bearer")
                && a.body == r#"{"error":"missing or invalid bearer token"}"#;
            if !ok {
                failures.push(format!("{method} {path} with {what}: {} {:?} {}", a.status, a.headers, a.text()));
            }
        }
        let a = admin.send(method.clone(), path, Some(&format!("Bearer {TOKEN}")), body).await;
        if a.status == StatusCode::UNAUTHORIZED {
            failures.push(format!("{method} {path} with the token: 401 {}", a.text()));
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));

    // A refused pause changed nothing (the authorized pause + resume above left it resumed).
    let d = admin.get_json("/api/v1/destinations").await;
    assert_eq!(d["items"][0]["paused"], false, "{d}");

    // /healthz is open, with or without a (wrong) token.
    for auth in [None, Some("Bearer wrong-token-wrong-token")] {
        let a = admin.send(Method::GET, "/healthz", auth, "").await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json(), json!({"status": "ok"}));
    }
}

// --- each route -------------------------------------------------------------------------------

#[tokio::test]
async fn every_route_answers_with_the_token() {
    let sink = Sink::start().await;
    let (gw, admin) = start(&[("out", sink.url("/out"), "")]).await;

    // health and readiness
    let status = admin.status().await;
    let version = status["version"].as_str().expect("version").to_string();
    assert_eq!(version.len(), 12, "a content hash: {status}");
    assert!(status["file"].as_str().unwrap().ends_with("routes.yaml"), "{status}");
    assert!(status["store"].as_str().unwrap().ends_with("/hookyard.db"), "the SQLite file: {status}");
    assert_eq!(status["last_error"], Value::Null);
    assert_eq!(status["needs_restart"], json!([]));
    assert!(status["loaded_at_ms"].as_i64().unwrap() > 1_600_000_000_000, "{status}");
    let ready = admin.get_json("/readyz").await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["config_version"], version.as_str(), "{ready}");
    assert_eq!(ready["shutting_down"], false, "{ready}");
    assert_eq!(ready["store_writable"], true, "{ready}");

    // metrics: Prometheus text with the active version
    let m = admin.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"), "{:?}", m.headers);
    let metrics = Metrics::parse(&m.text());
    assert_eq!(metrics.get("hookyard_config_info", &[("version", &version)]), 1.0, "{metrics:#?}");

    // reload with nothing changed
    let r = admin.post_json("/api/v1/reload", "").await;
    assert_eq!(r, json!({"result": "unchanged", "version": version}));

    // an event, its delivery, the event's detail
    let id = send(&gw, &["out"], "one").await;
    sink.wait_for(1, WAIT).await;
    let list = admin
        .wait_json("/api/v1/deliveries", "the delivery to be delivered", WAIT, |v| {
            v["items"][0]["status"] == "delivered"
        })
        .await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(list["next"], Value::Null, "{list}");
    let row = &items[0];
    assert_eq!(row["event_id"], id.as_str());
    assert_eq!(
        (row["source"].as_str(), row["route"].as_str(), row["destination"].as_str()),
        (Some("app"), Some("app-to-out"), Some("out"))
    );
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["last_status"], 200);
    assert_eq!(row["msg_id"], sink.requests()[0].must("webhook-id"), "the listed msg_id is the webhook-id sent");

    let ev = admin.get_json(&format!("/api/v1/events/{id}")).await;
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["source"], "app");
    assert_eq!(ev["body"], r#"{"case":"one"}"#);
    let deliveries = ev["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{ev:#}");
    assert_eq!(deliveries[0]["destination"], "out");
    let attempts = deliveries[0]["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{ev:#}");
    assert_eq!(attempts[0]["status_code"], 200, "{ev:#}");
    assert_eq!(attempts[0]["n"], 1, "{ev:#}");

    // replay by event id: the same message again
    let r = admin.post_json("/api/v1/replay", &json!({"ids": [id]}).to_string()).await;
    assert_eq!(r, json!({"queued": 1}));
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got[0].must("webhook-id"), got[1].must("webhook-id"), "a replay is the same message");
    assert_eq!(got[0].body, got[1].body);

    // destinations, pause and resume
    let d = admin.get_json("/api/v1/destinations").await;
    let out = &d["items"][0];
    assert_eq!(out["name"], "out", "{d}");
    assert_eq!((out["paused"].as_bool(), out["breaker"].as_str()), (Some(false), Some("closed")), "{d}");
    for key in ["pending", "oldest_due_ms", "dead", "failed"] {
        assert!(out[key].is_u64(), "{key} in {d}");
    }
    let p = admin.post_json("/api/v1/destinations/out/pause", r#"{"reason":"maintenance window"}"#).await;
    assert_eq!(p, json!({"destination": "out", "paused": true}));
    let d = admin.get_json("/api/v1/destinations").await;
    assert_eq!(
        (d["items"][0]["paused"].as_bool(), d["items"][0]["pause_reason"].as_str()),
        (Some(true), Some("maintenance window")),
        "{d}"
    );
    let p = admin.post_json("/api/v1/destinations/out/resume", "").await;
    assert_eq!(p, json!({"destination": "out", "paused": false}));
    let d = admin.get_json("/api/v1/destinations").await;
    assert_eq!(d["items"][0]["paused"], false, "{d}");

    // errors, each with a JSON body that says what is wrong
    let errors: &[(&str, &str, &str, u16)] = &[
        ("GET", "/api/v1/events/evt_ffffffffffffffffffffffffffffffff", "", 404),
        ("POST", "/api/v1/destinations/nope/pause", "", 404),
        ("POST", "/api/v1/destinations/nope/resume", "", 404),
        ("GET", "/api/v1/deliveries?status=lost", "", 400),
        ("GET", "/api/v1/deliveries?limit=ten", "", 400),
        ("GET", "/api/v1/deliveries?colour=red", "", 400),
        ("GET", "/api/v1/deliveries?since=yesterday", "", 400),
        ("POST", "/api/v1/replay", "not json", 400),
        ("POST", "/api/v1/replay", r#"{"ids":[]}"#, 400),
        ("POST", "/api/v1/replay", r#"{"ids":["x"],"dead":true}"#, 400),
        ("POST", "/api/v1/replay", r#"{"everything":true}"#, 400),
        ("POST", "/api/v1/cancel", "not json", 400),
        ("POST", "/api/v1/cancel", "{}", 400),
        ("POST", "/api/v1/cancel", r#"{"ids":["x"],"destination":"out"}"#, 400),
        ("POST", "/api/v1/cancel", r#"{"ids":["evt_nope"],"dry_run":false}"#, 404),
        ("POST", "/api/v1/cancel", r#"{"all":true,"since":"yesterday"}"#, 400),
        ("POST", "/api/v1/purge", r#"{"older_than":"soon"}"#, 400),
        ("POST", "/api/v1/purge", r#"{"everything":true}"#, 400),
        ("POST", "/api/v1/skip", "not json", 400),
        ("POST", "/api/v1/skip", r#"{"ids":[]}"#, 400),
        ("POST", "/api/v1/skip", r#"{"ids":["evt_1"]}"#, 400),
        ("POST", "/api/v1/skip", r#"{"ids":[999999]}"#, 404),
        ("GET", "/api/v1/cancel", "", 405),
        ("POST", "/api/v1/status", "", 405),
        ("GET", "/api/v1/reload", "", 405),
        ("DELETE", "/api/v1/destinations", "", 405),
        ("GET", "/api/v2/status", "", 404),
        ("GET", "/", "", 404),
    ];
    let mut failures = Vec::new();
    for (method, path, body, want) in errors {
        let a = admin
            .send(Method::from_bytes(method.as_bytes()).unwrap(), path, Some(&format!("Bearer {TOKEN}")), body)
            .await;
        let has_message =
            serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()));
        if a.status.as_u16() != *want || !has_message {
            failures.push(format!("{method} {path} {body}: want {want}, got {} {}", a.status, a.text()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// --- pagination -------------------------------------------------------------------------------

#[tokio::test]
async fn deliveries_paginate_newest_first_covering_every_row_once() {
    let sink = Sink::start().await;
    let (gw, admin) = start(&[("a", sink.url("/a"), ""), ("b", sink.url("/b"), "")]).await;
    let mut ids_a = Vec::new();
    for i in 0..25 {
        ids_a.push(send(&gw, &["a"], &format!("a{i}")).await);
    }
    let mut ids_b = Vec::new();
    for i in 0..4 {
        ids_b.push(send(&gw, &["b"], &format!("b{i}")).await);
    }
    let keyed = gw.post("/hooks/keyed", &[("X-To", "a,"), ("X-API-Key", API_KEY)], "{}").await.accepted_id();

    // Page by page, by hand, with limit=10 on destination a: 10, 10, 6 rows, then no cursor.
    let mut pages = Vec::new();
    let mut query = "/api/v1/deliveries?destination=a&limit=10".to_string();
    loop {
        let page = admin.get_json(&query).await;
        let items = page["items"].as_array().unwrap().clone();
        pages.push(items.len());
        match page["next"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), items.last().and_then(|r| r["id"].as_i64()), "next is the last row's id");
                query = format!("/api/v1/deliveries?destination=a&limit=10&before={next}");
            }
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end: {pages:?}");
    }
    assert_eq!(pages, [10, 10, 6], "page sizes");

    let rows = admin.all_deliveries("destination=a", 10).await;
    let row_ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(row_ids.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats: {row_ids:?}");
    let events: Vec<String> = rows.iter().map(|r| r["event_id"].as_str().unwrap().to_string()).collect();
    let mut want: Vec<String> = ids_a.iter().cloned().chain([keyed.clone()]).collect();
    want.reverse();
    assert_eq!(events, want, "every event to a exactly once, newest first");

    // Filters combine with paging.
    let all = admin.all_deliveries("", 7).await;
    assert_eq!(all.len(), 30, "25 + 4 + 1 deliveries");
    let unique: BTreeSet<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(unique.len(), 30, "no row on two pages");
    let b: Vec<String> = admin
        .all_deliveries("destination=b", 3)
        .await
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(b, ids_b.iter().rev().cloned().collect::<Vec<_>>());
    let by_source = admin.all_deliveries("source=keyed", 10).await;
    assert_eq!(by_source.len(), 1, "{by_source:?}");
    assert_eq!(by_source[0]["event_id"], keyed.as_str());
    let future = admin.get_json("/api/v1/deliveries?since=0&until=1000").await;
    assert_eq!(future["items"], json!([]), "nothing was created in 1970");
    assert_eq!(admin.all_deliveries("since=1h", 10).await.len(), 30, "everything is from the last hour");

    sink.wait_for(30, WAIT).await;
    let delivered = admin
        .wait_json("/api/v1/deliveries?status=delivered&limit=100", "every delivery delivered", WAIT, |v| {
            v["items"].as_array().is_some_and(|i| i.len() == 30)
        })
        .await;
    assert_eq!(delivered["next"], Value::Null);
    assert_eq!(admin.get_json("/api/v1/deliveries?status=pending").await["items"], json!([]));
}

// --- replay -----------------------------------------------------------------------------------

#[tokio::test]
async fn replaying_dead_letters_of_a_destination_delivers_them_as_the_same_message() {
    // `d` fails three times (dead), then its receiver is fixed; `e` stays dead and must not be
    // replayed by a replay of d's dead letters.
    let d = Sink::with_script(vec![Reply::status(500); 3]).await;
    let e = Sink::with_script(vec![Reply::status(500); 3]).await;
    let (gw, admin) = start_process(&[("d", d.url("/d"), ""), ("e", e.url("/e"), "")]).await;
    let id = send(&gw, &["d", "e"], "dead").await;
    let dead = admin
        .wait_json("/api/v1/deliveries?status=dead", "both deliveries dead", WAIT, |v| {
            v["items"].as_array().is_some_and(|i| i.len() == 2)
        })
        .await;
    assert_eq!(d.requests().len(), 3, "one attempt and two retries");
    assert_eq!(e.requests().len(), 3);
    for row in dead["items"].as_array().unwrap() {
        assert_eq!(row["last_status"], 500, "{row}");
        assert_eq!(row["attempts"], 3, "{row}");
    }
    let m = admin.metrics().await;
    assert_eq!(m.get("hookyard_dead_letters", &[("destination", "d")]), 1.0);

    let r = admin.post_json("/api/v1/replay", r#"{"dead":true,"destination":"d","since":"1d"}"#).await;
    assert_eq!(r, json!({"queued": 1}), "only d's dead letter");
    let got = d.wait_for(4, WAIT).await;
    let first = got[0].must("webhook-id");
    assert!(got.iter().all(|r| r.must("webhook-id") == first), "the replay keeps the webhook-id");
    assert_eq!(got[3].body, got[0].body);
    assert_eq!(got[3].must("x-case"), "dead");

    let ev = admin
        .wait_json(&format!("/api/v1/events/{id}"), "d delivered", WAIT, |v| {
            v["deliveries"].as_array().unwrap().iter().any(|d| d["destination"] == "d" && d["status"] == "delivered")
        })
        .await;
    let by_dest: BTreeMap<&str, &Value> =
        ev["deliveries"].as_array().unwrap().iter().map(|d| (d["destination"].as_str().unwrap(), d)).collect();
    let codes: Vec<Value> =
        by_dest["d"]["attempt_log"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(500), json!(500), json!(200)], "{ev:#}");
    assert_eq!(by_dest["e"]["status"], "dead", "e was not replayed: {ev:#}");
    assert_eq!(e.requests().len(), 3, "e's receiver got nothing more");

    // A replay of dead letters since a time after they died finds nothing.
    let r = admin
        .post_json(
            "/api/v1/replay",
            &json!({"dead": true, "since": (now_unix() * 1000 + 60_000).to_string()}).to_string(),
        )
        .await;
    assert_eq!(r, json!({"queued": 0}));
    let m = admin
        .wait_metrics("d's dead letter gone", |m| m.get("hookyard_dead_letters", &[("destination", "d")]) == 0.0)
        .await;
    assert_eq!(m.get("hookyard_dead_letters", &[("destination", "e")]), 1.0);
}

/// An ordered destination with `on_dead: block` (the default): the key's head dies, the rest of
/// the key waits (shown as waiting, counted as a held key, nothing sent), and `POST /api/v1/skip`
/// lets the key go on, in order; another key was never held up.
#[tokio::test]
async fn a_key_held_by_a_dead_head_waits_for_a_skip_and_other_keys_go_on() {
    let o = Sink::with_script(vec![Reply::status(500); 3]).await;
    let (gw, admin) = start_process(&[("o", o.url("/o"), "ordering: { key: \"$.case\" }")]).await;
    let head = send(&gw, &["o"], "k").await;
    let dead = admin
        .wait_json("/api/v1/deliveries?status=dead", "the head dead", WAIT, |v| {
            v["items"].as_array().is_some_and(|i| i.len() == 1)
        })
        .await;
    let head_delivery = dead["items"][0]["id"].as_i64().unwrap();
    assert_eq!(dead["items"][0]["event_id"], head.as_str());
    assert_eq!((dead["items"][0]["held"].clone(), dead["items"][0]["order_key"].clone()), (json!(true), json!("k")));
    let later = [send(&gw, &["o"], "k").await, send(&gw, &["o"], "k").await];
    send(&gw, &["o"], "other").await;
    let got = o.wait_for(4, WAIT).await;
    assert_eq!(got[3].must("x-case"), "other", "another key is not held up");
    let list = admin.get_json("/api/v1/deliveries?status=pending").await;
    let waiting: Vec<(Value, Value, Value)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| later.iter().any(|l| d["event_id"] == l.as_str()))
        .map(|d| (d["event_id"].clone(), d["waiting"].clone(), d["next_at_ms"].clone()))
        .collect();
    assert_eq!(
        waiting,
        [(json!(later[1]), json!(true), Value::Null), (json!(later[0]), json!(true), Value::Null)],
        "{list:#}"
    );
    let destinations = admin.get_json("/api/v1/destinations").await;
    assert_eq!(destinations["items"][0]["held_keys"], 1, "{destinations}");
    assert_eq!(admin.metrics().await.get("hookyard_ordering_held_keys", &[("destination", "o")]), 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(o.requests().len(), 4, "nothing more of the held key was sent");

    let r = admin.post_json("/api/v1/skip", &json!({"ids": [head_delivery]}).to_string()).await;
    assert_eq!(r, json!({"released": 1}));
    let got = o.wait_for(6, WAIT).await;
    let events: Vec<String> =
        got[4..].iter().map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["case"].to_string()).collect();
    assert_eq!(events, ["\"k\"", "\"k\""]);
    let first = admin.get_json(&format!("/api/v1/events/{}", later[0])).await;
    let second = admin.get_json(&format!("/api/v1/events/{}", later[1])).await;
    assert_eq!(got[4].must("webhook-id"), first["deliveries"][0]["msg_id"].as_str().unwrap(), "in accept order");
    assert_eq!(got[5].must("webhook-id"), second["deliveries"][0]["msg_id"].as_str().unwrap());
    let skipped = admin.get_json(&format!("/api/v1/events/{head}")).await;
    assert_eq!(
        (skipped["deliveries"][0]["status"].clone(), skipped["deliveries"][0].get("held")),
        (json!("dead"), None)
    );
    let r = admin.post_json("/api/v1/skip", &json!({"ids": [head_delivery]}).to_string()).await;
    assert_eq!(r, json!({"released": 0}), "it holds nothing any more");
}

// --- cancel and purge -------------------------------------------------------------------------

#[tokio::test]
async fn cancelled_deliveries_free_the_queue_are_never_sent_and_can_be_replayed() {
    let held = Sink::start().await;
    let keep = Sink::start().await;
    let dests = [("held", held.url("/held"), ""), ("keep", keep.url("/keep"), "")];
    let gw = App::start_yaml(&format!("{}delivery: {{ max_pending: 2 }}\n", config("", &dests))).await;
    let admin = gw.admin();
    admin.post_json("/api/v1/destinations/held/pause", "").await;
    let ids = [send(&gw, &["held"], "c0").await, send(&gw, &["held"], "c1").await];
    let full = gw.post("/hooks/app", &[("X-To", "keep,")], "{}").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "the held deliveries fill the queue: {}", full.text());

    // counted first (the default), then cancelled with who and why
    let r = admin.post_json("/api/v1/cancel", r#"{"destination":"held"}"#).await;
    assert_eq!(r, json!({"dry_run": true, "would_cancel": 2}));
    assert_eq!(admin.all_deliveries("status=pending", 10).await.len(), 2, "a dry run changes nothing");
    let r = admin
        .post_json("/api/v1/cancel", r#"{"destination":"held","reason":"receiver retired","dry_run":false}"#)
        .await;
    use sha2::Digest;
    let fingerprint = hex::encode(&sha2::Sha256::digest(TOKEN.as_bytes())[..4]);
    let by = format!("api:token {fingerprint}");
    assert_eq!(r, json!({"dry_run": false, "cancelled": 2, "by": by}));
    let ev = admin.get_json(&format!("/api/v1/events/{}", ids[0])).await;
    let d = &ev["deliveries"][0];
    assert_eq!(d["status"], "cancelled", "{ev}");
    assert_eq!(
        (d["cancelled"]["by"].as_str(), d["cancelled"]["reason"].as_str()),
        (Some(&*by), Some("receiver retired"))
    );
    assert!(d["cancelled"]["at_ms"].as_i64().unwrap() > 1_600_000_000_000, "{ev}");
    assert_eq!(admin.all_deliveries("status=cancelled", 10).await.len(), 2);
    let r = admin.post_json("/api/v1/cancel", r#"{"all":true}"#).await;
    assert_eq!(r, json!({"dry_run": true, "would_cancel": 0}));

    // no longer pending, so no longer counted against max_pending (read again at the next poll)
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let a = gw.post("/hooks/app", &[("X-To", "keep,"), ("X-Case", "after")], "{}").await;
        if a.status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
        assert!(std::time::Instant::now() < deadline, "the queue stayed full after the cancel: {}", a.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(case_of(&keep.wait_for(1, WAIT).await[0]), "after");

    // resumed, the destination gets only the cancelled delivery that is replayed
    let r = admin.post_json("/api/v1/replay", &json!({"ids": [ids[1]]}).to_string()).await;
    assert_eq!(r, json!({"queued": 1}));
    admin.post_json("/api/v1/destinations/held/resume", "").await;
    assert_eq!(case_of(&held.wait_for(1, WAIT).await[0]), "c1");
    let ev = admin.get_json(&format!("/api/v1/events/{}", ids[0])).await;
    assert_eq!(ev["deliveries"][0]["status"], "cancelled", "{ev}");
    assert_eq!(held.requests().len(), 1, "a cancelled delivery is never attempted");
}

#[tokio::test]
async fn purging_dead_letters_counts_first_then_deletes_them() {
    let d = Sink::with_script(vec![Reply::status(500); 3]).await;
    let e = Sink::with_script(vec![Reply::status(500); 3]).await;
    let (gw, admin) = start_process(&[("d", d.url("/d"), ""), ("e", e.url("/e"), "")]).await;
    let only_d = send(&gw, &["d"], "only-d").await;
    let only_e = send(&gw, &["e"], "only-e").await;
    admin
        .wait_json("/api/v1/deliveries?status=dead", "both deliveries dead", WAIT, |v| {
            v["items"].as_array().is_some_and(|i| i.len() == 2)
        })
        .await;
    assert_eq!(admin.post_json("/api/v1/purge", "").await, json!({"dry_run": true, "would_purge": 2}));
    let r = admin.post_json("/api/v1/purge", r#"{"destination":"d","older_than":"1h"}"#).await;
    assert_eq!(r, json!({"dry_run": true, "would_purge": 0}), "died just now");
    let r = admin.post_json("/api/v1/purge", r#"{"destination":"d","dry_run":false}"#).await;
    assert_eq!(r, json!({"dry_run": false, "purged": 1, "events_deleted": 1}));
    let gone = admin.get(&format!("/api/v1/events/{only_d}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text());
    assert_eq!(gone.json(), json!({"error": format!("no event {only_d}")}));
    let ev = admin.get_json(&format!("/api/v1/events/{only_e}")).await;
    assert_eq!(ev["deliveries"][0]["status"], "dead", "e's dead letter is kept: {ev}");
    admin
        .wait_metrics("d's dead letter gone", |m| m.get("hookyard_dead_letters", &[("destination", "d")]) == 0.0)
        .await;
}

// --- pause and resume -------------------------------------------------------------------------

#[tokio::test]
async fn a_paused_destination_holds_its_deliveries_until_resumed() {
    let held = Sink::start().await;
    let control = Sink::start().await;
    let (gw, admin) = start_process(&[("held", held.url("/held"), ""), ("control", control.url("/control"), "")]).await;
    admin.post_json("/api/v1/destinations/held/pause", r#"{"reason":"receiver deploy"}"#).await;
    let m = admin.metrics().await;
    assert_eq!(m.get("hookyard_destination_paused", &[("destination", "held")]), 1.0, "{m:#?}");
    assert_eq!(m.get("hookyard_destination_paused", &[("destination", "control")]), 0.0);

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(send(&gw, &["held", "control"], &format!("p{i}")).await);
    }
    // The same events reached the control destination; the paused one got none of them.
    control.wait_for(3, WAIT).await;
    assert_eq!(held.requests().len(), 0, "a paused destination receives nothing: {:?}", held.requests());
    let d = admin.get_json("/api/v1/destinations").await;
    let row = d["items"].as_array().unwrap().iter().find(|r| r["name"] == "held").unwrap().clone();
    assert_eq!((row["paused"].as_bool(), row["pending"].as_u64()), (Some(true), Some(3)), "{d}");
    assert_eq!(row["pause_reason"], "receiver deploy");
    let m = admin.metrics().await;
    assert_eq!(m.get("hookyard_queue_depth", &[("destination", "held")]), 3.0, "{m:#?}");
    let pending = admin.all_deliveries("destination=held&status=pending", 10).await;
    assert_eq!(pending.len(), 3, "waiting, not failed: {pending:?}");

    admin.post_json("/api/v1/destinations/held/resume", "").await;
    let got = held.wait_for(3, WAIT).await;
    let mut cases: Vec<String> = got.iter().map(case_of).collect();
    cases.sort();
    assert_eq!(cases, ["p0", "p1", "p2"]);
    let msg_ids: BTreeSet<String> = pending.iter().map(|r| r["msg_id"].as_str().unwrap().to_string()).collect();
    let sent: BTreeSet<String> = got.iter().map(|r| r.must("webhook-id").to_string()).collect();
    assert_eq!(sent, msg_ids, "the held deliveries, as planned");
    admin
        .wait_metrics("held's queue empty and unpaused", |m| {
            m.get("hookyard_queue_depth", &[("destination", "held")]) == 0.0
                && m.get("hookyard_destination_paused", &[("destination", "held")]) == 0.0
        })
        .await;
}

#[tokio::test]
async fn events_sent_right_after_a_pause_are_held() {
    // The pause answer means "paused": events accepted after it must not be delivered, even the
    // first ones, which take the fast path straight from ingress to an attempt.
    let held = Sink::start().await;
    let control = Sink::start().await;
    let (gw, admin) = start(&[("held", held.url("/held"), ""), ("control", control.url("/control"), "")]).await;
    let mut leaked = Vec::new();
    for round in 0..10 {
        admin.post_json("/api/v1/destinations/held/pause", "").await;
        let case = format!("r{round}");
        send(&gw, &["held", "control"], &case).await;
        control.wait_until(WAIT, &case, |r| r.iter().any(|r| case_of(r) == case)).await;
        if held.requests().iter().any(|r| case_of(r) == case) {
            leaked.push(case);
        }
        admin.post_json("/api/v1/destinations/held/resume", "").await;
        held.wait_until(WAIT, "the held event after resume", |r| r.iter().any(|r| case_of(r) == format!("r{round}")))
            .await;
    }
    assert!(leaked.is_empty(), "events accepted after the pause answered were delivered while paused: {leaked:?}");
}

// --- metrics ----------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_what_flows_through() {
    let ok = Sink::start().await;
    let down = Sink::with_script(vec![Reply::status(500); 3]).await;
    let (gw, admin) =
        start_process(&[("ok", ok.url("/ok"), ""), ("down", down.url("/down"), ""), ("held", ok.url("/held"), "")])
            .await;
    admin.post_json("/api/v1/destinations/held/pause", "").await;
    let before = admin.metrics().await;

    for i in 0..3 {
        send(&gw, &["ok"], &format!("ok{i}")).await;
    }
    gw.post("/hooks/keyed", &[("X-To", "ok,"), ("X-API-Key", API_KEY)], "{}").await.accepted_id();
    for key in [None, Some("wrong-key")] {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("X-API-Key", k)]).unwrap_or_default();
        assert_eq!(gw.post("/hooks/keyed", &headers, "{}").await.status, 401);
    }
    send(&gw, &["down"], "down").await;
    send(&gw, &["held"], "held1").await;
    send(&gw, &["held"], "held2").await;
    send(&gw, &[], "unrouted").await;

    ok.wait_for(4, WAIT).await;
    down.wait_for(3, WAIT).await;
    let after = admin
        .wait_metrics("4 delivered to ok and one dead letter for down", |m| {
            m.get("hookyard_deliveries_total", &[("destination", "ok"), ("outcome", "delivered")]) == 4.0
                && m.get("hookyard_deliveries_total", &[("destination", "down"), ("outcome", "dead")]) == 1.0
                // the gauges come from the store, which records the outcome just after the counter
                && m.get("hookyard_dead_letters", &[("destination", "down")]) == 1.0
                && m.get("hookyard_queue_depth", &[("destination", "ok")]) == 0.0
        })
        .await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: f64, want: f64| {
        if got != want {
            wrong.push(format!("{what}: {got}, want {want}"));
        }
    };
    expect("202s from app", delta("hookyard_events_received_total", &[("source", "app"), ("status", "202")]), 7.0);
    expect("202s from keyed", delta("hookyard_events_received_total", &[("source", "keyed"), ("status", "202")]), 1.0);
    expect("401s from keyed", delta("hookyard_events_received_total", &[("source", "keyed"), ("status", "401")]), 2.0);
    expect("401s from app", delta("hookyard_events_received_total", &[("source", "app"), ("status", "401")]), 0.0);
    expect(
        "verification failures of keyed (any reason)",
        after.sum("hookyard_verification_failures_total", &[("source", "keyed")])
            - before.sum("hookyard_verification_failures_total", &[("source", "keyed")]),
        2.0,
    );
    expect("route app-to-ok", delta("hookyard_route_matches_total", &[("route", "app-to-ok")]), 3.0);
    expect("route keyed-to-ok", delta("hookyard_route_matches_total", &[("route", "keyed-to-ok")]), 1.0);
    expect("route app-to-down", delta("hookyard_route_matches_total", &[("route", "app-to-down")]), 1.0);
    expect("route app-to-held", delta("hookyard_route_matches_total", &[("route", "app-to-held")]), 2.0);
    expect(
        "delivered to ok",
        delta("hookyard_deliveries_total", &[("destination", "ok"), ("outcome", "delivered")]),
        4.0,
    );
    expect(
        "retries of down",
        delta("hookyard_deliveries_total", &[("destination", "down"), ("outcome", "retry")]),
        2.0,
    );
    expect("dead for down", delta("hookyard_deliveries_total", &[("destination", "down"), ("outcome", "dead")]), 1.0);
    expect(
        "delivered to down",
        delta("hookyard_deliveries_total", &[("destination", "down"), ("outcome", "delivered")]),
        0.0,
    );
    expect("attempts to ok", delta("hookyard_delivery_attempts_total", &[("destination", "ok")]), 4.0);
    expect("attempts to down", delta("hookyard_delivery_attempts_total", &[("destination", "down")]), 3.0);
    expect("attempts to held", delta("hookyard_delivery_attempts_total", &[("destination", "held")]), 0.0);
    expect(
        "latency samples of down",
        delta("hookyard_delivery_latency_seconds_count", &[("destination", "down")]),
        3.0,
    );
    expect("queue depth of held", after.get("hookyard_queue_depth", &[("destination", "held")]), 2.0);
    expect("queue depth of ok", after.get("hookyard_queue_depth", &[("destination", "ok")]), 0.0);
    expect("dead letters of down", after.get("hookyard_dead_letters", &[("destination", "down")]), 1.0);
    expect("held is paused", after.get("hookyard_destination_paused", &[("destination", "held")]), 1.0);
    expect("breaker of ok closed", after.get("hookyard_circuit_breaker_state", &[("destination", "ok")]), 0.0);
    assert!(wrong.is_empty(), "{}\nscrape:\n{after:#?}", wrong.join("\n"));
    let oldest = after.get("hookyard_oldest_due_age_seconds", &[("destination", "held")]);
    assert!(oldest > 0.0 && oldest < 60.0, "held's oldest due delivery is a few ms old, got {oldest}");

    // Labels stay bounded: no event or message ids, no URLs.
    for key in after.0.keys() {
        assert!(!key.contains("evt_") && !key.contains("msg_") && !key.contains("http://"), "unbounded label in {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_events_are_delivered_and_counted_once() {
    // 8 senders at once: every event is acknowledged (the queue is nowhere near
    // delivery.max_pending), attempted once, delivered once, and the queue ends empty.
    const SENDERS: usize = 8;
    const EACH: usize = 60;
    let sink = Sink::start().await;
    let (gw, admin) = start_process(&[("out", sink.url("/out"), "")]).await;
    let url = gw.url("/hooks/app");
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let url = url.clone();
        tasks.spawn(async move {
            let client = http_client();
            let mut failures = Vec::new();
            for i in 0..EACH {
                let case = format!("c{s}-{i}");
                match try_post(&client, &url, &[("X-To", "out,"), ("X-Case", &case)], "{}".into()).await {
                    Ok(a) if a.status == 202 => {}
                    Ok(a) => failures.push(format!("{case}: {} {}", a.status, a.text())),
                    Err(e) => failures.push(format!("{case}: {e}")),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(f) = tasks.join_next().await {
        failures.extend(f.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        SENDERS * EACH,
        &failures[..failures.len().min(10)]
    );
    let n = (SENDERS * EACH) as f64;
    let m = admin
        .wait_metrics("every event delivered and the queue empty", |m| {
            m.get("hookyard_deliveries_total", &[("destination", "out"), ("outcome", "delivered")]) >= n
                && m.get("hookyard_queue_depth", &[("destination", "out")]) == 0.0
        })
        .await;
    assert_eq!(m.get("hookyard_deliveries_total", &[("destination", "out"), ("outcome", "delivered")]), n);
    assert_eq!(m.get("hookyard_delivery_attempts_total", &[("destination", "out")]), n);
    let mut cases: Vec<String> = sink.requests().iter().map(case_of).collect();
    cases.sort();
    let before = cases.len();
    cases.dedup();
    assert_eq!((before, cases.len()), (SENDERS * EACH, SENDERS * EACH), "each event delivered exactly once");
}

// --- startup refusal ----------------------------------------------------------------------------

#[tokio::test]
async fn a_non_loopback_admin_listener_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    // 192.0.2.1 (TEST-NET-1) is not loopback and not on this machine: nothing could ever listen.
    let open = dir.path().join("open.yaml");
    std::fs::write(&open, "server: { listen: \"127.0.0.1:0\" }\nadmin: { listen: \"192.0.2.1:9090\" }\n").unwrap();
    for sub in ["check", "run"] {
        let mut cmd = hookyard();
        cmd.arg(sub).arg("--config").arg(&open);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(1), "{sub}: {}{}", out.stdout, out.stderr);
        let line =
            out.stderr.lines().find(|l| l.contains("admin.token")).unwrap_or_else(|| panic!("{sub}: {}", out.stderr));
        assert!(line.starts_with(&format!("{}:2:", open.display())), "{sub}: file:line:col first: {line}");
        assert!(line.contains("not on loopback"), "{sub}: {line}");
        assert!(!out.stdout.contains("listening on"), "{sub} must not start: {}", out.stdout);
    }
    // With a token it passes `check`; a short token does not.
    let guarded = dir.path().join("guarded.yaml");
    std::fs::write(&guarded, format!("admin: {{ listen: \"192.0.2.1:9090\", token: \"{TOKEN}\" }}\n")).unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&guarded);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let short = dir.path().join("short.yaml");
    std::fs::write(&short, "admin: { listen: \"127.0.0.1:0\", token: \"short\" }\n").unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&short);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("admin.token: must be at least 16 characters"), "{}", out.stderr);

    // named tokens: one is enough off loopback; each is checked on its own, with its name
    let named = dir.path().join("named.yaml");
    std::fs::write(&named, format!("admin: {{ listen: \"192.0.2.1:9090\", tokens: {{ alice: \"{TOKEN}\" }} }}\n"))
        .unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&named);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let bad = dir.path().join("bad-named.yaml");
    std::fs::write(
        &bad,
        format!(
            "admin:\n  token: \"{TOKEN}\"\n  tokens:\n    alice: short\n    \"bob smith\": \"bob-token-0123456789\"\n    carol: \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&bad);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let file = bad.display();
    for line in [
        format!("{file}:4:5: admin.tokens.alice: must be at least 16 characters"),
        format!(
            "{file}:5:5: admin.tokens.bob smith: a token's name is letters, digits, `-`, `_` and `.` (it is logged as api:<name>)"
        ),
        format!(
            "{file}:6:5: admin.tokens.carol: is the same token as another one: each must be its own, or the log cannot say who acted"
        ),
    ] {
        assert!(out.stderr.lines().any(|l| l == line), "missing {line:?} in:\n{}", out.stderr);
    }
}

// --- graceful shutdown ------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_finishes_work_in_flight_and_loses_nothing() {
    // One slow attempt at a time (the receiver holds each answer 1 s); SIGTERM arrives while the
    // first is in flight and while a sender is still streaming its body.
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_secs(1)); 20]).await;
    let mut gw = Gateway::start(&config(
        ", shutdown_grace: 5s, request_timeout: 10s",
        &[("slow", sink.url("/slow"), "max_in_flight: 1")],
    ))
    .await;
    let admin = AdminApi::of(&gw).await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        accepted.push(format!("e{i}"));
        send(&gw, &["slow"], &format!("e{i}")).await;
    }
    sink.wait_for(1, WAIT).await;

    // A request whose body is still on its way when SIGTERM arrives.
    let body = r#"{"case":"late"}"#;
    let head = format!(
        "POST /hooks/app HTTP/1.1\r\nHost: gw\r\nX-To: slow,\r\nX-Case: late\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..5]).await.unwrap();

    let started = std::time::Instant::now();
    signal(pid_of(&gw.config_path), "-TERM").await;
    let ready = admin
        .wait_answer("/readyz", "readyz 503 while shutting down", |a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .await;
    assert_eq!(ready.json()["shutting_down"], true, "{}", ready.text());
    assert_eq!(ready.json()["ready"], false, "{}", ready.text());
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "new ingress connections are still accepted after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The in-flight request finishes and is acknowledged.
    stream.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await.expect("response to the late request").unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 202"), "the request in flight is served: {response}");
    accepted.push("late".to_string());

    let status = gw.terminate(WAIT).await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}; logs:\n{}", gw.logs());
    assert!(took < Duration::from_secs(5) + Duration::from_millis(1500), "exit within the 5 s grace, took {took:?}");
    let before_restart = sink.requests();
    let delivered_before: Vec<String> = gw.log_lines_with(&["delivered", "destination=slow"]);
    assert!(!delivered_before.is_empty(), "the attempt in flight at SIGTERM finished: {}", gw.logs());

    // Everything accepted is delivered after a restart; nothing twice unless it was in flight at
    // exit (at-least-once), and then as the same message.
    gw.restart().await;
    let got = sink
        .try_wait_until(Duration::from_secs(15), |r| {
            let cases: BTreeSet<String> = r.iter().map(case_of).collect();
            accepted.iter().all(|c| cases.contains(c))
        })
        .await
        .unwrap_or_else(|r| {
            panic!("not every accepted event arrived: {:?} of {accepted:?}", r.iter().map(case_of).collect::<Vec<_>>())
        });
    let mut by_case: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &got {
        by_case.entry(case_of(r)).or_default().push(r.must("webhook-id").to_string());
    }
    assert_eq!(by_case.keys().cloned().collect::<BTreeSet<_>>(), accepted.iter().cloned().collect::<BTreeSet<_>>());
    let repeated: Vec<_> = by_case.iter().filter(|(_, ids)| ids.len() > 1).collect();
    for (case, ids) in &repeated {
        assert!(ids.iter().all(|i| i == &ids[0]), "{case} sent as two different messages: {ids:?}");
    }
    let begun_after_sigterm = before_restart.iter().filter(|r| r.at > started).count();
    eprintln!(
        "shutdown: exit after {took:?}; {} request(s) before restart ({begun_after_sigterm} begun after SIGTERM), {} after; repeated: {repeated:?}",
        before_restart.len(),
        got.len() - before_restart.len()
    );
    assert!(
        repeated.is_empty(),
        "a clean shutdown must not abandon an attempt it started (it is sent again after the restart): {repeated:?}"
    );
}

#[tokio::test]
async fn readyz_answers_503_until_the_attempts_in_flight_finish() {
    // issue 12, defect 4: the admin listener closed with ingress, so while the dispatcher drained
    // the attempts in flight, probes saw "connection refused" instead of the documented 503.
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_secs(3))]).await;
    let mut gw =
        Gateway::start(&config(", shutdown_grace: 10s", &[("slow", sink.url("/slow"), "max_in_flight: 1")])).await;
    let admin = AdminApi::of(&gw).await;
    send(&gw, &["slow"], "in-flight").await;
    sink.wait_for(1, WAIT).await;

    let started = std::time::Instant::now();
    signal(pid_of(&gw.config_path), "-TERM").await;
    // ingress stops accepting first (nothing is in flight on it, so at once)...
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "new ingress connections are still accepted after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the attempt in flight still runs, the admin listener answers: 503, with the reason
    let ready = admin.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text());
    let body = ready.json();
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["shutting_down"], true, "{body}");
    assert_eq!(body["reason"], "shutting down", "{body}");
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(admin.get("/metrics").await.status, StatusCode::OK);
    assert!(gw.log_lines_with(&["delivered", "destination=slow"]).is_empty(), "the attempt is still in flight");

    // the process exits once the attempt finished, and only then does the admin listener close
    let status = gw.terminate(WAIT).await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}; logs:\n{}", gw.logs());
    assert!(took < Duration::from_secs(10), "exit within the grace period, took {took:?}");
    assert_eq!(gw.log_lines_with(&["delivered", "destination=slow"]).len(), 1, "{}", gw.logs());
    assert!(tokio::net::TcpStream::connect(admin.addr).await.is_err(), "the admin listener is closed at exit");
}

// --- a destination removed while its deliveries wait ------------------------------------------

#[tokio::test]
async fn a_paused_destination_removed_by_a_reload_fails_its_deliveries_and_frees_the_queue() {
    // issue 12, defect 1: the delivery used to stay pending forever, still counted against
    // max_pending, so with `max_pending: 1` the next event for another destination got 503
    let temp2 = Sink::start().await;
    let keep = Sink::start().await;
    let both = [("temp2", temp2.url("/temp2"), ""), ("keep", keep.url("/keep"), "")];
    let limited = |dests: &[(&str, String, &str)]| format!("{}delivery: {{ max_pending: 1 }}\n", config("", dests));
    let gw = App::start_yaml(&limited(&both)).await;
    let admin = gw.admin();
    admin.post_json("/api/v1/destinations/temp2/pause", r#"{"reason":"receiver deploy"}"#).await;
    let id = send(&gw, &["temp2"], "stranded").await;
    let full = gw.post("/hooks/app", &[("X-To", "keep,")], "{}").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "the held delivery fills the queue: {}", full.text());

    write_rename(&gw.config_path, &limited(&both[1..]));
    let r = admin.post_json("/api/v1/reload", "").await;
    assert_eq!(r["result"], "reloaded", "{r}");
    let ev = admin
        .wait_json(&format!("/api/v1/events/{id}"), "the delivery to be failed", WAIT, |v| {
            v["deliveries"][0]["status"] == "failed"
        })
        .await;
    assert_eq!(ev["deliveries"][0]["last_error"], "destination \"temp2\" is not in the current config", "{ev}");
    // no longer pending, so no longer counted: the next event fits and is delivered
    let pending = admin.all_deliveries("status=pending", 10).await;
    assert!(pending.is_empty(), "{pending:?}");
    send(&gw, &["keep"], "after").await;
    assert_eq!(case_of(&keep.wait_for(1, WAIT).await[0]), "after");
    assert!(temp2.requests().is_empty(), "the paused destination received nothing");
}

// --- the admin listener cannot stop ingress ---------------------------------------------------

/// Runs `hookyard run` on `yaml` (written to `dir`) with `RLIMIT_NOFILE` set to `soft`/`hard`
/// before exec, as `ulimit -n` or a service manager would start it.
#[cfg(target_os = "linux")]
async fn start_with_nofile(dir: &ConfigDir, yaml: &str, soft: u64, hard: u64) -> Process {
    let config = dir.path("routes.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&config);
    // SAFETY: the closure only makes the setrlimit system call (async-signal-safe, no allocation).
    unsafe {
        cmd.pre_exec(move || {
            use rustix::process::{Resource, Rlimit, setrlimit};
            setrlimit(Resource::Nofile, Rlimit { current: Some(soft), maximum: Some(hard) })
                .map_err(std::io::Error::from)
        });
    }
    Process::spawn(cmd, dir.path("stderr.log")).await
}

/// How many established TCP connections to local `port` the process `pid` holds a descriptor
/// of (connections still in the kernel's accept queue have none).
#[cfg(target_os = "linux")]
fn held_connections(pid: u32, port: u16) -> usize {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("read /proc/PID/net/tcp");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // state 01 is ESTABLISHED; field 9 is the socket's inode
            local_port == Some(port) && f[3] == "01" && inodes.contains(f[9])
        })
        .count()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_admin_flood_is_held_to_its_limit_and_ingress_keeps_serving() {
    const FLOOD: usize = 300;
    const LIMIT: usize = 8;
    let dir = ConfigDir::new();
    let yaml = format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\", token: \"{TOKEN}\", max_connections: {LIMIT}, request_timeout: 60s }}\n\
         storage: {{ path: hookyard.db, sync: normal }}\n\
         delivery: {{ max_in_flight: 16 }}\n\
         sources:\n  app:\n    path: /hooks/app\n    verify: {{ scheme: none }}\n"
    );
    // 256 descriptors in all, as a small container may allow: 300 idle admin connections took
    // every one of them, and ingress could accept nothing. Ingress gets 256 - 64 (own files) - 16
    // (delivery attempts) - 8 (admin) = 168.
    let gw = start_with_nofile(&dir, &yaml, 256, 256).await;
    let admin = AdminApi::of(&gw).await;
    let pid = pid_of(&dir.path("routes.yaml"));

    // FLOOD connections without a token that never send a byte.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let addr = admin.addr;
        connects.spawn(async move { tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await });
    }
    let mut flood = Vec::new();
    while let Some(c) = connects.join_next().await {
        flood.push(c.unwrap().expect("admin connect within WAIT").expect("admin connect"));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while held_connections(pid, admin.addr.port()) < LIMIT {
        assert!(std::time::Instant::now() < deadline, "the gateway never took {LIMIT} admin connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Ingress serves while the flood is held, each request on a new connection.
    for i in 0..20 {
        post_to(gw.addr, "/hooks/app", &[], &format!(r#"{{"n":{i}}}"#)).await.accepted_id();
    }
    let held = held_connections(pid, admin.addr.port());
    assert_eq!(held, LIMIT, "admin connections held while {FLOOD} are open");
    gw.wait_for_log_lines(&["connection limits", "nofile=256", "ingress=168", "admin=8"], 1, WAIT).await;
    assert!(!gw.logs_contain("accept failed"), "{}", gw.logs());

    // Once the flood goes away, the admin API answers again.
    drop(flood);
    let a = admin.get("/healthz").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let r = admin.get_json("/readyz").await;
    assert_eq!(r["ready"], true, "{r}");
}

#[tokio::test]
async fn a_half_sent_admin_request_is_closed_within_admin_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = App::start_yaml(&format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\nadmin: {{ listen: \"127.0.0.1:0\", token: \"{TOKEN}\", request_timeout: 500ms }}\n"
    ))
    .await;
    let admin = gw.admin();
    let cases = [
        ("an idle connection", String::new()),
        ("a head without its end", "GET /readyz HTTP/1.1\r\nHost: admin\r\n".to_string()),
        (
            "a body shorter than its Content-Length",
            format!(
                "POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 10\r\n\r\n{{\"a\""
            ),
        ),
    ];
    let mut set = tokio::task::JoinSet::new();
    for (what, sent) in cases {
        let addr = admin.addr;
        set.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(sent.as_bytes()).await.expect("write");
            let started = std::time::Instant::now();
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
            (
                what,
                read.map(|r| r.map(|_| ()).map_err(|e| e.kind())),
                started.elapsed(),
                String::from_utf8_lossy(&got).into_owned(),
            )
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        let (what, read, took, got) = r.unwrap();
        let closed = matches!(read, Ok(Ok(())) | Ok(Err(std::io::ErrorKind::ConnectionReset)));
        let answer_ok = if what.starts_with("a body") {
            got.starts_with("HTTP/1.1 408 ") && got.ends_with(r#"{"error":"request timeout"}"#)
        } else {
            got.is_empty()
        };
        if !closed || !answer_ok || took < Duration::from_millis(450) || took > Duration::from_secs(3) {
            failures.push(format!("{what}: {read:?} after {took:?}, answered {got:?}"));
        }
    }
    assert!(failures.is_empty(), "with admin.request_timeout 500ms:\n{}", failures.join("\n"));
    assert_eq!(admin.get("/healthz").await.status, StatusCode::OK);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit_and_sizes_the_connection_limits() {
    let dir = ConfigDir::new();
    let yaml =
        "server: { listen: \"127.0.0.1:0\" }\nadmin: { listen: \"127.0.0.1:0\" }\nstorage: { path: hookyard.db }\n";
    let gw = start_with_nofile(&dir, yaml, 200, 512).await;
    let pid = pid_of(&dir.path("routes.yaml"));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files in /proc/PID/limits");
    let soft_hard: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(soft_hard, ["512", "512"], "{line}");
    let raised = gw.wait_for_log_lines(&["raised the open-file limit"], 1, WAIT).await;
    assert!(raised[0].contains("from=200") && raised[0].contains("to=512"), "{}", raised[0]);
    // 512 - 64 kept for the process's own files - 256 delivery attempts (delivery.max_in_flight)
    // = 192 for inbound connections: admin gets 192 / 8 = 24 (at most 64), ingress the rest.
    let sized = gw.wait_for_log_lines(&["connection limits"], 1, WAIT).await;
    assert!(
        sized[0].contains("nofile=512") && sized[0].contains("ingress=168") && sized[0].contains("admin=24"),
        "{}",
        sized[0]
    );
}

// --- readiness follows the store ----------------------------------------------------------------

/// A second connection to the gateway's database, as another process would open it.
fn foreign_connection(gw: &App) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(gw.config_path.parent().unwrap().join("hookyard.db")).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn assert_refused(a: &Answer) {
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.json(), json!({"error": "could not store the event, retry later"}));
    assert_eq!(a.header("retry-after"), Some("5"), "{:?}", a.headers);
}

#[tokio::test]
async fn readyz_fails_while_events_cannot_be_written_and_recovers() {
    let sink = Sink::start().await;
    let (gw, admin) = start(&[("out", sink.url("/out"), "")]).await;
    send(&gw, &["out"], "before").await;
    assert_eq!(admin.get("/readyz").await.status, StatusCode::OK);

    // Every write of an event fails from now on (a real SQLite error, as a full disk gives one).
    let db = foreign_connection(&gw);
    db.execute_batch("CREATE TRIGGER fault BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk says no'); END;")
        .unwrap();
    // With no traffic at all, the periodic probe notices.
    let broken = std::time::Instant::now();
    let r = admin.wait_answer("/readyz", "readyz 503 while no event can be written", |a| a.status == 503).await;
    eprintln!("readyz: 503 {:?} after events could no longer be written, with no traffic", broken.elapsed());
    let v = r.json();
    assert_eq!((&v["ready"], &v["store_writable"]), (&json!(false), &json!(false)), "{v}");
    let reason = v["store_error"].as_str().unwrap_or_else(|| panic!("no store_error in {v}"));
    assert!(reason.contains("disk says no"), "{reason}");
    let to: &[(&str, &str)] = &[("X-To", "out,"), ("X-Case", "refused")];
    assert_refused(&gw.post("/hooks/app", to, r#"{"case":"refused"}"#).await);
    assert_eq!(admin.get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE, "a failed accept keeps it so");

    // Recovered: ready again without a restart, and events are accepted.
    db.execute_batch("DROP TRIGGER fault").unwrap();
    let fixed = std::time::Instant::now();
    let r = admin.wait_answer("/readyz", "readyz 200 after the store recovered", |a| a.status == 200).await;
    eprintln!("readyz: 200 again {:?} after the store recovered", fixed.elapsed());
    assert_eq!(r.json()["store_error"], Value::Null, "{}", r.text());
    send(&gw, &["out"], "after").await;
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.iter().map(case_of).collect::<Vec<_>>(), ["before", "after"]);
}

/// A process test: "database file is gone" is logged on the store's writer thread, which the
/// crate spawns itself, so an in-process gateway's log does not have it.
#[tokio::test]
async fn a_deleted_database_fails_readiness_and_refuses_events() {
    let sink = Sink::start().await;
    let (gw, admin) = start_process(&[("out", sink.url("/out"), "")]).await;
    send(&gw, &["out"], "before").await;
    sink.wait_for(1, WAIT).await;

    let db = gw.config_path.parent().unwrap().join("hookyard.db");
    for suffix in ["", "-wal", "-shm"] {
        let f = format!("{}{suffix}", db.display());
        std::fs::remove_file(&f).unwrap_or_else(|e| panic!("remove {f}: {e}"));
    }
    // Not acknowledged into a file nobody will open again: refused from the first event on.
    let to: &[(&str, &str)] = &[("X-To", "out,"), ("X-Case", "after delete")];
    assert_refused(&gw.post("/hooks/app", to, r#"{"case":"after delete"}"#).await);
    let r = admin.get("/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let v = r.json();
    assert_eq!(v["store_writable"], false, "{v}");
    let reason = v["store_error"].as_str().unwrap_or_else(|| panic!("no store_error in {v}"));
    assert!(reason.contains(&format!("{} was deleted", db.display())), "{reason}");
    gw.wait_for_log_lines(&["ERROR", "database file is gone"], 1, WAIT).await;
    assert_refused(&gw.post("/hooks/app", to, r#"{"case":"after delete"}"#).await);
    let lines = gw.log_lines_with(&["database file is gone"]);
    assert_eq!(lines.len(), 1, "logged once, not at every check: {lines:?}");
    assert_eq!(sink.requests().len(), 1, "nothing after the deletion was delivered");
}
