//! Ingress: what a sender gets back. Paths and methods, body limits (declared and streamed),
//! signature verification for every scheme (signatures computed here, from the providers'
//! documentation), that accepted-but-unrouted events are acknowledged and go nowhere, and the
//! per-source guards (allowed addresses, trusted proxies' `X-Forwarded-For`, rate limits).

use crate::harness::admin_api::{AdminApi, TOKEN};
use crate::harness::*;
use http::{Method, StatusCode};
use serde_json::json;

const BODY: &[u8] = br#"{"hello":"world","n":1}"#;

fn assert_error(a: &Answer, status: StatusCode, message: &str) {
    assert_eq!(a.status, status, "body {:?}", a.text());
    assert_eq!(a.json(), json!({ "error": message }));
    assert_eq!(a.header("content-type"), Some("application/json"));
}

/// A gateway with one unsigned source and nothing routed.
async fn open_gateway(max_body_bytes: usize) -> App {
    App::start_yaml(&format!(
        r#"
server:
  listen: "127.0.0.1:0"
  max_body_bytes: {max_body_bytes}
sources:
  open:
    path: /hooks/open
    verify: {{ scheme: none }}
"#
    ))
    .await
}

#[tokio::test]
async fn unknown_path_is_404() {
    let gw = open_gateway(1024).await;
    for (method, path) in [
        (Method::POST, "/hooks/nope"),
        (Method::POST, "/"),
        (Method::GET, "/hooks/open/extra"),
        (Method::POST, "/hooks"),
    ] {
        let a = gw.request(method.clone(), path, &[], BODY).await;
        assert_error(&a, StatusCode::NOT_FOUND, "not found");
    }
}

#[tokio::test]
async fn other_methods_on_a_source_path_are_405_with_allow_post() {
    let gw = open_gateway(1024).await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let a = gw.request(method.clone(), "/hooks/open", &[], "").await;
        assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        assert_eq!(a.header("allow"), Some("POST"), "{method}");
    }
    gw.post("/hooks/open", &[], BODY).await.accepted_id();
}

#[tokio::test]
async fn body_at_the_limit_is_accepted_and_one_byte_more_is_413() {
    let gw = open_gateway(1024).await;
    gw.post("/hooks/open", &[("content-type", "application/json")], vec![b'x'; 1024]).await.accepted_id();

    // Declared too large: refused from the headers alone, without waiting for a body that never comes.
    let r = gw
        .raw(
            "POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1025\r\n\r\n",
            b"",
        )
        .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body, r#"{"error":"payload too large"}"#);
    let r = gw.raw("POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000000\r\n\r\n", b"").await;
    assert_eq!(r.status, 413, "{r:?}");
}

fn chunked(body_chunks: &[&[u8]], finish: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body_chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    if finish {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out
}

#[tokio::test]
async fn chunked_body_is_limited_while_streaming() {
    let gw = open_gateway(1024).await;
    let head =
        "POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

    // Under the limit, chunked is fine.
    let ok = chunked(&[br#"{"a":"#, br#"1}"#], true);
    let r = gw.raw(head, &ok).await;
    assert_eq!(r.status, 202, "{r:?}");
    assert!(is_event_id(serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"].as_str().unwrap()), "{r:?}");

    // 1536 bytes in three chunks and the body never ends: the gateway must answer once it has
    // read past the limit, not wait for the end of the body.
    let chunk = [b'x'; 512];
    let over = chunked(&[&chunk, &chunk, &chunk], false);
    let r = gw.raw(head, &over).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.body, r#"{"error":"payload too large"}"#);
}

// --- Signatures -------------------------------------------------------------------------------

const GH: &str = "gh-secret";
const GH_OLD: &str = "gh-old-secret";
const GH_NEW: &str = "gh-new-secret";
const STRIPE: &str = "whsec_stripe_signing_secret";
const SHOPIFY: &str = "shopify-secret";
const SLACK: &str = "slack-signing-secret";
const HMAC: &str = "hmac-secret";
const HMAC512: &str = "hmac-512-secret";

fn sw_secret(seed: &str) -> String {
    format!("whsec_{}", b64(format!("standard-webhooks key {seed}").as_bytes()))
}

fn signing_config() -> String {
    let (sw, sw_old, sw_new) = (sw_secret("main"), sw_secret("old"), sw_secret("new"));
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
sources:
  github:
    path: /github
    verify: {{ scheme: github, secret: {GH} }}
  github-rotating:
    path: /github-rotating
    verify: {{ scheme: github, secrets: [{GH_OLD}, {GH_NEW}] }}
  stripe:
    path: /stripe
    verify: {{ scheme: stripe, secret: {STRIPE}, tolerance: 5m }}
  shopify:
    path: /shopify
    verify: {{ scheme: shopify, secret: {SHOPIFY} }}
  slack:
    path: /slack
    verify: {{ scheme: slack, secret: {SLACK} }}
  standard-webhooks:
    path: /standard-webhooks
    verify: {{ scheme: standard-webhooks, secret: "{sw}" }}
  standard-webhooks-rotating:
    path: /standard-webhooks-rotating
    verify: {{ scheme: standard-webhooks, secret: "{sw_old}", secrets: ["{sw_new}"] }}
  hmac:
    path: /hmac
    verify: {{ scheme: hmac, secret: {HMAC}, header: X-Signature }}
  hmac-512:
    path: /hmac-512
    verify: {{ scheme: hmac, secret: {HMAC512}, header: X-Sig-512, algorithm: sha512, encoding: base64, prefix: "sha512=" }}
  basic:
    path: /basic
    verify: {{ scheme: basic, secrets: ["alice:wonderland", "bob:builder"] }}
  api-key:
    path: /api-key
    verify: {{ scheme: api-key, secret: key-123 }}
  api-key-custom:
    path: /api-key-custom
    verify: {{ scheme: api-key, secret: tok-456, header: X-Token }}
  none:
    path: /none
    verify: {{ scheme: none }}
"#
    )
}

struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    want: u16,
}

fn case(name: &'static str, path: &'static str, headers: &[(&str, String)], want: u16) -> Case {
    Case {
        name,
        path,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        body: BODY.to_vec(),
        want,
    }
}

fn signature_cases() -> Vec<Case> {
    let now = now_unix();
    let t = now.to_string();
    let stale = now - 600;
    let future = now + 600;
    let other = br#"{"hello":"tampered","n":1}"#;
    let (sw, sw_old, sw_new) = (sw_secret("main"), sw_secret("old"), sw_secret("new"));
    let sw_sig = |secret: &str, id: &str, t: &str, body: &[u8]| standard_webhooks_signature(secret, id, t, body);
    let hmac512 = |key: &str, body: &[u8]| format!("sha512={}", b64(&hmac_sha512(key.as_bytes(), &[body])));
    let hs = "x-hub-signature-256";
    let ss = "stripe-signature";
    let shs = "x-shopify-hmac-sha256";
    let (sls, slt) = ("x-slack-signature", "x-slack-request-timestamp");

    let mut cases = vec![
        // github
        case("github valid", "/github", &[(hs, github_signature(GH, BODY))], 202),
        case("github missing", "/github", &[], 401),
        case("github wrong secret", "/github", &[(hs, github_signature("not-it", BODY))], 401),
        case("github other body", "/github", &[(hs, github_signature(GH, other))], 401),
        case(
            "github upper-case hex",
            "/github",
            &[(hs, github_signature(GH, BODY).to_uppercase().replace("SHA256=", "sha256="))],
            202,
        ),
        case("github without sha256= prefix", "/github", &[(hs, github_signature(GH, BODY)[7..].to_string())], 401),
        case("github sha1 header only", "/github", &[("x-hub-signature", github_signature(GH, BODY))], 401),
        case(
            "github signature sent twice",
            "/github",
            &[(hs, github_signature(GH, BODY)), (hs, github_signature(GH, BODY))],
            401,
        ),
        // rotation
        case("github rotating old", "/github-rotating", &[(hs, github_signature(GH_OLD, BODY))], 202),
        case("github rotating new", "/github-rotating", &[(hs, github_signature(GH_NEW, BODY))], 202),
        case("github rotating neither", "/github-rotating", &[(hs, github_signature(GH, BODY))], 401),
        // stripe
        case("stripe valid", "/stripe", &[(ss, stripe_signature(STRIPE, now, BODY))], 202),
        case("stripe missing", "/stripe", &[], 401),
        case("stripe wrong secret", "/stripe", &[(ss, stripe_signature("whsec_other", now, BODY))], 401),
        case("stripe other body", "/stripe", &[(ss, stripe_signature(STRIPE, now, other))], 401),
        case("stripe stale", "/stripe", &[(ss, stripe_signature(STRIPE, stale, BODY))], 401),
        case("stripe future", "/stripe", &[(ss, stripe_signature(STRIPE, future, BODY))], 401),
        case(
            "stripe t swapped after signing",
            "/stripe",
            &[(ss, stripe_signature(STRIPE, now, BODY).replacen(&format!("t={now}"), &format!("t={}", now - 1), 1))],
            401,
        ),
        case(
            "stripe second v1 valid (secret roll)",
            "/stripe",
            &[(ss, {
                let bad = stripe_signature("whsec_old_roll", now, BODY);
                let good = stripe_signature(STRIPE, now, BODY);
                format!("{bad},{},v0=abc", good.split_once(',').unwrap().1)
            })],
            202,
        ),
        // shopify
        case("shopify valid", "/shopify", &[(shs, shopify_signature(SHOPIFY, BODY))], 202),
        case("shopify missing", "/shopify", &[], 401),
        case("shopify wrong secret", "/shopify", &[(shs, shopify_signature("nope", BODY))], 401),
        case("shopify other body", "/shopify", &[(shs, shopify_signature(SHOPIFY, other))], 401),
        case(
            "shopify hex instead of base64",
            "/shopify",
            &[(shs, hex::encode(hmac_sha256(SHOPIFY.as_bytes(), &[BODY])))],
            401,
        ),
        // slack
        case("slack valid", "/slack", &[(slt, t.clone()), (sls, slack_signature(SLACK, now, BODY))], 202),
        case("slack missing signature", "/slack", &[(slt, t.clone())], 401),
        case("slack missing timestamp", "/slack", &[(sls, slack_signature(SLACK, now, BODY))], 401),
        case("slack wrong secret", "/slack", &[(slt, t.clone()), (sls, slack_signature("nope", now, BODY))], 401),
        case("slack other body", "/slack", &[(slt, t.clone()), (sls, slack_signature(SLACK, now, other))], 401),
        case(
            "slack signed other timestamp",
            "/slack",
            &[(slt, t.clone()), (sls, slack_signature(SLACK, now - 1, BODY))],
            401,
        ),
        case("slack stale", "/slack", &[(slt, stale.to_string()), (sls, slack_signature(SLACK, stale, BODY))], 401),
        case("slack future", "/slack", &[(slt, future.to_string()), (sls, slack_signature(SLACK, future, BODY))], 401),
        // standard webhooks
        case(
            "standard-webhooks valid",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &t, BODY)),
            ],
            202,
        ),
        case(
            "standard-webhooks several signatures, one valid",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                (
                    "webhook-signature",
                    format!("{} {}", sw_sig(&sw_old, "msg_1", &t, BODY), sw_sig(&sw, "msg_1", &t, BODY)),
                ),
            ],
            202,
        ),
        case("standard-webhooks missing", "/standard-webhooks", &[], 401),
        case(
            "standard-webhooks missing id",
            "/standard-webhooks",
            &[("webhook-timestamp", t.clone()), ("webhook-signature", sw_sig(&sw, "", &t, BODY))],
            401,
        ),
        case(
            "standard-webhooks wrong secret",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw_old, "msg_1", &t, BODY)),
            ],
            401,
        ),
        case(
            "standard-webhooks signed other id",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_2".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &t, BODY)),
            ],
            401,
        ),
        case(
            "standard-webhooks other body",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &t, other)),
            ],
            401,
        ),
        case(
            "standard-webhooks stale",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", stale.to_string()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &stale.to_string(), BODY)),
            ],
            401,
        ),
        case(
            "standard-webhooks future",
            "/standard-webhooks",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", future.to_string()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &future.to_string(), BODY)),
            ],
            401,
        ),
        case(
            "standard-webhooks rotating old",
            "/standard-webhooks-rotating",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw_old, "msg_1", &t, BODY)),
            ],
            202,
        ),
        case(
            "standard-webhooks rotating new",
            "/standard-webhooks-rotating",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw_new, "msg_1", &t, BODY)),
            ],
            202,
        ),
        case(
            "standard-webhooks rotating neither",
            "/standard-webhooks-rotating",
            &[
                ("webhook-id", "msg_1".into()),
                ("webhook-timestamp", t.clone()),
                ("webhook-signature", sw_sig(&sw, "msg_1", &t, BODY)),
            ],
            401,
        ),
        // generic hmac
        case("hmac valid", "/hmac", &[("x-signature", hex::encode(hmac_sha256(HMAC.as_bytes(), &[BODY])))], 202),
        case("hmac missing", "/hmac", &[], 401),
        case("hmac wrong secret", "/hmac", &[("x-signature", hex::encode(hmac_sha256(b"nope", &[BODY])))], 401),
        case("hmac other body", "/hmac", &[("x-signature", hex::encode(hmac_sha256(HMAC.as_bytes(), &[other])))], 401),
        case("hmac-512 valid", "/hmac-512", &[("x-sig-512", hmac512(HMAC512, BODY))], 202),
        case("hmac-512 missing prefix", "/hmac-512", &[("x-sig-512", hmac512(HMAC512, BODY)[7..].to_string())], 401),
        case(
            "hmac-512 sha256 instead",
            "/hmac-512",
            &[("x-sig-512", format!("sha512={}", b64(&hmac_sha256(HMAC512.as_bytes(), &[BODY]))))],
            401,
        ),
        case("hmac-512 wrong secret", "/hmac-512", &[("x-sig-512", hmac512(HMAC, BODY))], 401),
        // basic
        case("basic first secret", "/basic", &[("authorization", basic_auth("alice:wonderland"))], 202),
        case("basic second secret", "/basic", &[("authorization", basic_auth("bob:builder"))], 202),
        case(
            "basic scheme word case-insensitive",
            "/basic",
            &[("authorization", basic_auth("alice:wonderland").replace("Basic", "bAsIc"))],
            202,
        ),
        case("basic missing", "/basic", &[], 401),
        case("basic wrong password", "/basic", &[("authorization", basic_auth("alice:looking-glass"))], 401),
        case("basic mixed users", "/basic", &[("authorization", basic_auth("alice:builder"))], 401),
        case("basic bearer", "/basic", &[("authorization", "Bearer alice:wonderland".into())], 401),
        // api key
        case("api-key valid", "/api-key", &[("x-api-key", "key-123".into())], 202),
        case("api-key missing", "/api-key", &[], 401),
        case("api-key wrong", "/api-key", &[("x-api-key", "key-124".into())], 401),
        case("api-key prefix only", "/api-key", &[("x-api-key", "key-12".into())], 401),
        case("api-key custom header valid", "/api-key-custom", &[("x-token", "tok-456".into())], 202),
        case("api-key custom key in default header", "/api-key-custom", &[("x-api-key", "tok-456".into())], 401),
        // none
        case("none without headers", "/none", &[], 202),
    ];
    // A signature for a different body is also wrong when it is the body that changed.
    cases.push(Case {
        body: other.to_vec(),
        ..case("github body changed after signing", "/github", &[(hs, github_signature(GH, BODY))], 401)
    });
    cases
}

#[tokio::test]
async fn every_scheme_accepts_valid_and_rejects_invalid_signatures() {
    let gw = App::start_yaml(&signing_config()).await;
    let mut failures = Vec::new();
    for c in signature_cases() {
        let mut headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        headers.push(("content-type", "application/json"));
        let a = gw.post(c.path, &headers, c.body.clone()).await;
        let body_ok = match c.want {
            202 => a.status == StatusCode::ACCEPTED && a.json()["id"].as_str().is_some_and(is_event_id),
            401 => a.json() == json!({"error": "unauthorized"}),
            _ => unreachable!(),
        };
        if a.status.as_u16() != c.want || !body_ok {
            failures.push(format!("{}: want {}, got {} {}", c.name, c.want, a.status.as_u16(), a.text()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}\n\ngateway logs:\n{}",
        failures.len(),
        failures.join("\n"),
        gw.logs()
    );
    // The reason is logged for the operator, never sent to the sender.
    assert!(gw.logs_contain("verification failed"));
}

#[tokio::test]
async fn accepted_events_get_distinct_ids() {
    let gw = open_gateway(1024).await;
    let a = gw.post("/hooks/open", &[], BODY).await.accepted_id();
    let b = gw.post("/hooks/open", &[], BODY).await.accepted_id();
    assert_ne!(a, b);
}

// --- Unrouted and non-JSON events -------------------------------------------------------------

#[tokio::test]
async fn unrouted_event_is_acknowledged_and_delivered_nowhere() {
    let sink = Sink::start().await;
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: none }}
destinations:
  sink:
    url: {url}
    sign: {{ scheme: none }}
    retry: {{ schedule: [100ms], jitter: 0 }}
routes:
  - name: routed
    source: app
    when:
      - header: X-Kind
        equals: routed
    to: [sink]
"#,
        url = sink.url("/routed")
    ))
    .await;

    let unrouted = gw.post("/hooks/app", &[("x-kind", "other"), ("x-case", "unrouted")], BODY).await.accepted_id();
    let unrouted_no_header = gw.post("/hooks/app", &[("x-case", "unrouted-no-header")], BODY).await.accepted_id();
    gw.post("/hooks/app", &[("x-kind", "routed"), ("x-case", "control")], BODY).await.accepted_id();

    // The control event was posted last; once it has arrived, nothing else is on its way.
    let got = sink.wait_for(1, WAIT).await;
    let cases: Vec<&str> = got.iter().map(|r| r.must("x-case")).collect();
    assert_eq!(cases, ["control"]);
    gw.wait_for_log("no route matched", WAIT).await;
    let logs = gw.logs();
    assert!(logs.contains(&unrouted) && logs.contains(&unrouted_no_header), "unrouted event ids are logged:\n{logs}");
}

#[tokio::test]
async fn non_json_bodies_route_on_headers_and_never_match_body_conditions() {
    let sink = Sink::start().await;
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  by-header:
    path: /hooks/by-header
    verify: {{ scheme: none }}
  by-body:
    path: /hooks/by-body
    verify: {{ scheme: none }}
destinations:
  headers:
    url: {headers_url}
    sign: {{ scheme: none }}
  bodies:
    url: {bodies_url}
    sign: {{ scheme: none }}
routes:
  - name: header-rule
    source: by-header
    when:
      - header: X-Kind
        equals: ping
    to: [headers]
  - name: body-rule
    source: by-body
    when:
      - path: $.kind
        equals: ping
    to: [bodies]
"#,
        headers_url = sink.url("/headers"),
        bodies_url = sink.url("/bodies"),
    ))
    .await;

    let text = "kind=ping, and certainly { not JSON";
    gw.post("/hooks/by-header", &[("content-type", "text/plain; charset=utf-8"), ("x-kind", "ping")], text)
        .await
        .accepted_id();
    // `{"kind":"ping"}` in a form-encoded or truncated body is still not JSON.
    gw.post("/hooks/by-body", &[("content-type", "text/plain"), ("x-case", "text")], text).await.accepted_id();
    gw.post("/hooks/by-body", &[("content-type", "application/json"), ("x-case", "truncated")], r#"{"kind":"ping""#)
        .await
        .accepted_id();
    gw.post("/hooks/by-body", &[("content-type", "application/json"), ("x-case", "control")], r#"{"kind":"ping"}"#)
        .await
        .accepted_id();

    let got = sink
        .wait_until(WAIT, "/headers and /bodies", |r| {
            r.iter().any(|r| r.path == "/headers") && r.iter().any(|r| r.path == "/bodies")
        })
        .await;
    assert_eq!(got.len(), 2, "{got:?}");
    let header_routed = got.iter().find(|r| r.path == "/headers").unwrap();
    assert_eq!(header_routed.body, text.as_bytes(), "the body is forwarded byte for byte");
    assert_eq!(header_routed.must("content-type"), "text/plain; charset=utf-8", "the content type is kept");
    let body_routed = got.iter().find(|r| r.path == "/bodies").unwrap();
    assert_eq!(body_routed.must("x-case"), "control");
}

// --- Limits on the sender's side --------------------------------------------------------------

#[tokio::test]
async fn full_delivery_queue_is_503_with_retry_after() {
    // The first delivery is held by a slow destination, so one more would exceed max_pending.
    let sink = Sink::with_script(vec![Reply::ok().delayed(std::time::Duration::from_secs(2))]).await;
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
delivery: {{ max_pending: 2 }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: none }}
destinations:
  one:
    url: {one}
    sign: {{ scheme: none }}
  two:
    url: {two}
    sign: {{ scheme: none }}
routes:
  - name: to-one
    source: app
    when: [{{ header: X-To, contains: one }}]
    to: [one]
  - name: to-two
    source: app
    when: [{{ header: X-To, contains: two }}]
    to: [two]
"#,
        one = sink.url("/one"),
        two = sink.url("/two"),
    ))
    .await;
    gw.post("/hooks/app", &[("x-to", "one")], BODY).await.accepted_id();
    sink.wait_for(1, WAIT).await; // now pending, held by the sink

    // Two more deliveries would make three: refused as a whole, nothing queued.
    let a = gw.post("/hooks/app", &[("x-to", "one,two")], BODY).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("5"));
    assert!(a.json()["error"].is_string(), "{}", a.text());
    // One more fits; an unrouted event queues nothing and is always accepted.
    gw.post("/hooks/app", &[("x-to", "two")], BODY).await.accepted_id();
    gw.post("/hooks/app", &[("x-to", "nobody")], BODY).await.accepted_id();
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.iter().filter(|r| r.path == "/two").count(), 1, "the refused event left nothing behind: {got:?}");
}

#[tokio::test]
async fn slow_body_gets_408() {
    let gw = App::start_yaml(
        r#"
server: { listen: "127.0.0.1:0", request_timeout: 300ms }
sources:
  open:
    path: /hooks/open
    verify: { scheme: none }
"#,
    )
    .await;
    let started = std::time::Instant::now();
    // Ten bytes promised, four sent, and then nothing.
    let r = gw.raw("POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n", b"{\"a\"").await;
    assert_eq!(r.status, 408, "{r:?}");
    assert_eq!(r.body, r#"{"error":"request timeout"}"#);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(290),
        "answered before the timeout: {:?}",
        started.elapsed()
    );
}

// --- Idempotency ------------------------------------------------------------------------------

#[tokio::test]
async fn a_repeated_sender_event_id_is_acknowledged_once_and_delivered_once() {
    let sink = Sink::start().await;
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  github:
    path: /hooks/github
    verify: {{ scheme: none }}
    dedupe: {{ header: X-GitHub-Delivery }}
  stripe:
    path: /hooks/stripe
    verify: {{ scheme: none }}
    dedupe: {{ path: $.id }}
destinations:
  out:
    url: {url}
    sign: {{ scheme: none }}
routes:
  - {{ name: github, source: github, to: [out] }}
  - {{ name: stripe, source: stripe, to: [out] }}
"#,
        url = sink.url("/out")
    ))
    .await;
    let first = gw.post("/hooks/github", &[("x-github-delivery", "d-1"), ("x-case", "d-1")], BODY).await.accepted_id();
    let again = gw.post("/hooks/github", &[("x-github-delivery", "d-1"), ("x-case", "d-1 again")], BODY).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json(), json!({"id": first, "duplicate": true}), "a repeat is acknowledged with the original id");
    let other = gw.post("/hooks/github", &[("x-github-delivery", "d-2"), ("x-case", "d-2")], BODY).await.accepted_id();
    assert_ne!(other, first);
    // No id, no deduplication.
    let a = gw.post("/hooks/github", &[("x-case", "no id 1")], BODY).await.accepted_id();
    let b = gw.post("/hooks/github", &[("x-case", "no id 2")], BODY).await.accepted_id();
    assert_ne!(a, b);
    // By body path: same $.id, different bodies otherwise.
    let s1 = gw.post("/hooks/stripe", &[("x-case", "evt_1")], r#"{"id":"evt_1","n":1}"#).await.accepted_id();
    let s2 = gw.post("/hooks/stripe", &[("x-case", "evt_1 again")], r#"{"id":"evt_1","n":2}"#).await;
    assert_eq!(s2.json(), json!({"id": s1, "duplicate": true}));
    // The same id at another source is another event.
    let g = gw
        .post("/hooks/github", &[("x-github-delivery", "evt_1"), ("x-case", "evt_1 at github")], BODY)
        .await
        .accepted_id();
    assert_ne!(g, s1);
    gw.post("/hooks/github", &[("x-case", "control")], BODY).await.accepted_id();

    let got =
        sink.wait_until(WAIT, "the control event", |r| r.iter().any(|r| r.header("x-case") == Some("control"))).await;
    let mut cases: Vec<&str> = got.iter().map(|r| r.must("x-case")).collect();
    cases.sort();
    assert_eq!(cases, ["control", "d-1", "d-2", "evt_1", "evt_1 at github", "no id 1", "no id 2"]);
}

// --- Header size ------------------------------------------------------------------------------

/// A request to `/hooks/open` whose head (request line, header lines and the blank line) is
/// exactly `head_bytes` long, padded with one `X-Pad` header, with a 2-byte body.
fn request_with_head_of(head_bytes: usize) -> Vec<u8> {
    let start = "POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\nX-Pad: ";
    let end = "\r\n\r\n";
    let pad = head_bytes.checked_sub(start.len() + end.len()).expect("a head at least this long");
    let mut r = format!("{start}{}{end}", "p".repeat(pad)).into_bytes();
    assert_eq!(r.len(), head_bytes);
    r.extend_from_slice(b"{}");
    r
}

/// Sends `request` on a new connection while reading the answer, as a sender that reads while
/// it writes does (the gateway may answer before it has read everything), and returns the
/// status line and whatever else arrived before the gateway closed the connection.
async fn status_line_of(gw: &App, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    // a write that fails because the gateway already answered and closed is not the point
    let writer = tokio::spawn(async move { wr.write_all(&request).await.map(|_| wr) });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(WAIT, async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no status line within {WAIT:?}; got {:?}", String::from_utf8_lossy(&got));
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn headers_over_server_max_header_bytes_get_431() {
    let gw = App::start_yaml(
        r#"
server: { listen: "127.0.0.1:0", max_header_bytes: 4096 }
sources:
  open:
    path: /hooks/open
    verify: { scheme: none }
"#,
    )
    .await;
    // The limit counts the whole head as received: request line, header lines, blank line.
    assert_eq!(status_line_of(&gw, request_with_head_of(4096)).await, "HTTP/1.1 202 Accepted");
    assert_eq!(status_line_of(&gw, request_with_head_of(4097)).await, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(status_line_of(&gw, request_with_head_of(40_000)).await, "HTTP/1.1 431 Request Header Fields Too Large");
    // Many small headers count the same way.
    let mut many = "POST /hooks/open HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n".to_string();
    for i in 0..90 {
        many.push_str(&format!("X-H{i:02}: {}\r\n", "v".repeat(40)));
    }
    many.push_str("\r\n{}");
    assert!(many.len() > 4096);
    assert_eq!(status_line_of(&gw, many.into_bytes()).await, "HTTP/1.1 431 Request Header Fields Too Large");
    gw.post("/hooks/open", &[], BODY).await.accepted_id();
}

#[tokio::test]
async fn the_default_header_limit_is_64_kib() {
    let gw = open_gateway(64 * 1024).await;
    assert_eq!(status_line_of(&gw, request_with_head_of(64 * 1024)).await, "HTTP/1.1 202 Accepted");
    assert_eq!(
        status_line_of(&gw, request_with_head_of(64 * 1024 + 1)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // What was accepted and stored with the event before the limit existed.
    assert_eq!(
        status_line_of(&gw, request_with_head_of(384 * 1024)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

// --- An unwritable store ----------------------------------------------------------------------

/// A gateway with an unsigned source `app` routed to `out` at `url`, its store at `store.db` in
/// the config's directory, committing with `storage` settings `storage_extra`.
async fn stored_gateway(url: &str, storage_extra: &str) -> App {
    App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
storage: {{ path: store.db{storage_extra} }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: none }}
destinations:
  out:
    url: {url}
    sign: {{ scheme: none }}
routes:
  - {{ name: all, source: app, to: [out] }}
"#
    ))
    .await
}

/// A second connection to the gateway's database, as a foreign process (or an operator's
/// `sqlite3` shell) would open it.
fn foreign_connection(gw: &App) -> rusqlite::Connection {
    let path = gw.config_path.parent().unwrap().join("store.db");
    let c = rusqlite::Connection::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c
}

fn count(c: &rusqlite::Connection, table: &str) -> i64 {
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

/// Waits (bounded) until `n` deliveries are recorded as delivered.
async fn wait_delivered(c: &rusqlite::Connection, n: i64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done: i64 =
            c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'", [], |r| r.get(0)).unwrap();
        if done == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{done} of {n} deliveries recorded as delivered");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn assert_store_refused(a: &Answer) {
    assert_error(a, StatusCode::SERVICE_UNAVAILABLE, "could not store the event, retry later");
    assert_eq!(a.header("retry-after"), Some("5"), "{:?}", a.headers);
}

#[tokio::test]
async fn a_foreign_write_lock_is_503_with_retry_after_within_the_commit_timeout() {
    let sink = Sink::start().await;
    let gw = stored_gateway(&sink.url("/out"), ", commit_timeout: 1s").await;
    gw.post("/hooks/app", &[("x-case", "before")], BODY).await.accepted_id();
    sink.wait_for(1, WAIT).await;
    let foreign = foreign_connection(&gw);
    wait_delivered(&foreign, 1).await; // its settle is not caught by the lock

    // Another process takes SQLite's write lock and keeps it.
    foreign.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        gw.post("/hooks/app", &[("x-case", "locked 1")], BODY),
        gw.post("/hooks/app", &[("x-case", "locked 2")], BODY),
        gw.post("/hooks/app", &[("x-case", "locked 3")], BODY),
    );
    let took = started.elapsed();
    eprintln!("write lock held elsewhere: three events answered 503 after {took:?} (commit_timeout 1s)");
    for a in [&a, &b, &c] {
        assert_store_refused(a);
    }
    // 1 s of commit_timeout, plus the time to answer; the default busy wait would be 10 s or more
    assert!(took < std::time::Duration::from_millis(2500), "503 after {took:?}");
    assert!(took >= std::time::Duration::from_millis(900), "answered before the commit timeout: {took:?}");
    gw.wait_for_log("database is locked", WAIT).await;

    // Released: accepted again, and nothing of the refused events landed late.
    foreign.execute_batch("COMMIT").unwrap();
    gw.post("/hooks/app", &[("x-case", "after")], BODY).await.accepted_id();
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.iter().map(|r| r.must("x-case")).collect::<Vec<_>>(), ["before", "after"]);
    assert_eq!(count(&foreign, "events"), 2, "a refused event was stored after its 503");
    assert_eq!(count(&foreign, "deliveries"), 2);
}

#[tokio::test]
async fn a_failed_commit_is_503_with_retry_after_and_stores_nothing() {
    let sink = Sink::start().await;
    let gw = stored_gateway(&sink.url("/out"), "").await;
    gw.post("/hooks/app", &[("x-case", "before")], BODY).await.accepted_id();
    sink.wait_for(1, WAIT).await;

    // A real SQLite failure, after the event's row is written and before its delivery's is: the
    // event must be undone with its delivery.
    let foreign = foreign_connection(&gw);
    foreign
        .execute_batch(
            "CREATE TRIGGER fault BEFORE INSERT ON deliveries BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .unwrap();
    let a = gw.post("/hooks/app", &[("x-case", "refused")], BODY).await;
    assert_store_refused(&a);
    gw.wait_for_log("injected fault", WAIT).await;
    assert_eq!((count(&foreign, "events"), count(&foreign, "deliveries")), (1, 1), "the refused event left a row");

    foreign.execute_batch("DROP TRIGGER fault").unwrap();
    gw.post("/hooks/app", &[("x-case", "after")], BODY).await.accepted_id();
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got.iter().map(|r| r.must("x-case")).collect::<Vec<_>>(), ["before", "after"]);
    assert_eq!((count(&foreign, "events"), count(&foreign, "deliveries")), (2, 2));
}

// --- Per-source guards ------------------------------------------------------------------------

/// A gateway on `listen` with an admin API (for metrics) and one unsigned source per
/// `(name, extra keys)`, at `/hooks/<name>`.
async fn guarded(listen: &str, server_extra: &str, sources: &[(&str, &str)]) -> (App, AdminApi) {
    let mut yaml = format!(
        "server: {{ listen: \"{listen}\", request_timeout: 5s{server_extra} }}\nadmin: {{ listen: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\nsources:\n"
    );
    for (name, extra) in sources {
        yaml.push_str(&format!("  {name}:\n    path: /hooks/{name}\n    verify: {{ scheme: none }}\n{extra}"));
    }
    let gw = App::start_yaml(&yaml).await;
    let admin = gw.admin();
    (gw, admin)
}

fn assert_forbidden(a: &Answer, what: &str) {
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{what}: body {:?}", a.text());
    assert_eq!(a.json(), json!({ "error": "client address not allowed" }), "{what}");
    assert_eq!(a.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn allow_ips_refuses_other_addresses_with_403_before_reading_the_body() {
    let (gw, admin) = guarded(
        "127.0.0.1:0",
        "",
        &[
            ("open", ""),
            ("local", "    allow_ips: [127.0.0.1/32]\n"),
            ("partner", "    allow_ips: [192.0.2.0/24, \"2001:db8::/32\"]\n"),
        ],
    )
    .await;
    gw.post("/hooks/open", &[], BODY).await.accepted_id();
    gw.post("/hooks/local", &[], BODY).await.accepted_id();
    assert_forbidden(&gw.post("/hooks/partner", &[], BODY).await, "127.0.0.1 is not in the partner's list");

    // Refused from the head alone: a body that never comes is not waited for (that would be 408
    // after request_timeout), and the connection is closed.
    let started = std::time::Instant::now();
    let r = gw.raw("POST /hooks/partner HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n", b"").await;
    assert_eq!((r.status, r.body.as_str()), (403, r#"{"error":"client address not allowed"}"#), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "waited for the body: {:?}", started.elapsed());

    let m = admin.metrics().await;
    assert_eq!(m.get("hookyard_ingress_refused_total", &[("source", "partner"), ("reason", "allow_ips")]), 2.0);
    assert_eq!(m.get("hookyard_events_received_total", &[("source", "partner"), ("status", "403")]), 2.0);
    assert!(!m.has("hookyard_ingress_refused_total", &[("source", "local"), ("reason", "allow_ips")]), "{m:#?}");
    let lines = gw.log_lines_with(&["client address not in allow_ips", "source=partner", "client=127.0.0.1"]);
    assert_eq!(lines.len(), 2, "{}", gw.logs());
}

#[tokio::test]
async fn allow_ips_over_ipv6() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine cannot bind ::1");
        return;
    }
    let (gw, _admin) = guarded(
        "[::1]:0",
        "",
        &[("v6", "    allow_ips: [\"::1/128\"]\n"), ("v4", "    allow_ips: [127.0.0.0/8, \"2001:db8::1\"]\n")],
    )
    .await;
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    gw.post("/hooks/v6", &[], BODY).await.accepted_id();
    assert_forbidden(&gw.post("/hooks/v4", &[], BODY).await, "::1 is not 127.0.0.0/8");
}

#[tokio::test]
async fn x_forwarded_for_decides_only_for_requests_from_a_trusted_proxy() {
    let sources = [("partner", "    allow_ips: [203.0.113.0/24]\n"), ("local", "    allow_ips: [127.0.0.1]\n")];
    // The test connects from 127.0.0.1, which is the trusted proxy here.
    let (gw, _admin) = guarded("127.0.0.1:0", ", trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]", &sources).await;
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    gw.post("/hooks/partner", &xff("203.0.113.9"), BODY).await.accepted_id();
    // trusted hops on the right are skipped; what the client wrote on the left is not believed
    gw.post("/hooks/partner", &xff("198.51.100.1, 203.0.113.9, 10.1.2.3"), BODY).await.accepted_id();
    assert_forbidden(&gw.post("/hooks/partner", &xff("203.0.113.9, 198.51.100.1"), BODY).await, "right-most");
    assert_forbidden(&gw.post("/hooks/partner", &[], BODY).await, "no header: the proxy itself");
    assert_forbidden(&gw.post("/hooks/local", &xff("198.51.100.1"), BODY).await, "the forwarded address decides");
    gw.post("/hooks/local", &[], BODY).await.accepted_id();
    assert_eq!(
        gw.log_lines_with(&["client address not in allow_ips", "client=198.51.100.1", "peer=127.0.0.1"]).len(),
        2
    );

    // Without trusted proxies the same requests are judged by the socket.
    let (gw, _admin) = guarded("127.0.0.1:0", "", &sources).await;
    assert_forbidden(&gw.post("/hooks/partner", &xff("203.0.113.9"), BODY).await, "X-Forwarded-For ignored");
    gw.post("/hooks/local", &xff("198.51.100.1"), BODY).await.accepted_id();
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_recovers_after_it() {
    // a token every 2 s, 2 at once: the third request within 2 s is refused
    let (gw, admin) =
        guarded("127.0.0.1:0", "", &[("limited", "    rate_limit: { per_second: 0.5, burst: 2 }\n"), ("other", "")])
            .await;
    gw.post("/hooks/limited", &[], BODY).await.accepted_id();
    gw.post("/hooks/limited", &[], BODY).await.accepted_id();
    let a = gw.post("/hooks/limited", &[], BODY).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert_eq!(a.json(), json!({ "error": "rate limit exceeded" }));
    let retry_after: u64 = a.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    // refused from the head alone, like the allow-list
    let r = gw.raw("POST /hooks/limited HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n", b"").await;
    assert_eq!((r.status, r.body.as_str()), (429, r#"{"error":"rate limit exceeded"}"#), "{r:?}");
    // other sources have their own limits (here none)
    for _ in 0..5 {
        gw.post("/hooks/other", &[], BODY).await.accepted_id();
    }

    // waiting what Retry-After said is enough
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    gw.post("/hooks/limited", &[], BODY).await.accepted_id();

    let m = admin.metrics().await;
    assert_eq!(m.get("hookyard_ingress_refused_total", &[("source", "limited"), ("reason", "rate_limit")]), 2.0);
    assert_eq!(m.get("hookyard_events_received_total", &[("source", "limited"), ("status", "429")]), 2.0);
    assert_eq!(m.get("hookyard_events_received_total", &[("source", "limited"), ("status", "202")]), 3.0);
    // one warning per run of refusals, not one per request
    assert_eq!(gw.log_lines_with(&["source rate limit reached", "source=limited"]).len(), 1, "{}", gw.logs());
}
