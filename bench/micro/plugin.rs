//! Per-event cost of a plugin call: instantiate + call + return, in a fresh instance each time,
//! as the gateway does it.
//!
//! - `plugin/noop`: the fixed cost (plugins/noop passes the body through). Target: < 20 µs.
//! - `plugin/github_chat_1k` vs `native/github_chat_1k`: the same JSON reshape of a 1 KiB
//!   GitHub push, in wasm and in plain Rust; the ratio is printed at the end.
//! - `reference/spawn_blocking`: what handing each call to a blocking thread would add on top,
//!   the alternative to wasmtime's async mode that the host does not use.
//! - At the end, the same calls timed one by one with the CPU caches flushed before each: in the
//!   gateway other work runs between two plugin calls, so this is the figure the end-to-end
//!   benchmark sees (a cold call costs three to four times a hot one).
//!
//! Needs plugins/dist (run plugins/build.sh). Run: `cargo bench --bench plugin`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use hookyard::plugin::{Limits, Outcome, Plugin, PluginEvent, PluginHost};
use serde_json::{Value, json};

fn load(host: &PluginHost, name: &str, config: &[(&str, &str)]) -> Plugin {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("plugins/dist/{name}.wasm"));
    let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    // A generous deadline: a benchmark on a busy machine must not be cut short.
    let limits = Limits { timeout_ms: 10_000, ..Limits::default() };
    host.load(&path, config, limits, vec!["chat".into()])
        .unwrap_or_else(|e| panic!("{}: {e} (run plugins/build.sh)", path.display()))
}

fn event(body: Vec<u8>) -> PluginEvent {
    PluginEvent {
        id: "01930f0e-7c1a-7000-8000-000000000001".into(),
        source: "github".into(),
        received_at_ms: 1_764_230_400_000,
        method: "POST".into(),
        path: "/hooks/github".into(),
        headers: vec![("X-GitHub-Event".into(), "push".into()), ("Content-Type".into(), "application/json".into())],
        body: body.into(),
    }
}

/// A GitHub push of about 1 KiB.
fn push_1k() -> Vec<u8> {
    let commit = |id: &str, msg: &str| {
        json!({
            "id": id, "message": msg, "timestamp": "2026-11-27T09:12:44+00:00",
            "url": format!("https://github.com/acme/hookyard/commit/{id}"),
            "author": {"name": "Mona Lisa", "email": "mona@example.com", "username": "monalisa"},
            "modified": ["src/delivery/retry.rs"]
        })
    };
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5",
        "deleted": false,
        "compare": "https://github.com/acme/hookyard/compare/6113728f27ae...59b20b8d5c6f",
        "commits": [
            commit("59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5", "delivery: honour Retry-After on 429"),
            commit("6113728f27ae82c7b1a177c8d03f9e96e0adf246", "plugin: fresh store per event"),
        ],
        "repository": {"id": 123456789, "name": "hookyard", "full_name": "acme/hookyard", "private": false},
        "pusher": {"name": "monalisa", "email": "mona@example.com"},
    }))
    .unwrap();
    assert!((900..=1200).contains(&body.len()), "push is {} bytes", body.len());
    body
}

/// plugins/github_chat, natively: the comparison point for the wasm call.
fn github_chat_native(body: &[u8], channel: &str) -> Vec<u8> {
    let push: Value = serde_json::from_slice(body).unwrap();
    let str_at = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let repo = str_at(&push["repository"]["full_name"]);
    let branch = push["ref"].as_str().unwrap_or("?").trim_start_matches("refs/heads/").to_string();
    let who = str_at(&push["pusher"]["name"]);
    let commits = push["commits"].as_array().map(Vec::as_slice).unwrap_or_default();
    let plural = if commits.len() == 1 { "" } else { "s" };
    let mut text = format!("{who} pushed {} commit{plural} to {repo} ({branch})", commits.len());
    for c in commits.iter().take(5) {
        let id: String = c["id"].as_str().unwrap_or("").chars().take(7).collect();
        let title = c["message"].as_str().unwrap_or("").lines().next().unwrap_or("");
        text.push_str(&format!("\n• {id} {title} ({})", str_at(&c["author"]["name"])));
    }
    if let Some(url) = push["compare"].as_str() {
        text.push_str(&format!("\n{url}"));
    }
    serde_json::to_vec(&json!({ "text": text, "channel": channel })).unwrap()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    noop: Plugin,
    chat: Plugin,
    small: PluginEvent,
    push: PluginEvent,
}

fn setup() -> Setup {
    let host = PluginHost::new(None).expect("plugin host");
    let setup = Setup {
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        noop: load(&host, "noop", &[]),
        chat: load(&host, "github_chat", &[("channel", "#deploys")]),
        small: event(b"{\"hello\":\"world\"}".to_vec()),
        push: event(push_1k()),
    };
    // Same output from both, or the comparison means nothing.
    let Outcome::Emit(out) = setup.rt.block_on(setup.chat.run(&setup.push)).unwrap() else { panic!("dropped") };
    assert_eq!(out[0].body, github_chat_native(&setup.push.body, "#deploys"));
    setup
}

fn benches(c: &mut Criterion) {
    let s = setup();
    c.bench_function("plugin/noop", |b| b.iter(|| s.rt.block_on(s.noop.run(black_box(&s.small))).unwrap()));
    c.bench_function("plugin/github_chat_1k", |b| b.iter(|| s.rt.block_on(s.chat.run(black_box(&s.push))).unwrap()));
    c.bench_function("native/github_chat_1k", |b| b.iter(|| github_chat_native(black_box(&s.push.body), "#deploys")));
    let mt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    c.bench_function("reference/spawn_blocking", |b| {
        b.iter(|| mt.block_on(async { tokio::task::spawn_blocking(|| black_box(1)).await.unwrap() }))
    });
}

/// The wasm/native ratio for the same reshape, measured back to back, in wall-clock time and in
/// on-CPU time of this thread (Linux schedstat): on a shared machine the wall-clock figures
/// include time spent waiting for a core, the CPU figures do not.
fn ratio() {
    let s = setup();
    let time = |f: &mut dyn FnMut()| {
        let n = 5_000;
        for _ in 0..500 {
            f();
        }
        let (start, cpu) = (Instant::now(), thread_cpu());
        for _ in 0..n {
            f();
        }
        (start.elapsed() / n, thread_cpu().map(|end| (end - cpu.unwrap()) / n))
    };
    let (noop, noop_cpu) = time(&mut || drop(s.rt.block_on(s.noop.run(&s.small)).unwrap()));
    let (wasm, wasm_cpu) = time(&mut || drop(s.rt.block_on(s.chat.run(&s.push)).unwrap()));
    let (native, native_cpu) = time(&mut || drop(github_chat_native(&s.push.body, "#deploys")));
    let mut junk = vec![0u8; 8 << 20];
    let mut cold = |f: &mut dyn FnMut()| {
        let mut times: Vec<Duration> = (0..1_000u32)
            .map(|i| {
                junk.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(i as u8));
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let cold_noop = cold(&mut || drop(s.rt.block_on(s.noop.run(&s.small)).unwrap()));
    let cold_wasm = cold(&mut || drop(s.rt.block_on(s.chat.run(&s.push)).unwrap()));
    let cold_native = cold(&mut || drop(github_chat_native(&s.push.body, "#deploys")));
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "\nper event, wall clock: noop plugin {:.1} µs; github_chat on {} B: wasm {:.1} µs, native {:.1} µs, ratio {:.1}x",
        us(noop),
        s.push.body.len(),
        us(wasm),
        us(native),
        ratio(wasm, native)
    );
    println!(
        "per event, cold caches (median): noop plugin {:.1} µs; github_chat: wasm {:.1} µs, native {:.1} µs, ratio {:.1}x",
        us(cold_noop),
        us(cold_wasm),
        us(cold_native),
        ratio(cold_wasm, cold_native)
    );
    if let (Some(noop), Some(wasm), Some(native)) = (noop_cpu, wasm_cpu, native_cpu) {
        println!(
            "per event, on-CPU:     noop plugin {:.1} µs; github_chat on {} B: wasm {:.1} µs, native {:.1} µs, ratio {:.1}x",
            us(noop),
            s.push.body.len(),
            us(wasm),
            us(native),
            ratio(wasm, native)
        );
    }
}

/// This thread's on-CPU time so far, where the kernel tells it.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

criterion_group!(plugin, benches);

fn main() {
    plugin();
    // `cargo test --all-targets` runs each benchmark once, without `--bench`: skip the timing.
    if std::env::args().any(|a| a == "--bench") {
        ratio();
    }
    Criterion::default().configure_from_args().final_summary();
}
