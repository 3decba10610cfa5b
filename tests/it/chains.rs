//! Chained deliveries (`routes[].then:`) and templated destinations (`url`, `headers` and `body`
//! with `{{ $.path }}`, `{{ header:Name }}` and `{{ response.<step>:... }}`), end to end: a real
//! `hookyard run` process, real HTTP receivers on loopback, what the store says read back with
//! `hookyard event` and the admin API.
//!
//! The chain of every test: a route from `app` to `crm` (`/crm/{{ $.tenant }}/contacts`, with an
//! `X-Account` header taken from the event's), then `billing`
//! (`/billing/link/{{ response.crm:$.id }}`, with a JSON body built from crm's answer and the
//! event's `amount`). One receiver serves both paths; it answers as each test's policy says and
//! stamps every arrival and every answer on one clock, so "billing was sent after crm answered"
//! is checked at the receiver, not from the gateway's bookkeeping.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::harness::admin_api::AdminApi;
use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// The config

/// Retries of `billing` (and of `crm` unless a test says otherwise): short, no jitter.
const QUICK_RETRY: &str = "{ schedule: [100ms, 100ms], jitter: 0, throttle_floor: 0s }";

/// The chain `app` → `crm` → `billing` on a receiver at `addr`. `crm_retry` is crm's `retry:`,
/// `crm_extra` more keys of crm (`"max_in_flight: 4"`), `step` the `then:` entry as a flow map.
fn config(addr: SocketAddr, crm_retry: &str, crm_extra: &[&str], step: &str) -> String {
    config_with(addr, crm_retry, crm_extra, QUICK_RETRY, step)
}

fn config_with(addr: SocketAddr, crm_retry: &str, crm_extra: &[&str], billing_retry: &str, step: &str) -> String {
    let extra: String = crm_extra.iter().map(|l| format!("    {l}\n")).collect();
    r#"server: { listen: "127.0.0.1:0" }
egress: { allow: [127.0.0.0/8] }
sources:
  app: { path: /in, verify: { scheme: none } }
destinations:
  crm:
    url: "http://ADDR/crm/{{ $.tenant }}/contacts"
    headers: { X-Account: "{{ header:X-Account }}" }
    sign: { scheme: none }
    retry: CRM_RETRY
    breaker: { enabled: false }
CRM_EXTRA  billing:
    url: "http://ADDR/billing/link/{{ response.crm:$.id }}"
    body: '{"contact": "{{ response.crm:$.id }}", "amount": {{ $.amount }}}'
    sign: { scheme: none }
    retry: BILLING_RETRY
    breaker: { enabled: false }
routes:
  - name: signup
    source: app
    to: [crm]
    then:
      - STEP
"#
    .replace("ADDR", &addr.to_string())
    .replace("CRM_RETRY", crm_retry)
    .replace("CRM_EXTRA", &extra)
    .replace("BILLING_RETRY", billing_retry)
    .replace("STEP", step)
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// How the receiver answers one request.
#[derive(Debug, Clone)]
struct Respond {
    status: u16,
    /// Sent as `application/json` when not empty.
    body: String,
    delay: Duration,
    /// Held (after `delay`) until the test adds a permit.
    gate: Option<Arc<Semaphore>>,
}

impl Respond {
    fn json(status: u16, body: Value) -> Respond {
        Respond { status, body: body.to_string(), delay: Duration::ZERO, gate: None }
    }

    fn status(status: u16) -> Respond {
        Respond { status, body: String::new(), delay: Duration::ZERO, gate: None }
    }

    fn delayed(self, delay: Duration) -> Respond {
        Respond { delay, ..self }
    }

    fn held(self, gate: &Arc<Semaphore>) -> Respond {
        Respond { gate: Some(gate.clone()), ..self }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Hit {
    /// The path as requested, percent-encoding kept.
    path: String,
    headers: HeaderMap,
    body: String,
    /// Ticks of [`Log::clock`] at its arrival and at its answer (`None` while held, or if the
    /// gateway hung up first: the kill).
    arrived: u64,
    answered: Option<u64>,
    status: Option<u16>,
}

impl Hit {
    fn is_crm(&self) -> bool {
        self.path.starts_with("/crm/")
    }

    fn is_billing(&self) -> bool {
        self.path.starts_with("/billing/")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} sent a body that is not JSON ({e}): {:?}", self.path, self.body))
    }

    /// The event's `n` (in crm's body, the event as delivered).
    fn n(&self) -> Option<u64> {
        serde_json::from_str::<Value>(&self.body).ok()?["n"].as_u64()
    }

    fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

fn describe(hits: &[Hit]) -> String {
    hits.iter()
        .map(|h| {
            format!(
                "  {} {} arrived {} answered {} at {} body {}",
                h.path,
                h.header("x-account").unwrap_or("-"),
                h.arrived,
                h.status.map_or("-".to_string(), |s| s.to_string()),
                h.answered.map_or("-".to_string(), |t| t.to_string()),
                h.body
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default)]
struct Log {
    clock: u64,
    hits: Vec<Hit>,
}

/// The policy: the request, and how many requests to the same path came before it.
type Policy = Box<dyn Fn(&Hit, usize) -> Respond + Send + Sync>;

struct ReceiverState {
    policy: Policy,
    log: Mutex<Log>,
    /// Bumped at every arrival and every answer.
    changes: watch::Sender<u64>,
}

/// An HTTP server on `127.0.0.1:0`, for both `crm` and `billing`.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    accept: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(policy: impl Fn(&Hit, usize) -> Respond + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState {
            policy: Box::new(policy),
            log: Mutex::new(Log::default()),
            changes: watch::Sender::new(0),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(receive(state, req).await) }
                    });
                    // a connection cut by the kill is not a failure
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { addr, state, accept }
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.log.lock().unwrap().hits.clone()
    }

    /// Waits (at most `timeout`) until `done` holds for what arrived (checked at every arrival
    /// and answer); panics with what arrived.
    async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        match self.try_wait_until(timeout, done).await {
            Ok(hits) => hits,
            Err(hits) => panic!("receiver: waited {timeout:?} for {what}; it got:\n{}", describe(&hits)),
        }
    }

    async fn try_wait_until(&self, timeout: Duration, done: impl Fn(&[Hit]) -> bool) -> Result<Vec<Hit>, Vec<Hit>> {
        let mut rx = self.state.changes.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                {
                    let log = self.state.log.lock().unwrap();
                    if done(&log.hits) {
                        return log.hits.clone();
                    }
                }
                rx.changed().await.expect("the receiver lives as long as the test");
            }
        })
        .await;
        waited.map_err(|_| self.hits())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Stamps the answer of a hit when it is sent (not if hyper drops the handler: the gateway hung up).
async fn receive(state: Arc<ReceiverState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (i, respond) = {
        let mut log = state.log.lock().unwrap();
        log.clock += 1;
        let path = parts.uri.path().to_string();
        let before = log.hits.iter().filter(|h| h.path == path).count();
        let hit = Hit {
            path,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            arrived: log.clock,
            answered: None,
            status: None,
        };
        let respond = (state.policy)(&hit, before);
        log.hits.push(hit);
        (log.hits.len() - 1, respond)
    };
    state.changes.send_modify(|c| *c += 1);
    if !respond.delay.is_zero() {
        tokio::time::sleep(respond.delay).await;
    }
    if let Some(gate) = &respond.gate {
        gate.acquire().await.expect("the gate is never closed").forget();
    }
    {
        let mut log = state.log.lock().unwrap();
        log.clock += 1;
        let at = log.clock;
        log.hits[i].answered = Some(at);
        log.hits[i].status = Some(respond.status);
    }
    state.changes.send_modify(|c| *c += 1);
    let mut r = Response::builder().status(respond.status);
    if !respond.body.is_empty() {
        r = r.header("content-type", "application/json");
    }
    r.body(Full::new(Bytes::from(respond.body))).expect("valid response")
}

// ---------------------------------------------------------------------------------------------
// The gateway's side

/// `hookyard ARGS --config <the gateway's config>`.
async fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = hookyard();
    cmd.args(args).arg("--config").arg(config);
    run_cli(cmd).await
}

/// `hookyard event ID` (JSON).
async fn event(gw: &Gateway, id: &str) -> Value {
    let out = cli(&gw.config_path, &["event", id]).await;
    assert_eq!(out.code(), Some(0), "hookyard event {id}: {}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("hookyard event {id} is not JSON ({e}): {}", out.stdout))
}

/// The delivery of an event (`hookyard event` JSON) to `destination`.
fn delivery<'a>(ev: &'a Value, destination: &str) -> &'a Value {
    let all = ev["deliveries"].as_array().unwrap_or_else(|| panic!("no deliveries in {ev:#}"));
    let mut of = all.iter().filter(|d| d["destination"] == destination);
    let d = of.next().unwrap_or_else(|| panic!("no delivery to {destination} in {ev:#}"));
    assert!(of.next().is_none(), "two deliveries to {destination} in {ev:#}");
    d
}

/// Polls `hookyard event ID` (at most `timeout`) until `done` holds.
async fn wait_event(gw: &Gateway, id: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let ev = event(gw, id).await;
        if done(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what} of {id}; `hookyard event` shows {ev:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both deliveries of the event have `crm` and `billing` status.
async fn wait_statuses(gw: &Gateway, id: &str, crm: &str, billing: &str) -> Value {
    wait_event(gw, id, &format!("crm {crm}, billing {billing}"), WAIT, |ev| {
        delivery(ev, "crm")["status"] == crm && delivery(ev, "billing")["status"] == billing
    })
    .await
}

fn attempt_codes(d: &Value) -> Vec<Value> {
    d["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempt_log in {d:#}"))
        .iter()
        .map(|a| a["status_code"].clone())
        .collect()
}

fn id_of(d: &Value) -> i64 {
    d["id"].as_i64().unwrap_or_else(|| panic!("no delivery id in {d:#}"))
}

async fn post(gw: &Gateway, account: Option<&str>, body: Value) -> String {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = account {
        headers.push(("x-account", a));
    }
    gw.post("/in", &headers, body.to_string()).await.accepted_id()
}

/// crm's answer: `201 {"id": "c_<n>"}`, `n` from the event's body.
fn crm_created(hit: &Hit) -> Respond {
    let n = hit.n().unwrap_or_else(|| panic!("crm got a body without n: {:?}", hit.body));
    Respond::json(201, json!({ "id": format!("c_{n}") }))
}

// ---------------------------------------------------------------------------------------------
// The tests

/// Three events, three tenants: crm gets each on its tenant's path with the event's `X-Account`;
/// billing gets, only once crm has answered, crm's new id in its path and an exact JSON body;
/// `hookyard event` links billing to crm (`after`) and shows the rendered URLs; `dry-run` shows
/// the first step's request and the later step with no request yet.
#[tokio::test]
async fn a_chain_links_what_the_first_step_created() {
    let receiver = Receiver::start(|hit, _| if hit.is_crm() { crm_created(hit) } else { Respond::status(200) }).await;
    let addr = receiver.addr;
    let gw = Gateway::start(&config(addr, QUICK_RETRY, &[], "{ destination: billing }")).await;
    let events: [(u64, &str, &str, &str); 3] =
        [(1, "acme", "acct-1", "10"), (2, "globex", "acct-2", "250"), (3, "initech", "acct-3", "3.5")];
    let mut ids = BTreeMap::new();
    for (n, tenant, account, amount) in events {
        let body: Value =
            serde_json::from_str(&format!(r#"{{"n":{n},"tenant":"{tenant}","amount":{amount}}}"#)).unwrap();
        ids.insert(n, post(&gw, Some(account), body).await);
    }
    let hits = receiver
        .wait_until(WAIT, "3 answered billing requests", |h| {
            h.iter().filter(|h| h.is_billing() && h.delivered()).count() == 3
        })
        .await;
    let crm: Vec<&Hit> = hits.iter().filter(|h| h.is_crm()).collect();
    let billing: Vec<&Hit> = hits.iter().filter(|h| h.is_billing()).collect();
    assert_eq!((crm.len(), billing.len()), (3, 3), "one request each; got:\n{}", describe(&hits));
    for (n, tenant, account, amount) in events {
        let c = crm.iter().find(|h| h.n() == Some(n)).unwrap_or_else(|| panic!("no crm request of event {n}"));
        assert_eq!(c.path, format!("/crm/{tenant}/contacts"), "crm's path of event {n}");
        assert_eq!(c.header("x-account"), Some(account), "crm's X-Account of event {n}: {:?}", c.headers);
        let path = format!("/billing/link/c_{n}");
        let b = billing
            .iter()
            .find(|h| h.path == path)
            .unwrap_or_else(|| panic!("no billing request on {path}; got:\n{}", describe(&hits)));
        assert_eq!(b.body, format!(r#"{{"contact": "c_{n}", "amount": {amount}}}"#), "billing's body of event {n}");
        assert_eq!(b.header("content-type"), Some("application/json"), "billing's content-type: {:?}", b.headers);
        assert!(
            b.arrived > c.answered.expect("crm answered"),
            "billing of event {n} arrived (tick {}) before crm's answer (tick {:?})",
            b.arrived,
            c.answered
        );

        let ev = wait_statuses(&gw, &ids[&n], "delivered", "delivered").await;
        let (dc, db) = (delivery(&ev, "crm"), delivery(&ev, "billing"));
        assert_eq!(db["after"], dc["id"], "billing follows crm's delivery: {ev:#}");
        assert!(dc["after"].is_null(), "crm is a first step: {ev:#}");
        assert_eq!(dc["url"], format!("http://{addr}/crm/{tenant}/contacts"), "{ev:#}");
        assert_eq!(db["url"], format!("http://{addr}{path}"), "{ev:#}");
        assert_eq!(attempt_codes(dc), [json!(201)], "{ev:#}");
        assert_eq!(attempt_codes(db), [json!(200)], "{ev:#}");
        assert!(db.get("waiting").is_none_or(|w| w == false), "billing no longer waits: {ev:#}");
    }

    // dry-run: the first step's request is rendered from the event; the later step's needs crm's
    // answer, so it has none yet
    let body_path = gw.config_path.with_file_name("body.json");
    std::fs::write(&body_path, r#"{"n":9,"tenant":"acme","amount":1}"#).unwrap();
    let mut cmd = hookyard();
    cmd.args(["dry-run", "--source", "app", "-H", "X-Account: acct-9", "--body"])
        .arg(&body_path)
        .arg("--config")
        .arg(&gw.config_path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "dry-run: {}{}", out.stdout, out.stderr);
    let plan: Value = serde_json::from_str(&out.stdout).expect("dry-run prints JSON");
    let planned = plan["deliveries"].as_array().unwrap_or_else(|| panic!("no deliveries in {plan:#}"));
    assert_eq!(planned.len(), 2, "{plan:#}");
    assert_eq!(planned[0]["destination"], "crm", "{plan:#}");
    assert_eq!(planned[0]["request"]["url"], format!("http://{addr}/crm/acme/contacts"), "{plan:#}");
    assert_eq!(planned[0]["request"]["headers"]["x-account"], "acct-9", "{plan:#}");
    assert!(planned[0].get("after").is_none(), "{plan:#}");
    assert_eq!(planned[1]["destination"], "billing", "{plan:#}");
    assert_eq!(planned[1]["after"], "crm", "{plan:#}");
    assert_eq!(planned[1]["request"], Value::Null, "{plan:#}");
    assert_eq!(receiver.hits().len(), 6, "dry-run sends nothing");

    // history cannot be sent straight to a step that reads an answer only its chain has
    let out = cli(&gw.config_path, &["replay", "--reroute", "--since", "1h", "--to", "billing", "--dry-run"]).await;
    assert_eq!(out.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr,
        "error: destination \"billing\" reads the answer of step \"crm\", which only a chain has: use --route with the route whose then: sends to it\n"
    );
}

/// crm answers 503, 503, then 201: billing waits (pending, `waiting`, no `next_at_ms`) through
/// crm's retries, and is sent once, after crm's 201, with its id.
#[tokio::test]
async fn a_failing_first_step_holds_the_next_until_it_recovers() {
    // crm's third answer (the 201) is held until the test has looked at the store
    let gate = Arc::new(Semaphore::new(0));
    let receiver = {
        let gate = gate.clone();
        Receiver::start(move |hit, before| match (hit.is_crm(), before) {
            (true, 0 | 1) => Respond::status(503),
            (true, _) => crm_created(hit).held(&gate),
            (false, _) => Respond::status(200),
        })
        .await
    };
    let gw = Gateway::start(&config(receiver.addr, QUICK_RETRY, &[], "{ destination: billing }")).await;
    let id = post(&gw, Some("acct-7"), json!({"n": 7, "tenant": "acme", "amount": 42})).await;

    // crm's third attempt is held: two 503s recorded, billing waits
    receiver.wait_until(WAIT, "crm's 3rd attempt", |h| h.iter().filter(|h| h.is_crm()).count() == 3).await;
    let ev = wait_event(&gw, &id, "crm's 2nd attempt recorded", WAIT, |ev| delivery(ev, "crm")["attempts"] == 2).await;
    let (dc, db) = (delivery(&ev, "crm"), delivery(&ev, "billing"));
    assert!(receiver.hits().iter().all(Hit::is_crm), "billing sent before crm's 201:\n{}", describe(&receiver.hits()));
    assert_eq!(dc["status"], "pending", "{ev:#}");
    assert_eq!(attempt_codes(dc), [json!(503), json!(503)], "{ev:#}");
    assert_eq!(db["status"], "pending", "{ev:#}");
    assert_eq!(db["waiting"], true, "{ev:#}");
    assert_eq!(db["next_at_ms"], Value::Null, "{ev:#}");
    assert_eq!(db["after"], dc["id"], "{ev:#}");
    assert_eq!(db["attempts"], 0, "{ev:#}");
    assert_eq!(db["attempt_log"], json!([]), "{ev:#}");
    // `hookyard events` shows the step waiting, and after which delivery
    let out = cli(&gw.config_path, &["events", "--destination", "billing"]).await;
    let listing = &out.stdout;
    let line = listing.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no line for {id}:\n{listing}"));
    assert!(line.contains(" waiting ") && line.ends_with(&format!("[after {}]", dc["id"])), "{listing}");
    gate.add_permits(1);

    receiver.wait_until(WAIT, "billing answered", |h| h.iter().any(|h| h.is_billing() && h.delivered())).await;
    let ev = wait_statuses(&gw, &id, "delivered", "delivered").await;
    assert_eq!(attempt_codes(delivery(&ev, "crm")), [json!(503), json!(503), json!(201)], "{ev:#}");
    assert_eq!(attempt_codes(delivery(&ev, "billing")), [json!(200)], "{ev:#}");
    let hits = receiver.hits();
    let crm: Vec<&Hit> = hits.iter().filter(|h| h.is_crm()).collect();
    let billing: Vec<&Hit> = hits.iter().filter(|h| h.is_billing()).collect();
    assert_eq!(crm.iter().map(|h| h.status.unwrap()).collect::<Vec<_>>(), [503, 503, 201], "{}", describe(&hits));
    for c in &crm {
        // the rendered request is stored: every retry sends the same one
        assert_eq!(
            (c.path.as_str(), c.header("x-account"), c.body.as_str()),
            ("/crm/acme/contacts", Some("acct-7"), crm[0].body.as_str())
        );
    }
    assert_eq!(billing.len(), 1, "billing sent once:\n{}", describe(&hits));
    assert_eq!(billing[0].path, "/billing/link/c_7");
    assert_eq!(billing[0].body, r#"{"contact": "c_7", "amount": 42}"#);
    assert!(billing[0].arrived > crm[2].answered.unwrap(), "billing after crm's 201:\n{}", describe(&hits));
}

/// crm always answers 503: it ends dead after its retries and billing is `skipped` with the
/// reason, never sent. Replaying billing is refused (CLI and admin API: it was never sent, it
/// needs crm's answer); once crm works, replaying crm resumes the chain: billing is sent with
/// crm's new id.
#[tokio::test]
async fn a_dead_first_step_skips_the_next_and_a_replay_resumes_it() {
    let broken = Arc::new(AtomicBool::new(true));
    let receiver = {
        let broken = broken.clone();
        Receiver::start(move |hit, before| {
            if !hit.is_crm() {
                Respond::status(200)
            } else if broken.load(Ordering::SeqCst) {
                Respond::status(503)
            } else {
                // a new id per attempt: the replay's answer is not the first one's
                Respond::json(201, json!({ "id": format!("c_{}_{}", hit.n().unwrap(), before + 1) }))
            }
        })
        .await
    };
    let gw = Gateway::start(&config(receiver.addr, QUICK_RETRY, &[], "{ destination: billing }")).await;
    let admin = AdminApi::of(&gw).await;
    let id = post(&gw, Some("acct-1"), json!({"n": 1, "tenant": "acme", "amount": 5})).await;

    let ev = wait_statuses(&gw, &id, "dead", "skipped").await;
    let (dc, db) = (delivery(&ev, "crm"), delivery(&ev, "billing"));
    let crm_id = id_of(dc);
    let billing_id = id_of(db);
    assert_eq!(attempt_codes(dc), [json!(503), json!(503), json!(503)], "{ev:#}");
    let crm_error = dc["last_error"].as_str().unwrap_or_else(|| panic!("crm has no last_error: {ev:#}"));
    assert_eq!(db["last_error"], format!("crm (delivery {crm_id}) ended dead: {crm_error}"), "{ev:#}");
    assert_eq!(db["after"], crm_id, "{ev:#}");
    assert_eq!(db["attempts"], 0, "{ev:#}");
    assert!(receiver.hits().iter().all(Hit::is_crm), "billing was sent:\n{}", describe(&receiver.hits()));

    // billing alone cannot be replayed: it never had the answer it is built from
    let refused = cli(&gw.config_path, &["replay", &billing_id.to_string()]).await;
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert_ne!(refused.code(), Some(0), "replay of a skipped later step must be refused: {said}");
    assert!(said.contains("is a later step that was never sent"), "{said}");
    assert!(said.contains(&format!("replay {crm_id} to resume the chain")), "{said}");
    let api = admin.post("/api/v1/replay", &json!({"ids": [billing_id.to_string()]}).to_string()).await;
    assert_eq!(api.status, 409, "admin replay of billing: {}", api.text());
    assert!(api.text().contains("is a later step that was never sent"), "{}", api.text());
    let ev = event(&gw, &id).await;
    assert_eq!(delivery(&ev, "billing")["status"], "skipped", "a refused replay changes nothing: {ev:#}");

    // crm works again: replaying it resumes the chain
    broken.store(false, Ordering::SeqCst);
    let replayed = cli(&gw.config_path, &["replay", &crm_id.to_string()]).await;
    assert_eq!(replayed.code(), Some(0), "replay {crm_id}: {}{}", replayed.stdout, replayed.stderr);
    let hits =
        receiver.wait_until(WAIT, "billing answered", |h| h.iter().any(|h| h.is_billing() && h.delivered())).await;
    let crm: Vec<&Hit> = hits.iter().filter(|h| h.is_crm()).collect();
    let billing: Vec<&Hit> = hits.iter().filter(|h| h.is_billing()).collect();
    assert_eq!(crm.iter().map(|h| h.status.unwrap()).collect::<Vec<_>>(), [503, 503, 503, 201], "{}", describe(&hits));
    assert_eq!(billing.len(), 1, "{}", describe(&hits));
    assert_eq!(billing[0].path, "/billing/link/c_1_4", "built from the replay's answer");
    assert_eq!(billing[0].body, r#"{"contact": "c_1_4", "amount": 5}"#);
    assert!(billing[0].arrived > crm[3].answered.unwrap(), "{}", describe(&hits));
    let ev = wait_statuses(&gw, &id, "delivered", "delivered").await;
    let db = delivery(&ev, "billing");
    assert_eq!(db["url"], format!("http://{}/billing/link/c_1_4", receiver.addr), "{ev:#}");
    assert_eq!(id_of(db), billing_id, "the same delivery resumed: {ev:#}");
    assert_eq!(db["after"], crm_id, "{ev:#}");
}

/// `status: [201]` and `when:` on crm's response: 201 with `ok: true` lets billing go; 201 with
/// `ok: false` skips it (`then.when`); 200 skips it (`then.status`). Skipped ones are never sent.
#[tokio::test]
async fn conditions_on_the_response_decide_the_next_step() {
    let receiver = Receiver::start(|hit, _| {
        if !hit.is_crm() {
            return Respond::status(200);
        }
        let n = hit.n().unwrap();
        match n {
            1 => Respond::json(201, json!({"id": "c_1", "ok": true})),
            2 => Respond::json(201, json!({"id": "c_2", "ok": false})),
            _ => Respond::json(200, json!({"id": format!("c_{n}"), "ok": true})),
        }
    })
    .await;
    let step = r#"{ destination: billing, status: [201], when: [{ path: "$.ok", equals: true }] }"#;
    let gw = Gateway::start(&config(receiver.addr, QUICK_RETRY, &[], step)).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(post(&gw, Some("acct"), json!({"n": n, "tenant": "acme", "amount": n})).await);
    }
    let ev1 = wait_statuses(&gw, &ids[0], "delivered", "delivered").await;
    let ev2 = wait_statuses(&gw, &ids[1], "delivered", "skipped").await;
    let ev3 = wait_statuses(&gw, &ids[2], "delivered", "skipped").await;
    assert_eq!(delivery(&ev1, "billing")["url"], format!("http://{}/billing/link/c_1", receiver.addr), "{ev1:#}");

    let crm2 = id_of(delivery(&ev2, "crm"));
    let why2 = delivery(&ev2, "billing")["last_error"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        why2,
        format!("the conditions on the response of crm (delivery {crm2}) (then.when) do not hold"),
        "{ev2:#}"
    );
    let crm3 = id_of(delivery(&ev3, "crm"));
    let why3 = delivery(&ev3, "billing")["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why3.contains("then.status") && why3.contains("answered 200"), "{ev3:#}");
    assert_eq!(why3, format!("crm (delivery {crm3}) answered 200, not one of [201] (then.status)"), "{ev3:#}");
    for ev in [&ev2, &ev3] {
        assert_eq!(delivery(ev, "billing")["attempts"], 0, "{ev:#}");
    }
    let billing: Vec<Hit> = receiver.hits().into_iter().filter(Hit::is_billing).collect();
    assert_eq!(billing.len(), 1, "only event 1's billing is sent:\n{}", describe(&billing));
    assert_eq!(billing[0].path, "/billing/link/c_1");
    // an on-call engineer sees the steps not sent in the deliveries metric
    let m = AdminApi::of(&gw).await.metrics().await;
    let outcome = |o| m.get("hookyard_deliveries_total", &[("destination", "billing"), ("outcome", o)]);
    assert_eq!((outcome("skipped"), outcome("delivered")), (2.0, 1.0));
}

/// A path placeholder's value is percent-encoded into one segment; a missing, null or object value
/// fails the delivery when it is planned, nothing sent, with a reason naming the placeholder; the
/// step after it fails too, as its step before it was not sent.
#[tokio::test]
async fn templates_escape_values_and_a_missing_value_fails_the_delivery() {
    let receiver = Receiver::start(|hit, _| if hit.is_crm() { crm_created(hit) } else { Respond::status(200) }).await;
    let gw = Gateway::start(&config(receiver.addr, QUICK_RETRY, &[], "{ destination: billing }")).await;
    let escaped = post(&gw, Some("acct-1"), json!({"n": 1, "tenant": "a/../b?x", "amount": 1})).await;
    let missing = post(&gw, Some("acct-2"), json!({"n": 2, "amount": 2})).await;
    let null = post(&gw, Some("acct-3"), json!({"n": 3, "tenant": null, "amount": 3})).await;
    let spaced = post(&gw, Some("acct-4"), json!({"n": 4, "tenant": "é x#y", "amount": 4})).await;
    let object = post(&gw, Some("acct-5"), json!({"n": 5, "tenant": {"id": 1}, "amount": 5})).await;

    receiver
        .wait_until(WAIT, "billing of events 1 and 4 answered", |h| {
            ["/billing/link/c_1", "/billing/link/c_4"].iter().all(|p| h.iter().any(|h| h.path == *p && h.delivered()))
        })
        .await;
    let ev = wait_statuses(&gw, &escaped, "delivered", "delivered").await;
    let addr = receiver.addr;
    assert_eq!(delivery(&ev, "crm")["url"], format!("http://{addr}/crm/a%2F..%2Fb%3Fx/contacts"), "{ev:#}");
    let ev = wait_statuses(&gw, &spaced, "delivered", "delivered").await;
    assert_eq!(delivery(&ev, "crm")["url"], format!("http://{addr}/crm/%C3%A9%20x%23y/contacts"), "{ev:#}");

    let ev = wait_statuses(&gw, &missing, "failed", "failed").await;
    let (dc, db) = (delivery(&ev, "crm"), delivery(&ev, "billing"));
    let reason = "destinations.crm: url: {{ $.tenant }}: the body has no value there";
    assert_eq!(dc["last_error"], reason, "{ev:#}");
    assert_eq!(dc["attempts"], 0, "{ev:#}");
    assert_eq!(db["last_error"], format!("the step before it was not sent: {reason}"), "{ev:#}");
    assert_eq!(db["attempts"], 0, "{ev:#}");
    assert_eq!(db["after"], dc["id"], "{ev:#}");

    let ev = wait_statuses(&gw, &null, "failed", "failed").await;
    assert_eq!(delivery(&ev, "crm")["last_error"], reason, "null is no value: {ev:#}");
    assert_eq!(delivery(&ev, "billing")["last_error"], format!("the step before it was not sent: {reason}"), "{ev:#}");
    let ev = wait_statuses(&gw, &object, "failed", "failed").await;
    let reason = "destinations.crm: url: {{ $.tenant }}: is an object; a URL takes text";
    assert_eq!(delivery(&ev, "crm")["last_error"], reason, "{ev:#}");
    assert_eq!(delivery(&ev, "billing")["last_error"], format!("the step before it was not sent: {reason}"), "{ev:#}");

    // the receiver: what it got, as requested (raw paths), and nothing of events 2, 3 and 5
    let hits = receiver.hits();
    let mut paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["/billing/link/c_1", "/billing/link/c_4", "/crm/%C3%A9%20x%23y/contacts", "/crm/a%2F..%2Fb%3Fx/contacts"],
        "{}",
        describe(&hits)
    );
}

/// Events of [`kill_9_between_steps_loses_nothing`].
const KILL_EVENTS: u64 = 40;

/// 40 events through the chain, crm slow and failing a third of the time, billing failing some
/// of the time; the gateway is killed (SIGKILL) twice and started again on the same store: once
/// at a random point, once right as crm answers a 2xx (before billing could be released).
/// Every event ends with crm delivered and billing delivered on that event's crm id; billing is
/// never sent before a 2xx of its crm; duplicates (at-least-once) are counted, losses must be 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_steps_loses_nothing() {
    kill_9_between_steps(String::new()).await
}

/// The same on PostgreSQL: the settle of crm and the release of billing are one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_steps_loses_nothing_on_postgres() {
    let schema = crate::harness::postgres::PgSchema::new();
    // the restarted instance keeps its node id (its port changes): it takes its own leases back at once
    kill_9_between_steps(schema.storage_yaml_with("node_id: chains-kill")).await
}

/// `storage`: the `storage:` section of the config (empty: the SQLite file).
async fn kill_9_between_steps(storage: String) {
    const EVENTS: u64 = KILL_EVENTS;
    let receiver = Receiver::start(|hit, _| {
        let fail = |rate| fastrand::f64() < rate;
        if hit.is_crm() {
            let delay = Duration::from_millis(fastrand::u64(20..=120));
            if fail(0.3) { Respond::status(503).delayed(delay) } else { crm_created(hit).delayed(delay) }
        } else if fail(0.2) {
            Respond::status(503)
        } else {
            Respond::status(200).delayed(Duration::from_millis(fastrand::u64(0..=20)))
        }
    })
    .await;
    // 12 retries: at a 30% failure rate no delivery dies (0.3^13)
    let retry = concat!(
        "{ schedule: [50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms, 50ms], ",
        "jitter: 0, throttle_floor: 0s }"
    );
    let yaml =
        config_with(receiver.addr, retry, &["max_in_flight: 4", "timeout_ms: 2000"], retry, "{ destination: billing }")
            + &storage;
    let mut gw = Gateway::start(&yaml).await;
    let mut ids = BTreeMap::new();
    for n in 0..EVENTS {
        let body = json!({"n": n, "tenant": format!("t{}", n % 5), "amount": n});
        ids.insert(n, post(&gw, Some(&format!("acct-{n}")), body).await);
    }
    let billed = |h: &[Hit]| {
        h.iter()
            .filter(|h| h.is_billing() && h.delivered())
            .map(|h| h.json()["amount"].as_u64())
            .collect::<BTreeSet<_>>()
    };
    // kill 1: at a random point, once a quarter of the events are billed
    receiver
        .wait_until(Duration::from_secs(20), "a quarter of the events billed", |h| billed(h).len() as u64 >= EVENTS / 4)
        .await;
    let mut kills = Vec::new();
    kills.push(kill_and_restart(&mut gw, &receiver, &billed).await);
    // kill 2: right as crm answers a 2xx (between crm's answer and the release of billing), once
    // half are billed
    let hits = receiver
        .wait_until(Duration::from_secs(20), "half of the events billed", |h| billed(h).len() as u64 >= EVENTS / 2)
        .await;
    let crm_ok = |h: &[Hit]| h.iter().filter(|h| h.is_crm() && h.delivered()).count();
    let before = crm_ok(&hits);
    let _ = receiver.try_wait_until(Duration::from_secs(5), |h| crm_ok(h) > before).await;
    kills.push(kill_and_restart(&mut gw, &receiver, &billed).await);

    let all = receiver
        .try_wait_until(Duration::from_secs(25), |h| billed(h).len() as u64 == EVENTS)
        .await
        .unwrap_or_else(|h| {
            let got = billed(&h);
            let lost: Vec<u64> = (0..EVENTS).filter(|n| !got.contains(&Some(*n))).collect();
            panic!(
                "events never billed after the restart: {lost:?}; gateway stderr:\n{}\nreceiver:\n{}",
                gw.logs(),
                describe(&h)
            )
        });

    // per event, at the receiver
    let mut failures = Vec::new();
    let (mut crm_dupes, mut billing_dupes) = (0, 0);
    for n in 0..EVENTS {
        let crm: Vec<&Hit> = all.iter().filter(|h| h.is_crm() && h.n() == Some(n)).collect();
        let billing: Vec<&Hit> = all.iter().filter(|h| h.is_billing() && h.json()["amount"] == n).collect();
        let crm_ok: Vec<&&Hit> = crm.iter().filter(|h| h.delivered()).collect();
        let billing_ok: Vec<&&Hit> = billing.iter().filter(|h| h.delivered()).collect();
        crm_dupes += crm_ok.len().saturating_sub(1);
        billing_dupes += billing_ok.len().saturating_sub(1);
        if crm_ok.is_empty() {
            failures.push(format!("event {n}: crm never answered 2xx"));
        }
        if billing_ok.is_empty() {
            failures.push(format!("event {n}: billing never answered 2xx"));
        }
        let tenant = format!("/crm/t{}/contacts", n % 5);
        if let Some(h) = crm.iter().find(|h| h.path != tenant || h.header("x-account") != Some(&format!("acct-{n}"))) {
            failures.push(format!("event {n}: crm request {} {:?}", h.path, h.header("x-account")));
        }
        let first_crm_ok = crm_ok.iter().filter_map(|h| h.answered).min().unwrap_or(u64::MAX);
        for b in &billing {
            if b.path != format!("/billing/link/c_{n}") || b.body != format!(r#"{{"contact": "c_{n}", "amount": {n}}}"#)
            {
                failures.push(format!("event {n}: billing request {} {}", b.path, b.body));
            }
            if b.arrived < first_crm_ok {
                failures.push(format!(
                    "event {n}: billing arrived at tick {} before crm's first 2xx (tick {first_crm_ok})",
                    b.arrived
                ));
            }
        }
    }

    // per event, in the store (the restarted gateway's admin API)
    let admin = AdminApi::of(&gw).await;
    for (n, id) in &ids {
        let ev = admin
            .wait_json(&format!("/api/v1/events/{id}"), "crm and billing delivered", WAIT, |ev| {
                ev["deliveries"]
                    .as_array()
                    .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["status"] == "delivered"))
            })
            .await;
        let (dc, db) = (delivery(&ev, "crm"), delivery(&ev, "billing"));
        if db["after"] != dc["id"] || db["url"] != format!("http://{}/billing/link/c_{n}", receiver.addr) {
            failures.push(format!("event {n}: billing in the store {db:#}"));
        }
    }
    println!(
        "chains kill -9: {EVENTS} events; at each kill (events billed, crm requests cut so far): {kills:?}; \
         after the restarts: lost 0, duplicates crm {crm_dupes}, billing {billing_dupes}; receiver requests {}",
        all.len()
    );
    assert!(failures.is_empty(), "{}\nreceiver:\n{}", failures.join("\n"), describe(&all));
}

/// SIGKILL, then the gateway again on the same store; returns, as of the kill, the events billed
/// and the crm requests never answered so far (cut by this kill or an earlier one).
async fn kill_and_restart(
    gw: &mut Gateway,
    receiver: &Receiver,
    billed: &impl Fn(&[Hit]) -> BTreeSet<Option<u64>>,
) -> (usize, usize) {
    gw.process.kill().await;
    let at_kill = receiver.hits();
    let billed_at_kill = billed(&at_kill).len();
    let crm_held = at_kill.iter().filter(|h| h.is_crm() && h.answered.is_none()).count();
    assert!((billed_at_kill as u64) < KILL_EVENTS, "the kill came after everything was billed: it tested nothing");
    gw.restart().await;
    (billed_at_kill, crm_held)
}

/// `hookyard check` refuses templates and chains that cannot work, each problem with its place
/// and key: a placeholder in the port, a step reading the response of a step not before it, a
/// first destination reading a response.
#[tokio::test]
async fn check_refuses_templates_and_chains_that_cannot_work() {
    let yaml = r#"server: { listen: "127.0.0.1:0" }
egress: { allow: [127.0.0.0/8] }
sources:
  app: { path: /in, verify: { scheme: none } }
destinations:
  x:
    url: "http://127.0.0.1:{{ $.p }}/x"
    sign: { scheme: none }
  crm:
    url: "http://127.0.0.1:9/crm"
    sign: { scheme: none }
  billing:
    url: "http://127.0.0.1:9/billing/{{ response.crm:$.id }}"
    sign: { scheme: none }
  ledger:
    url: "http://127.0.0.1:9/ledger/{{ response.billing:$.id }}"
    sign: { scheme: none }
routes:
  - name: ports
    source: app
    to: [x]
  - name: backwards
    source: app
    to: [crm]
    then:
      - destination: ledger
      - destination: billing
  - name: first
    source: app
    to: [billing]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = hookyard();
    cmd.arg("check").arg("--config").arg(&path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(1), "stdout {:?} stderr {:?}", out.stdout, out.stderr);
    let f = path.display();
    let lines: Vec<&str> = out.stderr.lines().collect();
    let want = [
        format!("{f}:7:5: destinations.x.url: {{{{ $.p }}}}: the port cannot be a placeholder"),
        format!(
            "{f}:26:9: routes[1].then[0].destination: destination \"ledger\" reads the response of \"billing\", which is not a step before it in this route"
        ),
        format!(
            "{f}:30:10: routes[2].to[0]: destination \"billing\" reads the response of \"crm\": it can only be a step after it (then:), not a first destination"
        ),
        "3 problems found".to_string(),
    ];
    assert_eq!(lines, want, "stderr:\n{}", out.stderr);
}

/// A templated host: events name their host (`127.0.0.{{ $.host }}`, a loopback address each),
/// each host gets its own connection pool, at most `max_hosts: 1` at a time (so the pools are
/// dropped and made again as hosts alternate), and every request arrives at its host. A host the
/// egress guard refuses (outside `egress.allow`) is refused at the attempt like a configured one:
/// the delivery fails with the guard's reason, nothing is sent.
#[tokio::test]
async fn a_templated_host_gets_its_own_pool_and_passes_the_egress_guard() {
    // two receivers on one port, on 127.0.0.2 and 127.0.0.3
    let (a, b) = 'bind: {
        for _ in 0..20 {
            let a = Sink::at("127.0.0.2:0", Vec::new()).await.expect("bind 127.0.0.2");
            if let Ok(b) = Sink::at(&format!("127.0.0.3:{}", a.addr.port()), Vec::new()).await {
                break 'bind (a, b);
            }
        }
        panic!("no port free on both 127.0.0.2 and 127.0.0.3");
    };
    let yaml = format!(
        r#"server: {{ listen: "127.0.0.1:0" }}
egress: {{ allow: [127.0.0.2/32, 127.0.0.3/32] }}
sources:
  app: {{ path: /in, verify: {{ scheme: none }} }}
destinations:
  tenants:
    url: "http://127.0.0.{{{{ $.host }}}}:{port}/in/{{{{ $.tenant }}}}"
    max_hosts: 1
    sign: {{ scheme: none }}
    retry: {{ schedule: [100ms], jitter: 0, throttle_floor: 0s }}
routes:
  - {{ name: all, source: app, to: [tenants] }}
"#,
        port = a.addr.port()
    );
    let gw = Gateway::start(&yaml).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let host = if n % 2 == 0 { 2 } else { 3 };
        ids.push(post(&gw, None, json!({"host": host, "tenant": format!("t{n}")})).await);
    }
    let to_a = a.wait_for(3, WAIT).await;
    let to_b = b.wait_for(3, WAIT).await;
    let paths = |r: &[Recorded]| r.iter().map(|r| r.path.clone()).collect::<BTreeSet<_>>();
    assert_eq!(paths(&to_a), ["/in/t0", "/in/t2", "/in/t4"].map(String::from).into());
    assert_eq!(paths(&to_b), ["/in/t1", "/in/t3", "/in/t5"].map(String::from).into());
    for (n, id) in ids.iter().enumerate() {
        let ev = wait_event(&gw, id, "delivered", WAIT, |ev| delivery(ev, "tenants")["status"] == "delivered").await;
        let host = if n % 2 == 0 { 2 } else { 3 };
        assert_eq!(delivery(&ev, "tenants")["url"], format!("http://127.0.0.{host}:{}/in/t{n}", a.addr.port()));
    }
    // a host outside egress.allow: refused at the attempt, failed with the guard's reason
    let id = post(&gw, None, json!({"host": 4, "tenant": "x"})).await;
    let ev = wait_event(&gw, &id, "failed", WAIT, |ev| delivery(ev, "tenants")["status"] == "failed").await;
    let d = delivery(&ev, "tenants");
    assert_eq!(d["url"], format!("http://127.0.0.4:{}/in/x", a.addr.port()), "{ev:#}");
    let error = d["last_error"].as_str().unwrap_or_default();
    assert!(error.starts_with("egress refused: 127.0.0.4") && error.contains("loopback"), "{ev:#}");
    // a host value that is not one DNS label never renders a request
    let id = post(&gw, None, json!({"host": "2.evil.example", "tenant": "x"})).await;
    let ev = wait_event(&gw, &id, "failed", WAIT, |ev| delivery(ev, "tenants")["status"] == "failed").await;
    assert_eq!(
        delivery(&ev, "tenants")["last_error"],
        "destinations.tenants: url: {{ $.host }}: \"2.evil.example\" is not one DNS label (letters, digits and '-', at most 63)",
        "{ev:#}"
    );
    assert_eq!((a.requests().len(), b.requests().len()), (3, 3), "nothing else was sent");
}
