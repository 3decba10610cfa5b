//! The API routes the web console reads (the browser test, `console.rs`, drives the pages): the
//! event log newest first with its filters, cursor and search; an event explained by today's
//! config; a pasted event through `dry-run`; the routes as written; the activity chart and each
//! destination's health; the live tail; the dead-letter count before a bulk replay; the console's
//! files and their headers; and the refusals that keep a browser from being used against the API
//! (another origin, another site, a rebound host name).

use std::time::Duration;

use crate::harness::admin_api::*;
use crate::harness::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const ROUTES: &str = "  - name: kind-a
    source: app
    # events of kind a
    when:
      - header: X-Kind
        equals: a
    to: [out]

  - name: big
    source: app
    when: [{ path: $.n, gt: 5 }]
    to: [out]
";

/// A named token beside `TOKEN`: its actions are logged as `api:alice`.
const ALICE: &str = "alice-admin-token-0123456789";

fn config(out: &str, dead: &str, token: bool) -> String {
    let token = if token { format!(", token: \"{TOKEN}\", tokens: {{ alice: \"{ALICE}\" }}") } else { String::new() };
    format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\n\
         admin: {{ listen: \"127.0.0.1:0\"{token} }}\n\
         storage: {{ path: hookyard.db, sync: normal }}\n\
         egress: {{ allow: [127.0.0.0/8] }}\n\
         sources:\n  app:\n    path: /hooks/app\n    verify: {{ scheme: none }}\n\
         destinations:\n\
         \x20 out:\n    url: {out}\n    sign: {{ scheme: none }}\n    rate_limit: 500\n\
         \x20 gone:\n    url: {dead}\n    sign: {{ scheme: none }}\n    retry: {{ schedule: [50ms], jitter: 0, throttle_floor: 0s }}\n\
         routes:\n{ROUTES}\
         \x20 - {{ name: doomed, source: app, when: [{{ header: X-Doomed, exists: true }}], to: [gone] }}\n"
    )
}

async fn post(gw: &App, headers: &[(&str, &str)], body: Value) -> String {
    gw.post("/hooks/app", headers, body.to_string()).await.accepted_id()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn the_event_log_pages_newest_first_with_its_filters_and_search() {
    let out = Sink::start().await;
    let dead = Sink::with_script(vec![Reply::status(503), Reply::status(503)]).await;
    let gw = App::start_yaml(&config(&out.url("/out"), &dead.url("/gone"), true)).await;
    let admin = gw.admin();
    let a1 = post(&gw, &[("X-Kind", "a")], json!({"n": 1, "user": {"id": 42}})).await;
    let b7 = post(&gw, &[("X-Kind", "b")], json!({"n": 7, "user": {"id": 7}})).await;
    let none = post(&gw, &[], json!({"n": 2})).await;
    let doomed = post(&gw, &[("X-Doomed", "1")], json!({"n": 0})).await;
    let a9 = post(&gw, &[("X-Kind", "a")], json!({"n": 9, "user": {"id": 42}})).await;
    out.wait_for(3, Duration::from_secs(10)).await;
    admin
        .wait_json("/api/v1/events?status=dead", "the doomed event's delivery is dead", Duration::from_secs(10), |v| {
            ids(v) == vec![doomed.clone()]
        })
        .await;

    let all = admin.get_json("/api/v1/events").await;
    assert_eq!(ids(&all), vec![a9.clone(), doomed.clone(), none.clone(), b7.clone(), a1.clone()], "{all}");
    assert_eq!(all["next"], Value::Null);
    let first = &all["items"][0];
    assert_eq!(first["source"], "app");
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 2, "a9 matched both routes: {first}");
    assert_eq!(first["deliveries"][0]["destination"], "out");
    assert_eq!(first["deliveries"][0]["status"], "delivered");
    assert_eq!(first["deliveries"][0]["last_status"], 200);
    assert_eq!(all["items"][2]["deliveries"], json!([]), "unrouted");

    // pages of two, by cursor, cover the log once
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let page = admin.get_json(&format!("/api/v1/events?limit=2&cursor={cursor}")).await;
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ids(&all));

    // filters: route, destination, status, source, time
    assert_eq!(ids(&admin.get_json("/api/v1/events?route=kind-a").await), vec![a9.clone(), a1.clone()]);
    assert_eq!(ids(&admin.get_json("/api/v1/events?route=big").await), vec![a9.clone(), b7.clone()]);
    assert_eq!(ids(&admin.get_json("/api/v1/events?destination=gone").await), vec![doomed.clone()]);
    assert_eq!(ids(&admin.get_json("/api/v1/events?destination=out&status=dead").await), Vec::<String>::new());
    assert_eq!(ids(&admin.get_json("/api/v1/events?source=other").await), Vec::<String>::new());
    assert_eq!(ids(&admin.get_json("/api/v1/events?until=1h").await), Vec::<String>::new());
    assert_eq!(
        ids(&admin.get_json("/api/v1/events?since=1h&source=&route=").await).len(),
        5,
        "empty fields are no filter"
    );

    // search: an event id, a webhook-id, a value in the body
    assert_eq!(ids(&admin.get_json(&format!("/api/v1/events?q={b7}")).await), vec![b7.clone()]);
    let msg = out
        .requests()
        .iter()
        .find(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["n"] == 7)
        .unwrap()
        .must("webhook-id")
        .to_string();
    assert_eq!(ids(&admin.get_json(&format!("/api/v1/events?q={msg}")).await), vec![b7.clone()]);
    assert_eq!(ids(&admin.get_json(&format!("/api/v1/events?q={msg}&destination=gone")).await), Vec::<String>::new());
    assert_eq!(ids(&admin.get_json("/api/v1/events?q=msg_nothing").await), Vec::<String>::new());
    assert_eq!(ids(&admin.get_json("/api/v1/events?q=%24.user.id%3D42").await), vec![a9.clone(), a1.clone()]);
    let page = admin.get_json("/api/v1/events?q=%24.user.id%3D42&limit=1").await;
    assert_eq!(ids(&page), vec![a9.clone()]);
    let rest =
        admin.get_json(&format!("/api/v1/events?q=%24.user.id%3D42&cursor={}", page["next"].as_str().unwrap())).await;
    assert_eq!(ids(&rest), vec![a1.clone()]);

    // what is refused, with the reason
    for (query, message) in [
        ("limit=0", "limit must be a number from 1 to 200"),
        ("cursor=nope", "cursor \"nope\" is not one a page of the event log gave"),
        ("colour=red", "unknown query parameter \"colour\""),
        ("status=lost", "unknown status \"lost\"; use one of pending, delivered, failed, dead, cancelled, skipped"),
    ] {
        let a = admin.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!((a.status, a.json()), (StatusCode::BAD_REQUEST, json!({"error": message})), "{query}");
    }
    let a = admin.get("/api/v1/events?q=%24.a%5B%3D1").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert!(a.json()["error"].as_str().unwrap().starts_with("q: "), "{}", a.text());

    // the dead letters a bulk replay would take, counted first, then replayed
    let count = admin.post_json("/api/v1/replay", r#"{"dead": true, "destination": "gone", "dry_run": true}"#).await;
    assert_eq!(count, json!({"dry_run": true, "would_replay": 1}));
    let count = admin.post_json("/api/v1/replay", r#"{"dead": true, "since": "1h", "dry_run": true}"#).await;
    assert_eq!(count, json!({"dry_run": true, "would_replay": 1}));
    let a = admin.post("/api/v1/replay", r#"{"ids": ["1"], "dry_run": true}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "dry_run is not silently ignored: {}", a.text());
    assert_eq!(
        admin.post_json("/api/v1/replay", r#"{"dead": true, "destination": "gone"}"#).await,
        json!({"queued": 1})
    );
    dead.wait_for(3, Duration::from_secs(10)).await;
    admin
        .wait_json(
            "/api/v1/events?status=delivered&destination=gone",
            "the replayed dead letter delivered",
            Duration::from_secs(10),
            |v| ids(v) == vec![doomed.clone()],
        )
        .await;
}

#[tokio::test]
async fn an_event_is_explained_by_todays_config_and_a_pasted_one_is_dry_run() {
    let out = Sink::start().await;
    let gw = App::start_yaml(&config(&out.url("/out"), &out.url("/gone"), true)).await;
    let admin = gw.admin();
    let id = post(&gw, &[("X-Kind", "b")], json!({"n": 9})).await;
    out.wait_for(1, Duration::from_secs(10)).await;

    let explained = admin.get_json(&format!("/api/v1/events/{id}/explain")).await;
    assert_eq!(
        explained["routes"],
        json!([
            {"name": "kind-a", "matched": false, "why": "when[0] (header: X-Kind, equals: \"a\"): the event has x-kind: \"b\""},
            {"name": "big", "matched": true, "why": null},
            {"name": "doomed", "matched": false, "why": "when[0] (header: X-Doomed, exists: true): the event has no x-doomed header"},
        ]),
        "{explained}"
    );
    assert_eq!(explained["event"]["id"], id.as_str());
    assert_eq!(explained["config_version"], admin.status().await["version"]);
    let planned = &explained["deliveries"][0];
    assert_eq!((planned["route"].as_str(), planned["destination"].as_str()), (Some("big"), Some("out")));
    assert_eq!(planned["request"]["url"], out.url("/out"));
    assert_eq!(planned["request"]["body"], r#"{"n":9}"#);
    let a = admin.get("/api/v1/events/evt_00000000000000000000000000000000/explain").await;
    assert_eq!(
        (a.status, a.json()),
        (StatusCode::NOT_FOUND, json!({"error": "no event evt_00000000000000000000000000000000"}))
    );

    let tried = admin
        .post_json("/api/v1/dry-run", r#"{"source": "app", "headers": [["X-Kind", "a"]], "body": "{\"n\": 2}"}"#)
        .await;
    assert_eq!(tried["routes"][0], json!({"name": "kind-a", "matched": true, "why": null}));
    assert_eq!(
        tried["routes"][1],
        json!({"name": "big", "matched": false, "why": "when[0] (path: $.n, gt: 5): the body has 2 there"})
    );
    assert_eq!(tried["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(tried["deliveries"][0]["request"]["headers"]["x-kind"], "a", "{tried}");
    assert_eq!(out.requests().len(), 1, "a dry run sends nothing");
    for (body, message) in [
        (r#"{"source": "nope", "body": ""}"#, "unknown source \"nope\"; sources are: app"),
        (
            r#"{"source": "app", "headers": [["bad name", "v"]]}"#,
            "header \"bad name\" is not a valid header name and value",
        ),
    ] {
        let a = admin.post("/api/v1/dry-run", body).await;
        assert_eq!((a.status, a.json()), (StatusCode::BAD_REQUEST, json!({"error": message})), "{body}");
    }
    let a = admin.post("/api/v1/dry-run", r#"{"body": 1}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.json()["error"].as_str().unwrap().starts_with("expected {\"source\": .."), "{}", a.text());

    // the routes as written in the file (comments inside a route kept, blank lines after it not)
    let routes = admin.get_json("/api/v1/routes").await;
    assert_eq!(
        routes["routes"][0],
        json!({
            "name": "kind-a", "source": "app", "to": ["out"], "then": [], "transforms": [],
            "yaml": "- name: kind-a\n  source: app\n  # events of kind a\n  when:\n    - header: X-Kind\n      equals: a\n  to: [out]",
        })
    );
    assert_eq!(routes["routes"][1]["yaml"], "- name: big\n  source: app\n  when: [{ path: $.n, gt: 5 }]\n  to: [out]");
    assert_eq!(
        routes["routes"][2]["yaml"],
        "- { name: doomed, source: app, when: [{ header: X-Doomed, exists: true }], to: [gone] }"
    );
}

/// Reads server-sent events from `body` until `done` holds for the text so far.
async fn read_until(body: &mut hyper::body::Incoming, text: &mut String, done: impl Fn(&str) -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done(text) {
            let frame = body.frame().await.expect("the tail stays open").expect("a frame");
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the tail did not show it within 10 s; it showed:\n{text}"));
}

#[tokio::test]
async fn the_tail_streams_events_and_attempts_and_the_charts_count_them() {
    let out = Sink::start().await;
    let gw = App::start_yaml(&config(&out.url("/out"), &out.url("/gone"), true)).await;
    let admin = gw.admin();
    let unauthorized = admin.send(Method::GET, "/api/v1/tail", None, "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);

    let req = Request::get(admin.url("/api/v1/tail"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = http_client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut text = String::new();
    read_until(&mut body, &mut text, |t| t.starts_with(": tailing\n\n")).await;
    let id = post(&gw, &[("X-Kind", "a")], json!({"n": 1})).await;
    read_until(&mut body, &mut text, |t| t.contains("event: delivery\n")).await;
    let frames: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter_map(|f| {
            let (kind, data) = f.strip_prefix("event: ")?.split_once("\ndata: ")?;
            Some((kind, serde_json::from_str(data).unwrap()))
        })
        .collect();
    assert_eq!(frames[0].0, "event");
    assert_eq!(frames[0].1["id"], id.as_str());
    assert_eq!((frames[0].1["routes"].clone(), frames[0].1["deliveries"].clone()), (json!(["kind-a"]), json!(1)));
    assert_eq!(frames[1].0, "delivery");
    assert_eq!(frames[1].1["event_id"], id.as_str());
    assert_eq!(frames[1].1["destination"], "out");
    assert_eq!(frames[1].1["status"], "delivered");
    assert_eq!(frames[1].1["last_status"], 200);
    drop(body);

    // the chart counts it once its 5-second step has closed
    let overview = admin
        .wait_json("/api/v1/overview", "the chart shows the event", Duration::from_secs(12), |v| {
            v["accepted"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum::<u64>() == 1
        })
        .await;
    assert_eq!(overview["step_s"], 5);
    assert_eq!(overview["accepted"].as_array().unwrap().len(), 60);
    assert_eq!(overview["success_rate"], 1.0);
    let dests = admin.get_json("/api/v1/destinations").await;
    let out_row = &dests["items"].as_array().unwrap().iter().find(|d| d["name"] == "out").unwrap();
    assert_eq!((out_row["attempts_5m"].clone(), out_row["success_rate"].clone()), (json!(1), json!(1.0)));
    assert!(out_row["latency_p50_ms"].is_u64() && out_row["latency_p99_ms"].is_u64(), "{out_row}");
    assert_eq!(out_row["rate_limit"], "500/s");
    let gone_row = &dests["items"].as_array().unwrap().iter().find(|d| d["name"] == "gone").unwrap();
    assert_eq!((gone_row["attempts_5m"].clone(), gone_row["latency_p50_ms"].clone()), (json!(0), Value::Null));
}

#[tokio::test]
async fn the_console_is_served_with_its_policy_and_a_browser_cannot_be_turned_against_the_api() {
    let out = Sink::start().await;
    let gw = App::start_yaml_log(&config(&out.url("/out"), &out.url("/gone"), true), "info").await;
    let admin = gw.admin();
    // the files need no token (they hold no data); their policy allows only themselves
    for (path, content_type) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
    ] {
        let a = admin.send(Method::GET, path, None, "").await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            a.header("content-security-policy"),
            Some(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                 base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
            )
        );
        assert_eq!((a.header("x-content-type-options"), a.header("x-frame-options")), (Some("nosniff"), Some("DENY")));
    }
    let index = admin.send(Method::GET, "/console/", None, "").await.text();
    assert!(!index.contains("<script>") && !index.contains(" style="), "no inline script or style: {index}");
    let a = admin.send(Method::GET, "/console", None, "").await;
    assert_eq!((a.status, a.header("location")), (StatusCode::PERMANENT_REDIRECT, Some("/console/")));
    assert_eq!(admin.send(Method::GET, "/console/secret", None, "").await.status, StatusCode::UNAUTHORIZED);
    let who = admin.get_json("/api/v1/whoami").await;
    assert_eq!(who["auth"], true);
    assert!(who["actor"].as_str().unwrap().starts_with("api:token "), "{who}");

    // a page of another site cannot make the console's requests
    let url = admin.url("/api/v1/destinations/out/pause");
    let send = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut req = Request::post(url)
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = http_client().request(req.body(Full::new(Bytes::from("{}"))).unwrap()).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let host = admin.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    assert_eq!(
        send(vec![("origin", "http://evil.example".into())]).await,
        (StatusCode::FORBIDDEN, r#"{"error":"cross-origin request refused"}"#.into())
    );
    assert_eq!(
        send(vec![("sec-fetch-site", "cross-site".into())]).await,
        (StatusCode::FORBIDDEN, r#"{"error":"cross-site request refused"}"#.into())
    );
    let (status, _) = send(vec![("origin", format!("http://{host}")), ("sec-fetch-site", "same-origin".into())]).await;
    assert_eq!(status, StatusCode::OK, "the console's own request");
    let dests = admin.get_json("/api/v1/destinations").await;
    let paused: Vec<&str> = dests["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["paused"] == true)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(paused, vec!["out"]);
    // and the action was logged with who did it
    let audit = gw.log_lines_with(&["admin action", "action=pause", "destination=out"]);
    assert_eq!(audit.len(), 1, "{}", gw.logs());
    assert!(audit[0].contains("actor=api:token "), "{}", audit[0]);

    // a named token: its actions carry its name, in the log and in what a cancel records
    let bearer = format!("Bearer {ALICE}");
    let alice = |method: Method, path: &'static str, body: &'static str| admin.send(method, path, Some(&bearer), body);
    let who = alice(Method::GET, "/api/v1/whoami", "").await.json();
    assert_eq!(who, json!({"actor": "api:alice", "auth": true}));
    let a = alice(Method::POST, "/api/v1/destinations/out/resume", r#"{"reason": "done"}"#).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let audit = gw.log_lines_with(&["admin action", "action=resume", "destination=out reason=done"]);
    assert_eq!(audit.len(), 1, "{}", gw.logs());
    assert!(audit[0].contains("actor=api:alice"), "{}", audit[0]);
    let a = alice(Method::POST, "/api/v1/cancel", r#"{"all": true, "dry_run": false}"#).await;
    assert_eq!(a.json()["by"], "api:alice", "{}", a.text());
    let wrong = admin.send(Method::GET, "/api/v1/whoami", Some(&format!("Bearer {ALICE}x")), "").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_a_token_the_admin_answers_only_a_loopback_host_name() {
    let out = Sink::start().await;
    let gw = App::start_yaml(&config(&out.url("/out"), &out.url("/gone"), false)).await;
    let admin = gw.admin();
    assert_eq!(admin.get_json("/api/v1/whoami").await, json!({"actor": "api", "auth": false}));
    let port = admin.url("").trim_end_matches('/').rsplit(':').next().unwrap().to_string();
    for (host, allowed) in [
        (format!("127.0.0.1:{port}"), true),
        (format!("localhost:{port}"), true),
        (format!("[::1]:{port}"), true),
        ("127.0.0.1".to_string(), true),
        (format!("rebound.evil.example:{port}"), false),
        (format!("10.0.0.1:{port}"), false),
    ] {
        let req = Request::get(admin.url("/api/v1/whoami"))
            .header("host", host.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = http_client().request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        if allowed {
            assert_eq!(status, StatusCode::OK, "{host}");
        } else {
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (
                    StatusCode::FORBIDDEN,
                    r#"{"error":"the admin listener has no token, so it answers only requests addressed to a loopback host"}"#
                        .to_string()
                ),
                "{host}"
            );
        }
    }
}
