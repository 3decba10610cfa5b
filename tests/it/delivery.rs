//! Delivery: what destinations receive (body, forwarded and stripped headers, re-signing per
//! destination), and when they receive it again (retries, `Retry-After`, what is never retried),
//! and what they never receive (egress to loopback without `egress.allow`).
//!
//! Timing is measured on the sink's clock (when each attempt arrived), never by sleeping.

use std::time::Duration;

use crate::harness::*;

const GH_IN: &str = "inbound-github-secret";
const GH_OUT: &str = "outbound-github-secret";

fn secret(seed: &str) -> String {
    format!("whsec_{}", b64(format!("delivery test key {seed}").as_bytes()))
}

/// A gateway with one unsigned source `app`; each `(name, url, extra YAML)` becomes a destination
/// and a route `to-<name>` taking events whose `X-To` header names it.
async fn gateway(egress_allow: bool, destinations: &[(&str, String, &str)]) -> App {
    let mut yaml = String::from("server: { listen: \"127.0.0.1:0\" }\n");
    if egress_allow {
        yaml.push_str("egress: { allow: [127.0.0.0/8, \"::1/128\"] }\n");
    }
    yaml.push_str("sources:\n  app:\n    path: /hooks/app\n    verify: { scheme: none }\ndestinations:\n");
    for (name, url, extra) in destinations {
        yaml.push_str(&format!("  {name}:\n    url: {url}\n"));
        for line in extra.trim().lines() {
            yaml.push_str(&format!("    {}\n", line.trim()));
        }
    }
    yaml.push_str("routes:\n");
    for (name, ..) in destinations {
        yaml.push_str(&format!("  - name: to-{name}\n    source: app\n    when: [{{ header: X-To, contains: \"{name},\" }}]\n    to: [{name}]\n"));
    }
    App::start_yaml(&yaml).await
}

/// Posts an event to the destinations named (`X-To: a,b,`).
async fn send_to(gw: &App, names: &[&str], case: &str) -> String {
    let to: String = names.iter().map(|n| format!("{n},")).collect();
    gw.post(
        "/hooks/app",
        &[("X-To", &to), ("X-Case", case), ("Content-Type", "application/json")],
        format!(r#"{{"case":"{case}"}}"#),
    )
    .await
    .accepted_id()
}

#[tokio::test]
async fn verified_event_fans_out_resigned_per_destination() {
    let sink = Sink::start().await;
    let (a, b) = (secret("a"), secret("b"));
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  github:
    path: /hooks/github
    verify: {{ scheme: github, secret: {GH_IN} }}
destinations:
  plain:
    url: {plain}
    sign: {{ scheme: standard-webhooks, secret: "{a}" }}
  with-headers:
    url: {with_headers}
    headers: {{ X-Team: finance, X-Env: test }}
    sign: {{ secret: "{b}" }}
  github-style:
    url: {github_style}
    sign: {{ scheme: github, secret: {GH_OUT} }}
routes:
  - name: pushes
    source: github
    when: [{{ header: X-GitHub-Event, equals: push }}]
    to: [plain, with-headers, github-style]
"#,
        plain = sink.url("/plain"),
        with_headers = sink.url("/with-headers?team=finance"),
        github_style = sink.url("/github-style"),
    ))
    .await;

    let body = std::fs::read(manifest_dir().join("examples/github-push.json")).expect("example event");
    let inbound_signature = github_signature(GH_IN, &body);
    let sent = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-GitHub-Hook-ID", "292430182"),
        ("X-Hub-Signature-256", inbound_signature.as_str()),
        ("X-Hub-Signature", "sha1=0000000000000000000000000000000000000000"),
        ("Authorization", "Bearer sender-token"),
        ("Cookie", "session=secret"),
        ("Stripe-Signature", "t=1,v1=abc"),
        ("X-Shopify-Hmac-Sha256", "abc="),
        ("X-Slack-Signature", "v0=abc"),
        ("X-API-Key", "sender-key"),
        ("Proxy-Authorization", "Basic abc"),
        ("Webhook-Id", "msg_from_the_sender"),
        ("Webhook-Signature", "v1,forged"),
        ("User-Agent", "GitHub-Hookshot/044aadd"),
        ("X-Env", "from-the-sender"),
    ];
    gw.post("/hooks/github", &sent, body.clone()).await.accepted_id();
    let got = sink.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);

    let mut ids = Vec::new();
    for r in &got {
        assert_eq!(r.method, http::Method::POST);
        assert_eq!(r.body, body, "{}: the body is forwarded byte for byte", r.path);
        assert_eq!(r.must("content-type"), "application/json", "{}", r.path);
        assert_eq!(r.must("x-github-event"), "push", "{}", r.path);
        assert_eq!(r.must("x-github-delivery"), "72d3162e-cc78-11e3-81ab-4c9367dc0958", "{}", r.path);
        assert_eq!(r.must("x-github-hook-id"), "292430182", "{}", r.path);
        assert_eq!(r.must("user-agent"), "Hookyard/0.1.0", "{}", r.path);
        for stripped in [
            "x-hub-signature",
            "authorization",
            "cookie",
            "stripe-signature",
            "x-shopify-hmac-sha256",
            "x-slack-signature",
            "x-api-key",
            "proxy-authorization",
        ] {
            assert_eq!(
                r.header(stripped),
                None,
                "{}: {stripped} must not be forwarded; headers {:?}",
                r.path,
                header_list(&r.headers)
            );
        }
        let id = r.must("webhook-id");
        assert!(is_message_id(id), "{}: webhook-id {id:?}", r.path);
        let t: u64 = r.must("webhook-timestamp").parse().expect("webhook-timestamp in seconds");
        assert!(t.abs_diff(now_unix()) <= 60, "{}: webhook-timestamp {t}", r.path);
        ids.push(id.to_string());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each destination gets its own webhook-id");

    let by_path = |p: &str| got.iter().find(|r| r.path == p).unwrap_or_else(|| panic!("nothing at {p}"));
    let plain = by_path("/plain");
    assert_standard_webhooks(plain, &a);
    assert_eq!(plain.header("x-hub-signature-256"), None, "the sender's signature is not forwarded");
    assert_eq!(plain.header("x-team"), None, "destination headers stay with their destination");
    assert_eq!(plain.must("x-env"), "from-the-sender", "other sender headers are forwarded");

    let with_headers = by_path("/with-headers");
    assert_standard_webhooks(with_headers, &b);
    assert_eq!(with_headers.must("x-team"), "finance");
    assert_eq!(with_headers.must("x-env"), "test", "a destination header replaces the sender's (and is sent once)");
    assert_eq!(with_headers.uri, "/with-headers?team=finance", "the query string is kept");

    let github_style = by_path("/github-style");
    assert_eq!(
        github_style.must("x-hub-signature-256"),
        github_signature(GH_OUT, &body),
        "re-signed with the destination's secret"
    );
    assert_ne!(github_style.must("x-hub-signature-256"), inbound_signature);
    assert_eq!(github_style.header("webhook-signature"), None);
}

#[tokio::test]
async fn a_sources_own_credential_header_is_not_forwarded() {
    let sink = Sink::start().await;
    let gw = App::start_yaml(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  hmac:
    path: /hooks/hmac
    verify: {{ scheme: hmac, secret: hmac-secret, header: X-Acme-Signature, prefix: "sha256=" }}
  token:
    path: /hooks/token
    verify: {{ scheme: api-key, secret: tok-456, header: X-Acme-Token }}
  basic:
    path: /hooks/basic
    verify: {{ scheme: basic, secret: "alice:wonderland" }}
destinations:
  out:
    url: {url}
    sign: {{ scheme: none }}
routes:
  - {{ name: from-hmac, source: hmac, to: [out] }}
  - {{ name: from-token, source: token, to: [out] }}
  - {{ name: from-basic, source: basic, to: [out] }}
"#,
        url = sink.url("/out")
    ))
    .await;
    let sig = format!("sha256={}", hex::encode(hmac_sha256(b"hmac-secret", &[b"{}"])));
    let basic = basic_auth("alice:wonderland");
    // (path, the source's credential header, its value)
    let cases = [
        ("/hooks/hmac", "x-acme-signature", sig.as_str()),
        ("/hooks/token", "x-acme-token", "tok-456"),
        ("/hooks/basic", "authorization", basic.as_str()),
    ];
    for (i, (path, secret_header, value)) in cases.into_iter().enumerate() {
        let marker = format!("case-{i}");
        gw.post(path, &[(secret_header, value), ("X-Case", &marker)], "{}").await.accepted_id();
        let got = sink.wait_for(i + 1, WAIT).await;
        let r = got.iter().find(|r| r.header("x-case") == Some(marker.as_str())).expect("delivered");
        assert_eq!(
            r.header(secret_header),
            None,
            "{path}: {secret_header} must not be forwarded: {:?}",
            header_list(&r.headers)
        );
        assert_eq!(
            r.must("content-type"),
            "application/octet-stream",
            "{path}: a body without a type is sent as octet-stream"
        );
    }
}

/// `method: PUT` sends the same signed request with another method: the signature covers the
/// body as with `POST`, and the default stays `POST`.
#[tokio::test]
async fn a_put_destination_receives_put_with_a_valid_signature() {
    let sink = Sink::start().await;
    let (put, post) = (secret("put"), secret("post"));
    let gw = gateway(
        true,
        &[
            ("upload", sink.url("/put"), &format!("method: PUT\nsign: {{ secret: \"{put}\" }}")),
            ("plain", sink.url("/post"), &format!("sign: {{ secret: \"{post}\" }}")),
        ],
    )
    .await;
    send_to(&gw, &["upload", "plain"], "methods").await;
    let got = sink.wait_for(2, WAIT).await;
    let by_path = |p: &str| got.iter().find(|r| r.path == p).unwrap_or_else(|| panic!("nothing at {p}"));
    let r = by_path("/put");
    assert_eq!(r.method, http::Method::PUT);
    assert_eq!(&r.body[..], br#"{"case":"methods"}"#);
    assert_standard_webhooks(r, &put);
    let r = by_path("/post");
    assert_eq!(r.method, http::Method::POST, "POST is the default");
    assert_standard_webhooks(r, &post);
}

/// Only methods that carry a body as a new representation are accepted; `check` names them.
#[tokio::test]
async fn check_refuses_a_method_other_than_post_or_put() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        "destinations:\n  d:\n    url: https://example.com/\n    method: GET\n    sign: { scheme: none }\n",
    )
    .unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "{}:4:5: destinations.d.method: method \"GET\" is not allowed: use POST (the default) or PUT",
                path.display()
            )
            .as_str(),
            "1 problem found"
        ]
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_webhook_id() {
    let sink = Sink::with_script(vec![Reply::status(503), Reply::status(503), Reply::ok()]).await;
    let key = secret("retries");
    let gw = gateway(
        true,
        &[(
            "flaky",
            sink.url("/flaky"),
            &format!(
                r#"sign: {{ secret: "{key}" }}
            retry: {{ schedule: [100ms, 200ms], jitter: 0 }}"#
            ),
        )],
    )
    .await;
    send_to(&gw, &["flaky"], "retry").await;
    let got = sink.wait_for(3, WAIT).await;
    let ids: Vec<String> = got.iter().map(|r| assert_standard_webhooks(r, &key)).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "a retry carries the same webhook-id: {ids:?}");
    assert!(got.iter().all(|r| r.body == got[0].body));
    let gaps = [got[1].at - got[0].at, got[2].at - got[1].at];
    assert!(gaps[0] >= Duration::from_millis(95), "first retry after the 100ms of the schedule, got {gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(195), "second retry after 200ms, got {gaps:?}");
    gw.wait_for_log_lines(&["delivered", "attempt=3"], 1, WAIT).await;
    assert_eq!(sink.requests().len(), 3, "delivered on the third attempt, so no fourth");
}

#[tokio::test]
async fn delivery_gives_up_when_the_schedule_is_exhausted() {
    let sink = Sink::with_script(vec![Reply::status(500); 10]).await;
    let gw = gateway(
        true,
        &[("down", sink.url("/down"), "sign: { scheme: none }\nretry: { schedule: [100ms, 100ms], jitter: 0 }")],
    )
    .await;
    send_to(&gw, &["down"], "give-up").await;
    gw.wait_for_log_lines(&["exhausted", "destination=down"], 1, WAIT).await;
    assert_eq!(sink.requests().len(), 3, "one attempt and two retries");
}

#[tokio::test]
async fn retry_after_is_honoured_and_clamped() {
    // Retry-After: 1 replaces the 100ms schedule; Retry-After: 30 is clamped to max_retry_after 1s.
    // (The throttle floor after a 429 is set below 1s so that it is the Retry-After that counts.)
    let honoured = Sink::with_script(vec![Reply::status(429).retry_after(1)]).await;
    let clamped = Sink::with_script(vec![Reply::status(503).retry_after(30)]).await;
    let gw = gateway(
        true,
        &[
            (
                "honoured",
                honoured.url("/honoured"),
                "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0, max_retry_after: 5s, throttle_floor: 200ms }",
            ),
            (
                "clamped",
                clamped.url("/clamped"),
                "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0, max_retry_after: 1s }",
            ),
        ],
    )
    .await;
    send_to(&gw, &["honoured", "clamped"], "retry-after").await;
    for (name, sink) in [("honoured", &honoured), ("clamped", &clamped)] {
        let got = sink.wait_for(2, WAIT).await;
        let gap = got[1].at - got[0].at;
        assert!(gap >= Duration::from_millis(990), "{name}: second attempt {gap:?} after the first, expected >= 1s");
        assert!(gap < Duration::from_secs(4), "{name}: second attempt {gap:?} after the first, expected about 1s");
        assert_eq!(got[0].must("webhook-id"), got[1].must("webhook-id"));
    }
}

#[tokio::test]
async fn a_429_without_retry_after_waits_at_least_the_throttle_floor() {
    let sink = Sink::with_script(vec![Reply::status(429)]).await;
    let gw = gateway(
        true,
        &[(
            "busy",
            sink.url("/busy"),
            "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0, throttle_floor: 700ms }",
        )],
    )
    .await;
    send_to(&gw, &["busy"], "throttled").await;
    let got = sink.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(695) && gap < Duration::from_secs(3),
        "the 100ms schedule is raised to the 700ms floor: {gap:?}"
    );
}

#[tokio::test]
async fn timeouts_are_retried() {
    // A timeout counts as throttling too: the 100ms schedule is raised to the 300ms floor.
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_secs(3))]).await;
    let gw = gateway(
        true,
        &[(
            "slow",
            sink.url("/slow"),
            "sign: { scheme: none }\ntimeout_ms: 200\nretry: { schedule: [100ms], jitter: 0, throttle_floor: 300ms }",
        )],
    )
    .await;
    send_to(&gw, &["slow"], "timeout").await;
    let got = sink.wait_for(2, WAIT).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(495) && gap < Duration::from_secs(3),
        "timed out after 200ms, retried 300ms later: {gap:?}"
    );
    gw.wait_for_log_lines(&["delivered", "destination=slow", "attempt=2"], 1, WAIT).await;
}

#[tokio::test]
async fn connection_errors_are_retried() {
    // A port that nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gw = gateway(
        true,
        &[(
            "gone",
            format!("http://127.0.0.1:{port}/gone"),
            "sign: { scheme: none }\nretry: { schedule: [100ms, 100ms], jitter: 0 }",
        )],
    )
    .await;
    send_to(&gw, &["gone"], "refused").await;
    let retries = gw.wait_for_log_lines(&["will retry", "destination=gone"], 2, WAIT).await;
    assert_eq!(retries.len(), 2, "{retries:?}");
    gw.wait_for_log_lines(&["exhausted", "destination=gone", "attempt=3"], 1, WAIT).await;
}

#[tokio::test]
async fn only_timeouts_429_and_5xx_are_retried() {
    // (status, retried?) — each on its own sink and destination.
    let table: &[(u16, bool)] = &[
        (400, false),
        (401, false),
        (403, false),
        (404, false),
        (409, false),
        (422, false),
        (301, false),
        (408, true),
        (429, true),
        (500, true),
        (502, true),
        (504, true),
    ];
    let mut sinks = Vec::new();
    for (status, _) in table {
        sinks.push(
            Sink::with_script(vec![Reply::status(*status).header("location", "http://127.0.0.1:9/elsewhere")]).await,
        );
    }
    // The control's retry arrives 300ms after its first attempt: by then a retry of any event
    // posted before it, on a 100ms schedule, would have arrived too.
    let control = Sink::with_script(vec![Reply::status(503)]).await;
    let mut dests: Vec<(String, String)> =
        table.iter().zip(&sinks).map(|((s, _), sink)| (format!("s{s}"), sink.url(&format!("/{s}")))).collect();
    dests.push(("control".into(), control.url("/control")));
    let specs: Vec<(&str, String, &str)> = dests
        .iter()
        .map(|(n, u)| {
            let retry = if n == "control" {
                "sign: { scheme: none }\nretry: { schedule: [300ms], jitter: 0 }"
            } else {
                "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0, throttle_floor: 0ms }"
            };
            (n.as_str(), u.clone(), retry)
        })
        .collect();
    let gw = gateway(true, &specs).await;

    let names: Vec<&str> = dests.iter().map(|(n, _)| n.as_str()).filter(|n| *n != "control").collect();
    send_to(&gw, &names, "status").await;
    for sink in &sinks {
        sink.wait_for(1, WAIT).await;
    }
    send_to(&gw, &["control"], "control").await;
    control.wait_for(2, WAIT).await;
    for ((status, retried), sink) in table.iter().zip(&sinks) {
        let want = if *retried { 2 } else { 1 };
        let got = if *retried { sink.wait_for(2, WAIT).await.len() } else { sink.requests().len() };
        assert_eq!(got, want, "HTTP {status}: {got} attempt(s), want {want}");
    }
    let failed = gw.log_lines_with(&["not retryable"]);
    assert_eq!(
        failed.len(),
        table.iter().filter(|(_, r)| !r).count(),
        "one 'not retryable' line per non-retried status: {failed:#?}"
    );
    assert!(failed.iter().all(|l| l.contains("ERROR")), "logged at error level: {failed:#?}");
}

#[tokio::test]
async fn a_410_pauses_the_destination() {
    let gone = Sink::with_script(vec![Reply::status(410)]).await;
    let control = Sink::with_script(vec![Reply::status(503)]).await;
    let gw = gateway(
        true,
        &[
            ("gone", gone.url("/gone"), "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0 }"),
            ("control", control.url("/control"), "sign: { scheme: none }\nretry: { schedule: [300ms], jitter: 0 }"),
        ],
    )
    .await;
    send_to(&gw, &["gone"], "first").await;
    gone.wait_for(1, WAIT).await;
    gw.wait_for_log_lines(&["410", "destination=gone"], 1, WAIT).await;
    // Later events for a paused destination wait in the store instead of being sent.
    send_to(&gw, &["gone"], "second").await;
    send_to(&gw, &["control"], "control").await;
    control.wait_for(2, WAIT).await;
    let got = gone.requests();
    assert_eq!(got.len(), 1, "neither a retry nor the next event reaches a paused destination: {got:?}");
    assert!(gw.log_lines_with(&["not retryable"]).is_empty(), "a 410 pauses rather than fails: {}", gw.logs());
}

#[tokio::test]
async fn pending_deliveries_survive_a_restart() {
    // The first attempt fails; the gateway stops in order (what SIGTERM does, tested as a process
    // in `admin::sigterm_finishes_work_in_flight_and_loses_nothing`) before the retry is due; the
    // retry is made by the next gateway on the same store, as the same message.
    let sink = Sink::with_script(vec![Reply::status(503)]).await;
    let mut gw =
        gateway(true, &[("out", sink.url("/out"), "sign: { scheme: none }\nretry: { schedule: [500ms], jitter: 0 }")])
            .await;
    send_to(&gw, &["out"], "durable").await;
    sink.wait_for(1, WAIT).await;
    gw.stop(None).await;
    assert_eq!(sink.requests().len(), 1, "stopped before the retry was due");

    gw.restart().await;
    let got = sink.wait_for(2, WAIT).await;
    assert_eq!(got[0].must("webhook-id"), got[1].must("webhook-id"), "the same message, not a new one");
    assert_eq!(got[0].body, got[1].body);
    gw.wait_for_log_lines(&["delivered", "destination=out", "attempt=2"], 1, WAIT).await;
}

#[tokio::test]
async fn loopback_destinations_are_refused_without_egress_allow() {
    let sink = Sink::start().await;
    let port = sink.addr.port();
    let gw = gateway(
        false,
        &[
            ("literal", sink.url("/literal"), "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0 }"),
            (
                "named",
                format!("http://localhost:{port}/named"),
                "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0 }",
            ),
            (
                "v6",
                format!("http://[::1]:{port}/v6"),
                "sign: { scheme: none }\nretry: { schedule: [100ms], jitter: 0 }",
            ),
            // Cloud metadata and a private network: refused before any connection is tried (an
            // attempt would time out here and be retried).
            (
                "metadata",
                "http://169.254.169.254/latest/meta-data/".to_string(),
                "sign: { scheme: none }\ntimeout_ms: 500\nretry: { schedule: [100ms], jitter: 0 }",
            ),
            (
                "private",
                "http://10.11.12.13:8080/internal".to_string(),
                "sign: { scheme: none }\ntimeout_ms: 500\nretry: { schedule: [100ms], jitter: 0 }",
            ),
        ],
    )
    .await;
    let all = ["literal", "named", "v6", "metadata", "private"];
    send_to(&gw, &all, "ssrf").await;
    let lines = gw.wait_for_log_lines(&["egress refused"], all.len(), WAIT).await;
    assert_eq!(lines.len(), all.len(), "one refusal per destination: {lines:#?}");
    assert!(gw.log_lines_with(&["will retry"]).is_empty(), "refusals are not retried: {}", gw.logs());
    for dest in all {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("destination={dest}")))
            .unwrap_or_else(|| panic!("no refusal logged for {dest}: {lines:#?}"));
        assert!(line.contains("ERROR"), "refusals are errors: {line}");
        assert!(line.contains("not retryable"), "a refusal is final: {line}");
    }
    assert!(sink.requests().is_empty(), "nothing may reach a refused destination: {:?}", sink.requests());
}

// --- Sender headers, byte for byte ------------------------------------------------------------

/// A gateway forwarding everything from an unsigned source to one sink, and a raw POST to it with
/// `extra` header lines (so the exact bytes and repetitions of headers are under the test's control).
async fn forward_raw(extra: &str) -> Recorded {
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
  out:
    url: {url}
    sign: {{ scheme: none }}
routes:
  - {{ name: all, source: app, to: [out] }}
"#,
        url = sink.url("/out")
    ))
    .await;
    let body = "{}";
    let head = format!(
        "POST /hooks/app HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let r = gw.raw(&head, body.as_bytes()).await;
    assert_eq!(r.status, 202, "{r:?}");
    sink.wait_for(1, WAIT).await.remove(0)
}

#[tokio::test]
async fn a_header_sent_several_times_is_forwarded_with_every_value() {
    let r = forward_raw("X-Tag: first\r\nX-Tag: second\r\nX-Tag: third\r\n").await;
    let values: Vec<&str> = r.headers.get_all("x-tag").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(values, ["first", "second", "third"], "headers: {:?}", header_list(&r.headers));
}

#[tokio::test]
async fn headers_named_in_connection_are_hop_by_hop_and_not_forwarded() {
    // RFC 9110 §7.6.1: an intermediary removes the fields the Connection header names.
    let r =
        forward_raw("Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: for-the-next-hop-only\r\nX-End: kept\r\n")
            .await;
    assert_eq!(r.header("x-end"), Some("kept"));
    assert_eq!(r.header("x-hop-secret"), None, "headers: {:?}", header_list(&r.headers));
}

#[tokio::test]
async fn header_values_that_are_not_ascii_are_forwarded_unchanged() {
    // obs-text (bytes 0x80-0xFF) is legal in a field value; a gateway passes it through as is.
    let r = forward_raw("X-Title: caf\u{e9} cr\u{e8}me\r\n").await;
    let value = r.headers.get("x-title").map(|v| v.as_bytes().to_vec());
    assert_eq!(value.as_deref(), Some("caf\u{e9} cr\u{e8}me".as_bytes()), "headers: {:?}", header_list(&r.headers));
}

// --- Exactly once in the absence of failures --------------------------------------------------

/// At-least-once allows a duplicate after a crash, not in normal operation: a delivery the
/// destination acknowledged with a 2xx is never sent again. Each event fans out to many
/// destinations at once, so many deliveries are in flight together.
#[tokio::test]
async fn an_acknowledged_delivery_is_not_sent_again() {
    const DESTINATIONS: usize = 20;
    const EVENTS: usize = 5;
    let sink = Sink::start().await;
    // The control's retry comes 1.5s after its first attempt: more than a poll interval (1s) after
    // every event below was acknowledged, so a late re-send of any of them would be in by then.
    let control = Sink::with_script(vec![Reply::status(503)]).await;
    let names: Vec<String> = (0..DESTINATIONS).map(|i| format!("d{i}")).collect();
    let mut specs: Vec<(&str, String, &str)> =
        names.iter().map(|n| (n.as_str(), sink.url(&format!("/{n}")), "sign: { scheme: none }")).collect();
    specs.push((
        "control",
        control.url("/control"),
        "sign: { scheme: none }\nretry: { schedule: [1500ms], jitter: 0 }",
    ));
    let gw = gateway(true, &specs).await;

    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    for i in 0..EVENTS {
        send_to(&gw, &all, &format!("event-{i}")).await;
    }
    sink.wait_for(DESTINATIONS * EVENTS, WAIT).await;
    send_to(&gw, &["control"], "control").await;
    control.wait_for(2, WAIT).await;

    let got = sink.requests();
    let mut per_id: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for r in &got {
        per_id.entry(r.must("webhook-id").to_string()).or_default().push(format!("{} {}", r.path, r.must("x-case")));
    }
    let repeated: Vec<_> = per_id.values().filter(|v| v.len() > 1).collect();
    assert_eq!(per_id.len(), DESTINATIONS * EVENTS);
    assert!(
        repeated.is_empty(),
        "{} of {} deliveries were sent more than once: {repeated:?}",
        repeated.len(),
        DESTINATIONS * EVENTS
    );
}

/// A destination that counts requests and discards their bodies (a `Sink` keeps every body, which
/// would make the test process, not the gateway, hold the backlog): answers `503` while `failing`.
struct Switch {
    addr: std::net::SocketAddr,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    delivered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Switch {
    async fn start() -> Switch {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, d) = (failing.clone(), delivered.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (f, d) = (f.clone(), d.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (f, d) = (f.clone(), d.clone());
                        async move {
                            use http_body_util::BodyExt;
                            // read the body to the end (and drop it), as a real receiver would
                            let _ = req.into_body().collect().await;
                            let status = if f.load(Ordering::Acquire) {
                                503
                            } else {
                                d.fetch_add(1, Ordering::AcqRel);
                                200
                            };
                            let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Switch { addr, failing, delivered, task }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A failing destination's backlog lives in the store, not in memory: `HOOKYARD_BACKLOG_EVENTS`
/// (default 3,000; the issue's figure is 20,000) events of 64 KiB pile up for a destination that
/// answers 503 (its breaker off, so every delivery keeps retrying), and the gateway's RSS stays
/// within 100 MiB of what it was before them (held in memory, 3,000 bodies alone are 188 MiB).
/// When the destination recovers, all of them arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destinations_backlog_does_not_grow_memory() {
    use std::sync::atomic::Ordering;
    let n: usize = std::env::var("HOOKYARD_BACKLOG_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let dest = Switch::start().await;
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
storage: {{ sync: normal }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app: {{ path: /hooks/app, verify: {{ scheme: none }} }}
destinations:
  flaky:
    url: http://{}/in
    sign: {{ scheme: none }}
    retry: {{ schedule: [1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], jitter: 0 }}
    breaker: {{ enabled: false }}
routes:
  - {{ name: all, source: app, to: [flaky] }}
"#,
        dest.addr
    ))
    .await;
    // 64 KiB of JSON
    let body = bytes::Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(64 * 1024 - 10)));
    // warm up (pools, caches, the allocator's first arenas), then take the idle figure
    for _ in 0..50 {
        gw.post("/hooks/app", &[("Content-Type", "application/json")], body.clone()).await.accepted_id();
    }
    let idle = gw.rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let url: http::Uri = gw.url("/hooks/app").parse().unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (url, body, next) = (url.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let client = http_client();
                while next.fetch_add(1, Ordering::AcqRel) < n {
                    let req = http::Request::post(url.clone())
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(body.clone()))
                        .unwrap();
                    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                        .await
                        .expect("the gateway answers within 30 s")
                        .expect("request");
                    assert_eq!(resp.status(), 202);
                }
            })
        })
        .collect();
    let pid = gw.pid();
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    // let retries of the backlog run for a while (no breaker: every delivery retries each second)
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.abort();
    let grown_mib = (peak.load(Ordering::Acquire).saturating_sub(idle)) / 1024;
    let body_mib = (n * body.len()) / (1024 * 1024);
    eprintln!(
        "backlog of {n} x 64 KiB ({body_mib} MiB of bodies): RSS idle {} MiB, peak +{grown_mib} MiB",
        idle / 1024
    );
    assert!(
        grown_mib < 100,
        "RSS grew by {grown_mib} MiB with {body_mib} MiB of bodies pending (idle {} MiB)",
        idle / 1024
    );
    assert_eq!(dest.delivered.load(Ordering::Acquire), 0, "nothing was delivered while the destination failed");

    // the destination recovers: everything accepted arrives (the 50 warm-up events too)
    dest.failing.store(false, Ordering::Release);
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    while dest.delivered.load(Ordering::Acquire) < n + 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {} delivered after recovery",
            dest.delivered.load(Ordering::Acquire),
            n + 50
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("drained {} deliveries in {secs:.1} s ({:.0}/s)", n + 50, (n + 50) as f64 / secs);
}

/// Large JSON bodies cost about their size, not a tree of every value in them: 8 concurrent bodies
/// of 5.2 MB (an array of 155,000 small objects, the shape that costs most as a `Value`) routed on
/// `$.ref` raise the gateway's peak RSS by less than 4x the bytes in flight (it was 17.7x: the
/// whole body was parsed for a condition that reads one field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_json_bodies_cost_a_small_multiple_of_their_size() {
    use std::sync::atomic::Ordering;
    let sink = Switch::start().await;
    sink.failing.store(false, Ordering::Release);
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: "127.0.0.1:0", max_body_bytes: 8388608 }}
storage: {{ sync: normal }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app: {{ path: /hooks/app, verify: {{ scheme: none }} }}
destinations:
  out: {{ url: "http://{}/in", sign: {{ scheme: none }} }}
routes:
  - {{ name: main, source: app, when: [{{ path: $.ref, equals: refs/heads/main }}], to: [out] }}
"#,
        sink.addr
    ))
    .await;
    let items: Vec<String> = (0..155_000).map(|i| format!(r#"{{"id":{i},"ok":true,"tag":"t{}"}}"#, i % 10)).collect();
    let body = bytes::Bytes::from(format!(r#"{{"ref":"refs/heads/main","items":[{}]}}"#, items.join(",")));
    assert!(body.len() > 5_000_000, "{}", body.len());
    // one first, so pools, caches and the allocator's arenas are warm for the idle figure
    gw.post("/hooks/app", &[], body.clone()).await.accepted_id();
    let idle = gw.rss_kib();
    let pid = gw.pid();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                if let Some(kib) = proc_status_kib(pid, "VmHWM") {
                    peak.fetch_max(kib, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let url: http::Uri = gw.url("/hooks/app").parse().unwrap();
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let req = http::Request::post(url).body(http_body_util::Full::new(body)).unwrap();
                let resp = http_client().request(req).await.expect("request");
                assert_eq!(resp.status(), 202);
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.delivered.load(Ordering::Acquire) < 9 {
        assert!(std::time::Instant::now() < deadline, "{} of 9 delivered", sink.delivered.load(Ordering::Acquire));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    sampler.await.unwrap();
    let in_flight = 8 * body.len() as u64 / 1024;
    let grown = peak.load(Ordering::Acquire).saturating_sub(idle);
    let ratio = grown as f64 / in_flight as f64;
    eprintln!("8 x {} bytes in flight: peak RSS +{} MiB ({ratio:.1}x the bytes)", body.len(), grown / 1024);
    assert!(ratio < 4.0, "peak RSS grew by {} MiB, {ratio:.1}x the {} MiB in flight", grown / 1024, in_flight / 1024);
}

/// A `whsk_` key signs `v1a` (ed25519); during a rotation each attempt, retries included, also
/// carries the signature of each secret whose `until` has not passed, and a secret past its
/// `until` signs no more. Checked with ed25519-dalek and the harness's own HMAC, not our signer.
#[tokio::test]
async fn an_ed25519_key_signs_v1a_and_a_rotated_out_secret_signs_until_its_time() {
    use base64::Engine as _;
    let sink = Sink::with_script(vec![Reply::status(503), Reply::ok()]).await;
    // seed bytes 0..32 and its public key (python3 cryptography)
    let whsk = "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let public =
        base64::engine::general_purpose::STANDARD.decode("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=").unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
    let (old, expired) = (secret("rotating out"), secret("long gone"));
    let gw = gateway(
        true,
        &[(
            "rotating",
            sink.url("/rotating"),
            &format!(
                r#"sign: {{ secret: "{whsk}", previous: [{{ secret: "{old}", until: "2099-01-01T00:00:00Z" }}, {{ secret: "{expired}", until: "2000-01-01T00:00:00Z" }}] }}
            retry: {{ schedule: [100ms], jitter: 0 }}"#
            ),
        )],
    )
    .await;
    send_to(&gw, &["rotating"], "rotation").await;
    let got = sink.wait_for(2, WAIT).await;
    for r in &got {
        let (id, t) = (r.must("webhook-id"), r.must("webhook-timestamp"));
        let entries: Vec<&str> = r.must("webhook-signature").split(' ').collect();
        assert_eq!(entries.len(), 2, "the new key and the one still in its overlap: {entries:?}");
        let v1a = entries[0].strip_prefix("v1a,").expect("the current key first");
        let sig = base64::engine::general_purpose::STANDARD.decode(v1a).unwrap();
        let signed = [id.as_bytes(), b".", t.as_bytes(), b".", &r.body].concat();
        public.verify_strict(&signed, &ed25519_dalek::Signature::from_slice(&sig).unwrap()).expect("v1a verifies");
        assert_eq!(entries[1], standard_webhooks_signature(&old, id, t, &r.body));
    }
    assert_eq!(got[0].must("webhook-id"), got[1].must("webhook-id"), "the retry is the same message");
}

/// `until` must be an RFC 3339 time; rotation is for standard-webhooks only.
#[tokio::test]
async fn check_refuses_a_bad_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            r#"sources:
  app: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  a: {{ url: "https://a.example.com/", sign: {{ secret: "{s}", previous: [{{ secret: "{s}", until: "next tuesday" }}] }} }}
  b: {{ url: "https://b.example.com/", sign: {{ scheme: github, secret: x, previous: [{{ secret: y, until: "2030-01-01T00:00:00Z" }}] }} }}
routes:
  - {{ name: r, source: app, to: [a, b] }}
"#,
            s = secret("check")
        ),
    )
    .unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&config);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().map(|l| l.split_once(": ").map_or(l, |(_, rest)| rest)).collect();
    assert!(
        lines.contains(&"destinations.a.sign.previous[0].until: \"next tuesday\" is not an RFC 3339 time such as 2026-12-01T00:00:00Z"),
        "{}",
        out.stderr
    );
    assert!(
        lines.contains(&"destinations.b.sign.previous[0].secret: only standard-webhooks signs with several keys at once (its header carries several signatures); github carries one"),
        "{}",
        out.stderr
    );
}
