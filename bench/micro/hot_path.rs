//! Per-event costs on the ingress hot path: rule matching, inbound verification, outbound signing,
//! and the whole route+plan step on a 1 KiB GitHub push. `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use hookyard::rules::{ConditionConfig, EventView};
use hookyard::sign::{SignScheme, Signer};
use hookyard::verify::{Scheme, Verifier};
use http::{HeaderMap, HeaderValue};

const SECRET: &str = "bench-secret";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn body() -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/github-push.json");
    Bytes::from(std::fs::read(path).expect("examples/github-push.json"))
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-github-event", HeaderValue::from_static("push"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

fn rules(c: &mut Criterion) {
    let conds: Vec<ConditionConfig> = serde_json::from_value(serde_json::json!([
        {"header": "X-GitHub-Event", "equals": "push"},
        {"path": "$.ref", "equals": "refs/heads/main"},
        {"path": "$.repository.full_name", "matches": "^acme/"},
        {"path": "$.commits[*].author.username", "in": ["monalisa", "octocat"]}
    ]))
    .unwrap();
    let rule = hookyard::rules::compile(&conds).map_err(|e| format!("{e:?}")).unwrap();
    let headers = headers();
    let body = body();
    let mut group = c.benchmark_group("rules");
    group.bench_function("parse_json_1k", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    group.bench_function("match_4_conditions", |b| {
        b.iter(|| rule.matches(black_box(&EventView { headers: &headers, body: Some(&json), event_type: None })))
    });
    group.finish();
}

fn signatures(c: &mut Criterion) {
    let body = body();
    let now = SystemTime::now();
    let mut group = c.benchmark_group("signatures");
    for (name, scheme) in [
        ("github", Scheme::preset("github")),
        ("stripe", Scheme::preset("stripe")),
        ("standard_webhooks", Scheme::preset("standard-webhooks")),
    ] {
        let secret = if name == "standard_webhooks" { WHSEC } else { SECRET };
        let v = Verifier::new(scheme, &[secret.to_string()], Duration::from_secs(300)).unwrap();
        let mut h = headers();
        for (k, val) in v.provider_headers(&body, now, "msg_bench") {
            h.insert(k, val);
        }
        assert!(v.verify(&h, &body, now).is_ok());
        group
            .bench_function(format!("verify_{name}_1k"), |b| b.iter(|| v.verify(black_box(&h), black_box(&body), now)));
    }
    let signer = Signer::new(SignScheme::StandardWebhooks, Some(WHSEC)).unwrap();
    group.bench_function("sign_standard_webhooks_1k", |b| {
        b.iter(|| {
            let mut out = HeaderMap::new();
            signer.sign("msg_2a1b3c4d5e6f7a8b9c0d1e2f", 1_795_770_000, black_box(&body), &mut out);
            out
        })
    });
    group.finish();
}

fn route_and_plan(c: &mut Criterion) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("routes.yaml");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let snap =
        hookyard::snapshot::build(&config, &hookyard::snapshot::Plugins::default()).expect("bundled routes.yaml");
    let source = snap.source_by_name("github").unwrap();
    let body = body();
    c.bench_function("route_and_plan_github_push", |b| {
        b.iter(|| {
            let event = hookyard::snapshot::new_event("github", headers(), body.clone());
            let routed = rt.block_on(snap.route(source, &event, &event.id.0));
            assert_eq!(routed.deliveries.len(), 2);
            for d in &routed.deliveries {
                let dest = snap.destination(&d.destination).unwrap();
                let due = snap.preview(source, &event, d);
                let uri = dest.target(&due).unwrap();
                black_box(hookyard::delivery::build_request(dest, &due, uri, SystemTime::now()));
            }
        })
    });
}

/// What a templated destination adds per delivery: rendering a URL (host label, path segment,
/// query value) and a header from the 1 KiB push, only the read paths parsed.
fn templates(c: &mut Criterion) {
    use hookyard::template::{Template, Templates};
    let mut t = Templates {
        url: Some(
            Template::url("https://{{ $.repository.owner.login }}.hooks.example.com/r/{{ $.repository.name }}/push?ref={{ $.ref }}")
                .unwrap(),
        ),
        headers: vec![(http::HeaderName::from_static("x-event"), Template::header("{{ header:x-github-event }}").unwrap())],
        ..Templates::default()
    };
    t.url.as_ref().unwrap().read_by(&mut t.projection);
    let body = body();
    let headers = vec![("x-github-event".to_string(), "push".to_string())];
    assert!(t.render(&headers, &body, None).unwrap().url.unwrap().ends_with("push?ref=refs%2Fheads%2Fmain"));
    c.bench_function("render_url_and_header_templates_1k", |b| {
        b.iter(|| t.render(black_box(&headers), black_box(&body), None).unwrap())
    });
}

criterion_group!(benches, rules, signatures, route_and_plan, templates);
criterion_main!(benches);
