//! Plugin host tests. The example plugins come from `plugins/dist/`, which `plugins/build.sh`
//! builds from source (CI runs it before the tests); hostile plugins are the WAT components in
//! `tests/fixtures/plugins/`, compiled here with the `wat` crate.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use super::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One host for all tests (as in the gateway), with a compiled-code cache under target/ so
/// that reruns skip compiling the plugins.
fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let cache = std::env::temp_dir().join("hookyard-plugin-test-cache");
        PluginHost::new(Some(cache)).expect("plugin host starts")
    })
}

fn dist(name: &str) -> PathBuf {
    let path = root().join("plugins/dist").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run plugins/build.sh first", path.display());
    path
}

fn fixture(name: &str) -> Vec<u8> {
    let path = root().join("tests/fixtures/plugins").join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// An example plugin with the default limits but a generous deadline: these tests check what
/// plugins do, on a test machine that may be busy; deadlines have their own tests.
fn example(name: &str, config: &[(&str, &str)], destinations: &[&str]) -> Plugin {
    let limits = Limits { timeout_ms: 10_000, ..Limits::default() };
    host().load(&dist(name), strings(config), limits, names(destinations)).expect("example plugin loads")
}

fn hostile(name: &str, limits: Limits) -> Plugin {
    host().load_bytes(name, &fixture(name), Vec::new(), limits, names(&["chat"])).expect("fixture loads")
}

fn event(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> PluginEvent {
    PluginEvent {
        id: "01930f0e-7c1a-7000-8000-000000000001".into(),
        source: "github".into(),
        received_at_ms: 1_764_230_400_000,
        method: "POST".into(),
        path: "/hooks/github".into(),
        headers: strings(headers),
        body: body.into(),
    }
}

fn json_event(value: Value) -> PluginEvent {
    event(serde_json::to_vec(&value).unwrap(), &[("Content-Type", "application/json")])
}

fn emitted(outcome: Outcome) -> Vec<Output> {
    match outcome {
        Outcome::Emit(outputs) => outputs,
        Outcome::Drop(reason) => panic!("expected outputs, got a drop: {reason}"),
    }
}

fn body_json(output: &Output) -> Value {
    serde_json::from_slice(&output.body).expect("output body is JSON")
}

fn header<'a>(output: &'a Output, name: &str) -> Option<&'a str> {
    output.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn github_push() -> PluginEvent {
    let body = std::fs::read(root().join("examples/github-push.json")).expect("examples/github-push.json");
    event(body, &[("X-GitHub-Event", "push"), ("Content-Type", "application/json")])
}

#[tokio::test]
async fn noop_passes_the_body_through() {
    let noop = example("noop", &[], &["chat"]);
    assert_eq!(noop.name(), "noop");
    let out = emitted(noop.run(&event("hello", &[])).await.unwrap());
    assert_eq!(out, vec![Output { destinations: None, headers: vec![], body: Bytes::from("hello") }]);
}

#[tokio::test]
async fn each_event_gets_a_fresh_instance() {
    let counter = hostile("counter", Limits::default());
    for _ in 0..3 {
        assert_eq!(counter.run(&event("", &[])).await, Ok(Outcome::Drop("n1".into())));
    }
}

#[derive(Debug)]
enum Want {
    Exactly(PluginError),
    TrapContaining(&'static str),
    MalformedContaining(&'static str),
}

fn check(name: &str, got: &Result<Outcome, PluginError>, want: &Want) {
    let ok = match (got, want) {
        (Err(e), Want::Exactly(w)) => e == w,
        (Err(PluginError::Trap(m)), Want::TrapContaining(s)) => m.contains(s),
        (Err(PluginError::Malformed(m)), Want::MalformedContaining(s)) => m.contains(s),
        _ => false,
    };
    assert!(ok, "{name}: got {got:?}, want {want:?}");
}

/// Each hostile plugin fails its own event with a precise error, while good events keep
/// flowing through the same host at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_precisely_while_good_events_flow() {
    // Only the loop gets a tight deadline: on a busy test machine the others must not time out
    // before they fail their own way.
    let tight = Limits { timeout_ms: 30, ..Limits::default() };
    let loose = Limits { timeout_ms: 10_000, ..Limits::default() };
    let cases = [
        ("trap", &loose, Want::TrapContaining("unreachable")),
        ("infinite_loop", &tight, Want::Exactly(PluginError::Timeout { ms: 30 })),
        ("memory_bomb", &loose, Want::Exactly(PluginError::MemoryLimit { mb: 16 })),
        ("huge_output", &loose, Want::Exactly(PluginError::OutputTooLarge { index: 0, size: 2 << 20, limit: 1 << 20 })),
        (
            "bad_destination",
            &loose,
            Want::Exactly(PluginError::BadDestination { name: "evil".into(), allowed: names(&["chat"]) }),
        ),
        ("malformed", &loose, Want::MalformedContaining("utf-8")),
        ("many_outputs", &loose, Want::Exactly(PluginError::OutputsTooLarge { total: 10_000_000, limit: 4 << 20 })),
        // 75 MiB of outputs: the host stops copying at 4 × 4 MiB + 1 MiB, never holding them all
        ("copy_bomb", &loose, Want::Exactly(PluginError::TooMuchData { limit: 17 << 20 })),
    ];
    let good = example("noop", &[], &["chat"]);
    let good_calls = tokio::spawn(async move {
        let mut handles = Vec::new();
        for i in 0..200 {
            let good = good.clone();
            handles.push(tokio::spawn(async move {
                let body = format!("event {i}");
                let out = emitted(good.run(&event(body.clone(), &[])).await.expect("good event succeeds"));
                assert_eq!(out[0].body, body);
            }));
            tokio::task::yield_now().await;
        }
        for h in handles {
            h.await.expect("good call task");
        }
    });
    let mut hostile_calls = Vec::new();
    for (name, limits, want) in cases {
        let plugin = hostile(name, limits.clone());
        hostile_calls.push(tokio::spawn(async move {
            for _ in 0..3 {
                let got = plugin.run(&event("{}", &[])).await;
                check(name, &got, &want);
            }
        }));
    }
    for h in hostile_calls {
        h.await.expect("hostile case");
    }
    good_calls.await.expect("good calls");
}

#[tokio::test]
async fn a_loop_is_stopped_close_to_its_deadline() {
    let plugin = hostile("infinite_loop", Limits { timeout_ms: 20, ..Limits::default() });
    let start = Instant::now();
    assert_eq!(plugin.run(&event("", &[])).await, Err(PluginError::Timeout { ms: 20 }));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(20) && took < Duration::from_millis(500), "took {took:?}");
}

/// The looping plugin yields its worker thread at every tick: on a one-thread runtime, other
/// tasks still run while it loops.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_plugin_does_not_hold_the_worker_thread() {
    let plugin = hostile("infinite_loop", Limits { timeout_ms: 1000, ..Limits::default() });
    let noop = example("noop", &[], &["chat"]);
    let looping = tokio::spawn(async move { plugin.run(&event("", &[])).await });
    tokio::task::yield_now().await;
    noop.run(&event("x", &[])).await.expect("noop runs while the loop runs");
    assert!(!looping.is_finished(), "the noop call finished only after the loop's deadline");
    assert_eq!(looping.await.unwrap(), Err(PluginError::Timeout { ms: 1000 }));
}

/// A call still running a tick after it started is preempted and run again from the start on a
/// fiber: it still succeeds, its log line is written once, the worker thread is free while it
/// runs, and the plugin's next calls start on the fiber, until they have counted down.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_call_moves_to_a_fiber_and_still_succeeds() {
    let slow = hostile("slow", Limits { timeout_ms: 10_000, ..Limits::default() });
    let spinning = |iterations| PluginEvent { received_at_ms: iterations, ..event("", &[]) };
    let slow_line = vec![GuestLog { level: LogLevel::Info, message: "slow".into() }];

    let report = slow.run_report(&spinning(10)).await;
    assert_eq!((report.result, report.logs), (Ok(Outcome::Drop("slow".into())), slow_line.clone()));

    // Hundreds of milliseconds of spinning.
    let noop = example("noop", &[], &["chat"]);
    let running = tokio::spawn({
        let slow = slow.clone();
        async move { slow.run_report(&spinning(300_000_000)).await }
    });
    tokio::task::yield_now().await;
    noop.run(&event("x", &[])).await.expect("noop runs while the slow call runs");
    assert!(!running.is_finished(), "the noop call had to wait for the slow one");
    let report = running.await.unwrap();
    assert_eq!(report.result, Ok(Outcome::Drop("slow".into())));
    assert_eq!(report.logs, slow_line, "the preempted attempt's line is not kept");
    assert!(slow.inner.yields(), "the next calls start on a fiber");
    for _ in 0..call::YIELDING_CALLS_AFTER_PREEMPTION {
        assert_eq!(slow.run(&spinning(10)).await, Ok(Outcome::Drop("slow".into())));
    }
    assert!(!slow.inner.yields(), "after them, calls are direct again");
}

/// A call that the OS takes the CPU from for more than a tick, while it computes for less, is
/// not preempted: only the plugin's own computing counts (see `state::Mode`). This thread shares
/// one CPU with three spinning ones, so the OS takes turns between them, a time slice at a
/// time, and some calls wait for the other three's slices halfway through. A tick of 5 ms keeps
/// the calls (a few tenths of a millisecond of CPU) far from it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
async fn a_descheduled_call_is_not_preempted() {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    use std::sync::atomic::{AtomicBool, Ordering};

    let tick = Duration::from_millis(5);
    let host = PluginHost::with_config(HostConfig { max_instances: 2, tick, ..HostConfig::default() }).unwrap();
    let limits = Limits { timeout_ms: 10_000, ..Limits::default() };
    let slow = host.load_bytes("slow", &fixture("slow"), Vec::new(), limits, Vec::new()).unwrap();

    let allowed = sched_getaffinity(None).unwrap();
    let cpu = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).unwrap();
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one).unwrap();
    /// Stops the spinning threads and gives this one back its CPUs, also if an assertion fails.
    struct Hogs(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>, CpuSet);
    impl Drop for Hogs {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            self.1.drain(..).for_each(|h| h.join().unwrap());
            sched_setaffinity(None, &self.2).unwrap();
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                sched_setaffinity(None, &one).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let hogs = Hogs(stop, spinning, allowed);

    let (mut calls, mut cut, mut preempted) = (0, 0, 0);
    let since = Instant::now();
    // Until 10 calls took longer than a tick, for at most 10 s.
    while cut < 10 && since.elapsed() < Duration::from_secs(10) {
        let started = Instant::now();
        let outcome = slow.run(&PluginEvent { received_at_ms: 200_000, ..event("", &[]) }).await;
        assert_eq!(outcome, Ok(Outcome::Drop("slow".into())));
        cut += usize::from(started.elapsed() > tick);
        if slow.inner.yields() {
            preempted += 1;
            slow.inner.yielding_calls.store(0, Ordering::Relaxed);
        }
        calls += 1;
    }
    drop(hogs);

    assert_eq!(cut, 10, "in {calls} calls, only {cut} took longer than a tick");
    assert_eq!(preempted, 0, "{preempted} of {calls} calls were preempted ({cut} took longer than a tick)");
}

/// The epoch ticker stops a while after the last call: an idle host does not wake every tick,
/// and the first call after a pause still has its deadline enforced.
#[tokio::test]
async fn the_ticker_sleeps_while_no_call_is_in_flight() {
    let host = PluginHost::with_config(HostConfig { max_instances: 2, ..HostConfig::default() }).unwrap();
    let noop = host.load(&dist("noop"), Vec::new(), Limits::default(), names(&["chat"])).unwrap();
    noop.run(&event("x", &[])).await.unwrap();
    // It parks after 100 idle ticks (100 ms, more on a busy machine): within 5 s, 50 ms pass
    // with at most the one tick it may have been sleeping through.
    let since = Instant::now();
    let idle = loop {
        let before = host.engine.ticks();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = host.engine.ticks();
        if after - before <= 1 {
            break after;
        }
        assert!(since.elapsed() < Duration::from_secs(5), "still ticking 5 s after the last call");
    };

    let limits = Limits { timeout_ms: 20, ..Limits::default() };
    let looping = host.load_bytes("infinite_loop", &fixture("infinite_loop"), Vec::new(), limits, names(&["chat"]));
    assert_eq!(looping.unwrap().run(&event("", &[])).await, Err(PluginError::Timeout { ms: 20 }));
    assert!(host.engine.ticks() > idle + 1, "the call woke the ticker");
}

/// A deadline shorter than a tick stops a call before it would be preempted.
#[tokio::test]
async fn a_deadline_within_the_first_tick_is_a_timeout() {
    let plugin = hostile("infinite_loop", Limits { timeout_ms: 1, ..Limits::default() });
    assert_eq!(plugin.run(&event("", &[])).await, Err(PluginError::Timeout { ms: 1 }));
    assert!(!plugin.inner.yields(), "a timeout is not a preemption");
}

/// A caller that gives up (drops the future) mid-call frees the instance and its slot.
#[tokio::test]
async fn a_cancelled_call_frees_its_instance() {
    let host = PluginHost::with_config(HostConfig { max_instances: 1, ..HostConfig::default() }).unwrap();
    let looping = host
        .load_bytes(
            "infinite_loop",
            &fixture("infinite_loop"),
            vec![],
            Limits { timeout_ms: 10_000, ..Limits::default() },
            vec![],
        )
        .unwrap();
    let noop = host.load(&dist("noop"), vec![], Limits::default(), vec![]).unwrap();
    for _ in 0..3 {
        let cut = tokio::time::timeout(Duration::from_millis(5), looping.run(&event("", &[]))).await;
        assert!(cut.is_err(), "the loop was cut short by the caller");
        // The only slot is free again.
        assert!(noop.run(&event("x", &[])).await.is_ok());
    }
}

#[tokio::test]
async fn limits_are_per_plugin() {
    // A smaller memory limit is reported as such.
    let small = hostile("memory_bomb", Limits { memory_mb: 4, ..Limits::default() });
    assert_eq!(small.run(&event("", &[])).await, Err(PluginError::MemoryLimit { mb: 4 }));
    // A larger output limit lets the 2 MiB output through.
    let big = hostile("huge_output", Limits { max_output_bytes: 4 << 20, ..Limits::default() });
    let out = emitted(big.run(&event("", &[])).await.unwrap());
    assert_eq!(out[0].body.len(), 2 << 20);
    // A larger total lets ten outputs of 1,000,000 bytes through.
    let many = hostile("many_outputs", Limits { max_total_output_bytes: 10_000_000, ..Limits::default() });
    let out = emitted(many.run(&event("", &[])).await.unwrap());
    assert_eq!((out.len(), out.iter().map(Output::size).sum::<usize>()), (10, 10_000_000));
    // Fewer outputs allowed than a split produces.
    let split = host()
        .load(
            &dist("split"),
            strings(&[("path", "items")]),
            Limits { max_outputs: 3, ..Limits::default() },
            names(&["a"]),
        )
        .unwrap();
    let batch = json_event(json!({"items": [1, 2, 3, 4, 5]}));
    assert_eq!(split.run(&batch).await, Err(PluginError::TooManyOutputs { count: 5, limit: 3 }));
    // Out-of-range limits are load errors.
    let bad = Limits { timeout_ms: 0, memory_mb: 100_000, max_total_output_bytes: 0, ..Limits::default() };
    let err = host().load(&dist("noop"), vec![], bad, names(&["a"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad limits: timeout_ms must be 1..=60000, not 0; memory_mb must be 1..=256, not 100000; \
         max_total_output_bytes must be at least 1"
    );
}

#[tokio::test]
async fn log_lines_are_captured_and_bounded() {
    let flood =
        host().load_bytes("log_flood", &fixture("log_flood"), vec![], Limits::default(), names(&["a"])).unwrap();
    let report = flood.run_report(&event("", &[])).await;
    assert_eq!(report.result, Ok(Outcome::Drop("spam".into())));
    assert_eq!(report.logs.len(), limits::MAX_LOG_LINES as usize);
    assert_eq!(report.logs[0], GuestLog { level: LogLevel::Info, message: "spam".into() });
    assert!(report.logs.last().unwrap().message.contains("log limit reached"));

    let chat = example("github_chat", &[("channel", "#deploys")], &["chat"]);
    let report = chat.run_report(&github_push()).await;
    assert!(report.result.is_ok());
    assert_eq!(
        report.logs,
        vec![GuestLog { level: LogLevel::Debug, message: "formatted 1 commits for acme/hookyard".into() }]
    );
    assert!(report.elapsed > Duration::ZERO);
}

#[test]
fn load_errors_are_precise() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let fixtures = root().join("tests/fixtures/plugins");
    let huge = dir.path().join("huge.wasm");
    std::fs::File::create(&huge).unwrap().set_len(MAX_PLUGIN_FILE_BYTES + 1).unwrap();
    let cases: Vec<(PathBuf, LoadError, &str)> = vec![
        (dir.path().join("missing.wasm"), LoadError::NotFound, "file not found"),
        (
            PathBuf::from("/dev/zero"),
            LoadError::NotRegular("a character device".into()),
            "not a regular file (a character device): a plugin must be a .wasm file",
        ),
        (
            dir.path().to_path_buf(),
            LoadError::NotRegular("a directory".into()),
            "not a regular file (a directory): a plugin must be a .wasm file",
        ),
        (
            huge,
            LoadError::TooLarge { size: Some(MAX_PLUGIN_FILE_BYTES + 1), limit: MAX_PLUGIN_FILE_BYTES },
            "the file is 67108865 bytes, over the 67108864-byte limit for a plugin file",
        ),
        (
            write("text.wasm", b"hello"),
            LoadError::NotWasm("it does not start with the WebAssembly magic bytes \\0asm".into()),
            "not a WebAssembly file: it does not start with the WebAssembly magic bytes \\0asm",
        ),
        (
            fixtures.join("trap.wat"),
            LoadError::NotWasm(
                "this is WebAssembly text (.wat): build a binary component (see plugins/README.md)".into(),
            ),
            "not a WebAssembly file: this is WebAssembly text (.wat): build a binary component (see plugins/README.md)",
        ),
        (
            write("core.wasm", &fixture("core_module")),
            LoadError::CoreModule,
            "this is a core WebAssembly module, not a component: build it as a component: see plugins/README.md",
        ),
        (
            write("wrong.wasm", &fixture("wrong_world")),
            LoadError::WrongWorld {
                found:
                    "imports `wasi:random/random@0.2.0`, which plugins do not get (only `hookyard:plugin/host@0.1.0`); \
                        exports no `transform` function (it exports `run`)"
                        .into(),
            },
            "the component does not target hookyard:plugin/transform@0.1.0: imports `wasi:random/random@0.2.0`",
        ),
        (
            write("truncated.wasm", b"\0asm\x0d\0\x01\0\x01"),
            LoadError::Compile(String::new()),
            "the component does not compile: ",
        ),
        (
            // Exports `transform`, but with the wrong signature.
            write(
                "signature.wasm",
                &wat::parse_str(
                    r#"(component
                         (core module $m (func (export "t") (result i32) (i32.const 0)))
                         (core instance $i (instantiate $m))
                         (func $t (result u32) (canon lift (core func $i "t")))
                         (export "transform" (func $t)))"#,
                )
                .unwrap(),
            ),
            LoadError::WrongWorld { found: String::new() },
            "the component does not target hookyard:plugin/transform@0.1.0: ",
        ),
    ];
    for (path, want, message) in cases {
        let got = host().load(&path, vec![], Limits::default(), names(&["a"])).unwrap_err();
        match (&got, &want) {
            (LoadError::Compile(_), LoadError::Compile(_)) => {}
            (LoadError::WrongWorld { .. }, LoadError::WrongWorld { found }) if found.is_empty() => {}
            _ => assert_eq!(got, want, "{}", path.display()),
        }
        assert!(got.to_string().starts_with(message), "{}: {got}", path.display());
        assert!(!got.to_string().contains('\n'));
    }
}

#[test]
fn compiled_code_is_cached_by_content() {
    let cache = tempfile::tempdir().unwrap();
    let host = PluginHost::new(Some(cache.path().to_path_buf())).unwrap();
    let load = || host.load(&dist("noop"), vec![], Limits::default(), names(&["a"])).unwrap();
    load();
    let files: Vec<PathBuf> = std::fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let wasm_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(dist("noop")).unwrap()));
    assert!(name.starts_with(&format!("{wasm_sha}-")) && name.ends_with(".cwasm"), "{name}");
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    load();
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), written, "reused, not rewritten");
    // A damaged cache entry is ignored and replaced.
    std::fs::write(&files[0], b"garbage").unwrap();
    let plugin = load();
    assert_ne!(std::fs::read(&files[0]).unwrap(), b"garbage");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(rt.block_on(plugin.run(&event("x", &[]))).is_ok());
}

#[test]
fn error_labels_and_retry() {
    let cases = [
        (PluginError::Trap("x".into()), "trap", false),
        (PluginError::Timeout { ms: 5 }, "timeout", true),
        (PluginError::MemoryLimit { mb: 1 }, "memory", false),
        (PluginError::OutputTooLarge { index: 0, size: 2, limit: 1 }, "output_too_large", false),
        (PluginError::TooManyOutputs { count: 2, limit: 1 }, "too_many_outputs", false),
        (PluginError::OutputsTooLarge { total: 2, limit: 1 }, "outputs_too_large", false),
        (PluginError::TooMuchData { limit: 1 }, "too_much_data", false),
        (PluginError::BadDestination { name: "x".into(), allowed: vec![] }, "bad_destination", false),
        (PluginError::Malformed("x".into()), "malformed", false),
        (PluginError::Failed { retryable: true, message: "x".into() }, "plugin_error", true),
        (PluginError::Failed { retryable: false, message: "x".into() }, "plugin_error", false),
    ];
    for (error, label, retryable) in cases {
        assert_eq!((error.label(), error.retryable()), (label, retryable), "{error}");
    }
}

// ---- the example plugins ----

#[tokio::test]
async fn github_chat_formats_pushes() {
    let chat = example("github_chat", &[("channel", "#deploys")], &["chat"]);
    let out = emitted(chat.run(&github_push()).await.unwrap());
    assert_eq!(out.len(), 1);
    assert_eq!(header(&out[0], "content-type"), Some("application/json"));
    assert_eq!(
        body_json(&out[0]),
        json!({
            "channel": "#deploys",
            "text": "monalisa pushed 1 commit to acme/hookyard (main)\n\
                     • 59b20b8 delivery: honour Retry-After on 429 (Mona Lisa)\n\
                     https://github.com/acme/hookyard/compare/6113728f27ae...59b20b8d5c6f"
        })
    );
    let ping = event("{}", &[("X-GitHub-Event", "ping")]);
    assert_eq!(chat.run(&ping).await, Ok(Outcome::Drop("not a push".into())));
    // The plugin's own errors: missing config, a body that is not JSON.
    let unconfigured = example("github_chat", &[], &["chat"]);
    assert_eq!(
        unconfigured.run(&github_push()).await,
        Err(PluginError::Failed { retryable: false, message: "config key `channel` is required".into() })
    );
    match chat.run(&event("not json", &[("X-GitHub-Event", "push")])).await {
        Err(PluginError::Failed { retryable: false, message }) => assert!(message.starts_with("body is not JSON")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn redact_masks_paths_and_scrubs() {
    let redact =
        example("redact", &[("paths", "customer.email, items[*].card"), ("scrub", "true"), ("mask", "***")], &["a"]);
    let input = json!({
        "customer": {"email": "a@b.co", "name": "Ann"},
        "items": [{"card": "x", "sku": 1}, {"card": "y", "sku": 2}],
        "note": "call me at ann@example.com",
        "pan": "4242 4242 4242 4242",
        "not_a_card": "4242 4242 4242 4241",
        "order": "1234567890123"
    });
    let out = emitted(redact.run(&json_event(input)).await.unwrap());
    assert_eq!(
        body_json(&out[0]),
        json!({
            "customer": {"email": "***", "name": "Ann"},
            "items": [{"card": "***", "sku": 1}, {"card": "***", "sku": 2}],
            "note": "***",
            "pan": "***",
            "not_a_card": "4242 4242 4242 4241",
            "order": "1234567890123"
        })
    );
}

/// A body near the ingress limit: the SDK's arena fills up and allocation moves on to the
/// standard allocator (memory.grow) mid-call.
#[tokio::test]
async fn large_bodies_outgrow_the_sdk_arena() {
    let limits = Limits { timeout_ms: 5_000, ..Limits::default() };
    let redact = host().load(&dist("redact"), strings(&[("paths", "[*].email")]), limits, names(&["a"])).unwrap();
    let items: Vec<Value> = (0..12_000).map(|i| json!({"id": i, "email": format!("user{i}@example.com")})).collect();
    let input = json_event(Value::Array(items));
    assert!(input.body.len() > 500_000, "{}", input.body.len());
    let report = redact.run_report(&input).await;
    eprintln!("redact on {} bytes took {:?}", input.body.len(), report.elapsed);
    let out = emitted(report.result.unwrap());
    let body = body_json(&out[0]);
    assert_eq!(body.as_array().unwrap().len(), 12_000);
    assert_eq!(body[11_999], json!({"id": 11_999, "email": "[REDACTED]"}));
}

#[tokio::test]
async fn enrich_renames_sets_converts_and_adds_headers() {
    let enrich = example(
        "enrich",
        &[
            ("rename", "user_id:customer_id,order.total_cents:total"),
            ("set.meta.env", "prod"),
            ("cents_to_units", "order.total,order.lines[*].price"),
            ("header.X-Team", "billing"),
        ],
        &["a"],
    );
    let input = json!({"user_id": 7, "order": {"total_cents": 1999, "lines": [{"price": 250}, {"price": 5}]}});
    let out = emitted(enrich.run(&json_event(input)).await.unwrap());
    assert_eq!(
        body_json(&out[0]),
        json!({"customer_id": 7, "meta": {"env": "prod"}, "order": {"total": 19.99, "lines": [{"price": 2.5}, {"price": 0.05}]}})
    );
    assert_eq!(header(&out[0], "X-Team"), Some("billing"));
    // Headers that frame the request, or are not headers at all, are refused.
    for (name, want) in [("Content-Length", "is set by the gateway"), ("Bad Name", "is not a valid header name")] {
        let key = format!("header.{name}");
        let bad = example("enrich", &[(key.as_str(), "1")], &["a"]);
        check(name, &bad.run(&json_event(json!({}))).await, &Want::MalformedContaining(want));
    }
}

#[tokio::test]
async fn split_fans_out_one_output_per_element() {
    let split = example("split", &[("path", "data.events")], &["a"]);
    let out =
        emitted(split.run(&json_event(json!({"data": {"events": [{"n": 1}, {"n": 2}, {"n": 3}]}}))).await.unwrap());
    assert_eq!(out.iter().map(body_json).collect::<Vec<_>>(), vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    assert_eq!(header(&out[2], "X-Hookyard-Split-Index"), Some("2"));
    assert_eq!(header(&out[2], "X-Hookyard-Split-Count"), Some("3"));
    let empty = json_event(json!({"data": {"events": []}}));
    assert_eq!(split.run(&empty).await, Ok(Outcome::Drop("empty batch".into())));
}

#[tokio::test]
async fn route_by_picks_destinations() {
    let config = [
        ("field", "type"),
        ("map.invoice.paid", "billing"),
        ("map.order.created", "orders, billing"),
        ("map.x", "nowhere"),
    ];
    let router = example("route_by", &config, &["billing", "orders"]);
    let run = |ty: &str| {
        let router = router.clone();
        let ev = json_event(json!({ "type": ty }));
        async move { router.run(&ev).await }
    };
    assert_eq!(emitted(run("invoice.paid").await.unwrap())[0].destinations, Some(names(&["billing"])));
    assert_eq!(emitted(run("order.created").await.unwrap())[0].destinations, Some(names(&["orders", "billing"])));
    assert_eq!(run("other").await, Ok(Outcome::Drop("no route".into())));
    assert_eq!(
        run("x").await,
        Err(PluginError::BadDestination { name: "nowhere".into(), allowed: names(&["billing", "orders"]) })
    );
}

// ---- chains ----

#[tokio::test]
async fn chains_pass_outputs_along_and_fan_out() {
    let dests = ["billing", "orders"];
    let chain = [
        example("redact", &[("paths", "batch[*].email")], &dests),
        example("split", &[("path", "batch")], &dests),
        example("route_by", &[("field", "kind"), ("map.order", "orders"), ("map.refund", "billing")], &dests),
        example("enrich", &[("header.X-Stage", "final"), ("set.seen", "yes")], &dests),
    ];
    let input = json!({"batch": [
        {"kind": "order", "email": "a@b.co"},
        {"kind": "spam"},
        {"kind": "refund", "email": "c@d.co"}
    ]});
    let out = emitted(run_chain(&chain, &json_event(input)).await.unwrap());
    assert_eq!(out.len(), 2, "the spam element is dropped by route_by");
    assert_eq!(body_json(&out[0]), json!({"kind": "order", "email": "[REDACTED]", "seen": "yes"}));
    assert_eq!(out[0].destinations, Some(names(&["orders"])));
    assert_eq!(out[1].destinations, Some(names(&["billing"])));
    // Headers accumulate along a branch: split's, redact's Content-Type, enrich's.
    assert_eq!(header(&out[1], "X-Hookyard-Split-Index"), Some("2"));
    assert_eq!(header(&out[1], "X-Stage"), Some("final"));
    assert_eq!(header(&out[1], "Content-Type"), Some("application/json"));

    // Destinations only narrow: after route_by picked `orders`, a later plugin may not pick `billing`.
    let narrow = [
        example("route_by", &[("field", "kind"), ("map.order", "orders")], &dests),
        example("route_by", &[("field", "kind"), ("map.order", "billing")], &dests),
    ];
    let err = run_chain(&narrow, &json_event(json!({"kind": "order"}))).await.unwrap_err();
    assert_eq!(
        err,
        ChainError {
            index: 1,
            plugin: "route_by".into(),
            error: PluginError::BadDestination { name: "billing".into(), allowed: names(&["orders"]) }
        }
    );

    // All branches dropped: a drop with the first reason.
    let none = json_event(json!({"batch": [{"kind": "spam"}]}));
    assert_eq!(run_chain(&chain, &none).await, Ok(Outcome::Drop("no route".into())));
    // An empty chain passes the body through.
    let ev = json_event(json!({"a": 1}));
    assert_eq!(emitted(run_chain(&[], &ev).await.unwrap())[0].body, ev.body);
}

#[tokio::test]
async fn chain_errors_name_the_failing_plugin_and_bound_fan_out() {
    let split = host()
        .load(&dist("split"), strings(&[("path", "$")]), Limits { max_outputs: 4, ..Limits::default() }, names(&["a"]))
        .unwrap();
    let chain = [split.clone(), split];
    // 2 × 2 = 4 outputs fit; 3 × 3 = 9 do not.
    let two = json_event(json!([[1, 2], [3, 4]]));
    assert_eq!(emitted(run_chain(&chain, &two).await.unwrap()).len(), 4);
    let three = json_event(json!([[1, 2, 3], [4, 5, 6], [7, 8, 9]]));
    let err = run_chain(&chain, &three).await.unwrap_err();
    assert_eq!((err.index, err.error), (1, PluginError::TooManyOutputs { count: 6, limit: 4 }));

    // The bytes of a step's outputs are summed over its branches too: a limit one byte short of
    // the two branches' total fails the second branch, though each call is within it.
    let split = |limits| host().load(&dist("split"), strings(&[("path", "$")]), limits, names(&["a"])).unwrap();
    let total: usize = emitted(run_chain(&[split(Limits::default()), split(Limits::default())], &two).await.unwrap())
        .iter()
        .map(Output::size)
        .sum();
    let tight = Limits { max_total_output_bytes: total - 1, ..Limits::default() };
    let err = run_chain(&[split(Limits::default()), split(tight)], &two).await.unwrap_err();
    assert_eq!((err.index, err.error), (1, PluginError::OutputsTooLarge { total, limit: total - 1 }));

    let trap = hostile("trap", Limits::default());
    let chain = [example("noop", &[], &["chat"]), trap];
    let err = run_chain(&chain, &event("x", &[])).await.unwrap_err();
    assert_eq!((err.index, err.plugin.as_str(), err.error.label()), (1, "trap", "trap"));
    assert!(err.to_string().starts_with("transform 1 (trap): plugin trapped: "), "{err}");
}
