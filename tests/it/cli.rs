//! The command line: `check`, `dry-run`, `send` + `receive` end to end, and `run` refusing a bad
//! config. Outputs are compared exactly where the format is the interface (check's lines) and
//! structurally where it is JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The development secret every destination of the bundled routes.yaml signs with by default.
const BUNDLED_SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn bundled_config() -> PathBuf {
    manifest_dir().join("routes.yaml")
}

fn example(name: &str) -> PathBuf {
    manifest_dir().join("examples").join(name)
}

fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write config");
    path
}

// --- check ------------------------------------------------------------------------------------

#[tokio::test]
async fn check_accepts_the_bundled_config() {
    let path = bundled_config();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let text = std::fs::read(&path).unwrap();
    let version = &hex::encode(Sha256::digest(&text))[..12];
    // `FILE: ok — N sources, N destinations, N routes (version HEX)`; the counts follow the
    // bundled file, which grows, so only their form is checked here.
    let line = out.stdout.strip_suffix('\n').expect("one line");
    let counts = line
        .strip_prefix(&format!("{}: ok — ", path.display()))
        .and_then(|rest| rest.strip_suffix(&format!(" (version {version})")))
        .unwrap_or_else(|| panic!("unexpected summary {line:?}"));
    let words: Vec<&str> = counts.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    assert!(
        words.len() == 6
            && [words[1], words[3], words[5]] == ["sources", "destinations", "routes"]
            && [words[0], words[2], words[4]].iter().all(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
        "unexpected summary {line:?}"
    );
}

/// A config with several problems at once: each must be reported, in file order, as
/// `FILE:LINE:COL: KEY: message`, then the count.
const BROKEN: &str = r#"server:
  listen: "127.0.0.1:0"
sources:
  github:
    path: /hooks/github
    verify: { scheme: github, secret: "${HOOKYARD_TEST_NEVER_SET}" }
destinations:
  deploys:
    url: http://127.0.0.1:9/deploys
    sign: { secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
routes:
  - name: pushes
    source: github
    when:
      - header: X-GitHub-Event
        equal: push
    to: [deploys]
  - name: main
    source: githbu
    when:
      - path: $.ref
        matches: "refs/heads/(main"
    to: [deploy]
"#;

/// The problems of `BROKEN`, in file order. (The unknown key is an operator, whose list of
/// alternatives is the documented set of operators, not a schema that grows every week.)
fn broken_lines(path: &Path) -> Vec<String> {
    let f = path.display();
    vec![
        format!(
            "{f}:6:39: sources.github.verify.secret: environment variable HOOKYARD_TEST_NEVER_SET is not set (write ${{HOOKYARD_TEST_NEVER_SET:-default}} to give a default)"
        ),
        format!(
            "{f}:16:9: routes[0].when[0].equal: unknown field `equal`, expected one of `header`, `path`, `event_type`, `equals`, `not_equals`, `in`, `gt`, `gte`, `lt`, `lte`, `matches`, `exists`, `contains`, `any`, `all`, `not`"
        ),
        format!("{f}:19:5: routes[1].source: unknown source \"githbu\" (did you mean \"github\"?)"),
        format!("{f}:22:9: routes[1].when[0].matches: invalid regex `refs/heads/(main`: unclosed group"),
        format!("{f}:23:10: routes[1].to[0]: unknown destination \"deploy\" (did you mean \"deploys\"?)"),
    ]
}

#[tokio::test]
async fn check_reports_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "routes.yaml", BROKEN);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path).env_remove("HOOKYARD_TEST_NEVER_SET");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert_eq!(out.stdout, "");
    let mut want = broken_lines(&path);
    want.push("5 problems found".into());
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), want);
}

#[tokio::test]
async fn check_counts_a_single_problem_in_the_singular() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "one.yaml", "server:\n  listen: \"127.0.0.1:0\"\nrotues: []\n");
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1));
    let f = path.display();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    // The line ends with the list of top-level keys, which grows with the schema.
    let want = format!("{f}:3:1: rotues: unknown key (did you mean \"routes\"?); expected one of ");
    assert!(lines[0].starts_with(&want), "want a line starting with {want:?}, got {:?}", lines[0]);
    assert_eq!(lines[1], "1 problem found");
}

/// `storage:` and `admin:` are documented top-level sections (docs/configuration.md, "routes.yaml reference"):
/// `check` must accept them and suggest them for a typo, and `run` must use them.
#[tokio::test]
async fn the_storage_and_admin_sections_are_accepted_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let sections = [
        ("storage", "storage: { path: state/events.db, sync: normal, retention: 1d }\n", "storag: {}\n"),
        ("admin", "admin: { listen: \"127.0.0.1:0\" }\n", "admn: {}\n"),
    ];
    let mut failures = Vec::new();
    for (name, section, typo) in sections {
        let path = write_config(
            dir.path(),
            &format!("{name}.yaml"),
            &format!("server: {{ listen: \"127.0.0.1:0\" }}\n{section}"),
        );
        let mut cmd = hookyard();
        cmd.arg("check").arg("--config").arg(&path);
        let out = run_cli(cmd).await;
        if out.code() != Some(0) {
            failures.push(format!("{name}: check rejects the section:\n{}", out.stderr));
        }
        let path = write_config(dir.path(), &format!("{name}-typo.yaml"), typo);
        let mut cmd = hookyard();
        cmd.arg("check").arg("--config").arg(&path);
        let out = run_cli(cmd).await;
        if !out.stderr.contains(&format!("(did you mean \"{name}\"?)")) {
            failures.push(format!("{name}: no suggestion for a typo:\n{}", out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let gw = Gateway::start(&format!("server: {{ listen: \"127.0.0.1:0\" }}\n{}", sections[0].1)).await;
    let db = gw.config_path.parent().unwrap().join("state/events.db");
    assert!(db.exists(), "the store is created at storage.path, relative to the config: {}", gw.logs());
}

#[tokio::test]
async fn check_reads_secrets_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "server: { listen: \"127.0.0.1:0\" }\nsources:\n  github:\n    path: /hooks/github\n    verify: { scheme: github, secret: \"${HOOKYARD_TEST_SECRET}\" }\n";
    let path = write_config(dir.path(), "env.yaml", yaml);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path).env("HOOKYARD_TEST_SECRET", "from-the-environment");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with(&format!("{}: ok — 1 sources, 0 destinations, 0 routes (version ", path.display())),
        "{}",
        out.stdout
    );
}

/// A destination or source that is defined but has an error of its own must not also be
/// reported as unknown where routes name it: that second error sends the user looking for a
/// typo that is not there, and the did-you-mean hint disappears.
#[tokio::test]
async fn check_does_not_call_a_defined_but_invalid_item_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"server: { listen: "127.0.0.1:0" }
sources:
  github:
    path: /hooks/github
    verify: { scheme: github, secret: s }
  shop:
    path: /hooks/shop
    verify: { scheme: shopfy, secret: s }
destinations:
  deploys:
    url: http://127.0.0.1:9/deploys
    sign: { secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }
    retries: { schedule: [1s] }
routes:
  - name: exact
    source: github
    to: [deploys]
  - name: typo
    source: github
    to: [deploy]
  - name: orders
    source: shop
    to: [deploys]
"#;
    let path = write_config(dir.path(), "routes.yaml", yaml);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1));
    let f = path.display();
    // The first two lines end in serde's list of expected names, which grows with the schema.
    let want = [
        format!("{f}:8:15: sources.shop.verify.scheme: unknown variant `shopfy`, expected one of "),
        format!("{f}:13:5: destinations.deploys.retries: unknown field `retries`, expected one of "),
        format!("{f}:20:10: routes[1].to[0]: unknown destination \"deploy\" (did you mean \"deploys\"?)"),
        "3 problems found".to_string(),
    ];
    let got: Vec<&str> = out.stderr.lines().collect();
    let matches = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.starts_with(w.as_str()));
    assert!(matches, "want lines starting with:\n{}\ngot:\n{}", want.join("\n"), out.stderr);
}

// --- files that must not take the gateway down ----------------------------------------------

/// 1 KB of YAML ("billion laughs") that would expand to 9^9 scalars: each key aliases the one
/// before it nine times.
pub fn alias_bomb() -> String {
    let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().zip(["b", "c", "d", "e", "f", "g", "h", "i"]) {
        let items = vec![format!("*{prev}"); 9].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    assert!(text.len() < 1024);
    text
}

/// The line `check` prints for [`alias_bomb`]: the sixth key crosses the expansion budget at its
/// third alias.
fn alias_bomb_line(path: &Path) -> String {
    format!(
        "{}:6:16: f[2]: aliases expand to more than 8 MiB of copied values (a limit against \"billion laughs\" files)",
        path.display()
    )
}

#[tokio::test]
async fn check_and_run_refuse_an_alias_bomb_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "bomb.yaml", &alias_bomb());
    let started = Instant::now();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [alias_bomb_line(&path).as_str(), "1 problem found"]);

    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert!(out.stderr.lines().any(|l| l == alias_bomb_line(&path)), "{}", out.stderr);
    assert!(out.stderr.contains("nothing started"), "{}", out.stderr);
    let took = started.elapsed();
    eprintln!("check + run on an alias bomb: {took:?}");
    assert!(took < Duration::from_secs(5), "refusing an alias bomb took {took:?}");
}

/// The size limit is checked before reading a regular file (a sparse 1 MiB + 1 file costs nothing
/// to make), and a file that never ends is read no further than the limit.
#[tokio::test]
async fn check_refuses_a_config_file_over_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big).unwrap().set_len((1 << 20) + 1).unwrap();
    let endless = Path::new("/dev/zero");
    let cases = [
        (big.as_path(), "the file is 1048577 bytes, over the 1048576-byte limit for a config file"),
        (endless, "the file is over the 1048576-byte limit for a config file"),
    ];
    for (path, message) in cases {
        let mut cmd = hookyard();
        cmd.arg("check").arg("--config").arg(path);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(1), "{}: {}", path.display(), out.stdout);
        let want = format!("{}: {message}", path.display());
        assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [want.as_str(), "1 problem found"]);
    }
}

/// A truncated save (empty, blank or comment-only) would serve no source at all: refused.
#[tokio::test]
async fn check_and_run_refuse_an_empty_config() {
    let dir = tempfile::tempdir().unwrap();
    let empty = |path: &Path| {
        format!(
            "{}: the config is empty (nothing but whitespace or comments): it would serve no source (is the file truncated?)",
            path.display()
        )
    };
    for (name, text) in [("empty.yaml", ""), ("blank.yaml", "\n   \n"), ("comments.yaml", "# routes\n# to do\n")] {
        let path = write_config(dir.path(), name, text);
        let mut cmd = hookyard();
        cmd.arg("check").arg("--config").arg(&path);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(1), "{name}: {}", out.stdout);
        assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [empty(&path).as_str(), "1 problem found"], "{name}");
    }
    let path = dir.path().join("empty.yaml");
    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    assert!(out.stderr.lines().any(|l| l == empty(&path)), "{}", out.stderr);
    assert!(out.stderr.contains("nothing started"), "{}", out.stderr);
}

/// A secret of only whitespace is refused like an empty one, wherever a secret is configured:
/// verification secrets (one or a rotation list), signing secrets and the admin token. Once,
/// without a second error from the scheme (a `whsec_` secret that is not one).
#[tokio::test]
async fn check_refuses_secrets_of_only_whitespace() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"server: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0", token: "                    " }
sources:
  github:
    path: /hooks/github
    verify: { scheme: github, secret: "   " }
  rotating:
    path: /hooks/rotating
    verify: { scheme: github, secrets: [a-good-secret, "\t \t"] }
  from-env:
    path: /hooks/env
    verify: { scheme: github, secret: "${HOOKYARD_TEST_BLANK_SECRET}" }
  whsec: { path: /hooks/whsec, verify: { scheme: standard-webhooks, secret: " " } }
destinations:
  d:
    url: https://example.com/hook
    sign: { scheme: github, secret: "  " }
  e: { url: "https://example.com/e", sign: { secret: "  " } }
routes:
  - { name: r, source: github, to: [d, e] }
"#;
    let path = write_config(dir.path(), "routes.yaml", yaml);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path).env("HOOKYARD_TEST_BLANK_SECRET", " ");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout: {}", out.stdout);
    let f = path.display();
    let want = [
        format!("{f}:2:33: admin.token: must not be empty or only whitespace"),
        format!("{f}:6:31: sources.github.verify.secret: must not be empty or only whitespace"),
        format!("{f}:9:56: sources.rotating.verify.secrets[1]: must not be empty or only whitespace"),
        format!("{f}:12:31: sources.from-env.verify.secret: must not be empty or only whitespace"),
        format!("{f}:13:69: sources.whsec.verify.secret: must not be empty or only whitespace"),
        format!("{f}:17:29: destinations.d.sign.secret: must not be empty or only whitespace"),
        format!("{f}:18:46: destinations.e.sign.secret: must not be empty or only whitespace"),
        "7 problems found".to_string(),
    ];
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), want);
}

/// A destination whose host is a non-public address that `egress.allow` does not include would
/// fail every delivery: `check` and `dry-run` say so up front, as a warning (exit 0).
#[tokio::test]
async fn check_and_dry_run_warn_about_destinations_the_egress_guard_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = r#"server: { listen: "127.0.0.1:0" }
egress: { allow: [10.1.0.0/16] }
sources:
  s: { path: /in, verify: { scheme: none } }
destinations:
  loop: { url: "http://127.0.0.1:9000/x", sign: { scheme: none } }
  private: { url: "http://10.2.3.4/x", sign: { scheme: none } }
  allowed: { url: "http://10.1.2.3/x", sign: { scheme: none } }
  v6: { url: "http://[::1]:8080/x", sign: { scheme: none } }
  metadata: { url: "http://169.254.169.254/latest", sign: { scheme: none } }
  local: { url: "http://localhost:3000/x", sign: { scheme: none } }
  public: { url: "https://93.184.215.14/x", sign: { scheme: none } }
  named: { url: "https://example.com/x", sign: { scheme: none } }
routes:
  - { name: r, source: s, to: [loop, private, allowed, v6, metadata, local, public, named] }
"#;
    let path = write_config(dir.path(), "routes.yaml", yaml);
    let f = path.display();
    let refused = "egress.allow does not include it, so every delivery will be refused";
    let want = [
        format!("warning: {f}:6:11: destinations.loop.url: 127.0.0.1 is a loopback address; {refused}"),
        format!("warning: {f}:7:14: destinations.private.url: 10.2.3.4 is a private address; {refused}"),
        format!("warning: {f}:9:9: destinations.v6.url: ::1 is a loopback address; {refused}"),
        format!("warning: {f}:10:15: destinations.metadata.url: 169.254.169.254 is a link-local address; {refused}"),
        format!("warning: {f}:11:12: destinations.local.url: localhost is a loopback name; {refused}"),
    ];
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.starts_with(&format!("{f}: ok — 1 sources, 8 destinations, 1 routes")), "{}", out.stdout);
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), want);

    let body = dir.path().join("body.json");
    std::fs::write(&body, "{}").unwrap();
    let mut cmd = hookyard();
    cmd.args(["dry-run", "--source", "s", "--body"]).arg(&body).arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let plan: Value = serde_json::from_str(&out.stdout).expect("dry-run prints JSON");
    assert_eq!(plan["deliveries"].as_array().unwrap().len(), 8);
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), want);
}

// --- run --------------------------------------------------------------------------------------

#[tokio::test]
async fn run_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "routes.yaml", BROKEN);
    let mut cmd = hookyard();
    cmd.arg("run").arg("--config").arg(&path).env_remove("HOOKYARD_TEST_NEVER_SET");
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(!out.stdout.contains("listening on"), "nothing may start: {}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    for want in broken_lines(&path) {
        assert!(lines.contains(&want.as_str()), "missing {want:?} in:\n{}", out.stderr);
    }
    assert!(out.stderr.contains("nothing started"), "{}", out.stderr);
}

#[tokio::test]
async fn run_exits_on_sigterm_after_finishing_attempts_in_flight() {
    // SIGTERM arrives while an attempt is in flight (the sink holds its answer for 500ms): the
    // gateway stops accepting, lets the attempt finish, and exits 0.
    let sink = Sink::with_script(vec![Reply::ok().delayed(Duration::from_millis(500))]).await;
    let mut gw = Gateway::start(&format!(
        r#"
server: {{ listen: "127.0.0.1:0", shutdown_grace: 5s }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  app:
    path: /hooks/app
    verify: {{ scheme: none }}
destinations:
  out:
    url: {url}
    sign: {{ scheme: none }}
    retry: {{ schedule: [500ms], jitter: 0 }}
routes:
  - {{ name: all, source: app, to: [out] }}
"#,
        url = sink.url("/out")
    ))
    .await;
    gw.post("/hooks/app", &[], "{}").await.accepted_id();
    sink.wait_for(1, WAIT).await;
    let status = gw.terminate(WAIT).await;
    assert!(status.success(), "exit status {status}; logs:\n{}", gw.logs());
    assert!(gw.logs_contain("SIGTERM"), "{}", gw.logs());
    let delivered = gw.log_lines_with(&["delivered", "destination=out"]);
    assert_eq!(delivered.len(), 1, "the attempt in flight finished before exit; logs:\n{}", gw.logs());
}

// --- dry-run ----------------------------------------------------------------------------------

struct DryRun {
    source: &'static str,
    headers: &'static [&'static str],
    body: &'static str,
    body_is_json: bool,
    /// What the source's provider preset reads as the event's type.
    event_type: Option<&'static str>,
    /// `(route, matched)` for every route of the source, in file order.
    routes: &'static [(&'static str, bool)],
    /// `(route, destination, url)`.
    deliveries: &'static [(&'static str, &'static str, &'static str)],
}

const DRY_RUNS: &[DryRun] = &[
    DryRun {
        source: "github",
        headers: &["X-GitHub-Event: push", "X-GitHub-Delivery: 72d3162e"],
        body: "github-push.json",
        body_is_json: true,
        event_type: Some("push"),
        routes: &[("pushes-to-main", true), ("pull-requests-opened", false)],
        deliveries: &[
            ("pushes-to-main", "deploys", "http://127.0.0.1:9000/deploys"),
            ("pushes-to-main", "chat", "http://127.0.0.1:9000/chat"),
        ],
    },
    DryRun {
        source: "github",
        headers: &["X-GitHub-Event: pull_request"],
        body: "github-pull_request.json",
        body_is_json: true,
        event_type: Some("pull_request"),
        routes: &[("pushes-to-main", false), ("pull-requests-opened", true)],
        deliveries: &[("pull-requests-opened", "reviews", "http://127.0.0.1:9000/reviews")],
    },
    DryRun {
        source: "github",
        headers: &["X-GitHub-Event: issues"],
        body: "github-push.json",
        body_is_json: true,
        event_type: Some("issues"),
        routes: &[("pushes-to-main", false), ("pull-requests-opened", false)],
        deliveries: &[],
    },
    DryRun {
        source: "stripe",
        headers: &[],
        body: "stripe-invoice.paid.json",
        body_is_json: true,
        event_type: Some("invoice.paid"),
        routes: &[("paid-invoices", true)],
        deliveries: &[("paid-invoices", "billing", "http://127.0.0.1:9000/billing")],
    },
    DryRun {
        source: "shopify",
        headers: &["X-Shopify-Topic: orders/create"],
        body: "shopify-orders-create.json",
        body_is_json: true,
        event_type: Some("orders/create"),
        routes: &[("large-orders", true), ("all-orders", true)],
        deliveries: &[
            ("large-orders", "orders", "http://127.0.0.1:9000/orders"),
            ("large-orders", "chat", "http://127.0.0.1:9000/chat"),
            ("all-orders", "orders", "http://127.0.0.1:9000/orders"),
        ],
    },
    DryRun {
        source: "slack",
        headers: &[],
        body: "slack-app_mention.json",
        body_is_json: true,
        event_type: Some("app_mention"),
        routes: &[("slack-mentions", true)],
        deliveries: &[("slack-mentions", "chat", "http://127.0.0.1:9000/chat")],
    },
    DryRun {
        source: "slack",
        headers: &["Content-Type: text/plain"],
        body: "NOT-JSON",
        body_is_json: false,
        event_type: None,
        routes: &[("slack-mentions", false)],
        deliveries: &[],
    },
];

const DRY_RUN_TIMESTAMP: &str = "1700000000";

async fn dry_run(case: &DryRun, body_path: &Path, event_id: &str) -> Output {
    let mut cmd = hookyard();
    cmd.arg("dry-run").arg("--config").arg(bundled_config()).arg("--source").arg(case.source);
    for h in case.headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg("--body").arg(body_path).arg("--event-id").arg(event_id).arg("--timestamp").arg(DRY_RUN_TIMESTAMP);
    run_cli(cmd).await
}

#[tokio::test]
async fn dry_run_prints_matched_routes_and_exact_requests() {
    let dir = tempfile::tempdir().unwrap();
    let not_json = write_config(dir.path(), "not-json.txt", "token=abc&event=app_mention");
    for case in DRY_RUNS {
        let label = format!("{} {}", case.source, case.body);
        let body_path = if case.body == "NOT-JSON" { not_json.clone() } else { example(case.body) };
        let body = std::fs::read_to_string(&body_path).unwrap();
        let out = dry_run(case, &body_path, "evt_dryrun").await;
        assert_eq!(out.code(), Some(0), "{label}: {}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{label}: output is not JSON ({e}): {}", out.stdout));

        assert_eq!(
            v["event"],
            json!({"id": "evt_dryrun", "source": case.source, "body_is_json": case.body_is_json, "event_type": case.event_type}),
            "{label}"
        );
        let routes: Vec<Value> = case.routes.iter().map(|(n, m)| json!({"name": n, "matched": m})).collect();
        let shown: Vec<Value> = v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| json!({"name": r["name"], "matched": r["matched"]}))
            .collect();
        assert_eq!(shown, routes, "{label}");
        // a route that did not match says which condition did not hold
        for r in v["routes"].as_array().unwrap() {
            let why = r["why"].as_str();
            assert_eq!(why.is_none(), r["matched"] == true, "{label}: {r}");
            assert!(why.is_none_or(|w| w.starts_with("when[")), "{label}: {r}");
        }
        if case.headers == ["X-GitHub-Event: issues"] {
            assert_eq!(
                v["routes"][0]["why"],
                r#"when[0] (header: X-GitHub-Event, equals: "push"): the event has x-github-event: "issues""#
            );
        }

        let deliveries = v["deliveries"].as_array().unwrap_or_else(|| panic!("{label}: no deliveries list"));
        let got: Vec<(&str, &str, &str)> = deliveries
            .iter()
            .map(|d| {
                (
                    d["route"].as_str().unwrap(),
                    d["destination"].as_str().unwrap(),
                    d["request"]["url"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, case.deliveries, "{label}");

        let mut ids = Vec::new();
        for d in deliveries {
            let req = &d["request"];
            let dest = d["destination"].as_str().unwrap();
            assert_eq!(req["method"], "POST", "{label} {dest}");
            assert_eq!(req["body"], body.as_str(), "{label} {dest}: the body is sent unchanged");
            let h = &req["headers"];
            let header = |name: &str| h[name].as_str().unwrap_or_else(|| panic!("{label} {dest}: no {name} in {h}"));
            assert_eq!(header("user-agent"), "Hookyard/0.1.0");
            assert_eq!(header("webhook-timestamp"), DRY_RUN_TIMESTAMP);
            for sent in case.headers {
                let (k, val) = sent.split_once(": ").unwrap();
                assert_eq!(header(&k.to_ascii_lowercase()), val, "{label} {dest}: sender header forwarded");
            }
            if !case.headers.iter().any(|h| h.starts_with("Content-Type")) {
                assert_eq!(header("content-type"), "application/json", "{label} {dest}");
            }
            if dest == "billing" {
                assert_eq!(header("x-team"), "finance", "{label}: destination headers");
            }
            let id = header("webhook-id");
            assert!(is_message_id(id), "{label} {dest}: webhook-id {id:?}");
            let want = standard_webhooks_signature(BUNDLED_SIGNING_SECRET, id, DRY_RUN_TIMESTAMP, body.as_bytes());
            assert_eq!(
                header("webhook-signature"),
                want,
                "{label} {dest}: signature of the printed id, timestamp and body"
            );
            ids.push(id.to_string());
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{label}: one webhook-id per (route, destination)");
    }
}

#[tokio::test]
async fn dry_run_is_reproducible_with_a_fixed_event_id_and_timestamp() {
    let case = &DRY_RUNS[0];
    let a = dry_run(case, &example(case.body), "evt_same").await;
    let b = dry_run(case, &example(case.body), "evt_same").await;
    assert_eq!(a.code(), Some(0), "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout, "same event id and timestamp, same output");
    let c = dry_run(case, &example(case.body), "evt_other").await;
    let ids = |o: &Output| -> Vec<String> {
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["request"]["headers"]["webhook-id"].as_str().unwrap().to_string())
            .collect()
    };
    let (ida, idc) = (ids(&a), ids(&c));
    assert!(ida.iter().all(|id| !idc.contains(id)), "another event gets other webhook-ids: {ida:?} {idc:?}");
}

#[tokio::test]
async fn dry_run_names_the_sources_when_given_an_unknown_one() {
    let mut cmd = hookyard();
    cmd.arg("dry-run")
        .arg("--config")
        .arg(bundled_config())
        .arg("--source")
        .arg("gitlab")
        .arg("--body")
        .arg(example("github-push.json"));
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(r#"unknown source "gitlab"; sources are: github, stripe, shopify, slack"#),
        "{}",
        out.stderr
    );
}

// --- send + receive ---------------------------------------------------------------------------

async fn start_receive(dir: &Path, name: &str, secret: &str) -> Process {
    let mut cmd = hookyard();
    cmd.args(["receive", "--listen", "127.0.0.1:0", "--secret", secret]);
    Process::spawn(cmd, dir.join(format!("{name}.stderr"))).await
}

/// Polls `GET /stats` of a receiver until `done` holds (every 50 ms, at most `WAIT`).
async fn wait_for_stats(receiver: &Process, done: impl Fn(&Value) -> bool) -> Value {
    let url = format!("http://{}/stats", receiver.addr);
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = get(&url).await.json();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "receiver stats never reached the expected state: {stats}\nstdout:\n{}",
            receiver.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn send_through_the_gateway_to_receive_verifies_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let signing = format!("whsec_{}", b64(b"end to end signing key"));
    let other = format!("whsec_{}", b64(b"some other key"));
    let good = start_receive(dir.path(), "good", &signing).await;
    let wrong = start_receive(dir.path(), "wrong", &other).await;
    let gateway_yaml = format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.0/8] }}
sources:
  github:
    path: /hooks/github
    verify: {{ scheme: github, secret: e2e-github-secret }}
destinations:
  deploys:
    url: http://{good}/deploys
    sign: {{ secret: "{signing}" }}
  audit:
    url: http://{wrong}/audit
    sign: {{ secret: "{signing}" }}
routes:
  - name: pushes-to-main
    source: github
    when:
      - header: X-GitHub-Event
        equals: push
      - path: $.ref
        equals: refs/heads/main
    to: [deploys, audit]
"#,
        good = good.addr,
        wrong = wrong.addr,
    );
    let gw = Gateway::start(&gateway_yaml).await;

    let mut cmd = hookyard();
    cmd.arg("send")
        .arg("--config")
        .arg(&gw.config_path)
        .args(["--source", "github", "--gateway", &gw.url(""), "-H", "X-GitHub-Event: push"])
        .arg(example("github-push.json"));
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "stdout: {} stderr: {}", out.stdout, out.stderr);
    let (status, body) = out.stdout.trim_end().split_once(' ').expect("STATUS BODY");
    assert_eq!(status, "202", "{}", out.stdout);
    let id: Value = serde_json::from_str(body).unwrap();
    assert!(id["id"].as_str().is_some_and(is_event_id), "{body}");

    let stats = wait_for_stats(&good, |s| s["verified"] == 1).await;
    assert_eq!(stats, json!({"received": 1, "verified": 1, "invalid": 0}));
    let stats = wait_for_stats(&wrong, |s| s["received"] == 1).await;
    assert_eq!(stats, json!({"received": 1, "verified": 0, "invalid": 1}));

    // Each receiver printed the webhook with its verdict.
    assert!(good.stdout().contains("POST /deploys"), "{}", good.stdout());
    assert!(good.stdout().contains("signature: valid"), "{}", good.stdout());
    assert!(wrong.stdout().contains("signature: INVALID ("), "{}", wrong.stdout());
}

#[tokio::test]
async fn send_exits_nonzero_when_the_gateway_rejects_the_signature() {
    let gw = Gateway::start(
        r#"
server: { listen: "127.0.0.1:0" }
sources:
  github:
    path: /hooks/github
    verify: { scheme: github, secret: the-gateways-secret }
"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sender = write_config(
        dir.path(),
        "sender.yaml",
        "sources:\n  github:\n    path: /hooks/github\n    verify: { scheme: github, secret: not-the-gateways-secret }\n",
    );
    let mut cmd = hookyard();
    cmd.arg("send")
        .arg("--config")
        .arg(&sender)
        .args(["--source", "github", "--gateway", &gw.url("")])
        .arg(example("github-push.json"));
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "401 {\"error\":\"unauthorized\"}\n");
}

/// `send` signs as each provider would: the gateway, verifying with the same config, accepts it.
#[tokio::test]
async fn send_signs_for_every_scheme() {
    let sw = format!("whsec_{}", b64(b"send standard webhooks"));
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
sources:
  github: {{ path: /github, verify: {{ scheme: github, secret: gh }} }}
  stripe: {{ path: /stripe, verify: {{ scheme: stripe, secret: whsec_stripe }} }}
  shopify: {{ path: /shopify, verify: {{ scheme: shopify, secret: shop }} }}
  slack: {{ path: /slack, verify: {{ scheme: slack, secret: slack }} }}
  standard-webhooks: {{ path: /sw, verify: {{ scheme: standard-webhooks, secret: "{sw}" }} }}
  hmac: {{ path: /hmac, verify: {{ scheme: hmac, secret: h, header: X-Sig, algorithm: sha512, encoding: base64, prefix: "v=" }} }}
  basic: {{ path: /basic, verify: {{ scheme: basic, secret: "user:pass" }} }}
  api-key: {{ path: /api-key, verify: {{ scheme: api-key, secret: k-1, header: X-Key }} }}
  none: {{ path: /none, verify: {{ scheme: none }} }}
"#
    ))
    .await;
    let mut failures = Vec::new();
    for source in ["github", "stripe", "shopify", "slack", "standard-webhooks", "hmac", "basic", "api-key", "none"] {
        let mut cmd = hookyard();
        cmd.arg("send")
            .arg("--config")
            .arg(&gw.config_path)
            .args(["--source", source, "--gateway", &gw.url("")])
            .arg(example("github-push.json"));
        let out = run_cli(cmd).await;
        if out.code() != Some(0) || !out.stdout.starts_with("202 {\"id\":\"evt_") {
            failures.push(format!("{source}: exit {:?}, stdout {:?}, stderr {:?}", out.code(), out.stdout, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}\n\ngateway logs:\n{}", failures.join("\n"), gw.logs());
}

/// `send` signs as every provider of the catalogue does (asymmetric ones with `--private-key`,
/// form bodies as forms), and the gateway, verifying with the same config, accepts each: every
/// preset has a local round trip. `providers` lists the same catalogue.
#[tokio::test]
async fn send_signs_as_every_provider_of_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let ed_key = write_config(dir.path(), "ed.key", "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n");
    let p256_key = write_config(dir.path(), "p256.pem", P256_PEM);
    let graph =
        write_config(dir.path(), "graph.json", r#"{"value":[{"changeType":"created","resource":"me/messages"}]}"#);
    let array =
        write_config(dir.path(), "array.json", r#"[{"event":"delivered","subscriptionType":"contact.creation"}]"#);
    let form = write_config(dir.path(), "form.txt", "From=%2B15551230000&To=%2B15559870000&Body=Hello+there");
    let sw = format!("whsec_{}", b64(b"send standard webhooks"));
    let url = "https://hooks.example.com/in";
    let gw = Gateway::start(&format!(
        r#"
server: {{ listen: "127.0.0.1:0" }}
sources:
  github: {{ path: /github, verify: {{ scheme: github, secret: s }} }}
  gitlab: {{ path: /gitlab, verify: {{ scheme: gitlab, secret: s }} }}
  bitbucket: {{ path: /bitbucket, verify: {{ scheme: bitbucket, secret: s }} }}
  stripe: {{ path: /stripe, verify: {{ scheme: stripe, secret: whsec_s }} }}
  shopify: {{ path: /shopify, verify: {{ scheme: shopify, secret: s }} }}
  slack: {{ path: /slack, verify: {{ scheme: slack, secret: s }} }}
  standard-webhooks: {{ path: /sw, verify: {{ scheme: standard-webhooks, secret: "{sw}" }} }}
  v1a: {{ path: /v1a, verify: {{ scheme: standard-webhooks, secret: "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=" }} }}
  svix: {{ path: /svix, verify: {{ scheme: svix, secret: "{sw}" }} }}
  zoom: {{ path: /zoom, verify: {{ scheme: zoom, secret: s }} }}
  meta: {{ path: /meta, verify: {{ scheme: meta, secret: s, verify_token: t }} }}
  x: {{ path: /x, verify: {{ scheme: x, secret: s }} }}
  microsoft-graph: {{ path: /graph, verify: {{ scheme: microsoft-graph, secret: s }} }}
  dropbox: {{ path: /dropbox, verify: {{ scheme: dropbox, secret: s }} }}
  twilio: {{ path: /twilio, verify: {{ scheme: twilio, secret: s, url: "{url}" }} }}
  twilio-form: {{ path: /twilio-form, verify: {{ scheme: twilio, secret: s, url: "{url}" }} }}
  sendgrid: {{ path: /sendgrid, verify: {{ scheme: sendgrid, secret: "{P256_PUBLIC}" }} }}
  paddle: {{ path: /paddle, verify: {{ scheme: paddle, secret: s }} }}
  linear: {{ path: /linear, verify: {{ scheme: linear, secret: s }} }}
  intercom: {{ path: /intercom, verify: {{ scheme: intercom, secret: s }} }}
  square: {{ path: /square, verify: {{ scheme: square, secret: s, url: "{url}" }} }}
  mailgun: {{ path: /mailgun, verify: {{ scheme: mailgun, secret: s }} }}
  mailgun-form: {{ path: /mailgun-form, verify: {{ scheme: mailgun, secret: s }} }}
  pagerduty: {{ path: /pagerduty, verify: {{ scheme: pagerduty, secret: s }} }}
  typeform: {{ path: /typeform, verify: {{ scheme: typeform, secret: s }} }}
  calendly: {{ path: /calendly, verify: {{ scheme: calendly, secret: s }} }}
  hubspot: {{ path: /hubspot, verify: {{ scheme: hubspot, secret: s, url: "{url}" }} }}
"#
    ))
    .await;
    let json = example("github-push.json");
    let form_type = "content-type: application/x-www-form-urlencoded";
    let ed = ed_key.to_str().unwrap();
    let p256 = p256_key.to_str().unwrap();
    let sources: Vec<(&str, &Path, Vec<&str>)> = vec![
        ("github", &json, vec![]),
        ("gitlab", &json, vec![]),
        ("bitbucket", &json, vec![]),
        ("stripe", &json, vec![]),
        ("shopify", &json, vec![]),
        ("slack", &json, vec![]),
        ("standard-webhooks", &json, vec![]),
        ("v1a", &json, vec!["--private-key", ed]),
        ("svix", &json, vec![]),
        ("zoom", &json, vec![]),
        ("meta", &json, vec![]),
        ("x", &json, vec![]),
        ("microsoft-graph", &graph, vec![]),
        ("dropbox", &json, vec![]),
        ("twilio", &json, vec![]),
        ("twilio-form", &form, vec!["-H", form_type]),
        ("sendgrid", &array, vec!["--private-key", p256]),
        ("paddle", &json, vec![]),
        ("linear", &json, vec![]),
        ("intercom", &json, vec![]),
        ("square", &json, vec![]),
        ("mailgun", &json, vec![]),
        ("mailgun-form", &form, vec!["-H", form_type]),
        ("pagerduty", &json, vec![]),
        ("typeform", &json, vec![]),
        ("calendly", &json, vec![]),
        ("hubspot", &array, vec![]),
    ];
    let mut failures = Vec::new();
    for (source, body, extra) in &sources {
        let mut cmd = hookyard();
        cmd.arg("send")
            .arg("--config")
            .arg(&gw.config_path)
            .args(["--source", source, "--gateway", &gw.url("")])
            .args(extra)
            .arg(body);
        let out = run_cli(cmd).await;
        if out.code() != Some(0) || !out.stdout.starts_with("202 {\"id\":\"evt_") {
            failures.push(format!("{source}: exit {:?}, stdout {:?}, stderr {:?}", out.code(), out.stdout, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}\n\ngateway logs:\n{}", failures.join("\n"), gw.logs());

    // without its private key, an asymmetric preset says what it needs
    let mut cmd = hookyard();
    cmd.arg("send").arg("--config").arg(&gw.config_path);
    cmd.args(["--source", "sendgrid", "--gateway", &gw.url("")]).arg(&array);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr.trim(),
        "error: cannot sign as sendgrid: sendgrid signs with a private key: give --private-key (PKCS#8 PEM)"
    );

    let mut cmd = hookyard();
    cmd.args(["providers", "--json"]);
    let out = run_cli(cmd).await;
    let listed: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["scheme"].as_str().unwrap().to_owned())
        .collect();
    let configured: Vec<&str> =
        sources.iter().map(|s| s.0).filter(|s| !["v1a", "twilio-form", "mailgun-form"].contains(s)).collect();
    assert_eq!(listed, configured, "providers lists the catalogue, in order");
}

const P256_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkYe6bUNE5zxvBA8D\nyqg/4imtq5gzTbIJlve7tbnYi4+hRANCAARu5Erg5O42QgMDhuJrJNcd3JpRXa9U\nV6LjyE/BbFjXxmDLAW+TAxWmX7uiMXSWzKxJKwRA2O26F6dRmtiOqHfu\n-----END PRIVATE KEY-----";
const P256_PUBLIC: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbuRK4OTuNkIDA4biayTXHdyaUV2vVFei48hPwWxY18ZgywFvkwMVpl+7ojF0lsysSSsEQNjtuhenUZrYjqh37g==";

// --- reload / status with a broken config ----------------------------------------------------

/// A port that was free a moment ago: the admin address has to be written in the file for the
/// CLI to find it there.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const ADMIN_TOKEN: &str = "reload-me-when-broken-0123";

/// When `routes.yaml` has a YAML syntax error, `status` and `reload` still find the admin API and
/// its token in the file's `admin:` block, say so on stderr, and `reload` prints the gateway's
/// `422` with the error's `file:line:col`.
#[tokio::test]
async fn reload_and_status_reach_the_gateway_when_the_config_has_a_syntax_error() {
    let port = free_port();
    let admin = format!("admin:\n  listen: \"127.0.0.1:{port}\"\n  token: {ADMIN_TOKEN}\n");
    let good = format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\n{admin}sources:\n  s: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n  d: {{ url: \"http://127.0.0.1:9/\", sign: {{ scheme: none }} }}\n\
         routes:\n  - {{ name: r, source: s, to: [d] }}\n"
    );
    let gw = Gateway::start(&good).await;
    let path = gw.config_path.clone();
    let cli = |command: &str| {
        let mut cmd = hookyard();
        cmd.arg(command).arg("--config").arg(&path).env_remove("HOOKYARD_ADMIN_TOKEN");
        cmd
    };
    let out = run_cli(cli("status")).await;
    assert_eq!((out.code(), out.stderr.as_str()), (Some(0), ""), "{}", out.stdout);
    let version = serde_json::from_str::<Value>(&out.stdout).unwrap()["version"].clone();
    assert!(version.is_string(), "{}", out.stdout);

    // a syntax error after the admin block (an unclosed flow mapping)
    let broken = good.replace("  - { name: r, source: s, to: [d] }", "  - { name: r, source: s, to: [d]\n");
    std::fs::write(&path, &broken).unwrap();
    let mut check = hookyard();
    check.arg("check").arg("--config").arg(&path);
    let checked = run_cli(check).await;
    let problem = checked.stderr.lines().next().unwrap().to_string();
    let f = path.display();
    assert!(problem.starts_with(&format!("{f}:12:1: invalid YAML: ")), "{}", checked.stderr);
    let note = format!("note: {problem}; the admin address and token are read from its `admin:` block only");

    let out = run_cli(cli("status")).await;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [note.as_str()]);
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["version"], version);

    let out = run_cli(cli("reload")).await;
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().collect::<Vec<_>>(), [note.as_str()]);
    let printed: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(printed["result"], "failed", "{printed:#}");
    assert_eq!(printed["errors"], json!([problem]), "{printed:#}");

    // the admin block itself broken: the default address, and it says so
    std::fs::write(&path, "admin:\n  listen: [\n").unwrap();
    let mut cmd = cli("status");
    cmd.arg("--admin").arg(format!("http://127.0.0.1:{port}")).env("HOOKYARD_ADMIN_TOKEN", ADMIN_TOKEN);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(
        lines.len() == 1
            && lines[0].starts_with(&format!("note: {f}:3:1: invalid YAML: "))
            && lines[0].ends_with(", and its `admin:` block cannot be read on its own; using the default admin address 127.0.0.1:9090, and HOOKYARD_ADMIN_TOKEN as the token if set (or give --admin URL)"),
        "{}",
        out.stderr
    );
}

// --- check: every unknown key ----------------------------------------------------------------

/// Several unknown keys in one mapping, and in mappings nested in it, are all reported in one run
/// (serde stops at the first; `check` must not).
#[tokio::test]
async fn check_reports_every_unknown_key_of_every_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "routes.yaml",
        r#"server: { listen: "127.0.0.1:0", bogus1: 1, bogus2: 2 }
sources:
  s: { path: /in, verify: { scheme: none } }
destinations:
  d:
    url: "http://127.0.0.1:9/"
    nope: 1
    sign: { scheme: none, algo: x }
    tls: { cert_fiel: c.pem, ca_file: ca.pem }
routes:
  - { name: r, source: s, to: [d], when: [ { header: X, equal: a, matchs: b } ] }
"#,
    );
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let f = path.display();
    // Each line ends with the mapping's known keys, a list that grows with the schema: compared
    // up to it.
    let want = [
        format!("{f}:1:34: server.bogus1: unknown field `bogus1`, expected "),
        format!("{f}:1:45: server.bogus2: unknown field `bogus2`, expected "),
        format!("{f}:7:5: destinations.d.nope: unknown field `nope`, expected "),
        format!("{f}:8:27: destinations.d.sign.algo: unknown field `algo`, expected "),
        format!("{f}:9:12: destinations.d.tls.cert_fiel: unknown field `cert_fiel`, expected "),
        format!("{f}:11:57: routes[0].when[0].equal: unknown field `equal`, expected "),
        format!("{f}:11:67: routes[0].when[0].matchs: unknown field `matchs`, expected "),
    ];
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), want.len() + 1, "{}", out.stderr);
    for (line, want) in lines.iter().zip(&want) {
        assert!(line.starts_with(want.as_str()), "want a line starting with {want:?}, got {line:?}");
    }
    assert_eq!(lines[want.len()], format!("{} problems found", want.len()));
}

// --- pause / resume reasons ------------------------------------------------------------------

/// `pause --reason` is shown by `hookyard events` (a line per paused destination in the table, a
/// `pause_reason` on its pending rows in `--json`); `resume --reason` is printed and logged.
#[tokio::test]
async fn events_show_the_pause_reason_and_resume_logs_its_reason() {
    let held = Sink::start().await;
    let other = Sink::start().await;
    let mut gw = Gateway::start(&format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\negress: {{ allow: [\"127.0.0.0/8\"] }}\n\
         sources:\n  s: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n  held: {{ url: \"{}\", sign: {{ scheme: none }} }}\n  other: {{ url: \"{}\", sign: {{ scheme: none }} }}\n\
         routes:\n  - {{ name: r, source: s, to: [held, other] }}\n",
        held.url("/held"),
        other.url("/other")
    ))
    .await;
    let config = gw.config_path.clone();
    let cli = |args: &[&str]| {
        let mut cmd = hookyard();
        cmd.args(args).arg("--config").arg(&config);
        run_cli(cmd)
    };
    // paused while stopped: a running gateway would notice only at its next poll
    gw.terminate(WAIT).await;
    let out = cli(&["pause", "held", "--reason", "receiver migration"]).await;
    assert_eq!(out.stdout, "held paused: its deliveries wait in the store\n", "{}", out.stderr);
    gw.restart().await;
    let id = gw.post("/in", &[], "{}").await.accepted_id();
    other.wait_for(1, WAIT).await;

    let out = cli(&["events", "--json"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    let rows: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_dest = |d: &str| rows.iter().find(|r| r["destination"] == d).unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(
        (by_dest("held")["status"].as_str(), by_dest("held")["pause_reason"].as_str()),
        (Some("pending"), Some("receiver migration"))
    );
    assert_eq!(by_dest("other").get("pause_reason"), None, "{rows:?}");
    // `--webhook-id`: the delivery a receiver logged, found by the id it saw
    let seen = other.requests()[0].must("webhook-id").to_string();
    let out = cli(&["events", "--json", "--webhook-id", &seen]).await;
    let found: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(found.len(), 1, "{}{}", out.stdout, out.stderr);
    assert_eq!((found[0]["destination"].as_str(), found[0]["msg_id"].as_str()), (Some("other"), Some(seen.as_str())));

    let out = cli(&["events"]).await;
    assert_eq!(
        out.stdout.lines().last(),
        Some("held is paused: receiver migration (its deliveries wait; `hookyard resume held`)"),
        "{}",
        out.stdout
    );

    let out = cli(&["resume", "held", "--reason", "migration done"]).await;
    assert_eq!(out.stdout, "held resumed: migration done\n", "{}", out.stderr);
    assert!(
        out.stderr.lines().any(|l| l.contains("destination resumed") && l.contains("reason=\"migration done\"")),
        "{}",
        out.stderr
    );
    held.wait_for(1, WAIT).await;
    let out = cli(&["events"]).await;
    assert!(!out.stdout.contains("is paused"), "{}", out.stdout);

    // `event`: `attempts` counts, `attempt_log` lists them (once both deliveries are recorded)
    let deadline = Instant::now() + WAIT;
    let ev = loop {
        let out = cli(&["event", &id]).await;
        let ev: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", out.stdout, out.stderr));
        if ev["deliveries"].as_array().unwrap().iter().all(|d| d["status"] == "delivered") {
            break ev;
        }
        assert!(Instant::now() < deadline, "not both delivered: {ev:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for d in ev["deliveries"].as_array().unwrap() {
        assert_eq!(d["attempts"], 1, "{d:#}");
        assert_eq!(d["attempt_log"].as_array().map(Vec::len), Some(1), "{d:#}");
        assert_eq!(d.get("attempts_log"), None, "the old name is gone: {d:#}");
    }
}

// --- metrics known from the start ------------------------------------------------------------

/// Reload results and each plugin chain's outcomes are exposed at zero from the start (a rate or
/// an alert needs the series before its first increment), and the reload metric uses the admin
/// API's words for results.
#[tokio::test]
async fn reload_and_plugin_metrics_exist_at_zero_and_use_the_api_words() {
    let noop = manifest_dir().join("plugins/dist/noop.wasm");
    let gw = Gateway::start(&format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\nsources:\n  s: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n  d: {{ url: \"http://127.0.0.1:9/\", sign: {{ scheme: none }} }}\n\
         routes:\n  - {{ name: r, source: s, to: [d], transform: [ {{ plugin: \"{}\" }} ] }}\n",
        noop.display()
    ))
    .await;
    let admin = {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(a) = gw.stdout().lines().find_map(|l| l.strip_prefix("admin listening on ").map(str::to_string))
            {
                break a;
            }
            assert!(Instant::now() < deadline, "no admin address: {}", gw.stdout());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let metrics = || async { get(&format!("http://{admin}/metrics")).await.text() };
    let text = metrics().await;
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "hookyard_config_reloads_total{result=\"reloaded\"} 0",
        "hookyard_config_reloads_total{result=\"unchanged\"} 0",
        "hookyard_config_reloads_total{result=\"failed\"} 0",
        "hookyard_plugin_calls_total{plugin=\"noop\",outcome=\"emit\"} 0",
        "hookyard_plugin_calls_total{plugin=\"noop\",outcome=\"drop\"} 0",
        "hookyard_plugin_calls_total{plugin=\"noop\",outcome=\"trap\"} 0",
        "hookyard_plugin_calls_total{plugin=\"noop\",outcome=\"timeout\"} 0",
        "hookyard_plugin_duration_seconds_count{plugin=\"noop\"} 0",
    ] {
        assert!(lines.contains(&want), "no {want:?} in\n{text}");
    }
    let mut req = http::Request::post(format!("http://{admin}/api/v1/reload"));
    req = req.header("content-length", "0");
    let resp = http_client().request(req.body(Default::default()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = metrics().await;
    assert!(text.lines().any(|l| l == "hookyard_config_reloads_total{result=\"unchanged\"} 1"), "{text}");
}

// --- plugin test: --plugin-config ------------------------------------------------------------

/// `plugin test` takes a plugin's settings as `--plugin-config k=v` (every other `--config` is
/// the config file); the old `--config k=v` still works, with a deprecation note.
#[tokio::test]
async fn plugin_test_takes_settings_as_plugin_config() {
    let plugin = manifest_dir().join("plugins/dist/github_chat.wasm");
    let body = example("github-push.json");
    for (flag, note) in [
        ("--plugin-config", None),
        (
            "--config",
            Some("warning: `plugin test --config key=value` is deprecated: write `--plugin-config key=value`"),
        ),
    ] {
        let mut cmd = hookyard();
        cmd.args(["plugin", "test"]).arg(&plugin).arg("--body").arg(&body);
        cmd.args(["-H", "X-GitHub-Event: push", flag, "channel=#ops"]);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(0), "{flag}: {}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["outcome"]["emit"][0]["body"]["channel"], "#ops", "{flag}: {v:#}");
        let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(warnings, note.into_iter().collect::<Vec<_>>(), "{flag}");
    }
}

/// `check` reads `storage.postgres.ca_file` (relative to the config) and refuses one with
/// `sslmode=disable`; it never connects to the database.
#[tokio::test]
async fn check_reads_the_postgres_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |url: &str| {
        format!(
            "storage:\n  postgres:\n    url: \"{url}\"\n    ca_file: certs/db-ca.pem\n\
             sources:\n  s: {{ path: /in, verify: {{ scheme: none }} }}\n"
        )
    };
    let path = write_config(dir.path(), "routes.yaml", &yaml("postgres://hookyard@db.internal:5432/hooks"));
    let check = || {
        let mut cmd = hookyard();
        cmd.arg("check").arg("--config").arg(&path);
        run_cli(cmd)
    };
    let out = check().await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let ca = dir.path().join("certs/db-ca.pem");
    assert_eq!(
        out.stderr.lines().next().unwrap(),
        format!(
            "{}:4:5: storage.postgres.ca_file: cannot read {}: No such file or directory (os error 2)",
            path.display(),
            ca.display()
        )
    );
    std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["db.internal".to_string()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let out = check().await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    std::fs::write(&path, yaml("postgres://hookyard@db.internal:5432/hooks?sslmode=disable")).unwrap();
    let out = check().await;
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr.lines().next().unwrap(),
        format!(
            "{}:4:5: storage.postgres.ca_file: the url says sslmode=disable, but a ca_file means TLS: remove one of them",
            path.display()
        )
    );
}

/// `keys generate` prints a fresh ed25519 pair: the public key is the secret key's own, and two
/// runs differ.
#[tokio::test]
async fn keys_generate_prints_a_matching_ed25519_pair() {
    use base64::Engine as _;
    let mut pairs = Vec::new();
    for _ in 0..2 {
        let mut cmd = hookyard();
        cmd.args(["keys", "generate"]);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let field = |prefix: &str| {
            out.stdout.split_whitespace().find(|w| w.starts_with(prefix)).unwrap_or_else(|| panic!("{}", out.stdout))
        };
        let decode = |w: &str| base64::engine::general_purpose::STANDARD.decode(&w[5..]).unwrap();
        let seed: [u8; 32] = decode(field("whsk_")).try_into().unwrap();
        let public = decode(field("whpk_"));
        assert_eq!(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().as_bytes(), &public[..]);
        pairs.push(seed);
    }
    assert_ne!(pairs[0], pairs[1]);
}

/// `ordering:` is checked at its key (the forms it takes, a JSONPath, a header name), and
/// `dry-run` shows the key each delivery would wait in line under: from the delivered body, from
/// a header, or the one order of a destination; an event without the key is ordered under "".
#[tokio::test]
async fn ordering_is_checked_and_dry_run_shows_each_order_key() {
    let dir = tempfile::tempdir().unwrap();
    let dest = |name: &str, ordering: &str| {
        format!(
            "  {name}:\n    url: http://127.0.0.1:9/{name}\n    sign: {{ scheme: none }}\n    ordering: {ordering}\n"
        )
    };
    let broken = format!(
        "sources:\n  app: {{ path: /app, verify: {{ scheme: none }} }}\ndestinations:\n{}{}{}{}routes:\n  - {{ name: r, source: app, to: [a, b, c, d] }}\n",
        dest("a", "\"$.customer[\""),
        dest("b", "{ key: \"header:Bad Name\" }"),
        dest("c", "customer"),
        dest("d", "{ key: \"$.x\", on_dead: retry }"),
    );
    let path = write_config(dir.path(), "broken.yaml", &broken);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let f = path.display();
    let lines: Vec<String> = out.stderr.lines().map(|l| l.replace(&f.to_string(), "F")).collect();
    assert_eq!(
        lines,
        [
            "F:7:5: destinations.a.ordering: ordering \"$.customer[\" is not known: write `ordering: destination`, or `ordering: { key: \"$.path\" }` (or `key: \"header:Name\"`)",
            "F:11:17: destinations.b.ordering.key: \"Bad Name\" is not a valid header name",
            "F:15:5: destinations.c.ordering: ordering \"customer\" is not known: write `ordering: destination`, or `ordering: { key: \"$.path\" }` (or `key: \"header:Name\"`)",
            "F:19:5: destinations.d.ordering: unknown variant `retry`, expected `block` or `skip`",
            "4 problems found",
        ],
        "{}",
        out.stderr
    );
    let broken = format!(
        "sources:\n  app: {{ path: /app, verify: {{ scheme: none }} }}\ndestinations:\n{}{}routes:\n  - {{ name: r, source: app, to: [a, b] }}\n",
        dest("a", "{ key: \"$.customer[\" }"),
        dest("b", "{ key: \"customer\" }"),
    );
    let path = write_config(dir.path(), "broken2.yaml", &broken);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "{}", out.stdout);
    let lines: Vec<String> = out.stderr.lines().map(|l| l.replace(&path.display().to_string(), "F")).collect();
    assert!(lines[0].starts_with("F:7:17: destinations.a.ordering.key: "), "{}", out.stderr);
    assert_eq!(
        lines[1],
        "F:11:17: destinations.b.ordering.key: \"customer\" is neither a JSONPath (starting with `$`) nor `header:Name`"
    );

    let good = format!(
        "sources:\n  app: {{ path: /app, verify: {{ scheme: none }} }}\ndestinations:\n{}{}{}{}routes:\n  - {{ name: r, source: app, to: [by_path, by_header, whole, plain] }}\n",
        dest("by_path", "{ key: \"$.customer.id\", on_dead: skip }"),
        dest("by_header", "{ key: \"header:X-Shop\" }"),
        dest("whole", "destination"),
        "  plain:\n    url: http://127.0.0.1:9/plain\n    sign: { scheme: none }\n",
    );
    let path = write_config(dir.path(), "routes.yaml", &good);
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    for (body, header, want) in [
        (r#"{"customer": {"id": "cus_42"}}"#, "X-Shop: shop-7", ["cus_42", "shop-7", ""]),
        (r#"{"customer": {"id": 42}}"#, "X-Other: 1", ["42", "", ""]),
        ("not json", "X-Shop: s", ["", "s", ""]),
    ] {
        let body_path = write_config(dir.path(), "body.json", body);
        let mut cmd = hookyard();
        cmd.arg("dry-run").arg("--config").arg(&path).arg("--source").arg("app").arg("-H").arg(header);
        cmd.arg("--body").arg(&body_path);
        let out = run_cli(cmd).await;
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let keys: Vec<(String, Option<String>)> = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["destination"].as_str().unwrap().to_string(), d["order_key"].as_str().map(str::to_string)))
            .collect();
        let want: Vec<(String, Option<String>)> =
            [("by_path", Some(want[0])), ("by_header", Some(want[1])), ("whole", Some(want[2])), ("plain", None)]
                .iter()
                .map(|(d, k)| (d.to_string(), k.map(str::to_string)))
                .collect();
        assert_eq!(keys, want, "{body}");
    }
}
