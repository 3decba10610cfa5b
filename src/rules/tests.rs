use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::*;

/// Builds conditions the way the config loader does: from a YAML-shaped JSON value.
fn conditions(when: Value) -> Vec<ConditionConfig> {
    serde_json::from_value(when).unwrap_or_else(|e| panic!("bad test input: {e}"))
}

fn rule(when: Value) -> Rule {
    compile(&conditions(when)).unwrap_or_else(|errors| panic!("does not compile: {errors:?}"))
}

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_bytes(value).unwrap());
    }
    map
}

fn fixture_headers() -> HeaderMap {
    headers(&[
        ("X-GitHub-Event", b"push"),
        ("X-Count", b"5"),
        ("X-Ratio", b"2.5"),
        ("X-Flag", b"true"),
        ("X-Multi", b"alpha"),
        ("X-Multi", b"beta"),
        ("X-Word", b"infinite loop"),
        ("X-Inf", b"inf"),
        ("X-Cafe", "café au lait".as_bytes()),
        ("X-Binary", b"\xff\xfe"),
        ("X-Empty", b""),
    ])
}

fn fixture_body() -> Value {
    json!({
        "ref": "refs/heads/main",
        "action": "opened",
        "count": 5,
        "ratio": 2.5,
        "whole": 3.0,
        "string_number": "150",
        "flag": true,
        "nothing": null,
        "repository": { "full_name": "acme/widgets" },
        "sender": { "type": "User" },
        "labels": [ { "name": "urgent" }, { "name": "bug" } ],
        "tags": [ "alpha", "beta", 3, null, { "k": 1 }, [1, 2] ],
        "empty": [],
        "pull_request": { "additions": 150, "merged": true, "title": "Fix the thing" },
        "commits": [ { "id": "c1", "added": 1 }, { "id": "c2", "added": 40 } ],
        "nested": { "point": { "x": 1, "y": 2.0 } }
    })
}

/// Evaluates each `(condition, expected)` against the fixture event, with and without a body.
fn check(cases: &[(Value, bool)]) {
    let headers = fixture_headers();
    let body = fixture_body();
    let mut failures = Vec::new();
    for (condition, expected) in cases {
        let rule = rule(json!([condition]));
        let event = EventView { headers: &headers, body: Some(&body), event_type: None };
        if rule.matches(&event) != *expected {
            failures.push(format!("{condition} should be {expected}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn header_operators() {
    check(&[
        // equals: case-insensitive name, exact value, scalar text
        (json!({"header": "X-GitHub-Event", "equals": "push"}), true),
        (json!({"header": "x-github-event", "equals": "push"}), true),
        (json!({"header": "X-GITHUB-EVENT", "equals": "push"}), true),
        (json!({"header": "X-GitHub-Event", "equals": "Push"}), false),
        (json!({"header": "X-GitHub-Event", "equals": "pus"}), false),
        (json!({"header": "X-Count", "equals": 5}), true),
        (json!({"header": "X-Count", "equals": "5"}), true),
        (json!({"header": "X-Count", "equals": 5.0}), false),
        (json!({"header": "X-Ratio", "equals": 2.5}), true),
        (json!({"header": "X-Flag", "equals": true}), true),
        (json!({"header": "X-Flag", "equals": false}), false),
        (json!({"header": "X-Empty", "equals": ""}), true),
        (json!({"header": "X-Cafe", "equals": "café au lait"}), true),
        // not_equals
        (json!({"header": "X-GitHub-Event", "not_equals": "pull_request"}), true),
        (json!({"header": "X-GitHub-Event", "not_equals": "push"}), false),
        (json!({"header": "X-Count", "not_equals": 5}), false),
        // in
        (json!({"header": "X-GitHub-Event", "in": ["push", "release"]}), true),
        (json!({"header": "X-GitHub-Event", "in": ["ping", "release"]}), false),
        (json!({"header": "X-Count", "in": [4, 5]}), true),
        (json!({"header": "X-Flag", "in": [false, true]}), true),
        // numeric comparisons parse the header
        (json!({"header": "X-Count", "gt": 4}), true),
        (json!({"header": "X-Count", "gt": 5}), false),
        (json!({"header": "X-Count", "gte": 5}), true),
        (json!({"header": "X-Count", "gte": 5.5}), false),
        (json!({"header": "X-Count", "lt": 6}), true),
        (json!({"header": "X-Count", "lt": 5}), false),
        (json!({"header": "X-Count", "lte": 5}), true),
        (json!({"header": "X-Count", "lte": 4.99}), false),
        (json!({"header": "X-Ratio", "gt": 2}), true),
        (json!({"header": "X-Ratio", "lt": 2.4}), false),
        (json!({"header": "X-Word", "gt": 0}), false),
        (json!({"header": "X-Word", "lt": 0}), false),
        (json!({"header": "X-Inf", "gt": 0}), false),
        (json!({"header": "X-Empty", "lt": 1}), false),
        // matches: unanchored search
        (json!({"header": "X-GitHub-Event", "matches": "us"}), true),
        (json!({"header": "X-GitHub-Event", "matches": "^push$"}), true),
        (json!({"header": "X-GitHub-Event", "matches": "^us"}), false),
        (json!({"header": "X-GitHub-Event", "matches": "(?i)PUSH"}), true),
        (json!({"header": "X-Count", "matches": "^\\d+$"}), true),
        (json!({"header": "X-Cafe", "matches": "é"}), true),
        // contains: substring of the scalar text
        (json!({"header": "X-Word", "contains": "loop"}), true),
        (json!({"header": "X-Word", "contains": "Loop"}), false),
        (json!({"header": "X-Count", "contains": 5}), true),
        (json!({"header": "X-GitHub-Event", "contains": ""}), true),
        // exists
        (json!({"header": "X-GitHub-Event", "exists": true}), true),
        (json!({"header": "X-GitHub-Event", "exists": false}), false),
        (json!({"header": "X-Empty", "exists": true}), true),
        (json!({"header": "X-Missing", "exists": true}), false),
        (json!({"header": "X-Missing", "exists": false}), true),
    ]);
}

#[test]
fn repeated_headers_match_any_value() {
    check(&[
        (json!({"header": "X-Multi", "equals": "alpha"}), true),
        (json!({"header": "X-Multi", "equals": "beta"}), true),
        (json!({"header": "X-Multi", "equals": "alpha, beta"}), false),
        (json!({"header": "X-Multi", "not_equals": "alpha"}), true),
        (json!({"header": "X-Multi", "in": ["beta"]}), true),
        (json!({"header": "X-Multi", "matches": "^b"}), true),
        (json!({"header": "X-Multi", "contains": "lph"}), true),
        (json!({"not": {"header": "X-Multi", "equals": "alpha"}}), false),
    ]);
}

#[test]
fn missing_and_non_utf8_headers_match_nothing() {
    check(&[
        (json!({"header": "X-Missing", "equals": "x"}), false),
        (json!({"header": "X-Missing", "not_equals": "x"}), false),
        (json!({"header": "X-Missing", "in": ["x"]}), false),
        (json!({"header": "X-Missing", "gt": 0}), false),
        (json!({"header": "X-Missing", "lte": 0}), false),
        (json!({"header": "X-Missing", "matches": ""}), false),
        (json!({"header": "X-Missing", "contains": ""}), false),
        (json!({"not": {"header": "X-Missing", "equals": "x"}}), true),
        // not UTF-8: no operator holds, but the header is there
        (json!({"header": "X-Binary", "matches": ""}), false),
        (json!({"header": "X-Binary", "not_equals": "x"}), false),
        (json!({"header": "X-Binary", "contains": ""}), false),
        (json!({"header": "X-Binary", "exists": true}), true),
    ]);
}

#[test]
fn body_operators() {
    check(&[
        // equals: JSON equality
        (json!({"path": "$.ref", "equals": "refs/heads/main"}), true),
        (json!({"path": "$.ref", "equals": "refs/heads/dev"}), false),
        (json!({"path": "$.count", "equals": 5}), true),
        (json!({"path": "$.count", "equals": "5"}), false),
        (json!({"path": "$.string_number", "equals": 150}), false),
        (json!({"path": "$.flag", "equals": true}), true),
        (json!({"path": "$.flag", "equals": "true"}), false),
        (json!({"path": "$.nothing", "equals": null}), true),
        (json!({"path": "$.flag", "equals": null}), false),
        (json!({"path": "$.missing", "equals": null}), false),
        (json!({"path": "$.repository", "equals": {"full_name": "acme/widgets"}}), true),
        (json!({"path": "$.repository", "equals": {"full_name": "acme/other"}}), false),
        (json!({"path": "$.repository", "equals": {}}), false),
        (json!({"path": "$.nested.point", "equals": {"x": 1.0, "y": 2}}), true),
        (json!({"path": "$.labels[*].name", "equals": "bug"}), true),
        (json!({"path": "$.empty", "equals": []}), true),
        (json!({"path": "$.tags[5]", "equals": [1, 2.0]}), true),
        (json!({"path": "$.tags[5]", "equals": [2, 1]}), false),
        // not_equals
        (json!({"path": "$.sender.type", "not_equals": "Bot"}), true),
        (json!({"path": "$.sender.type", "not_equals": "User"}), false),
        (json!({"path": "$.count", "not_equals": 5.0}), false),
        (json!({"path": "$.nothing", "not_equals": null}), false),
        // in
        (json!({"path": "$.ref", "in": ["refs/heads/main", "refs/heads/release"]}), true),
        (json!({"path": "$.ref", "in": ["refs/heads/dev", "refs/heads/release"]}), false),
        (json!({"path": "$.count", "in": [1, 5.0]}), true),
        (json!({"path": "$.count", "in": ["5"]}), false),
        (json!({"path": "$.nothing", "in": [null]}), true),
        // numeric comparisons need JSON numbers
        (json!({"path": "$.pull_request.additions", "gt": 100}), true),
        (json!({"path": "$.pull_request.additions", "gt": 150}), false),
        (json!({"path": "$.pull_request.additions", "gte": 150}), true),
        (json!({"path": "$.pull_request.additions", "gte": 150.5}), false),
        (json!({"path": "$.pull_request.additions", "lt": 150.5}), true),
        (json!({"path": "$.pull_request.additions", "lt": 150}), false),
        (json!({"path": "$.pull_request.additions", "lte": 150}), true),
        (json!({"path": "$.pull_request.additions", "lte": 149}), false),
        (json!({"path": "$.ratio", "gt": 2}), true),
        (json!({"path": "$.ratio", "lt": -1}), false),
        (json!({"path": "$.string_number", "gt": 100}), false),
        (json!({"path": "$.string_number", "lt": 1000}), false),
        (json!({"path": "$.flag", "gt": 0}), false),
        (json!({"path": "$.nothing", "lt": 1}), false),
        (json!({"path": "$.labels", "gt": 0}), false),
        // matches: strings only
        (json!({"path": "$.repository.full_name", "matches": "^acme/"}), true),
        (json!({"path": "$.repository.full_name", "matches": "^widgets"}), false),
        (json!({"path": "$.repository.full_name", "matches": "widgets$"}), true),
        (json!({"path": "$.pull_request.title", "matches": "(?i)^fix\\b"}), true),
        (json!({"path": "$.count", "matches": "5"}), false),
        (json!({"path": "$.flag", "matches": "true"}), false),
        (json!({"path": "$.nothing", "matches": ""}), false),
        (json!({"path": "$.labels", "matches": ""}), false),
        // contains: substring of a string, element of an array
        (json!({"path": "$.pull_request.title", "contains": "the"}), true),
        (json!({"path": "$.pull_request.title", "contains": "The"}), false),
        (json!({"path": "$.pull_request.title", "contains": 5}), false),
        (json!({"path": "$.tags", "contains": "alpha"}), true),
        (json!({"path": "$.tags", "contains": "alp"}), false),
        (json!({"path": "$.tags", "contains": 3.0}), true),
        (json!({"path": "$.tags", "contains": 4}), false),
        (json!({"path": "$.tags", "contains": null}), true),
        (json!({"path": "$.tags", "contains": {"k": 1}}), true),
        (json!({"path": "$.tags", "contains": [1, 2]}), true),
        (json!({"path": "$.empty", "contains": null}), false),
        (json!({"path": "$.count", "contains": 5}), false),
        (json!({"path": "$.repository", "contains": "acme"}), false),
        (json!({"path": "$.labels[*].name", "contains": "urgent"}), true),
        (json!({"path": "$.labels[*].name", "contains": "urg"}), true),
        (json!({"path": "$.labels[*].name", "contains": "feature"}), false),
        // exists: null is a value
        (json!({"path": "$.ref", "exists": true}), true),
        (json!({"path": "$.ref", "exists": false}), false),
        (json!({"path": "$.nothing", "exists": true}), true),
        (json!({"path": "$.missing", "exists": true}), false),
        (json!({"path": "$.missing", "exists": false}), true),
        (json!({"path": "$.empty[*]", "exists": false}), true),
        (json!({"path": "$.empty", "exists": true}), true),
        (json!({"path": "$", "exists": true}), true),
    ]);
}

#[test]
fn numbers_compare_by_value() {
    check(&[
        (json!({"path": "$.count", "equals": 5.0}), true),
        (json!({"path": "$.whole", "equals": 3}), true),
        (json!({"path": "$.whole", "equals": 3.0}), true),
        (json!({"path": "$.whole", "equals": 3.5}), false),
        (json!({"path": "$.ratio", "equals": 2.5}), true),
        (json!({"path": "$.ratio", "equals": 2}), false),
        (json!({"path": "$.whole", "in": [3]}), true),
        (json!({"path": "$.nested.point.y", "not_equals": 2}), false),
    ]);
    use super::eval::json_eq;
    let pairs = [
        (json!(1), json!(1.0), true),
        (json!(-1), json!(-1.0), true),
        (json!(0), json!(-0.0), true),
        (json!(u64::MAX), json!(u64::MAX), true),
        (json!(u64::MAX), json!(-1), false),
        (json!(i64::MIN), json!(i64::MIN), true),
        (json!(i64::MAX), json!(i64::MAX - 1), false),
        (json!(1), json!(2), false),
        (json!(1), json!("1"), false),
        (json!(0), json!(false), false),
        (json!({"a": [1, {"b": 2.0}]}), json!({"a": [1.0, {"b": 2}]}), true),
        (json!({"a": 1}), json!({"a": 1, "b": 2}), false),
        (json!({"a": 1, "b": 2}), json!({"a": 1}), false),
        (json!([1]), json!([1, 1]), false),
    ];
    for (a, b, expected) in pairs {
        assert_eq!(json_eq(&a, &b), expected, "{a} == {b}");
        assert_eq!(json_eq(&b, &a), expected, "{b} == {a}");
    }
}

#[test]
fn multi_value_paths_match_when_any_value_does() {
    check(&[
        (json!({"path": "$.labels[*].name", "equals": "urgent"}), true),
        (json!({"path": "$.labels[*].name", "equals": "feature"}), false),
        // any value differs
        (json!({"path": "$.labels[*].name", "not_equals": "urgent"}), true),
        (json!({"not": {"path": "$.labels[*].name", "equals": "urgent"}}), false),
        (json!({"path": "$.labels[*].name", "in": ["feature", "bug"]}), true),
        (json!({"path": "$.commits[*].added", "gt": 10}), true),
        (json!({"path": "$.commits[*].added", "gt": 40}), false),
        (json!({"path": "$.commits[*].added", "lt": 2}), true),
        (json!({"path": "$.commits[*].id", "matches": "2$"}), true),
        (json!({"path": "$.commits[-1].id", "equals": "c2"}), true),
        (json!({"path": "$.commits[0].id", "equals": "c2"}), false),
        (json!({"path": "$.nested.*.x", "equals": 1}), true),
        (json!({"path": "$.nested.point.*", "equals": 2}), true),
        // evaluated by jsonpath-rust: filters, descendants, slices, unions
        (json!({"path": "$.labels[?@.name == 'bug'].name", "exists": true}), true),
        (json!({"path": "$.labels[?@.name == 'docs'].name", "exists": false}), true),
        (json!({"path": "$.commits[?@.added > 10].id", "equals": "c2"}), true),
        (json!({"path": "$.commits[?@.added > 10].id", "equals": "c1"}), false),
        (json!({"path": "$..full_name", "matches": "^acme/"}), true),
        (json!({"path": "$.commits[1:].id", "in": ["c2"]}), true),
        (json!({"path": "$.commits[:1].id", "in": ["c2"]}), false),
        (json!({"path": "$['ref','action']", "equals": "opened"}), true),
        (json!({"path": "$.labels[?match(@.name, 'ur.*')].name", "equals": "urgent"}), true),
    ]);
}

#[test]
fn missing_body_values_match_nothing() {
    check(&[
        (json!({"path": "$.missing", "equals": "x"}), false),
        (json!({"path": "$.missing", "not_equals": "x"}), false),
        (json!({"path": "$.missing", "in": ["x"]}), false),
        (json!({"path": "$.missing", "gt": 0}), false),
        (json!({"path": "$.missing", "matches": ""}), false),
        (json!({"path": "$.missing", "contains": ""}), false),
        (json!({"path": "$.empty[*]", "not_equals": "x"}), false),
        (json!({"path": "$.ref.deeper", "exists": true}), false),
        (json!({"path": "$.labels[9].name", "exists": false}), true),
        (json!({"not": {"path": "$.missing", "equals": "x"}}), true),
    ]);

    // A body that is not JSON (`None`): only `exists: false` holds.
    let headers = HeaderMap::new();
    let no_body = EventView { headers: &headers, body: None, event_type: None };
    let cases = [
        (json!({"path": "$", "exists": true}), false),
        (json!({"path": "$", "exists": false}), true),
        (json!({"path": "$.a", "equals": null}), false),
        (json!({"path": "$.a", "not_equals": 1}), false),
        (json!({"path": "$.a", "lt": 1}), false),
        (json!({"not": {"path": "$.a", "equals": 1}}), true),
    ];
    for (condition, expected) in cases {
        assert_eq!(rule(json!([condition])).matches(&no_body), expected, "{condition}");
    }

    // A body that is JSON but not an object.
    let scalar = json!("just a string");
    let event = EventView { headers: &headers, body: Some(&scalar), event_type: None };
    assert!(rule(json!([{"path": "$", "matches": "string"}])).matches(&event));
    assert!(!rule(json!([{"path": "$.a", "exists": true}])).matches(&event));
}

#[test]
fn combinators_nest() {
    check(&[
        (json!({"any": [{"path": "$.action", "equals": "opened"}, {"path": "$.action", "equals": "closed"}]}), true),
        (json!({"any": [{"path": "$.action", "equals": "edited"}, {"path": "$.action", "equals": "closed"}]}), false),
        (
            json!({"all": [{"path": "$.action", "equals": "opened"}, {"header": "X-GitHub-Event", "equals": "push"}]}),
            true,
        ),
        (
            json!({"all": [{"path": "$.action", "equals": "opened"}, {"header": "X-GitHub-Event", "equals": "ping"}]}),
            false,
        ),
        (json!({"not": {"header": "X-Debug", "exists": true}}), true),
        (json!({"not": {"header": "X-GitHub-Event", "exists": true}}), false),
        (json!({"not": {"not": {"path": "$.flag", "equals": true}}}), true),
        (
            json!({"any": [
                {"path": "$.action", "equals": "closed"},
                {"all": [
                    {"path": "$.action", "equals": "opened"},
                    {"path": "$.pull_request.merged", "equals": true},
                    {"not": {"any": [{"path": "$.sender.type", "equals": "Bot"}, {"header": "X-Debug", "exists": true}]}}
                ]}
            ]}),
            true,
        ),
        (
            json!({"any": [
                {"path": "$.action", "equals": "closed"},
                {"all": [
                    {"path": "$.action", "equals": "opened"},
                    {"not": {"any": [{"path": "$.sender.type", "equals": "User"}, {"header": "X-Debug", "exists": true}]}}
                ]}
            ]}),
            false,
        ),
    ]);
}

#[test]
fn a_when_list_is_a_conjunction() {
    let headers = fixture_headers();
    let body = fixture_body();
    let event = EventView { headers: &headers, body: Some(&body), event_type: None };
    let cases = [
        (json!([]), true),
        (json!([{"header": "X-GitHub-Event", "equals": "push"}, {"path": "$.ref", "equals": "refs/heads/main"}]), true),
        (json!([{"header": "X-GitHub-Event", "equals": "push"}, {"path": "$.ref", "equals": "refs/heads/dev"}]), false),
        (
            json!([{"header": "X-GitHub-Event", "equals": "ping"}, {"path": "$.ref", "equals": "refs/heads/main"}]),
            false,
        ),
        // the example from the design notes
        (
            json!([
                {"header": "X-GitHub-Event", "equals": "push"},
                {"path": "$.ref", "in": ["refs/heads/main", "refs/heads/release"]},
                {"path": "$.pull_request.additions", "gt": 100},
                {"path": "$.repository.full_name", "matches": "^acme/"},
                {"path": "$.sender.type", "not_equals": "Bot"},
                {"path": "$.labels[*].name", "contains": "urgent"},
                {"header": "X-Count", "exists": true},
                {"any": [
                    {"path": "$.action", "equals": "opened"},
                    {"all": [{"path": "$.action", "equals": "closed"}, {"path": "$.pull_request.merged", "equals": true}]}
                ]},
                {"not": {"header": "X-Debug", "exists": true}}
            ]),
            true,
        ),
    ];
    for (when, expected) in cases {
        assert_eq!(rule(when.clone()).matches(&event), expected, "{when}");
    }
}

#[test]
fn needs_body_when_any_condition_reads_it() {
    let cases = [
        (json!([]), false),
        (json!([{"header": "X-A", "exists": true}]), false),
        (json!([{"header": "X-A", "equals": "a"}, {"not": {"header": "X-B", "exists": true}}]), false),
        (json!([{"any": [{"header": "X-A", "exists": true}, {"all": [{"header": "X-B", "gt": 1}]}]}]), false),
        (json!([{"path": "$.a", "exists": false}]), true),
        (json!([{"header": "X-A", "exists": true}, {"path": "$.a", "equals": 1}]), true),
        (json!([{"not": {"path": "$.a", "equals": 1}}]), true),
        (
            json!([{"any": [{"header": "X-A", "exists": true}, {"all": [{"not": {"path": "$", "exists": true}}]}]}]),
            true,
        ),
    ];
    for (when, expected) in cases {
        assert_eq!(rule(when.clone()).needs_body(), expected, "{when}");
    }
}

/// Every compile error, with its exact path and message.
#[test]
fn compile_errors() {
    const NO_OPERATOR: &str = "no operator: add one of `equals`, `not_equals`, `in`, `gt`, `gte`, \
                               `lt`, `lte`, `matches`, `contains` or `exists`";
    const EMPTY: &str = "empty condition: give a subject (`header` or `path`) and one operator, \
                         or one of `any`, `all`, `not`";
    const BOTH: &str = "`header` and `path` cannot both be given: a condition tests one subject \
                        (write two conditions)";
    const NOT_TEXT: &str = "a header value is text: compare it with a string, number or boolean, not";
    let cases: Vec<(Value, Vec<(&str, String)>)> = vec![
        // subjects
        (json!([{}]), vec![("[0]", EMPTY.into())]),
        (json!([{"equals": 1}]), vec![("[0]", "missing subject: add `header` or `path`".into())]),
        (json!([{"header": "X-A", "path": "$.a", "equals": 1}]), vec![("[0].path", BOTH.into())]),
        (
            json!([{"header": "X A", "equals": "a"}]),
            vec![("[0].header", "invalid header name `X A`: a header name is a token of letters, digits and !#$%&'*+-.^_`|~".into())],
        ),
        (
            json!([{"header": "", "exists": true}]),
            vec![("[0].header", "invalid header name ``: a header name is a token of letters, digits and !#$%&'*+-.^_`|~".into())],
        ),
        (
            json!([{"path": "$.a[", "equals": 1}]),
            vec![("[0].path", "invalid JSONPath `$.a[`: at column 5: expected selector".into())],
        ),
        (
            json!([{"path": "action", "equals": "opened"}]),
            vec![("[0].path", "invalid JSONPath `action`: at column 1: expected jp_query (a JSONPath starts with `$`, as in `$.action`)".into())],
        ),
        // operators
        (json!([{"header": "X-A"}]), vec![("[0]", NO_OPERATOR.into())]),
        (json!([{"path": "$.a"}]), vec![("[0]", NO_OPERATOR.into())]),
        (
            json!([{"path": "$.a", "equals": 1, "in": [1], "gt": 0}]),
            vec![
                ("[0].in", "only one operator per condition, and `equals` is already given; put `in` in a condition of its own".into()),
                ("[0].gt", "only one operator per condition, and `equals` is already given; put `gt` in a condition of its own".into()),
            ],
        ),
        (
            json!([{"path": "$.a", "gte": 1, "lte": 9}]),
            vec![("[0].lte", "only one operator per condition, and `gte` is already given; put `lte` in a condition of its own".into())],
        ),
        (
            json!([{"header": "X-A", "exists": true, "equals": "a", "matches": "b"}]),
            vec![("[0].exists", "`exists` cannot be combined with `equals`, `matches`: every other operator already fails when the subject selects nothing".into())],
        ),
        (
            json!([{"path": "$.a", "exists": false, "not_equals": 1}]),
            vec![("[0].exists", "`exists` cannot be combined with `not_equals`: every other operator already fails when the subject selects nothing".into())],
        ),
        (json!([{"path": "$.a", "in": []}]), vec![("[0].in", "`in: []` is empty, so the condition could never hold".into())]),
        (json!([{"header": "X-A", "in": []}]), vec![("[0].in", "`in: []` is empty, so the condition could never hold".into())]),
        (
            json!([{"path": "$.a", "matches": "(unclosed"}]),
            vec![("[0].matches", "invalid regex `(unclosed`: unclosed group".into())],
        ),
        (
            json!([{"header": "X-A", "matches": "a{2,1}"}]),
            vec![("[0].matches", "invalid regex `a{2,1}`: invalid repetition count range, the start must be <= the end".into())],
        ),
        // header values must be scalars
        (json!([{"header": "X-A", "equals": null}]), vec![("[0].equals", format!("{NOT_TEXT} null"))]),
        (json!([{"header": "X-A", "not_equals": [1]}]), vec![("[0].not_equals", format!("{NOT_TEXT} a list"))]),
        (json!([{"header": "X-A", "contains": {"a": 1}}]), vec![("[0].contains", format!("{NOT_TEXT} a map"))]),
        (
            json!([{"header": "X-A", "in": ["a", null, [2]]}]),
            vec![("[0].in[1]", format!("{NOT_TEXT} null")), ("[0].in[2]", format!("{NOT_TEXT} a list"))],
        ),
        // combinators
        (json!([{"any": []}]), vec![("[0].any", "`any: []` is empty, so it never holds; give at least one condition".into())]),
        (json!([{"all": []}]), vec![("[0].all", "`all: []` is empty, so it always holds; give at least one condition".into())]),
        (
            json!([{"any": [{"path": "$.a", "exists": true}], "header": "X-A", "equals": "a"}]),
            vec![
                ("[0].header", "`header` cannot be combined with `any` in one condition; give it its own item in the list".into()),
                ("[0].equals", "`equals` cannot be combined with `any` in one condition; give it its own item in the list".into()),
            ],
        ),
        (
            json!([{"not": {"path": "$.a", "exists": true}, "path": "$.b"}]),
            vec![("[0].path", "`path` cannot be combined with `not` in one condition; give it its own item in the list".into())],
        ),
        (
            json!([{"any": [{"path": "$.a", "exists": true}], "all": [{"path": "$.b", "exists": true}]}]),
            vec![("[0].all", "`all` cannot be combined with `any` in one condition; nest one inside the other".into())],
        ),
        // nesting: paths go through `any`, `all` and `not`
        (
            json!([
                {"header": "X-A", "equals": "a"},
                {"path": "$.a", "equals": 1},
                {"any": [{"path": "$.a", "equals": 1}, {"path": "$.b", "matches": "("}]}
            ]),
            vec![("[2].any[1].matches", "invalid regex `(`: unclosed group".into())],
        ),
        (json!([{"header": "X-A", "exists": true}, {}, {}, {"not": {"path": "$.a", "in": []}}]), vec![
            ("[1]", EMPTY.into()),
            ("[2]", EMPTY.into()),
            ("[3].not.in", "`in: []` is empty, so the condition could never hold".into()),
        ]),
        (
            json!([{"all": [{"path": "$.a", "exists": true}, {"not": {"any": [{"header": "X-A", "path": "$.a", "exists": true}]}}]}]),
            vec![("[0].all[1].not.any[0].path", BOTH.into())],
        ),
        // every error is reported, in document order
        (
            json!([
                {"header": "bad name", "matches": "["},
                {"path": "$$", "in": []},
                {"any": [], "path": "$.a"},
                {"header": "X-A", "equals": null, "not_equals": [1]}
            ]),
            vec![
                ("[0].header", "invalid header name `bad name`: a header name is a token of letters, digits and !#$%&'*+-.^_`|~".into()),
                ("[0].matches", "invalid regex `[`: unclosed character class".into()),
                ("[1].path", "invalid JSONPath `$$`: at column 2: expected EOI or segment".into()),
                ("[1].in", "`in: []` is empty, so the condition could never hold".into()),
                ("[2].path", "`path` cannot be combined with `any` in one condition; give it its own item in the list".into()),
                ("[2].any", "`any: []` is empty, so it never holds; give at least one condition".into()),
                ("[3].not_equals", "only one operator per condition, and `equals` is already given; put `not_equals` in a condition of its own".into()),
                ("[3].equals", format!("{NOT_TEXT} null")),
                ("[3].not_equals", format!("{NOT_TEXT} a list")),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (when, expected) in cases {
        let expected: Vec<RuleError> =
            expected.into_iter().map(|(path, message)| RuleError { path: path.into(), message }).collect();
        match compile(&conditions(when.clone())) {
            Ok(_) => failures.push(format!("{when}: compiled, expected {expected:#?}")),
            Err(errors) if errors != expected => {
                failures.push(format!("{when}:\n got {errors:#?}\nwant {expected:#?}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn nan_bounds_are_rejected() {
    // JSON has no NaN, but the loader may deserialize `.nan` from YAML straight into `f64`.
    let condition = ConditionConfig { path: Some("$.a".into()), gte: Some(f64::NAN), ..ConditionConfig::default() };
    assert_eq!(
        compile(&[condition]).unwrap_err(),
        vec![RuleError {
            path: "[0].gte".into(),
            message: "NaN cannot be compared with anything; give a number".into(),
        }]
    );
}

#[test]
fn rule_error_displays_path_and_message() {
    let error = RuleError { path: "[0].in".into(), message: "empty".into() };
    assert_eq!(error.to_string(), "[0].in: empty");
}

#[test]
fn serde_shape() {
    // Unknown keys are rejected, at any depth.
    let rejected = [
        json!([{"header": "X-A", "equal": "a"}]),
        json!([{"path": "$.a", "exists": true, "comment": "x"}]),
        json!([{"any": [{"path": "$.a", "regex": "x"}]}]),
        json!([{"not": {"header": "X-A", "exists": true, "negate": true}}]),
        json!([{"not": [{"header": "X-A", "exists": true}]}]),
        json!([{"header": "X-A", "gt": "100"}]),
        json!([{"header": "X-A", "exists": "yes"}]),
        json!([{"header": "X-A", "in": "a"}]),
        json!([{"header": 5, "exists": true}]),
    ];
    for when in rejected {
        assert!(serde_json::from_value::<Vec<ConditionConfig>>(when.clone()).is_err(), "{when} should be rejected");
    }
    let unknown =
        serde_json::from_value::<Vec<ConditionConfig>>(json!([{"path": "$.a", "equal": 1}])).unwrap_err().to_string();
    assert!(unknown.contains("unknown field `equal`"), "{unknown}");

    // `in` is spelled `in`; `in_` is not a key.
    let parsed = conditions(json!([{"path": "$.a", "in": [1, "a", null]}]));
    assert_eq!(parsed[0].in_, Some(vec![json!(1), json!("a"), Value::Null]));
    assert!(serde_json::from_value::<ConditionConfig>(json!({"path": "$.a", "in_": [1]})).is_err());

    // `equals: null` is a comparison with null, not a missing operator.
    let parsed = conditions(json!([
        {"path": "$.a", "equals": null},
        {"path": "$.a", "not_equals": null},
        {"path": "$.a", "contains": null},
        {"path": "$.a", "exists": true}
    ]));
    assert_eq!(parsed[0].equals, Some(Value::Null));
    assert_eq!(parsed[1].not_equals, Some(Value::Null));
    assert_eq!(parsed[2].contains, Some(Value::Null));
    assert_eq!(parsed[3].equals, None);

    // Numbers for gt/gte/lt/lte may be integers or floats.
    let parsed = conditions(json!([{"path": "$.a", "gt": 100}, {"path": "$.a", "lte": 2.5}]));
    assert_eq!(parsed[0].gt, Some(100.0));
    assert_eq!(parsed[1].lte, Some(2.5));
}

#[test]
fn rule_is_send_sync_and_cheap_to_share() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Rule>();
}

/// RFC 9535 §2.4.3 (well-typedness of function expressions), checked at `check`: `length()`,
/// `match()` and `search()` take values (a literal, a singular query or a function returning a
/// value), `count()` and `value()` take queries, and a function returning a value is no test by
/// itself. Issue 12, defect 6: `length(@.*)` used to pass and match at run time.
#[test]
fn jsonpath_function_arguments_are_well_typed() {
    const VALUE: &str = "takes a value (RFC 9535 §2.4.3: a ValueType parameter): give a literal, a singular query \
                         (names and indexes only, such as `@.a[0]`) or a function that returns a value";
    const NODES: &str = "takes a query (RFC 9535 §2.4.3: a NodesType parameter), such as `@.a[*]`";
    let rejected: &[(&str, String)] = &[
        ("$.a[?length(@.*) > 1]", format!("length() {VALUE}; `@[*]` may select several nodes")),
        ("$.a[?length(@..b) == 2]", format!("length() {VALUE}; `@..b` may select several nodes")),
        ("$.a[?length($.x[*]) > 0]", format!("length() {VALUE}; `$.x[*]` may select several nodes")),
        ("$.a[?length(@.b[0:2]) > 0]", format!("length() {VALUE}; `@.b[0:2]` may select several nodes")),
        ("$.a[?match(@.*, 'x')]", format!("match() {VALUE}; `@[*]` may select several nodes")),
        ("$.a[?search(@.b, @['c','d'])]", format!("search() {VALUE}; `@['c','d']` may select several nodes")),
        ("$.a[?length(match(@.b, 'x')) > 0]", format!("length() {VALUE}; match() returns a logical value")),
        ("$.a[?count(length(@.b)) > 0]", format!("count() {NODES}; length() returns a value")),
        ("$.a[?value('x') == 'x']", format!("value() {NODES}; a literal is not one")),
        (
            "$.a[?length(@.b)]",
            "length() returns a value, which is no test by itself (RFC 9535 §2.4.3): compare it, as in `length(…) > 0`"
                .into(),
        ),
        (
            "$.a[?@.x == 1 && count(@.*)]",
            "count() returns a value, which is no test by itself (RFC 9535 §2.4.3): compare it, as in `count(…) > 0`"
                .into(),
        ),
        // inside a nested filter, too
        ("$.a[?@.b[?length(@.*) > 1]]", format!("length() {VALUE}; `@[*]` may select several nodes")),
    ];
    let mut failures = Vec::new();
    for (path, reason) in rejected {
        let want = vec![RuleError { path: "[0].path".into(), message: format!("invalid JSONPath `{path}`: {reason}") }];
        match compile(&conditions(json!([{"path": path, "exists": true}]))) {
            Ok(_) => failures.push(format!("{path}: compiled, expected {want:#?}")),
            Err(errors) if errors != want => failures.push(format!("{path}:\n got {errors:#?}\nwant {want:#?}")),
            Err(_) => {}
        }
    }
    // well-typed uses still compile
    for path in [
        "$.a[?length(@.b) > 1]",
        "$.a[?length(@['b'][0]) > 1]",
        "$.a[?length('abc') == 3]",
        "$.a[?length(value(@..b)) == 3]",
        "$.a[?count(@.*) > 1]",
        "$.a[?count(@..b[?@.c]) == 0]",
        "$.a[?value(@.*) == 1]",
        "$.a[?match(@.b, 'x.*')]",
        "$.a[?search($.ref, @.b)]",
        "$.a[?!match(@.b, 'x')]",
        "$.a[?@.b && length(@.c) > 0]",
    ] {
        if let Err(e) = compile(&conditions(json!([{"path": path, "exists": true}]))) {
            failures.push(format!("{path}: rejected: {e:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn event_type_matches_a_name_or_one_of_a_list() {
    let headers = HeaderMap::new();
    let view = |t: Option<&'static str>| EventView { headers: &headers, body: None, event_type: t };
    let push = rule(json!([{ "event_type": "push" }]));
    let either = rule(json!([{ "event_type": ["issues", "pull_request"] }]));
    let not_push = rule(json!([{ "not": { "event_type": "push" } }]));
    assert!(push.matches(&view(Some("push"))));
    assert!(!push.matches(&view(Some("pushed"))));
    assert!(!push.matches(&view(None)), "an event without a type matches no name");
    assert!(either.matches(&view(Some("pull_request"))) && !either.matches(&view(Some("push"))));
    assert!(not_push.matches(&view(None)) && !not_push.matches(&view(Some("push"))));
    assert!(push.reads_event_type() && not_push.reads_event_type());
    assert!(!push.needs_body(), "the type is found by the source, not by the rule");
    assert!(!rule(json!([{ "header": "x", "exists": true }])).reads_event_type());
}

#[test]
fn event_type_errors() {
    let errors = |when: Value| -> Vec<String> {
        compile(&conditions(when)).expect_err("does not compile").iter().map(|e| e.to_string()).collect()
    };
    assert_eq!(
        errors(json!([{ "event_type": "push", "equals": "x" }, { "event_type": [] }, { "event_type": 5 }])),
        [
            "[0].equals: `equals` cannot be combined with `event_type` in one condition; give it its own item in the list",
            "[1].event_type: expected an event type name or a non-empty list of names",
            "[2].event_type: expected an event type name or a non-empty list of names",
        ]
    );
    assert_eq!(
        errors(json!([{ "event_type": "push", "any": [{ "header": "x", "exists": true }] }])),
        ["[0].any: `any` cannot be combined with `event_type` in one condition; give it its own item in the list"]
    );
}

/// The console and `dry-run` say why a route did not match: the first condition that does not
/// hold, as written, and what the event has there.
#[test]
fn explain_names_the_first_condition_that_does_not_hold() {
    let h = headers(&[("X-Kind", b"issues"), ("X-Kind", b"fork")]);
    let body = json!({"ref": "refs/heads/dev", "n": 3, "tags": ["a"]});
    let view = EventView { headers: &h, body: Some(&body), event_type: Some("issues") };
    let explain = |when: Value| rule(when).explain(&view);
    assert_eq!(explain(json!([{"header": "X-Kind", "exists": true}, {"path": "$.n", "gt": 1}])), None);
    assert_eq!(
        explain(json!([{"path": "$.n", "gt": 1}, {"header": "X-Kind", "equals": "push"}])).as_deref(),
        Some(r#"when[1] (header: X-Kind, equals: "push"): the event has x-kind: "issues", "fork""#)
    );
    assert_eq!(
        explain(json!([{"header": "X-Missing", "in": ["a", "b"]}])).as_deref(),
        Some(r#"when[0] (header: X-Missing, in: ["a","b"]): the event has no x-missing header"#)
    );
    assert_eq!(
        explain(json!([{"path": "$.ref", "equals": "refs/heads/main"}])).as_deref(),
        Some(r#"when[0] (path: $.ref, equals: "refs/heads/main"): the body has "refs/heads/dev" there"#)
    );
    assert_eq!(
        explain(json!([{"path": "$.pull_request.number", "exists": true}])).as_deref(),
        Some("when[0] (path: $.pull_request.number, exists: true): the path selects nothing in the body")
    );
    assert_eq!(
        explain(json!([{"event_type": ["push", "release"]}])).as_deref(),
        Some(r#"when[0] (event_type: ["push","release"]): the event's type is "issues""#)
    );
    assert_eq!(
        explain(json!([{"all": [{"path": "$.n", "lt": 10}, {"path": "$.tags", "contains": "b"}]}])).as_deref(),
        Some(
            r#"when[0] (all: [{path: $.n, lt: 10}, {path: $.tags, contains: "b"}]): its [1] does not hold: the body has ["a"] there"#
        )
    );
    assert_eq!(
        explain(json!([{"any": [{"path": "$.n", "gte": 5}, {"header": "X-Kind", "matches": "^p"}]}])).as_deref(),
        Some(r#"when[0] (any: [{path: $.n, gte: 5}, {header: X-Kind, matches: "^p"}]): none of its conditions holds"#)
    );
    assert_eq!(
        explain(json!([{"not": {"header": "X-Kind", "equals": "fork"}}])).as_deref(),
        Some(r#"when[0] (not: {header: X-Kind, equals: "fork"}): the condition inside it holds"#)
    );
    let text = HeaderMap::new();
    let no_body = EventView { headers: &text, body: None, event_type: None };
    assert_eq!(
        rule(json!([{"path": "$.a", "equals": 1}])).explain(&no_body).as_deref(),
        Some("when[0] (path: $.a, equals: 1): the body is not JSON")
    );
    // long values are cut, many are summed up
    let long = json!({"s": "x".repeat(100), "many": [1, 2, 3, 4, 5]});
    let view = EventView { headers: &text, body: Some(&long), event_type: None };
    assert_eq!(
        rule(json!([{"path": "$.many[*]", "equals": 9}])).explain(&view).as_deref(),
        Some("when[0] (path: $.many[*], equals: 9): the body has 1, 2, 3, … there")
    );
    let cut = rule(json!([{"path": "$.s", "equals": "y"}])).explain(&view).unwrap();
    assert!(cut.ends_with(&format!("the body has \"{}… there", "x".repeat(59))), "{cut}");
}
