//! The inbound provider catalogue over real HTTP (issue 16): the handshakes the gateway answers
//! itself (byte for byte, from the independent vectors of `tests/vectors/providers.json`), never
//! storing or delivering them; which methods a source takes; the handshake counter; form bodies
//! routed on their fields and delivered raw (Twilio); and routes on a preset's event type.
//!
//! Signatures are computed here from the spec's recipes with `hmac` + `sha1`/`sha2`, never with
//! `hookyard::verify`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Sha1;

use crate::harness::*;

/// The handshake vectors (`handshakes` of `tests/vectors/providers.json`).
fn handshake_vectors() -> Vec<Value> {
    let path = manifest_dir().join("tests/vectors/providers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let all: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let handshakes = all["handshakes"].as_array().expect("a `handshakes` array").clone();
    assert!(!handshakes.is_empty(), "no handshake vectors");
    handshakes
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// `[[name, value], ...]` as pairs.
fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of pairs: {v}"))
        .iter()
        .map(|p| {
            let text = |x: &Value| x.as_str().unwrap_or_else(|| panic!("not a string pair: {p}")).to_string();
            (text(&p[0]), text(&p[1]))
        })
        .collect()
}

/// A JSON string literal, which is also a YAML double-quoted scalar.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The schemes whose handshake is a signed POST with a timestamp.
const TIMESTAMPED: &[&str] = &["slack", "zoom"];

/// One source per scheme of the vectors, named after the scheme (so at `/hooks/<scheme>`), with
/// the vectors' secrets (and meta's `verify_token`).
///
/// The vectors are signed at a fixed "now" (1764770000), so in real time their Slack and Zoom
/// timestamps are stale: those sources get a `tolerance` of 100000 days, wide enough for the fixed
/// vectors to verify today (the vectors with a bad signature must still be refused).
fn handshake_sources(vectors: &[Value]) -> BTreeMap<String, Source> {
    let mut by_scheme: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    for v in vectors {
        let scheme = s(v, "scheme").to_string();
        let keys = (v["secrets"].clone(), v["verify_token"].clone());
        if let Some(seen) = by_scheme.get(&scheme) {
            assert_eq!(seen, &keys, "the vectors of {scheme} disagree on its secrets");
        }
        by_scheme.insert(scheme, keys);
    }
    by_scheme
        .into_iter()
        .map(|(scheme, (secrets, verify_token))| {
            let secrets: Vec<String> =
                secrets.as_array().expect("secrets").iter().map(|x| quoted(x.as_str().expect("a secret"))).collect();
            let mut verify = format!("{{ scheme: {scheme}, secrets: [{}]", secrets.join(", "));
            if let Some(t) = verify_token.as_str() {
                verify.push_str(&format!(", verify_token: {}", quoted(t)));
            }
            if TIMESTAMPED.contains(&scheme.as_str()) {
                verify.push_str(", tolerance: 100000d");
            }
            verify.push_str(" }");
            (scheme, Source::verify(&verify))
        })
        .collect()
}

/// The vector's request target on `/hooks/<scheme>`: its path replaced, its query kept as sent.
fn target(v: &Value) -> String {
    let pq = s(v, "path_and_query");
    let path = format!("/hooks/{}", s(v, "scheme"));
    match pq.split_once('?') {
        Some((_, query)) => format!("{path}?{query}"),
        None => path,
    }
}

/// Sends one vector's request (method, headers, body) to its source.
async fn send_vector(gw: &App, v: &Value) -> Answer {
    let method = Method::from_bytes(s(v, "method").as_bytes()).expect("a method");
    let headers = pairs(&v["headers"]);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    gw.request(method, &target(v), &headers, s(v, "body").to_string()).await
}

fn assert_answer(v: &Value, a: &Answer) {
    let name = s(v, "name");
    let want = &v["response"];
    assert_eq!(a.status.as_u16() as u64, want["status"].as_u64().expect("status"), "{name}: body {:?}", a.text());
    let headers: BTreeMap<String, String> = pairs(&want["headers"]).into_iter().collect();
    for (k, value) in &headers {
        assert_eq!(a.header(k), Some(value.as_str()), "{name}: header {k}; headers {:?}", a.headers);
    }
    if !headers.contains_key("x-content-type-options") {
        assert_eq!(a.header("x-content-type-options"), None, "{name}: headers {:?}", a.headers);
    }
    assert_eq!(a.body.as_ref(), s(want, "body").as_bytes(), "{name}: body {:?}, want {:?}", a.text(), s(want, "body"));
}

#[tokio::test]
async fn every_handshake_answers_over_http_byte_exactly() {
    let vectors = handshake_vectors();
    let sources = handshake_sources(&vectors);
    let schemes: Vec<&str> = sources.keys().map(String::as_str).collect();
    assert_eq!(schemes, ["dropbox", "meta", "microsoft-graph", "slack", "x", "zoom"], "one source per handshake");
    let config = sources.into_iter().fold(Config::new(), |c, (name, src)| c.source(&name, src));
    let gw = App::start(config).await;
    for v in &vectors {
        let a = send_vector(&gw, v).await;
        assert_answer(v, &a);
    }
}

/// Admin API: the destinations of one stored event.
async fn destinations_of(admin: &admin_api::AdminApi, id: &str) -> Vec<String> {
    let ev = admin.get_json(&format!("/api/v1/events/{id}")).await;
    let mut out: Vec<String> = ev["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("no deliveries in {ev:#}"))
        .iter()
        .map(|d| d["destination"].as_str().expect("destination").to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_handshake_is_never_stored_or_delivered() {
    let vectors = handshake_vectors();
    let sink = Sink::start().await;
    let mut config = Config::new()
        .set("storage", "{ path: store.db }")
        .destination("sink", Dest::url(&sink.url("/in")).retry_schedule(["100ms"]));
    for (name, src) in handshake_sources(&vectors) {
        config = config.source(&name, src).route(Route::new(&format!("{name}-all")).from(&name).to(["sink"]));
    }
    let gw = App::start(config).await;
    let admin = gw.admin();
    let mut answered = 0;
    for v in &vectors {
        let a = send_vector(&gw, v).await;
        assert_answer(v, &a);
        answered += usize::from(a.status == StatusCode::OK);
    }
    assert!(answered >= 6, "every scheme has an answered vector; {answered} were answered");

    // A real event on a routed source afterwards: once it has arrived, anything the handshakes
    // had queued would have been stored before it.
    let secret = "dropbox-app-secret-hk01";
    let body = r#"{"list_folder":{"accounts":["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]}}"#;
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[body.as_bytes()]));
    let id = gw
        .post("/hooks/dropbox", &[("content-type", "application/json"), ("x-dropbox-signature", &sig)], body)
        .await
        .accepted_id();
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].body.as_ref(), body.as_bytes(), "the sink got a handshake: {:?}", got[0]);

    let rows = admin.all_deliveries("", 100).await;
    let events: Vec<&str> = rows.iter().map(|r| r["event_id"].as_str().expect("event_id")).collect();
    assert_eq!(events, [id.as_str()], "deliveries in the store: {rows:#?}");
    let store = gw.config_path.parent().unwrap().join("store.db");
    let c = rusqlite::Connection::open(&store).unwrap_or_else(|e| panic!("open {}: {e}", store.display()));
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let stored: Vec<String> = c
        .prepare("SELECT id FROM events")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored, [id.as_str()], "the events table holds the one real event");
    assert_eq!(sink.requests().len(), 1, "{:?}", sink.requests());
}

fn assert_405(a: &Answer, allow: &str, what: &str) {
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{what}: body {:?}", a.text());
    assert_eq!(a.header("allow"), Some(allow), "{what}: headers {:?}", a.headers);
    assert_eq!(a.json(), json!({ "error": "method not allowed" }), "{what}");
}

#[tokio::test]
async fn methods_other_than_post_are_refused_except_a_declared_handshake() {
    let gw = App::start(
        Config::new()
            .source("gh", Source::github("gh-secret"))
            .source("meta", Source::verify(r#"{ scheme: meta, secret: "app-secret", verify_token: "vt" }"#))
            .source("dropbox", Source::verify(r#"{ scheme: dropbox, secret: "dropbox-secret" }"#))
            .source("graph", Source::verify(r#"{ scheme: microsoft-graph, secret: "client-state" }"#)),
    )
    .await;
    let cases: &[(Method, &str, &str)] = &[
        (Method::GET, "/hooks/gh", "POST"),
        (Method::GET, "/hooks/gh?challenge=x", "POST"),
        (Method::GET, "/hooks/gh?hub.mode=subscribe&hub.verify_token=vt&hub.challenge=c", "POST"),
        (Method::GET, "/hooks/gh?crc_token=abc", "POST"),
        (Method::GET, "/hooks/meta", "GET, POST"),
        (Method::GET, "/hooks/meta?foo=bar", "GET, POST"),
        (Method::PUT, "/hooks/meta?hub.mode=subscribe&hub.verify_token=vt&hub.challenge=c", "GET, POST"),
        (Method::PUT, "/hooks/dropbox", "GET, POST"),
        (Method::PUT, "/hooks/dropbox?challenge=x", "GET, POST"),
        (Method::DELETE, "/hooks/dropbox?challenge=x", "GET, POST"),
        (Method::GET, "/hooks/dropbox", "GET, POST"),
        (Method::GET, "/hooks/dropbox?crc_token=abc", "GET, POST"),
        // Graph's validation is a POST: a GET is no handshake
        (Method::GET, "/hooks/graph?validationToken=x", "POST"),
    ];
    for (method, path, allow) in cases {
        let a = gw.request(method.clone(), path, &[], "").await;
        assert_405(&a, allow, &format!("{method} {path}"));
    }
    // the declared ones are answered
    let a = gw.request(Method::GET, "/hooks/dropbox?challenge=x", &[], "").await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "x"));
    let a =
        gw.request(Method::GET, "/hooks/meta?hub.mode=subscribe&hub.verify_token=vt&hub.challenge=c", &[], "").await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "c"));
}

#[tokio::test]
async fn handshakes_are_counted_in_metrics() {
    // metrics are process-wide: this source's name is used by no other test
    let source = "metered-meta";
    let gw = App::start(
        Config::new().source(source, Source::verify(r#"{ scheme: meta, secret: "app-secret", verify_token: "vt" }"#)),
    )
    .await;
    let admin = gw.admin();
    let path = format!("/hooks/{source}");
    let a = gw
        .request(Method::GET, &format!("{path}?hub.mode=subscribe&hub.verify_token=vt&hub.challenge=42"), &[], "")
        .await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::OK, "42"));
    let a = gw
        .request(Method::GET, &format!("{path}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=42"), &[], "")
        .await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#));

    let text = admin.get("/metrics").await.text();
    let m = admin_api::Metrics::parse(&text);
    let series = |result| [("handshake", "meta hub.challenge"), ("result", result), ("source", source)];
    assert_eq!(m.get("hookyard_handshakes_total", &series("answered")), 1.0, "{text}");
    assert_eq!(m.get("hookyard_handshakes_total", &series("refused")), 1.0, "{text}");
    // as the exporter prints them (labels in the order the counter is given them)
    for result in ["answered", "refused"] {
        let line = format!(
            "hookyard_handshakes_total{{source=\"{source}\",handshake=\"meta hub.challenge\",result=\"{result}\"}} 1"
        );
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
}

/// Twilio: `base64 HMAC-SHA1(token, url + each form param sorted by name: name + value)`.
fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    b64(&mac.finalize().into_bytes())
}

fn form(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

#[tokio::test]
async fn a_form_body_routes_on_its_fields_and_is_delivered_raw() {
    const TOKEN: &str = "twilio-auth-token-0123";
    const URL: &str = "https://hooks.example.com/twilio";
    let sink = Sink::start().await;
    let gw = App::start(
        Config::new()
            .source("twilio", Source::verify(&format!(r#"{{ scheme: twilio, secret: "{TOKEN}", url: "{URL}" }}"#)))
            .destination("sms", Dest::url(&sink.url("/sms")).retry_schedule(["100ms"]))
            .route(
                Route::new("from-alice").from("twilio").when(r#"{ path: $.From, equals: "+15551230000" }"#).to(["sms"]),
            ),
    )
    .await;
    let admin = gw.admin();
    let send = |params: Vec<(&'static str, &'static str)>, signature: Option<String>| {
        let body = form(&params);
        let sig = signature.unwrap_or_else(|| twilio_signature(TOKEN, URL, &params));
        let gw = &gw;
        async move {
            let a = gw
                .post(
                    "/hooks/twilio",
                    &[("content-type", "application/x-www-form-urlencoded"), ("x-twilio-signature", &sig)],
                    body.clone(),
                )
                .await;
            (a, body)
        }
    };

    let alice = vec![
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("From", "+15551230000"),
        ("To", "+15557654321"),
        ("Body", "Hello & welcome: 100% ünïcode"),
    ];
    let (a, alice_body) = send(alice.clone(), None).await;
    assert!(alice_body.contains("From=%2B15551230000"), "{alice_body}");
    let first = a.accepted_id();
    let got = sink.wait_for(1, WAIT).await;
    assert_eq!(got[0].body.as_ref(), alice_body.as_bytes(), "the raw form body is delivered");

    let other = vec![("MessageSid", "SM99"), ("From", "+19999999999"), ("To", "+15557654321"), ("Body", "hi")];
    let (a, other_body) = send(other, None).await;
    assert!(other_body.contains("From=%2B19999999999"), "{other_body}");
    let unrouted = a.accepted_id();
    assert_eq!(destinations_of(&admin, &unrouted).await, Vec::<String>::new(), "From=+19999999999 is not routed");
    assert_eq!(destinations_of(&admin, &first).await, ["sms"]);

    // a wrong signature (the one of other parameters) is refused
    let forged = twilio_signature(TOKEN, URL, &[("From", "+15551230000")]);
    let (a, _) = send(alice.clone(), Some(forged)).await;
    assert_eq!((a.status, a.text().as_str()), (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#));
    let (a, _) = send(alice, Some(twilio_signature("another-token", URL, &[]))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text());

    let rows = admin.all_deliveries("", 100).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(sink.requests().len(), 1, "{:?}", sink.requests());
}

#[tokio::test]
async fn routes_can_test_the_event_type() {
    const GH: &str = "s";
    const STRIPE: &str = "whsec_provider_test_stripe";
    let (a_sink, b_sink, c_sink) = (Sink::start().await, Sink::start().await, Sink::start().await);
    let gw = App::start(
        Config::new()
            .source("gh", Source::github(GH))
            .source("billing", Source::verify(&format!(r#"{{ scheme: stripe, secret: "{STRIPE}" }}"#)))
            .destination("a", Dest::url(&a_sink.url("/a")).retry_schedule(["100ms"]))
            .destination("b", Dest::url(&b_sink.url("/b")).retry_schedule(["100ms"]))
            .destination("c", Dest::url(&c_sink.url("/c")).retry_schedule(["100ms"]))
            .route(Route::new("pushes").from("gh").when("{ event_type: push }").to(["a"]))
            .route(Route::new("reviews").from("gh").when("{ event_type: [issues, pull_request] }").to(["b"]))
            .route(Route::new("paid").from("billing").when("{ event_type: invoice.paid }").to(["c"])),
    )
    .await;
    let admin = gw.admin();
    let github = |event: &'static str, n: u32| {
        let body = format!(r#"{{"ref":"refs/heads/main","n":{n}}}"#);
        let sig = github_signature(GH, body.as_bytes());
        let delivery = format!("delivery-{n}");
        let gw = &gw;
        async move {
            let headers = [
                ("content-type", "application/json"),
                ("x-github-event", event),
                ("x-github-delivery", delivery.as_str()),
                ("x-hub-signature-256", sig.as_str()),
            ];
            (gw.post("/hooks/gh", &headers, body.clone()).await.accepted_id(), body)
        }
    };
    let (push, push_body) = github("push", 1).await;
    let (pr, pr_body) = github("pull_request", 2).await;
    let (ping, _) = github("ping", 3).await;
    assert_eq!(destinations_of(&admin, &push).await, ["a"]);
    assert_eq!(destinations_of(&admin, &pr).await, ["b"]);
    assert_eq!(destinations_of(&admin, &ping).await, Vec::<String>::new());

    let stripe = |body: &'static str| {
        let sig = stripe_signature(STRIPE, now_unix(), body.as_bytes());
        let gw = &gw;
        async move {
            gw.post("/hooks/billing", &[("content-type", "application/json"), ("stripe-signature", &sig)], body)
                .await
                .accepted_id()
        }
    };
    let paid_body = r#"{"id":"evt_1","type":"invoice.paid"}"#;
    let paid = stripe(paid_body).await;
    let created = stripe(r#"{"id":"evt_2","type":"invoice.created"}"#).await;
    assert_eq!(destinations_of(&admin, &paid).await, ["c"]);
    assert_eq!(destinations_of(&admin, &created).await, Vec::<String>::new());

    let a = a_sink.wait_for(1, WAIT).await;
    let b = b_sink.wait_for(1, WAIT).await;
    let c = c_sink.wait_for(1, WAIT).await;
    assert_eq!(a[0].body.as_ref(), push_body.as_bytes());
    assert_eq!(b[0].body.as_ref(), pr_body.as_bytes());
    assert_eq!(c[0].body.as_ref(), paid_body.as_bytes());
    assert_eq!(admin.all_deliveries("", 100).await.len(), 3, "one delivery per routed event");
    assert_eq!((a_sink.requests().len(), b_sink.requests().len(), c_sink.requests().len()), (1, 1, 1));
}

#[tokio::test]
async fn event_type_on_a_scheme_without_one_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        r#"server: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
storage: { path: hookyard.db }
egress: { allow: [127.0.0.0/8] }
sources:
  plain:
    path: /hooks/plain
    verify: { scheme: none }
destinations:
  d: { url: "http://127.0.0.1:9/d", sign: { scheme: none } }
routes:
  - name: pushes
    source: plain
    when:
      - event_type: push
    to: [d]
"#,
    )
    .unwrap();

    let Err(e) = hookyard::app::start(&path).await else { panic!("a route on event_type of scheme none started") };
    let text = e.to_string();
    assert!(matches!(e, hookyard::app::StartError::Config { .. }), "not a config error: {text}");
    assert!(text.contains("sources.plain.verify.scheme"), "the key is named: {text}");
    assert!(text.contains("names no event type"), "{text}");
    assert!(!dir.path().join("hookyard.db").exists(), "nothing started");

    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout {:?} stderr {:?}", out.stdout, out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("names no event type"))
        .unwrap_or_else(|| panic!("no problem about the event type in {:?}", out.stderr));
    assert!(line.starts_with(&format!("{}:", path.display())), "located in the file: {line}");
    assert!(line.contains("sources.plain.verify.scheme: "), "the key is named: {line}");
    assert!(line.contains("scheme none names no event type"), "{line}");
}
