//! Logs as docs/operations.md promises them: `--log-format json` gives one JSON object per line with the
//! event span's fields, bodies appear only at debug level with `server.log_redact` paths masked,
//! and secrets and signature values never appear.

use crate::harness::*;
use serde_json::Value;

#[tokio::test]
async fn json_logs_redact_bodies_and_never_show_secrets() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
server: {{ listen: "127.0.0.1:0", log_redact: ["$.customer.email"] }}
admin: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: ["127.0.0.0/8"] }}
sources:
  gh: {{ path: /in, verify: {{ scheme: github, secret: "very-secret-value" }} }}
destinations:
  out: {{ url: "{url}", sign: {{ secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw }} }}
routes:
  - {{ name: all, source: gh, to: [out] }}
"#,
            url = sink.url("/out")
        ),
    )
    .unwrap();
    let mut cmd = hookyard();
    cmd.env("RUST_LOG", "hookyard=debug").args(["--log-format", "json", "run", "--config"]).arg(&config);
    let gw = Process::spawn(cmd, dir.path().join("stderr.log")).await;

    let body = r#"{"customer":{"email":"jane@example.com","name":"Jane"}}"#;
    let signature = github_signature("very-secret-value", body.as_bytes());
    let client = http_client();
    let req = http::Request::post(format!("http://{}/in", gw.addr))
        .header("x-hub-signature-256", &signature)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 202);
    sink.wait_for(1, WAIT).await;
    gw.wait_for_log("delivered", WAIT).await;

    let logs = gw.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let body_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "event body")
        .unwrap_or_else(|| panic!("no debug body line in:\n{logs}"));
    let logged: Value = serde_json::from_str(body_line["fields"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(logged["customer"]["email"], "[redacted]");
    assert_eq!(logged["customer"]["name"], "Jane");
    assert_eq!(body_line["span"]["source"], "gh", "the event span's fields are on the line");
    assert!(!logs.contains("jane@example.com"), "a redacted value reached the logs");
    assert!(!logs.contains("very-secret-value"), "the secret reached the logs");
    let hex = signature.trim_start_matches("sha256=");
    assert!(!logs.contains(hex), "the sender's signature reached the logs");
}
