//! Several `hookyard run` processes on one PostgreSQL schema behave as one gateway: every event a
//! sender got a `202` for reaches every destination although an instance is killed mid-load, or
//! each is restarted in turn; no two attempts of one delivery overlap; a pause, a resume, a replay
//! and a reload asked of one instance take effect on all; a destination's rate limit holds for the
//! cluster; `status` lists the instances, flags the dead one and config drift.
//!
//! Real processes, the machine's PostgreSQL (a schema per test), receivers on loopback that fail
//! some attempts; every phase bounded. Counted at the receivers, never from the gateways' own
//! bookkeeping (the attempt log is read only for the overlap check).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
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
use serde_json::Value;

use crate::harness::admin_api::{AdminApi, admin_addr};
use crate::harness::postgres::PgSchema;
use crate::harness::{Process, hookyard};

/// Bound of a wait for every accepted event to arrive (leases of a killed instance end after
/// [`LEASE`], retries are at most 1 s apart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// An instance's lease on a delivery: a killed instance's deliveries come back after this.
const LEASE: &str = "6s";

// ---------------------------------------------------------------------------------------------
// The tests

/// 3 instances, senders spreading events over all three (one that gets a connection error tries
/// the next instance, as a load balancer would), receivers failing ~30%: one instance is killed
/// (SIGKILL) mid-load and started again later. Every `202`ed event reaches both receivers; no two
/// attempts of a delivery overlap in time, by the receivers' clocks and by the attempt log; the
/// survivors' `status` flags the dead instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lose_nothing_when_one_is_killed_mid_load() {
    const EVENTS: usize = 1200;
    let schema = PgSchema::new();
    let receivers = [Receiver::start("a", 0.3).await, Receiver::start("b", 0.3).await];
    let mut cluster = Cluster::start(&schema, &config(&receivers, ""), 3, "warn").await;
    let load = Load::new(cluster.addrs.clone());
    let sending = load.clone().send(0..EVENTS, 12);

    load.wait_sent(EVENTS * 35 / 100).await;
    let killed_id = cluster.node_id(1).await;
    cluster.nodes[1].process.kill().await;
    cluster.set_down(1);
    let at_kill = load.accepted().len();
    // the survivors see it dead after storage.postgres.node_timeout
    let status = cluster.nodes[0]
        .admin
        .wait_json("/api/v1/status", "the killed instance flagged dead", Duration::from_secs(10), |s| {
            s["cluster"]["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["id"] == killed_id.as_str() && n["state"] == "dead"))
        })
        .await;
    assert_eq!(status["cluster"]["dead"], 1, "{status}");
    assert!(
        status["cluster"]["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains(&killed_id)),
        "{status}"
    );
    load.wait_sent(EVENTS * 75 / 100).await;
    cluster.restart(1).await;
    tokio::time::timeout(Duration::from_secs(60), sending).await.expect("the load ends within 60 s").unwrap();

    let accepted = load.accepted();
    let report = load.report();
    eprintln!("cluster: {report}; accepted at the kill: {at_kill}");
    assert!(accepted.len() >= EVENTS * 95 / 100, "{report}");
    assert_eq!(load.refused(), Vec::<(usize, u16)>::new(), "no event refused: {report}");
    every_event_arrived_once_at_a_time(&receivers, &load, &schema).await;
    cluster.check_logs();
}

/// Every instance restarted in turn (SIGTERM, wait for it to exit, start it again) under load:
/// every request is answered `202` or is a connection error the sender retried on another
/// instance, and nothing is lost. A clean stop gives its leases back, so no delivery waits for a
/// lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing_and_refuses_nothing() {
    const EVENTS: usize = 1200;
    let schema = PgSchema::new();
    let receivers = [Receiver::start("a", 0.3).await, Receiver::start("b", 0.3).await];
    let mut cluster = Cluster::start(&schema, &config(&receivers, ""), 3, "warn").await;
    let load = Load::new(cluster.addrs.clone());
    let sending = load.clone().send(0..EVENTS, 12);
    for i in 0..3 {
        load.wait_sent(EVENTS * (i + 1) / 5).await;
        // senders learn of it only from their connection errors, as from a load balancer whose
        // health check has not noticed yet
        let status = cluster.nodes[i].process.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "instance {i} stopped cleanly: {status}");
        cluster.set_down(i);
        cluster.restart(i).await;
    }
    tokio::time::timeout(Duration::from_secs(60), sending).await.expect("the load ends within 60 s").unwrap();
    let accepted = load.accepted();
    let report = load.report();
    eprintln!("cluster: rolling restart: {report}");
    assert_eq!(load.refused(), Vec::<(usize, u16)>::new(), "every answer was a 202: {report}");
    assert_eq!(load.unreachable(), 0, "every connection error found another instance: {report}");
    assert_eq!(accepted.len(), EVENTS, "{report}");
    every_event_arrived_once_at_a_time(&receivers, &load, &schema).await;
    cluster.check_logs();
}

/// An ordered destination (`ordering: { key: "$.key" }`) behind 2 instances, events of each key
/// posted one after the other to alternating instances, a receiver failing ~30%, one instance
/// killed (SIGKILL) mid-load and started again: per key, successful deliveries arrive in accept
/// order, never two attempts of a key at once, nothing lost. (The order and a key's head are the
/// store's: a head is leased to one instance, and which delivery is a key's head is decided under
/// the key's lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_keys_keep_their_order_across_instances_and_a_kill() {
    const PER_KEY: usize = 40;
    let schema = PgSchema::new();
    let receiver = Receiver::start("o", 0.3).await;
    let yaml = config(std::slice::from_ref(&receiver), "").replace(
        "breaker: { enabled: false } }",
        "breaker: { enabled: false }, ordering: { key: \"$.key\", on_dead: skip } }",
    );
    assert!(yaml.contains("ordering:"), "{yaml}");
    let mut cluster = Cluster::start(&schema, &yaml, 2, "warn").await;
    let load = Load::new(cluster.addrs.clone());
    let sending = load.clone().send_keyed(PER_KEY);
    load.wait_sent(KEYS * PER_KEY * 40 / 100).await;
    cluster.nodes[1].process.kill().await;
    cluster.set_down(1);
    load.wait_sent(KEYS * PER_KEY * 70 / 100).await;
    cluster.restart(1).await;
    tokio::time::timeout(Duration::from_secs(90), sending).await.expect("the load ends within 90 s").unwrap();
    let accepted = load.accepted();
    let report = load.report();
    eprintln!("cluster: ordered: {report}");
    assert_eq!(accepted.len(), KEYS * PER_KEY, "{report}");
    receiver.wait_for(&accepted, DRAIN_TIMEOUT).await;
    eprintln!("cluster: ordered: receiver: {}", receiver.summary());
    receiver.check_key_order();
    receiver.check_ids_stable_and_no_overlap(&load.retried_seqs());
    // a copy stored twice (posted again after a connection error) goes right after its first
    let deadline = Instant::now() + Duration::from_secs(20);
    while schema.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").await > 0 {
        assert!(Instant::now() < deadline, "deliveries left pending 20 s after every event arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.check_key_order();
    cluster.check_logs();
}

/// A pause asked of one instance holds on all (nothing arrives from any instance from one second
/// after it), a resume asked of another drains what waited, a replay asked of a third is
/// delivered by whichever instance with the same `webhook-id`, a reload asked of one makes every
/// instance reload its own file within a second, and `status` flags two live instances that run
/// different configs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_on_one_instance_take_effect_on_all() {
    let schema = PgSchema::new();
    let receivers = [Receiver::start("a", 0.0).await];
    let cluster = Cluster::start(&schema, &config(&receivers, ""), 3, "info").await;
    let load = Load::new(cluster.addrs.clone());

    // pause on instance 0; events then sent to all three wait
    let t_pause = Instant::now();
    let paused = cluster.nodes[0].admin.post_json("/api/v1/destinations/a/pause", r#"{"reason":"maintenance"}"#).await;
    assert_eq!(paused["paused"], true, "{paused}");
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(t_pause.elapsed())).await;
    load.clone().send(0..30, 3).await.unwrap();
    assert_eq!(load.accepted().len(), 30, "{}", load.report());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let arrived = receivers[0].arrivals_after(t_pause + Duration::from_secs(1));
    assert_eq!(arrived, 0, "a paused destination received {arrived} deliveries more than 1 s after the pause");
    for n in &cluster.nodes {
        let d = n.admin.get_json("/api/v1/destinations").await;
        assert!(d.to_string().contains("maintenance"), "every instance shows the pause: {d}");
    }

    // resume on instance 2: everything drains
    let resumed = Instant::now();
    cluster.nodes[2].admin.post_json("/api/v1/destinations/a/resume", "{}").await;
    receivers[0].wait_for(&load.accepted(), Duration::from_secs(20)).await;
    eprintln!("cluster: 30 paused deliveries drained {:?} after the resume", resumed.elapsed());

    // replay on instance 1: delivered again, same webhook-id
    let seq = 7;
    let event_id = load.event_id(seq);
    let first_id = receivers[0].ids_of(seq);
    assert_eq!(first_id.len(), 1);
    let before = receivers[0].deliveries_of(seq);
    let replayed = cluster.nodes[1].admin.post_json("/api/v1/replay", &format!(r#"{{"ids":["{event_id}"]}}"#)).await;
    assert_eq!(replayed["queued"], 1, "{replayed}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while receivers[0].deliveries_of(seq) == before {
        assert!(Instant::now() < deadline, "the replay was not delivered within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receivers[0].ids_of(seq), first_id, "a replay keeps the webhook-id");

    // reload asked of instance 0: the others reload their own files within a second
    for i in 0..3 {
        cluster.write_config(i, &config(&receivers, "  max_body_bytes: 2000000\n"));
    }
    let old = cluster.nodes[1].admin.status().await["version"].clone();
    let asked = Instant::now();
    let outcome = cluster.nodes[0].admin.post_json("/api/v1/reload", "").await;
    assert_eq!(outcome["result"], "reloaded", "{outcome}");
    for n in &cluster.nodes[1..] {
        n.admin.wait_json("/api/v1/status", "reloaded as asked", Duration::from_secs(1), |s| s["version"] != old).await;
    }
    eprintln!("cluster: the other instances reloaded {:?} after the reload asked of one", asked.elapsed());

    // one instance's file differs: drift is flagged on every instance
    // (instance 2's file watcher reloads it)
    cluster.write_config(2, &config(&receivers, "  max_body_bytes: 3000000\n"));
    let status = cluster.nodes[0]
        .admin
        .wait_json("/api/v1/status", "config drift flagged", Duration::from_secs(10), |s| {
            s["cluster"]["config_drift"] == true
        })
        .await;
    assert!(
        status["cluster"]["warnings"][0]
            .as_str()
            .unwrap()
            .starts_with("config drift: live instances run 2 different config versions"),
        "{status}"
    );
    assert_eq!(status["cluster"]["live"], 3, "{status}");
    let metrics = cluster.nodes[0]
        .admin
        .wait_metrics("the drift in /metrics", |m| m.get("hookyard_cluster_config_drift", &[]) == 1.0)
        .await;
    assert_eq!(metrics.get("hookyard_cluster_instances", &[("state", "live")]), 3.0);
    assert_eq!(metrics.get("hookyard_cluster_instances", &[("state", "dead")]), 0.0);
    cluster.check_logs();
}

/// `rate_limit: 20` behind three instances: the receiver gets at most 22 in any second of a 10 s
/// window (each instance sends a third of the rate), and not much less than 20 on average.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_for_the_cluster() {
    let schema = PgSchema::new();
    let receivers = [Receiver::start("a", 0.0).await];
    let cluster =
        Cluster::start(&schema, &config(&receivers, "").replace("breaker:", "rate_limit: 20, breaker:"), 3, "warn")
            .await;
    let load = Load::new(cluster.addrs.clone());
    load.clone().send(0..300, 6).await.unwrap();
    assert_eq!(load.accepted().len(), 300, "{}", load.report());
    // 12 s of deliveries: the 10 s window after the first second
    tokio::time::sleep(Duration::from_secs(12)).await;
    let times = receivers[0].arrival_times();
    let start = times[0] + Duration::from_secs(1);
    let end = start + Duration::from_secs(10);
    let in_window: Vec<Instant> = times.iter().copied().filter(|t| *t >= start && *t < end).collect();
    let count = |from: Instant| in_window.iter().filter(|t| **t >= from && **t < from + Duration::from_secs(1)).count();
    let seconds: Vec<usize> = (0..10).map(|s| count(start + Duration::from_secs(s))).collect();
    // any 1 s window, not only those starting on a whole second (for the log: the instances'
    // sends reach the receiver with some jitter, which can put one more into a window)
    let sliding = (0..180).map(|i| count(start + Duration::from_millis(50 * i))).max().unwrap_or(0);
    let mean = in_window.len() as f64 / 10.0;
    eprintln!(
        "cluster: rate_limit 20 behind 3 instances: per second {seconds:?}, worst sliding second {sliding}, mean {mean:.1}/s over 10 s"
    );
    let worst = seconds.iter().copied().max().unwrap_or(0);
    assert!(worst <= 22, "{worst} deliveries in one second of {seconds:?} (limit 20, 10% over allowed)");
    // well below 20 only if the shares were wrong (a third of a third, say), not for a busy machine
    assert!(mean >= 12.0, "the cluster sent only {mean:.1}/s: the share is too small");
    cluster.check_logs();
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A config for the instances: one open source, the receivers as destinations (retries at most
/// 1 s apart, no breaker), a route to all of them; `server_extra` goes under `server:`.
fn config(receivers: &[Receiver], server_extra: &str) -> String {
    let retry = "{ schedule: [100ms, 200ms, 400ms, 800ms, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s, 1s], jitter: 0.1, throttle_floor: 0s }";
    let mut yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n{server_extra}\
         admin: {{ listen: \"127.0.0.1:0\" }}\n\
         egress: {{ allow: [\"127.0.0.0/8\"] }}\n\
         delivery: {{ max_in_flight: 64 }}\n\
         sources:\n  src: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n"
    );
    let names: Vec<&str> = receivers.iter().map(|r| r.name).collect();
    for r in receivers {
        yaml.push_str(&format!(
            "  {}: {{ url: \"http://{}/{}\", sign: {{ scheme: none }}, timeout_ms: 1000, retry: {retry}, breaker: {{ enabled: false }} }}\n",
            r.name, r.addr, r.name
        ));
    }
    yaml.push_str(&format!("routes:\n  - {{ name: all, source: src, to: [{}] }}\n", names.join(", ")));
    yaml
}

struct Node {
    process: Process,
    admin: AdminApi,
    config: PathBuf,
}

/// `n` instances on `schema`, each with its own copy of the config (same text: same version).
struct Cluster {
    nodes: Vec<Node>,
    /// Where senders post: `None` while an instance is down.
    addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    dir: tempfile::TempDir,
    storage: String,
    log_level: &'static str,
    starts: usize,
}

impl Cluster {
    async fn start(schema: &PgSchema, yaml: &str, n: usize, log_level: &'static str) -> Cluster {
        let storage = format!(
            "storage: {{ postgres: {{ url: \"{}\", pool: 6, schema: {}, lease: {LEASE}, heartbeat: 200ms, node_timeout: 1s }} }}\n",
            crate::harness::postgres::url(),
            schema.name
        );
        let mut c = Cluster {
            nodes: Vec::new(),
            addrs: Arc::new(Mutex::new(vec![None; n])),
            dir: tempfile::tempdir().unwrap(),
            storage,
            log_level,
            starts: 0,
        };
        for i in 0..n {
            let config = c.dir.path().join(format!("node-{i}.yaml"));
            std::fs::write(&config, format!("{yaml}{}", c.storage)).unwrap();
            let node = c.spawn(&config).await;
            c.addrs.lock().unwrap()[i] = Some(node.process.addr);
            c.nodes.push(node);
        }
        c.wait_live(n).await;
        c
    }

    async fn spawn(&mut self, config: &std::path::Path) -> Node {
        self.starts += 1;
        let log = self.dir.path().join(format!("start-{}.log", self.starts));
        let mut cmd = hookyard();
        cmd.env("RUST_LOG", self.log_level).arg("run").arg("--config").arg(config);
        let process = Process::spawn(cmd, log).await;
        let admin = AdminApi::at(admin_addr(&process).await);
        Node { process, admin, config: config.to_path_buf() }
    }

    /// Waits until every instance counts `n` live instances.
    async fn wait_live(&self, n: usize) {
        for node in &self.nodes {
            node.admin
                .wait_json("/api/v1/status", &format!("{n} live instances"), Duration::from_secs(10), |s| {
                    s["cluster"]["live"] == n
                })
                .await;
        }
    }

    /// Replaces instance `i`'s config file with `yaml` and the cluster's storage.
    fn write_config(&self, i: usize, yaml: &str) {
        std::fs::write(&self.nodes[i].config, format!("{yaml}{}", self.storage)).unwrap();
    }

    fn set_down(&self, i: usize) {
        self.addrs.lock().unwrap()[i] = None;
    }

    async fn node_id(&self, i: usize) -> String {
        self.nodes[i].admin.status().await["cluster"]["node"].as_str().unwrap().to_string()
    }

    /// Starts instance `i` again (a new process, a new id) and lets senders use it once every
    /// instance counts it live.
    async fn restart(&mut self, i: usize) {
        let config = self.nodes[i].config.clone();
        let node = self.spawn(&config).await;
        let old = std::mem::replace(&mut self.nodes[i], node);
        drop(old);
        self.addrs.lock().unwrap()[i] = Some(self.nodes[i].process.addr);
        self.wait_live(self.nodes.len()).await;
    }

    /// No instance panicked or logged an error it should not have.
    fn check_logs(&self) {
        for n in &self.nodes {
            let logs = n.process.logs();
            assert!(!logs.contains("panicked at"), "an instance panicked:\n{logs}");
            for line in logs.lines().filter(|l| l.contains("ERROR")) {
                assert!(
                    line.contains("delivery failed") || line.contains("retries exhausted"),
                    "unexpected error line: {line}"
                );
            }
        }
    }
}

/// Every accepted event reaches every receiver (within [`DRAIN_TIMEOUT`]) with one `webhook-id`,
/// and no two attempts of one delivery overlap, by the receivers' clocks and the attempt log.
async fn every_event_arrived_once_at_a_time(receivers: &[Receiver], load: &Load, schema: &PgSchema) {
    let accepted = load.accepted();
    for r in receivers {
        r.wait_for(&accepted, DRAIN_TIMEOUT).await;
        eprintln!("cluster: receiver {}: {}", r.name, r.summary());
        r.check_ids_stable_and_no_overlap(&load.retried_seqs());
    }
    check_attempt_log_has_no_overlap(schema).await;
}

/// From the attempt log: no two attempts of one delivery overlap in time (an attempt runs from
/// `at - latency_ms` to `at`).
async fn check_attempt_log_has_no_overlap(schema: &PgSchema) {
    let c = crate::harness::postgres::client().await;
    let rows = c
        .query(
            &format!(
                "SELECT delivery_id, at - latency_ms, at FROM {}.attempts ORDER BY delivery_id, at - latency_ms",
                schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let mut last: Option<(i64, i64)> = None;
    let mut overlaps = Vec::new();
    for r in &rows {
        let (id, start, end): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if let Some((prev_id, prev_end)) = last
            && prev_id == id
            && start < prev_end
        {
            overlaps.push((id, prev_end, start));
        }
        last = Some((id, end.max(last.filter(|l| l.0 == id).map_or(end, |l| l.1))));
    }
    eprintln!("cluster: attempt log: {} attempts, {} overlapping", rows.len(), overlaps.len());
    assert!(overlaps.is_empty(), "attempts overlapping in time (delivery, previous end, start): {overlaps:?}");
}

// ---------------------------------------------------------------------------------------------
// The senders

#[derive(Default)]
struct LoadState {
    /// Sequence numbers answered `202`, with the event id.
    accepted: BTreeMap<usize, String>,
    refused: Vec<(usize, u16)>,
    /// Connection errors retried on another instance.
    retried: usize,
    /// Events retried after a connection error: the first instance may have stored them before
    /// the error (two events then, each with its own `webhook-id`).
    retried_seqs: BTreeSet<usize>,
    /// Events no instance could be reached for.
    unreachable: usize,
}

/// Posts events spread over the instances; a sender that cannot connect to one tries the next.
#[derive(Clone)]
struct Load {
    addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Arc<Mutex<LoadState>>,
    sent: Arc<AtomicUsize>,
}

impl Load {
    fn new(addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>) -> Load {
        Load {
            addrs,
            client: Client::builder(TokioExecutor::new()).build_http(),
            state: Default::default(),
            sent: Default::default(),
        }
    }

    /// `senders` tasks post the events of `seqs`, event `s` first to instance `s % n`.
    fn send(self, seqs: std::ops::Range<usize>, senders: usize) -> tokio::task::JoinHandle<()> {
        let next = Arc::new(AtomicUsize::new(seqs.start));
        tokio::spawn(async move {
            let tasks: Vec<_> = (0..senders)
                .map(|_| {
                    let load = self.clone();
                    let next = next.clone();
                    let end = seqs.end;
                    tokio::spawn(async move {
                        loop {
                            let seq = next.fetch_add(1, Ordering::SeqCst);
                            if seq >= end {
                                return;
                            }
                            load.post(seq).await;
                            load.sent.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("a sender panicked");
            }
        })
    }

    /// One sender per key, each posting its key's events (`seq % KEYS == key`) one after the
    /// other, each only once the one before was answered: accept order per key is `seq` order.
    fn send_keyed(self, per_key: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let tasks: Vec<_> = (0..KEYS)
                .map(|key| {
                    let load = self.clone();
                    tokio::spawn(async move {
                        for i in 0..per_key {
                            load.post(key + i * KEYS).await;
                            load.sent.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("a sender panicked");
            }
        })
    }

    async fn post(&self, seq: usize) {
        for attempt in 0..30 {
            let addr = {
                let addrs = self.addrs.lock().unwrap();
                let up: Vec<SocketAddr> = addrs.iter().flatten().copied().collect();
                if up.is_empty() { None } else { Some(up[(seq + attempt) % up.len()]) }
            };
            let Some(addr) = addr else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let req = Request::post(format!("http://{addr}/in"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(event_body(seq))))
                .unwrap();
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = self.client.request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            })
            .await;
            match answer {
                Ok(Ok((StatusCode::ACCEPTED, body))) => {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    self.state.lock().unwrap().accepted.insert(seq, v["id"].as_str().unwrap().to_string());
                    return;
                }
                Ok(Ok((status, _))) => {
                    self.state.lock().unwrap().refused.push((seq, status.as_u16()));
                    return;
                }
                Ok(Err(_)) | Err(_) => {
                    // a load balancer sends it to another instance
                    {
                        let mut s = self.state.lock().unwrap();
                        s.retried += 1;
                        s.retried_seqs.insert(seq);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.state.lock().unwrap().unreachable += 1;
    }

    async fn wait_sent(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sent.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the senders did not post {n} events within 60 s: {}", self.report());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn accepted(&self) -> BTreeSet<usize> {
        self.state.lock().unwrap().accepted.keys().copied().collect()
    }

    fn event_id(&self, seq: usize) -> String {
        self.state.lock().unwrap().accepted[&seq].clone()
    }

    fn refused(&self) -> Vec<(usize, u16)> {
        self.state.lock().unwrap().refused.clone()
    }

    fn retried_seqs(&self) -> BTreeSet<usize> {
        self.state.lock().unwrap().retried_seqs.clone()
    }

    fn unreachable(&self) -> usize {
        self.state.lock().unwrap().unreachable
    }

    fn report(&self) -> String {
        let s = self.state.lock().unwrap();
        format!(
            "accepted {} refused {} connection errors retried on another instance {} unreachable {}",
            s.accepted.len(),
            s.refused.len(),
            s.retried,
            s.unreachable
        )
    }
}

/// Keys of the ordered test's events: event `seq` is of key `seq % KEYS`.
const KEYS: usize = 12;

fn event_body(seq: usize) -> String {
    format!("{{\"seq\":{seq},\"key\":\"k{}\",\"kind\":\"order.paid\"}}", seq % KEYS)
}

// ---------------------------------------------------------------------------------------------
// The receivers

/// One attempt as a receiver saw it.
struct Seen {
    seq: usize,
    id: String,
    arrived: Instant,
    answered: Instant,
    ok: bool,
}

/// A destination on loopback that answers `503` to `fail_rate` of attempts after up to 30 ms,
/// and records every attempt.
struct Receiver {
    name: &'static str,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    async fn start(name: &'static str, fail_rate: f64) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let shared = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let arrived = Instant::now();
                            let id =
                                req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let seq = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["seq"].as_u64());
                            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=30))).await;
                            let ok = fastrand::f64() >= fail_rate;
                            if let Some(seq) = seq {
                                seen.lock().unwrap().push(Seen {
                                    seq: seq as usize,
                                    id,
                                    arrived,
                                    answered: Instant::now(),
                                    ok,
                                });
                            }
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { name, addr, seen }
    }

    fn delivered(&self) -> BTreeSet<usize> {
        self.seen.lock().unwrap().iter().filter(|s| s.ok).map(|s| s.seq).collect()
    }

    async fn wait_for(&self, accepted: &BTreeSet<usize>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            let missing: Vec<usize> = accepted.iter().filter(|s| !delivered.contains(s)).copied().collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "receiver {}: lost {} of {} accepted events within {timeout:?}; first missing: {:?}",
                self.name,
                missing.len(),
                accepted.len(),
                &missing[..missing.len().min(20)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn summary(&self) -> String {
        let seen = self.seen.lock().unwrap();
        let mut delivered: HashMap<&str, usize> = HashMap::new();
        for s in seen.iter().filter(|s| s.ok) {
            *delivered.entry(&s.id).or_default() += 1;
        }
        let duplicates: usize = delivered.values().map(|n| n - 1).sum();
        format!(
            "attempts {} answered 503 {} delivered {} duplicates {duplicates}",
            seen.len(),
            seen.iter().filter(|s| !s.ok).count(),
            delivered.len()
        )
    }

    /// One `webhook-id` per event (except those a sender posted twice, `resent`); the attempts of
    /// one `webhook-id` never overlap in time.
    fn check_ids_stable_and_no_overlap(&self, resent: &BTreeSet<usize>) {
        let seen = self.seen.lock().unwrap();
        let mut ids: HashMap<usize, BTreeSet<&str>> = HashMap::new();
        let mut spans: HashMap<&str, Vec<(Instant, Instant)>> = HashMap::new();
        for s in seen.iter() {
            ids.entry(s.seq).or_default().insert(&s.id);
            spans.entry(&s.id).or_default().push((s.arrived, s.answered));
        }
        let twice = ids.iter().filter(|(seq, ids)| ids.len() > 1 && resent.contains(seq)).count();
        eprintln!(
            "cluster: receiver {}: {twice} event(s) stored twice, having been sent again after a connection error",
            self.name
        );
        let unstable: Vec<_> =
            ids.iter().filter(|(seq, ids)| ids.len() > 1 && !resent.contains(seq)).take(10).collect();
        assert!(unstable.is_empty(), "receiver {}: webhook-id changed across attempts: {unstable:?}", self.name);
        let mut overlapping = 0;
        for spans in spans.values_mut() {
            spans.sort();
            overlapping += spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
        }
        assert_eq!(overlapping, 0, "receiver {}: attempts of one delivery overlapped in time", self.name);
    }

    /// Per key (`seq % KEYS`): its successful deliveries arrived in accept order (`seq`; a redelivery
    /// of the last one, at-least-once, is allowed), and no two of its attempts overlapped in time.
    fn check_key_order(&self) {
        let seen = self.seen.lock().unwrap();
        let mut by_key: HashMap<usize, Vec<&Seen>> = HashMap::new();
        for s in seen.iter() {
            by_key.entry(s.seq % KEYS).or_default().push(s);
        }
        let mut overlapping = Vec::new();
        for (key, attempts) in by_key.iter_mut() {
            attempts.sort_by_key(|s| s.arrived);
            for w in attempts.windows(2) {
                if w[1].arrived < w[0].answered {
                    overlapping.push((key, w[0].seq, w[1].seq));
                }
            }
            let delivered: Vec<usize> = attempts.iter().filter(|s| s.ok).map(|s| s.seq).collect();
            let backwards = delivered.windows(2).find(|w| w[1] < w[0]);
            assert!(
                backwards.is_none(),
                "receiver {}: key k{key} delivered {:?} after {:?}: {delivered:?}",
                self.name,
                backwards.unwrap()[1],
                backwards.unwrap()[0]
            );
        }
        assert!(
            overlapping.is_empty(),
            "receiver {}: attempts of one key in flight at once (key, seq, seq): {overlapping:?}",
            self.name
        );
    }

    fn arrivals_after(&self, t: Instant) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.arrived > t).count()
    }

    fn arrival_times(&self) -> Vec<Instant> {
        let mut t: Vec<Instant> = self.seen.lock().unwrap().iter().map(|s| s.arrived).collect();
        t.sort();
        t
    }

    fn ids_of(&self, seq: usize) -> BTreeSet<String> {
        self.seen.lock().unwrap().iter().filter(|s| s.seq == seq).map(|s| s.id.clone()).collect()
    }

    fn deliveries_of(&self, seq: usize) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.seq == seq && s.ok).count()
    }
}
