//! Crash safety: every event that got a `202` reaches every destination it was routed to at least
//! once, although the gateway is killed with SIGKILL mid-load (twice) and restarted on the same
//! database each time. Counted at the receivers, never from the gateway's own bookkeeping.
//!
//! The load is bounded ([`EVENTS`] events from [`SENDERS`] concurrent senders, each body carrying
//! a unique sequence number); the two receivers answer `503` to about [`FAIL_RATE`] of attempts
//! and hold every answer back up to [`MAX_DELAY_MS`], so the kills always find deliveries in
//! flight and retries waiting. Only a `202` makes an event required; a request cut off by a kill
//! is simply not counted (it may still arrive: the commit can precede the lost answer).
//! Duplicates are allowed (at-least-once) and reported, counted by `webhook-id`, which must stay
//! the same for an event and destination across retries and restarts.
//!
//! This file has its own small harness rather than the harness's `Gateway`: it needs SIGKILL and a
//! wait for the process to be gone before the next one opens the database, and a receiver that
//! fails at random.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Events posted in all.
const EVENTS: u64 = 2_500;
/// Senders posting at once.
const SENDERS: usize = 16;
/// The gateway is killed when the load has started these shares of [`EVENTS`].
const KILL_AT: [f64; 2] = [0.30, 0.65];
/// Share of attempts a receiver answers with `503`.
const FAIL_RATE: f64 = 0.3;
/// Longest time a receiver holds an answer back (uniformly random from 0).
const MAX_DELAY_MS: u64 = 50;
/// Bound of the load phase (posting, kills and restarts).
const LOAD_TIMEOUT: Duration = Duration::from_secs(40);
/// Bound of the wait, after the load, for every accepted event to reach both receivers. The retry
/// schedule below sums to 13.5 s, so 40 s is far more than any delivery needs.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest time the gateway gets to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one ingress request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Missing sequence numbers listed in a failure message.
const SHOW_MISSING: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_mid_load() {
    kill_9_mid_load("storage: { path: hookyard.db, sync: full }\n".to_string()).await
}

/// The same on PostgreSQL (synchronous_commit on, the server's default), in a schema of its own.
/// The restarted gateway has the killed one's instance id (as one listening on a fixed port has
/// by default; this one listens on port 0), so it takes back the deliveries the killed one had
/// leased at once, not when their leases run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_mid_load_on_postgres() {
    let schema = crate::harness::postgres::PgSchema::new();
    kill_9_mid_load(schema.storage_yaml_with("node_id: crash-test")).await
}

/// The load, the kills and the count at the receivers, with the store `storage` (a config line).
async fn kill_9_mid_load(storage: String) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    // Which gateway process (0, 1, 2) sent a request: bumped between a kill and the next start.
    let run = Arc::new(AtomicUsize::new(0));
    let receivers = [Receiver::start("a", run.clone()).await, Receiver::start("b", run.clone()).await];
    let config = dir.path().join("hookyard.yaml");
    std::fs::write(&config, config_yaml(&receivers, &storage)).expect("write config");

    let mut logs = vec![dir.path().join("gateway-0.log")];
    let mut gateway = Gateway::start(&config, logs[0].clone()).await;
    let (addr_tx, addr_rx) = watch::channel(Some(gateway.addr));
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel();
    let load = Arc::new(Load::default());
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let kill_points: Vec<u64> = KILL_AT.iter().map(|share| (EVENTS as f64 * share) as u64).collect();

    let senders: Vec<JoinHandle<()>> = (0..SENDERS)
        .map(|_| {
            let load = load.clone();
            let client = client.clone();
            let addr = addr_rx.clone();
            let kill = kill_tx.clone();
            let kill_points = kill_points.clone();
            tokio::spawn(async move { send_events(load, client, addr, kill, kill_points).await })
        })
        .collect();
    drop(kill_tx);

    // Kill and restart on each signal from the senders, while they go on; then wait for them.
    let mut kills = Vec::new();
    let load_phase = async {
        while let Some(seq) = kill_rx.recv().await {
            addr_tx.send_replace(None);
            let in_flight = load.in_flight.load(Ordering::SeqCst);
            let accepted = load.accepted.lock().unwrap().clone();
            let outstanding: Vec<usize> = receivers.iter().map(|r| r.missing(&accepted).len()).collect();
            gateway.kill().await;
            run.fetch_add(1, Ordering::SeqCst);
            let log = dir.path().join(format!("gateway-{}.log", logs.len()));
            logs.push(log.clone());
            gateway = Gateway::start(&config, log).await;
            addr_tx.send_replace(Some(gateway.addr));
            kills.push(format!(
                "at event {seq}: {in_flight} request(s) in flight, {} accepted, undelivered per receiver {outstanding:?}",
                accepted.len()
            ));
            if outstanding.iter().all(|n| *n > 0) {
                load.kills_with_work.fetch_add(1, Ordering::SeqCst);
            }
        }
        for s in senders {
            s.await.expect("a sender panicked");
        }
    };
    tokio::time::timeout(LOAD_TIMEOUT, load_phase)
        .await
        .unwrap_or_else(|_| panic!("the load did not finish within {LOAD_TIMEOUT:?}"));
    let load_done = Instant::now();
    for k in &kills {
        eprintln!("crash: kill {k}");
    }
    assert_eq!(kills.len(), KILL_AT.len(), "every planned kill happened");
    assert!(
        load.kills_with_work.load(Ordering::SeqCst) > 0,
        "no kill found deliveries outstanding, so none tested recovery: {kills:?}"
    );

    // Only 202s are required; refused and cut-off requests are not.
    let accepted = load.accepted.lock().unwrap().clone();
    let refused = load.refused.lock().unwrap().clone();
    let cut_off = load.errors.load(Ordering::SeqCst);
    assert!(refused.iter().all(|(seq, _)| !accepted.contains(seq)), "an event is both accepted and refused");
    assert_eq!(accepted.len() + refused.len() + cut_off, EVENTS as usize, "every event was posted once");
    assert!(
        accepted.len() as u64 >= EVENTS * 9 / 10,
        "only {} of {EVENTS} events were accepted; refused: {:?}; cut off: {cut_off}",
        accepted.len(),
        &refused[..refused.len().min(SHOW_MISSING)]
    );

    // Bounded wait until both receivers have every accepted event (polled: deliveries arrive at
    // random times and retries).
    let deadline = load_done + DRAIN_TIMEOUT;
    while receivers.iter().any(|r| !r.missing(&accepted).is_empty()) && Instant::now() < deadline {
        gateway.check_running();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = load_done.elapsed();
    gateway.check_running();
    gateway.kill().await;

    let mut failures = Vec::new();
    let statuses: HashMap<u16, usize> = refused.iter().fold(HashMap::new(), |mut m, (_, s)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    eprintln!(
        "crash: events={EVENTS} accepted={} refused={statuses:?} cut_off_by_kills={cut_off} kills={} drain={:.2}s total={:.1}s",
        accepted.len(),
        kills.len(),
        drain.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for r in &receivers {
        let missing = r.missing(&accepted);
        let log = r.log.lock().unwrap();
        // A duplicate after a kill is expected (the 200 came, the commit did not); one within a
        // single run is a second send by the same process.
        let (mut duplicates, mut same_run) = (0, 0);
        for runs in log.delivered.values() {
            duplicates += runs.len() - 1;
            same_run += runs.len() - runs.iter().collect::<HashSet<_>>().len();
        }
        let unacknowledged = log.delivered_seqs.iter().filter(|s| !accepted.contains(s)).count();
        eprintln!(
            "crash: receiver {}: accepted={} lost={} duplicates={duplicates} (within one run: {same_run}) delivered_without_202={unacknowledged} attempts={} answered_503={}",
            r.name,
            accepted.len(),
            missing.len(),
            log.attempts,
            log.refused
        );
        if !missing.is_empty() {
            failures.push(format!(
                "receiver {}: lost {} of {} accepted events within {DRAIN_TIMEOUT:?} after the load; first missing sequence numbers: {:?}",
                r.name,
                missing.len(),
                accepted.len(),
                &missing[..missing.len().min(SHOW_MISSING)]
            ));
        }
        if same_run > 0 {
            // one sender per delivery at a time: a 200 answered, then the same process sent it again
            failures.push(format!(
                "receiver {}: {same_run} deliveries were delivered twice by the same gateway process",
                r.name
            ));
        }
        let unstable: Vec<_> = log.ids.iter().filter(|(_, ids)| ids.len() > 1).take(SHOW_MISSING).collect();
        if !unstable.is_empty() {
            failures.push(format!("receiver {}: webhook-id changed across attempts: {unstable:?}", r.name));
        }
        if !log.malformed.is_empty() {
            failures.push(format!("receiver {}: malformed deliveries: {:?}", r.name, log.malformed));
        }
    }
    for (i, path) in logs.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("panicked at") {
            failures.push(format!("gateway run {i} panicked; its log: {}", path.display()));
        }
    }
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!("{}\n(config, database and gateway logs kept in {})", failures.join("\n"), kept.display());
    }
}

/// What the senders observed.
#[derive(Default)]
struct Load {
    next: AtomicUsize,
    in_flight: AtomicUsize,
    /// Sequence numbers answered `202`.
    accepted: Mutex<BTreeSet<u64>>,
    /// Sequence numbers answered with another status.
    refused: Mutex<Vec<(u64, u16)>>,
    /// Requests without an answer (connection errors or timeouts, around the kills).
    errors: AtomicUsize,
    /// Kills that happened while both receivers still lacked accepted events.
    kills_with_work: AtomicUsize,
}

/// One sender: posts the next unposted event until all are posted, waiting for the gateway's
/// address while it is down; asks for a kill when it takes a kill point.
async fn send_events(
    load: Arc<Load>,
    client: Client<HttpConnector, Full<Bytes>>,
    mut addr: watch::Receiver<Option<SocketAddr>>,
    kill: mpsc::UnboundedSender<u64>,
    kill_points: Vec<u64>,
) {
    loop {
        let seq = load.next.fetch_add(1, Ordering::SeqCst) as u64;
        if seq >= EVENTS {
            return;
        }
        if kill_points.contains(&seq) {
            kill.send(seq).expect("the test awaits kill signals");
        }
        let to = (*addr.wait_for(Option::is_some).await.expect("the address sender lives through the load"))
            .expect("waited for an address");
        let req = Request::post(format!("http://{to}/in"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(event_body(seq))))
            .expect("valid request");
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = client.request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        })
        .await;
        load.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok(Ok((StatusCode::ACCEPTED, body))) => {
                let v: serde_json::Value = serde_json::from_slice(&body).expect("a 202 body is JSON");
                assert!(v["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "202 without an event id: {v}");
                load.accepted.lock().unwrap().insert(seq);
            }
            Ok(Ok((status, _))) => load.refused.lock().unwrap().push((seq, status.as_u16())),
            Ok(Err(_)) | Err(_) => {
                load.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// The body of event `seq` (what every receiver must get, byte for byte).
fn event_body(seq: u64) -> String {
    format!("{{\"seq\":{seq},\"kind\":\"order.paid\",\"pad\":\"{}\"}}", "x".repeat(64))
}

fn config_yaml(receivers: &[Receiver; 2], storage: &str) -> String {
    let retry = "{ schedule: [100ms, 200ms, 400ms, 800ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], \
                 jitter: 0.1, throttle_floor: 0s }";
    let mut yaml = String::from(
        "server: { listen: \"127.0.0.1:0\" }\n\
         admin: { enabled: false }\n\
         egress: { allow: [\"127.0.0.0/8\"] }\n\
         delivery: { max_in_flight: 64, max_pending: 100000 }\n\
         sources:\n  src: { path: /in, verify: { scheme: none } }\n\
         destinations:\n",
    );
    for r in receivers {
        yaml.push_str(&format!(
            "  {}: {{ url: \"http://{}/{}\", sign: {{ scheme: none }}, timeout_ms: 2000, retry: {retry}, breaker: {{ enabled: false }} }}\n",
            r.name, r.addr, r.name
        ));
    }
    yaml.push_str("routes:\n  - { name: all, source: src, to: [a, b] }\n");
    yaml.push_str(storage);
    yaml
}

// ---------------------------------------------------------------------------------------------
// The gateway process

/// One `hookyard run` process; killed (SIGKILL) on drop.
struct Gateway {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _stdout: JoinHandle<()>,
}

impl Gateway {
    /// Starts `hookyard run` on `config` (stderr to `log`) and waits for its `listening on` line.
    async fn start(config: &Path, log: PathBuf) -> Gateway {
        let stderr = std::fs::File::create(&log).expect("create gateway log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookyard"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env("HOOKYARD_WORKER_THREADS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn hookyard run");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let logs = || std::fs::read_to_string(&log).unwrap_or_default();
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => panic!(
                "hookyard run printed no `listening on` line within {START_TIMEOUT:?} ({other:?}); stderr:\n{}",
                logs()
            ),
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("first stdout line is {line:?}, expected `listening on ADDR`"));
        // Keep reading stdout so the process never blocks on a full pipe.
        let stdout = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Gateway { addr, child, log, _stdout: stdout }
    }

    /// Fails the test if the gateway exited by itself.
    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the gateway") {
            panic!(
                "the gateway exited by itself ({status}); stderr:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGKILL, then wait until the process is gone (so it holds no lock on the database).
    async fn kill(&mut self) {
        self.check_running();
        self.child.kill().await.expect("kill -9 the gateway");
    }
}

// ---------------------------------------------------------------------------------------------
// The receivers

/// What one receiver saw.
#[derive(Default)]
struct ReceiverLog {
    /// Attempts received.
    attempts: u64,
    /// Attempts answered `503`.
    refused: u64,
    /// `webhook-id`s seen per sequence number, on any attempt (must be one).
    ids: HashMap<u64, BTreeSet<String>>,
    /// For each `webhook-id`, the gateway run that sent each attempt answered `200`.
    delivered: HashMap<String, Vec<usize>>,
    /// Sequence numbers answered `200` at least once.
    delivered_seqs: HashSet<u64>,
    /// Requests that are not a delivery of one of our events.
    malformed: Vec<String>,
}

/// A destination on `127.0.0.1:0` that fails about [`FAIL_RATE`] of attempts with `503`, answers
/// after a random delay, and records every attempt.
struct Receiver {
    name: &'static str,
    addr: SocketAddr,
    log: Arc<Mutex<ReceiverLog>>,
}

impl Receiver {
    /// `run` tells which gateway process is the current one.
    async fn start(name: &'static str, run: Arc<AtomicUsize>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let log = Arc::new(Mutex::new(ReceiverLog::default()));
        let shared = log.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("receiver accept");
                let log = shared.clone();
                let run = run.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let log = log.clone();
                        let run = run.load(Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(receive(name, run, &log, req).await) }
                    });
                    // A connection cut by a kill is not a failure.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { name, addr, log }
    }

    /// Accepted sequence numbers this receiver has not had answered `200`, in order.
    fn missing(&self, accepted: &BTreeSet<u64>) -> Vec<u64> {
        let log = self.log.lock().unwrap();
        accepted.iter().filter(|s| !log.delivered_seqs.contains(s)).copied().collect()
    }
}

async fn receive(name: &str, run: usize, log: &Mutex<ReceiverLog>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let answer = |status: StatusCode| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        r
    };
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let id = parts.headers.get("webhook-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let seq = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["seq"].as_u64());
    let (id, seq) = match (id, seq) {
        (Some(id), Some(seq))
            if parts.uri.path().strip_prefix('/') == Some(name)
                && is_message_id(&id)
                && seq < EVENTS
                && body == event_body(seq).as_bytes() =>
        {
            (id, seq)
        }
        (id, _) => {
            let what =
                format!("{} {} webhook-id {id:?} body {:?}", parts.method, parts.uri, String::from_utf8_lossy(&body));
            log.lock().unwrap().malformed.push(what);
            return answer(StatusCode::BAD_REQUEST);
        }
    };
    {
        let mut log = log.lock().unwrap();
        log.attempts += 1;
        log.ids.entry(seq).or_default().insert(id.clone());
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=MAX_DELAY_MS))).await;
    let mut log = log.lock().unwrap();
    if fastrand::f64() < FAIL_RATE {
        log.refused += 1;
        return answer(StatusCode::SERVICE_UNAVAILABLE);
    }
    log.delivered.entry(id).or_default().push(run);
    log.delivered_seqs.insert(seq);
    answer(StatusCode::OK)
}

/// `msg_` + 24 lower-case hex digits.
fn is_message_id(id: &str) -> bool {
    id.strip_prefix("msg_")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}
