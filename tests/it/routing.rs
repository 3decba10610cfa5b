//! Routing end to end: every condition operator and combinator, through the real config loader,
//! ingress and delivery. One route per case, each to its own sink path, so the set of paths an
//! event reaches is exactly the set of routes it matched.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::*;

/// Request headers as `(name, value)` pairs.
type Headers = &'static [(&'static str, &'static str)];

/// The events posted, by name (sent as `X-Case`, which is forwarded to destinations).
/// `(name, headers, content type, body)`.
const EVENTS: &[(&str, Headers, &str, &str)] = &[
    (
        "opened",
        &[("X-Kind", "push"), ("X-Priority", "7")],
        "application/json",
        r#"{"action":"opened","count":5,"price":"150.00","tags":["urgent","bug"],"title":"fix the build",
            "user":{"login":"octocat"},"draft":false,"labels":[{"name":"wip"},{"name":"ship-it"}]}"#,
    ),
    (
        "closed",
        &[("X-Kind", "pull"), ("X-Priority", "2")],
        "application/json",
        r#"{"action":"closed","count":10,"price":"9.99","tags":["chore"],"title":"docs only",
            "user":{"login":"dependabot[bot]"},"draft":null,"labels":[]}"#,
    ),
    ("text", &[("X-Kind", "push")], "text/plain", "action=opened&count=5 (not JSON)"),
    ("empty", &[], "application/json", "{}"),
    (
        // Type traps: a float count, a numeric price, a string `tags`, an array `title`.
        "float",
        &[("X-Kind", "other"), ("X-Priority", "2.5")],
        "application/json",
        r#"{"action":"reopened","count":5.0,"price":150,"tags":"urgent, later","title":["build"],"user":{}}"#,
    ),
];

/// `(route name, when: in YAML flow style, events it must match)`.
const CASES: &[(&str, &str, &[&str])] = &[
    ("equals-string", r#"[{path: $.action, equals: opened}]"#, &["opened"]),
    ("equals-header-any-case", r#"[{header: x-kind, equals: push}]"#, &["opened", "text"]),
    ("equals-number-by-value", r#"[{path: $.count, equals: 5}]"#, &["opened", "float"]),
    ("equals-null", r#"[{path: $.draft, equals: null}]"#, &["closed"]),
    ("equals-no-coercion", r#"[{path: $.price, equals: 150}]"#, &["float"]),
    ("not-equals", r#"[{path: $.action, not_equals: opened}]"#, &["closed", "float"]),
    ("in", r#"[{path: $.action, in: [opened, reopened]}]"#, &["opened", "float"]),
    ("in-header", r#"[{header: X-Kind, in: [pull, other]}]"#, &["closed", "float"]),
    ("gt", r#"[{path: $.count, gt: 5}]"#, &["closed"]),
    ("gte", r#"[{path: $.count, gte: 5}]"#, &["opened", "closed", "float"]),
    ("lt", r#"[{path: $.count, lt: 10}]"#, &["opened", "float"]),
    ("lte", r#"[{path: $.count, lte: 10}]"#, &["opened", "closed", "float"]),
    ("gt-header", r#"[{header: X-Priority, gt: 2}]"#, &["opened", "float"]),
    ("lte-header", r#"[{header: X-Priority, lte: 2}]"#, &["closed"]),
    ("gt-string-not-converted", r#"[{path: $.price, gt: 100}]"#, &["float"]),
    ("matches", r#"[{path: $.price, matches: "^[0-9]{3,}\\."}]"#, &["opened"]),
    ("matches-header", r#"[{header: X-Kind, matches: "^pu"}]"#, &["opened", "closed", "text"]),
    ("exists-true", r#"[{path: $.user.login, exists: true}]"#, &["opened", "closed"]),
    ("exists-true-null-and-false", r#"[{path: $.draft, exists: true}]"#, &["opened", "closed"]),
    ("exists-false", r#"[{path: $.draft, exists: false}]"#, &["text", "empty", "float"]),
    ("exists-false-header", r#"[{header: X-Kind, exists: false}]"#, &["empty"]),
    ("contains-string", r#"[{path: $.title, contains: "the bui"}]"#, &["opened"]),
    ("contains-array", r#"[{path: $.tags, contains: bug}]"#, &["opened"]),
    ("contains-array-or-string", r#"[{path: $.tags, contains: urgent}]"#, &["opened", "float"]),
    ("contains-header", r#"[{header: X-Kind, contains: ul}]"#, &["closed"]),
    ("wildcard-path", r#"[{path: "$.labels[*].name", equals: ship-it}]"#, &["opened"]),
    (
        "any",
        r#"[{any: [{path: $.action, equals: closed}, {header: X-Kind, equals: push}]}]"#,
        &["opened", "closed", "text"],
    ),
    ("all", r#"[{all: [{header: X-Kind, equals: push}, {path: $.count, lt: 6}]}]"#, &["opened"]),
    ("not", r#"[{not: {path: $.user.login, matches: "\\[bot\\]$"}}]"#, &["opened", "text", "empty", "float"]),
    (
        "nested",
        r#"[{any: [{all: [{path: $.action, equals: closed}, {not: {path: $.draft, exists: false}}]}, {header: X-Priority, gte: 7}]}]"#,
        &["opened", "closed"],
    ),
    ("list-is-all", r#"[{header: X-Kind, equals: pull}, {path: $.count, gte: 10}]"#, &["closed"]),
    ("no-conditions", r#"[]"#, &["opened", "closed", "text", "empty", "float"]),
];

fn config(sink: &Sink) -> Config {
    let mut config = Config::new().source("app", Source::open());
    for (name, when, _) in CASES {
        config = config
            .destination(name, Dest::url(&sink.url(&format!("/{name}"))))
            .route(Route::new(name).from("app").key("when", when).to([name]));
    }
    config
}

#[tokio::test]
async fn each_operator_routes_exactly_the_matching_events() {
    let sink = Sink::start().await;
    let gw = App::start(config(&sink)).await;

    let mut want: BTreeSet<(String, String)> = BTreeSet::new();
    for (route, _, events) in CASES {
        for e in *events {
            assert!(EVENTS.iter().any(|(n, ..)| n == e), "case {route} names unknown event {e}");
            want.insert((format!("/{route}"), e.to_string()));
        }
    }
    for (name, headers, content_type, body) in EVENTS {
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        h.push(("X-Case", name));
        h.push(("Content-Type", content_type));
        gw.post("/hooks/app", &h, *body).await.accepted_id();
    }
    // Usually all arrive at once; if some never do, the difference below says which.
    let _ = sink.try_wait_until(Duration::from_secs(5), |r| r.len() >= want.len()).await;
    // The control event was posted after every other; once it has been delivered, no delivery of
    // an earlier event is still on its way.
    gw.post("/hooks/app", &[("X-Case", "control")], "{}").await.accepted_id();
    let got = sink
        .wait_until(WAIT, "the control event", |r| {
            r.iter().any(|r| r.path == "/no-conditions" && r.header("x-case") == Some("control"))
        })
        .await;

    let got: Vec<(String, String)> = got
        .iter()
        .map(|r| (r.path.clone(), r.must("x-case").to_string()))
        .filter(|(_, case)| case != "control")
        .collect();
    let got_set: BTreeSet<(String, String)> = got.iter().cloned().collect();
    assert_eq!(got.len(), got_set.len(), "some event was delivered twice to one route: {got:?}");
    let missing: Vec<_> = want.difference(&got_set).collect();
    let unexpected: Vec<_> = got_set.difference(&want).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "(route, event) pairs\nmissing:    {missing:?}\nunexpected: {unexpected:?}"
    );
}

#[tokio::test]
async fn two_routes_to_one_destination_deliver_twice_with_distinct_ids() {
    let sink = Sink::start().await;
    let secret = format!("whsec_{}", b64(b"two routes, one destination"));
    let gw = App::start(
        Config::new()
            .source("app", Source::open())
            .destination("shared", Dest::url(&sink.url("/shared")).sign(&format!("{{ secret: \"{secret}\" }}")))
            .route(Route::new("by-header").from("app").when("{ header: X-Kind, equals: push }").to(["shared"]))
            .route(Route::new("by-body").from("app").when("{ path: $.ref, equals: refs/heads/main }").to(["shared"])),
    )
    .await;
    let body = r#"{"ref":"refs/heads/main"}"#;
    gw.post("/hooks/app", &[("X-Kind", "push"), ("Content-Type", "application/json")], body).await.accepted_id();
    let got = sink.wait_for(2, WAIT).await;
    // and no third: a later event to the same destination arrives alone
    gw.post("/hooks/app", &[("X-Kind", "push"), ("X-Case", "control")], "{}").await.accepted_id();
    let got_all =
        sink.wait_until(WAIT, "the control event", |r| r.iter().any(|r| r.header("x-case") == Some("control"))).await;
    assert_eq!(got_all.len(), 3, "two deliveries of the event and one of the control: {got_all:?}");

    let ids: Vec<String> = got[..2].iter().map(|r| assert_standard_webhooks(r, &secret)).collect();
    assert_ne!(ids[0], ids[1], "each (route, destination) delivery has its own webhook-id");
    for r in &got[..2] {
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(r.path, "/shared");
    }
}

#[tokio::test]
async fn event_matching_only_some_conditions_is_not_delivered() {
    let sink = Sink::start().await;
    let gw = App::start(
        Config::new().source("app", Source::open()).destination("main", Dest::url(&sink.url("/main"))).route(
            Route::new("pushes-to-main")
                .from("app")
                .when("{ header: X-GitHub-Event, equals: push }")
                .when("{ path: $.ref, equals: refs/heads/main }")
                .to(["main"]),
        ),
    )
    .await;
    let misses: &[(&str, &str, &str)] = &[
        ("wrong-branch", "push", r#"{"ref":"refs/heads/dev"}"#),
        ("wrong-event", "issues", r#"{"ref":"refs/heads/main"}"#),
        ("no-ref", "push", r#"{"after":"abc"}"#),
        ("ref-not-string", "push", r#"{"ref":["refs/heads/main"]}"#),
    ];
    for (case, event, body) in misses {
        gw.post("/hooks/app", &[("X-GitHub-Event", event), ("X-Case", case)], *body).await.accepted_id();
    }
    gw.post("/hooks/app", &[("X-GitHub-Event", "push"), ("X-Case", "control")], r#"{"ref":"refs/heads/main"}"#)
        .await
        .accepted_id();
    let got = sink.wait_for(1, WAIT).await;
    let cases: Vec<&str> = got.iter().map(|r| r.must("x-case")).collect();
    assert_eq!(cases, ["control"]);
}
