//! Ordered delivery per key (`destinations.<name>.ordering`), end to end through the real binary,
//! counted at the receiver, never from the gateway's own bookkeeping.
//!
//! [`per_key_order_holds_through_kill_9`]: [`EVENTS`] events over [`KEYS`] keys, one sender per
//! key posting its key's events one after the other (the next only once the previous was answered
//! `202`), so a key's accept order is its `seq` order. The receiver answers `503` to about
//! [`FAIL_RATE`] of the attempts and is slow on the first [`SLOW_KEYS`] keys. Halfway through the
//! load the gateway is killed with SIGKILL and started again on the same store. Then every
//! accepted event must reach the receiver (`2xx`), and for each key:
//! - the order of the *first* `2xx` of each `seq` is strictly increasing (a receiver may see an
//!   event twice: what was in flight at the kill is attempted again, at-least-once);
//! - no attempt of a `seq` starts before every earlier accepted `seq` of its key had its `2xx`;
//! - at most one attempt is in flight at a time (within one gateway process).
//!
//! A post cut off by the kill (no answer) is resent with the same `seq`, once the new process
//! listens, before that key's next event. The cut one may have been committed before the kill, so
//! such a `seq` may be stored twice (two events, two `webhook-id`s, both delivered): that is
//! accepted, and both copies still precede the key's next `seq` in accept order. The order checks
//! use the first `2xx` of each `seq`.
//!
//! [`on_dead_block_holds_the_key_until_the_head_is_skipped`] and
//! [`on_dead_block_holds_the_key_until_the_head_is_replayed`]: `on_dead: block` (keyed by a
//! request header): the head of key `stuck` dies, so the key's next event must not be sent while
//! the other key goes on, until an operator skips (`hookyard skip`) or replays (`hookyard replay`)
//! the dead head.
//!
//! The receiver here is its own (not the harness's `Sink`): it fails at random or on command,
//! tracks what is in flight per key, and stamps arrivals and answers on one clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::harness::admin_api::AdminApi;
use crate::harness::{Gateway, WAIT, hookyard, http_client, is_message_id, run_cli};

/// Keys; one sender each.
const KEYS: usize = 20;
/// Events per key (`seq` 0 to `PER_KEY - 1`).
const PER_KEY: u64 = 100;
/// Events posted in all.
const EVENTS: u64 = KEYS as u64 * PER_KEY;
/// Keys `k00` up to this one (excluded) are slow at the receiver.
const SLOW_KEYS: usize = 5;
/// How long the receiver holds an answer on a slow key, and on the others (uniformly random).
const SLOW_DELAY_MS: RangeInclusive<u64> = 20..=80;
const FAST_DELAY_MS: RangeInclusive<u64> = 0..=5;
/// Share of attempts the receiver answers with `503`.
const FAIL_RATE: f64 = 0.3;
/// The gateway is killed when the load has started this many events (half).
const KILL_AT: u64 = EVENTS / 2;
/// Retries: 16 short steps (0.3^17, the odds that an event dies, is nil), so with `on_dead: skip`
/// nothing is skipped and every event must be delivered.
const RETRY: &str = "{ schedule: [20ms, 40ms, 60ms, 80ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, \
                     100ms, 100ms, 100ms, 100ms, 100ms], jitter: 0.1, throttle_floor: 0s }";
/// Bound of the load phase (posting, the kill and the restart).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the wait, after the load, until every accepted event has had a `2xx`. The slow keys
/// set it: 100 events one at a time, each ~50 ms at the receiver, 1.4 attempts on average, plus
/// the retries' delays: ~10 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound of one ingress request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Posts of one event answered with something else than `202` or cut off before it is given up.
const MAX_TRIES: usize = 20;
/// Items listed in a failure message.
const SHOW: usize = 20;

/// How long `on_dead: block` is watched holding a key (it must send nothing of it meanwhile).
const HOLD: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_through_kill_9() {
    let started = Instant::now();
    let receiver = Receiver::start(|key, _| {
        let slow = key_index(key).is_some_and(|k| k < SLOW_KEYS);
        let delay = fastrand::u64(if slow { SLOW_DELAY_MS } else { FAST_DELAY_MS });
        let status = if fastrand::f64() < FAIL_RATE { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        Plan { delay: Duration::from_millis(delay), status }
    })
    .await;
    let yaml = config(&receiver.url(), "{ key: \"$.key\", on_dead: skip }", RETRY);
    let mut gateway = Gateway::start(&yaml).await;

    // The senders wait on this for the gateway's address, with a generation (bumped by every start).
    let (addr_tx, addr_rx) = watch::channel(Some((0u64, gateway.addr)));
    let (kill_tx, mut kill_rx) = mpsc::unbounded_channel::<()>();
    let load = Arc::new(Load::default());
    let client = http_client();
    let senders: Vec<JoinHandle<()>> = (0..KEYS)
        .map(|key| {
            let (load, client, addr, kill) = (load.clone(), client.clone(), addr_rx.clone(), kill_tx.clone());
            tokio::spawn(async move { send_key(key, load, client, addr, kill).await })
        })
        .collect();
    drop(kill_tx);

    // Kill and restart when the senders have started half the events, while they go on; then wait
    // for them.
    let mut kills = Vec::new();
    let load_phase = async {
        while kill_rx.recv().await.is_some() {
            addr_tx.send_replace(None);
            let in_flight = load.in_flight.load(Ordering::SeqCst);
            let accepted = load.accepted.lock().unwrap().clone();
            let undelivered = receiver.log().undelivered(&accepted).len();
            // attempts arriving from here until the new process listens are not counted in the
            // in-flight check: the killed process's last requests may still be read meanwhile
            receiver.state.settling.store(true, Ordering::SeqCst);
            gateway.kill().await;
            gateway.restart().await;
            receiver.state.run.fetch_add(1, Ordering::SeqCst);
            receiver.state.settling.store(false, Ordering::SeqCst);
            addr_tx.send_replace(Some((kills.len() as u64 + 1, gateway.addr)));
            kills.push((in_flight, accepted.len(), undelivered));
        }
        for s in senders {
            s.await.expect("a sender panicked");
        }
    };
    tokio::time::timeout(LOAD_TIMEOUT, load_phase).await.unwrap_or_else(|_| {
        panic!(
            "the load did not finish within {LOAD_TIMEOUT:?}: {} events started, {} accepted, {} posts cut off",
            load.started.load(Ordering::SeqCst),
            load.accepted.lock().unwrap().len(),
            load.cut.load(Ordering::SeqCst)
        )
    });
    let load_done = Instant::now();
    let load_secs = load_done.duration_since(started).as_secs_f64();
    assert_eq!(kills.len(), 1, "the planned kill happened once");
    let (kill_in_flight, kill_accepted, kill_undelivered) = kills[0];
    assert!(
        kill_undelivered > 0,
        "the kill found no accepted event undelivered, so it tested no recovery ({kill_accepted} accepted)"
    );

    let accepted = load.accepted.lock().unwrap().clone();
    let refused = load.refused.lock().unwrap().clone();
    let given_up = load.given_up.lock().unwrap().clone();
    assert!(
        accepted.len() as u64 >= EVENTS * 9 / 10,
        "only {} of {EVENTS} events were accepted; given up: {:?}; refusals: {:?}",
        accepted.len(),
        &given_up[..given_up.len().min(SHOW)],
        &refused[..refused.len().min(SHOW)]
    );

    // Bounded wait until every accepted event has had a 2xx (polled: retries come at random).
    let deadline = load_done + DRAIN_TIMEOUT;
    loop {
        let missing = receiver.log().undelivered(&accepted).len();
        if missing == 0 || Instant::now() >= deadline {
            break;
        }
        assert!(process_alive(gateway.pid()), "the gateway exited by itself; stderr:\n{}", gateway.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_secs = load_done.elapsed().as_secs_f64();
    assert!(process_alive(gateway.pid()), "the gateway exited by itself; stderr:\n{}", gateway.logs());
    gateway.kill().await;

    // What the receiver saw.
    let log = receiver.log();
    let lost = log.undelivered(&accepted);
    let twice = log.stored_twice();
    let delivered_2xx = log.delivered.len();
    let distinct_2xx = log.first_2xx().len();
    let refused_statuses: BTreeMap<u16, usize> = refused.iter().fold(BTreeMap::new(), |mut m, (_, _, s)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    println!(
        "ordering: events={EVENTS} keys={KEYS} (slow: {SLOW_KEYS}) accepted={} refused_by_gateway={refused_statuses:?} \
         given_up={} cut_by_kill={} (resent) stored_twice={}",
        accepted.len(),
        given_up.len(),
        load.cut.load(Ordering::SeqCst),
        twice.len()
    );
    println!(
        "ordering: receiver attempts={} answered_503={} answered_2xx={delivered_2xx} duplicates={} lost={} \
         delivered_without_202={}",
        log.attempts.len(),
        log.attempts.iter().filter(|a| a.status == Some(503)).count(),
        delivered_2xx - distinct_2xx,
        lost.len(),
        log.first_2xx().keys().filter(|k| !accepted.contains(*k)).count()
    );
    println!(
        "ordering: kill at event {KILL_AT}: {kill_in_flight} post(s) in flight, {kill_accepted} accepted, \
         {kill_undelivered} of them undelivered"
    );
    println!(
        "ordering: load {load_secs:.1}s, drain {drain_secs:.1}s after it, total {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    if !lost.is_empty() {
        failures.push(format!(
            "lost {} of {} accepted events (no 2xx within {DRAIN_TIMEOUT:?} after the load); first ones: {:?}",
            lost.len(),
            accepted.len(),
            &lost[..lost.len().min(SHOW)]
        ));
    }
    failures.extend(log.first_2xx_order_violation());
    let early = log.early_attempts(&accepted);
    if !early.is_empty() {
        failures.push(format!(
            "{} attempts started before an earlier accepted event of their key was delivered; first ones:\n  {}",
            early.len(),
            early[..early.len().min(SHOW)].join("\n  ")
        ));
    }
    if !log.overlaps.is_empty() {
        failures.push(format!(
            "{} attempts arrived while another of their key was in flight (same gateway process); first ones:\n  {}",
            log.overlaps.len(),
            log.overlaps[..log.overlaps.len().min(SHOW)].join("\n  ")
        ));
    }
    if !log.malformed.is_empty() {
        failures.push(format!("malformed deliveries: {:?}", &log.malformed[..log.malformed.len().min(SHOW)]));
    }
    if !failures.is_empty() {
        panic!("{}", failures.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_dead_block_holds_the_key_until_the_head_is_skipped() {
    on_dead_block(Unblock::Skip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_dead_block_holds_the_key_until_the_head_is_replayed() {
    on_dead_block(Unblock::Replay).await
}

/// What the operator does about the dead head of a blocked key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unblock {
    /// `hookyard skip ID`: the key moves on without it.
    Skip,
    /// The receiver is fixed, then `hookyard replay ID`: the head is sent again, and the key moves
    /// on once it is delivered.
    Replay,
}

/// Keys `stuck` and `free` (the `X-Order-Key` header), three events each, posted alternately;
/// the receiver answers `500` to `stuck`/1 (until fixed), so it dies after its two retries.
async fn on_dead_block(unblock: Unblock) {
    let started = Instant::now();
    let broken = Arc::new(AtomicBool::new(true));
    let receiver = {
        let broken = broken.clone();
        Receiver::start(move |key, seq| {
            let fail = key == "stuck" && seq == 1 && broken.load(Ordering::SeqCst);
            Plan {
                delay: Duration::ZERO,
                status: if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK },
            }
        })
        .await
    };
    let yaml = config(
        &receiver.url(),
        "{ key: \"header:X-Order-Key\", on_dead: block }",
        "{ schedule: [50ms, 50ms], jitter: 0, throttle_floor: 0s }",
    );
    let gateway = Gateway::start(&yaml).await;
    let admin = AdminApi::of(&gateway).await;
    let mut event_ids = HashMap::new();
    for seq in 0..3 {
        for key in ["stuck", "free"] {
            let answer = gateway
                .post(
                    "/in",
                    &[("content-type", "application/json"), ("x-order-key", key)],
                    format!("{{\"key\":\"{key}\",\"seq\":{seq}}}"),
                )
                .await;
            event_ids.insert((key, seq), answer.accepted_id());
        }
    }

    // stuck/1 dies (three attempts) and is the only dead letter; stuck/0 and every free/* arrive.
    let dead = admin
        .wait_json("/api/v1/deliveries?status=dead", "the dead letter of stuck/1", WAIT, |v| {
            v["items"].as_array().is_some_and(|items| !items.is_empty())
        })
        .await;
    let items = dead["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only stuck/1 dies: {dead:#}");
    assert_eq!(items[0]["event_id"], event_ids[&("stuck", 1)], "the dead letter is stuck/1's: {dead:#}");
    assert_eq!(items[0]["held"], true, "the dead head holds its key: {dead:#}");
    assert_eq!(items[0]["order_key"], "stuck", "{dead:#}");
    let delivery_id = items[0]["id"].as_i64().unwrap_or_else(|| panic!("no delivery id in {dead:#}"));
    receiver
        .wait_delivered(&[("stuck", 0), ("free", 0), ("free", 1), ("free", 2)], WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}; stderr:\n{}", gateway.logs()));

    // The key holds: nothing of stuck/2 is sent (watched for HOLD: proving a negative takes a wait).
    tokio::time::sleep(HOLD).await;
    {
        let log = receiver.log();
        let tries_of_head = log.attempts_of("stuck", 1).len();
        assert_eq!(tries_of_head, 3, "stuck/1: one attempt and its two retries; log:\n{}", log.describe());
        assert!(
            log.attempts_of("stuck", 2).is_empty(),
            "stuck/2 was sent while stuck/1, the head of its key, is dead (on_dead: block); log:\n{}",
            log.describe()
        );
        assert_eq!(log.first_2xx_seqs("free"), [0, 1, 2], "free/* in order; log:\n{}", log.describe());
    }
    let pending = admin.get_json("/api/v1/deliveries?status=pending").await;
    let pending = pending["items"].as_array().expect("items");
    assert!(
        pending.iter().any(|d| d["event_id"] == event_ids[&("stuck", 2)] && d["waiting"] == true),
        "stuck/2 waits, pending, for its turn: {pending:#?}"
    );

    // The operator unblocks the key.
    let unblocked_at = receiver.log().clock;
    let action = match unblock {
        Unblock::Skip => "skip",
        Unblock::Replay => {
            broken.store(false, Ordering::SeqCst);
            "replay"
        }
    };
    let mut cmd = hookyard();
    cmd.arg(action).arg(delivery_id.to_string()).arg("--config").arg(&gateway.config_path);
    let out = run_cli(cmd).await;
    assert_eq!(out.code(), Some(0), "hookyard {action} {delivery_id}: stdout {:?} stderr {:?}", out.stdout, out.stderr);
    let mut expect: Vec<(&str, u64)> = vec![("stuck", 2)];
    if unblock == Unblock::Replay {
        expect.push(("stuck", 1));
    }
    receiver
        .wait_delivered(&expect, WAIT)
        .await
        .unwrap_or_else(|e| panic!("after `hookyard {action} {delivery_id}`: {e}; stderr:\n{}", gateway.logs()));

    // What the store says of each event's delivery now (for the figures).
    let names: HashMap<String, String> =
        event_ids.iter().map(|((k, s), id)| (id.clone(), format!("{k}/{s}"))).collect();
    let all = admin.get_json("/api/v1/deliveries").await;
    let statuses: Vec<String> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| {
            let id = d["event_id"].as_str().unwrap_or("?");
            format!("{}={}", names.get(id).map_or(id, String::as_str), d["status"].as_str().unwrap_or("?"))
        })
        .collect();

    let log = receiver.log();
    match unblock {
        Unblock::Skip => {
            assert!(statuses.contains(&"stuck/1=dead".to_string()), "a skipped head stays dead: {statuses:?}");
            assert_eq!(
                log.first_2xx_seqs("stuck"),
                [0, 2],
                "stuck/1 skipped, never delivered; log:\n{}",
                log.describe()
            );
            assert_eq!(log.attempts_of("stuck", 1).len(), 3, "a skip sends nothing again; log:\n{}", log.describe());
        }
        Unblock::Replay => {
            assert_eq!(log.first_2xx_seqs("stuck"), [0, 1, 2], "stuck/1 then stuck/2; log:\n{}", log.describe());
            // stuck/2 not even attempted before the replayed head was delivered
            let head_2xx = log.first_2xx()[&("stuck".to_string(), 1)];
            let first_of_next = log.attempts_of("stuck", 2).iter().map(|a| a.arrived).min();
            assert!(
                first_of_next.is_some_and(|t| t > log.attempts[head_2xx].answered.expect("answered")),
                "stuck/2 was attempted before the replayed stuck/1 was delivered; log:\n{}",
                log.describe()
            );
        }
    }
    assert!(
        log.attempts.iter().filter(|a| a.key == "stuck" && a.seq == 2).all(|a| a.arrived > unblocked_at),
        "stuck/2 was attempted before the operator's {action}; log:\n{}",
        log.describe()
    );
    assert!(log.overlaps.is_empty(), "two attempts of one key at once: {:?}", log.overlaps);
    assert!(log.malformed.is_empty(), "malformed deliveries: {:?}", log.malformed);
    println!(
        "ordering: on_dead: block, unblocked by {action}: {} attempts, deliveries now {statuses:?}, {:.1}s",
        log.attempts.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// The load (per_key_order_holds_through_kill_9)

/// What the senders observed.
#[derive(Default)]
struct Load {
    /// Events whose first post has started.
    started: AtomicU64,
    /// Posts waiting for an answer now.
    in_flight: AtomicUsize,
    /// (key, seq) answered `202`.
    accepted: Mutex<HashSet<(String, u64)>>,
    /// (key, seq, status): posts answered with another status (each was posted again).
    refused: Mutex<Vec<(String, u64, u16)>>,
    /// Posts without an answer (cut off by the kill); each was posted again to the new process.
    cut: AtomicUsize,
    /// (key, seq) given up after [`MAX_TRIES`] posts without a `202`.
    given_up: Mutex<Vec<(String, u64)>>,
}

/// The sender of key `key`: posts its events one after the other, each only once the previous
/// one was answered `202` (or given up). A post cut off (the kill) is posted again once a newer
/// gateway process listens; one answered with another status, after a short pause. Asks for the
/// kill when it starts event [`KILL_AT`] of the whole load.
async fn send_key(
    key: usize,
    load: Arc<Load>,
    client: Client<HttpConnector, Full<Bytes>>,
    mut addr: watch::Receiver<Option<(u64, SocketAddr)>>,
    kill: mpsc::UnboundedSender<()>,
) {
    let name = key_name(key);
    for seq in 0..PER_KEY {
        if load.started.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AT {
            kill.send(()).expect("the test awaits the kill signal");
        }
        let body = Bytes::from(format!("{{\"key\":\"{name}\",\"seq\":{seq}}}"));
        let mut generation = 0;
        let mut tries = 0;
        loop {
            if tries == MAX_TRIES {
                load.given_up.lock().unwrap().push((name.clone(), seq));
                break;
            }
            tries += 1;
            let (gen_now, to) = (*addr
                .wait_for(|a| a.is_some_and(|(g, _)| g >= generation))
                .await
                .expect("the address sender lives through the load"))
            .expect("waited for an address");
            let req = Request::post(format!("http://{to}/in"))
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
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
                    let v: Value = serde_json::from_slice(&body).expect("a 202 body is JSON");
                    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "202 without an event id: {v}");
                    load.accepted.lock().unwrap().insert((name.clone(), seq));
                    break;
                }
                Ok(Ok((status, _))) => {
                    load.refused.lock().unwrap().push((name.clone(), seq, status.as_u16()));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(_)) | Err(_) => {
                    // cut off by the kill: again, to the next process (so never twice to one)
                    load.cut.fetch_add(1, Ordering::SeqCst);
                    generation = gen_now + 1;
                }
            }
        }
    }
}

fn key_name(key: usize) -> String {
    format!("k{key:02}")
}

/// `k07` → 7.
fn key_index(name: &str) -> Option<usize> {
    name.strip_prefix('k')?.parse().ok()
}

/// One source (`/in`, unverified), one route to `orders` at `url` with `ordering` and `retry`; the
/// store in the config's directory with `sync: full`. No breaker: a 30% failure rate must not stop
/// deliveries.
fn config(url: &str, ordering: &str, retry: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\n\
         egress: {{ allow: [\"127.0.0.0/8\"] }}\n\
         delivery: {{ max_in_flight: 64, max_pending: 100000 }}\n\
         storage: {{ path: hookyard.db, sync: full }}\n\
         sources:\n  src: {{ path: /in, verify: {{ scheme: none }} }}\n\
         destinations:\n  \
           orders:\n    \
             url: \"{url}\"\n    \
             sign: {{ scheme: none }}\n    \
             timeout_ms: 2000\n    \
             max_in_flight: 32\n    \
             retry: {retry}\n    \
             breaker: {{ enabled: false }}\n    \
             ordering: {ordering}\n\
         routes:\n  - {{ name: all, source: src, to: [orders] }}\n"
    )
}

/// Whether process `pid` (a child of this test) is still running: not gone, not a zombie.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// The receiver

/// How the receiver answers one attempt.
struct Plan {
    delay: Duration,
    status: StatusCode,
}

type Policy = Box<dyn Fn(&str, u64) -> Plan + Send + Sync>;

/// One attempt as the receiver saw it.
#[derive(Debug)]
struct Attempt {
    key: String,
    seq: u64,
    webhook_id: String,
    /// The gateway process that sent it (0, then 1 after the kill); `None` if it arrived between
    /// the kill and the new process's `listening on` line (it may be the killed one's).
    run: Option<usize>,
    /// [`ReceiverLog::clock`] at its arrival and at its answer.
    arrived: u64,
    answered: Option<u64>,
    /// What it was answered; `None` while held, or if the gateway hung up first (the kill).
    status: Option<u16>,
}

/// What the receiver saw.
#[derive(Default)]
struct ReceiverLog {
    /// Ticks at every arrival and every answer, so both are on one clock.
    clock: u64,
    /// Every attempt, in arrival order.
    attempts: Vec<Attempt>,
    /// Indexes into `attempts` of those answered `2xx`, in the order answered.
    delivered: Vec<usize>,
    /// Attempts being held now, by key and gateway process.
    in_flight: HashMap<(String, usize), Vec<usize>>,
    /// Attempts that arrived while another of their key from the same process was held.
    overlaps: Vec<String>,
    /// Requests that are not a delivery of one of the test's events.
    malformed: Vec<String>,
}

impl ReceiverLog {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Each (key, seq) answered `2xx`, with the index of its first such attempt.
    fn first_2xx(&self) -> HashMap<(String, u64), usize> {
        let mut first = HashMap::new();
        for &i in &self.delivered {
            let a = &self.attempts[i];
            first.entry((a.key.clone(), a.seq)).or_insert(i);
        }
        first
    }

    /// The seqs of `key`, in the order of their first `2xx`.
    fn first_2xx_seqs(&self, key: &str) -> Vec<u64> {
        let mut seen = HashSet::new();
        self.delivered
            .iter()
            .map(|&i| &self.attempts[i])
            .filter(|a| a.key == key && seen.insert(a.seq))
            .map(|a| a.seq)
            .collect()
    }

    fn attempts_of(&self, key: &str, seq: u64) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.key == key && a.seq == seq).collect()
    }

    /// Accepted events without a `2xx`, sorted.
    fn undelivered(&self, accepted: &HashSet<(String, u64)>) -> Vec<(String, u64)> {
        let delivered: HashSet<(&str, u64)> =
            self.delivered.iter().map(|&i| (self.attempts[i].key.as_str(), self.attempts[i].seq)).collect();
        let mut missing: Vec<(String, u64)> =
            accepted.iter().filter(|(k, s)| !delivered.contains(&(k.as_str(), *s))).cloned().collect();
        missing.sort();
        missing
    }

    /// (key, seq) delivered under more than one `webhook-id`: stored twice (a post cut off by the
    /// kill had been committed, and was posted again).
    fn stored_twice(&self) -> Vec<(String, u64)> {
        let mut ids: HashMap<(&str, u64), HashSet<&str>> = HashMap::new();
        for &i in &self.delivered {
            let a = &self.attempts[i];
            ids.entry((a.key.as_str(), a.seq)).or_default().insert(a.webhook_id.as_str());
        }
        let mut twice: Vec<(String, u64)> =
            ids.into_iter().filter(|(_, ids)| ids.len() > 1).map(|((k, s), _)| (k.to_string(), s)).collect();
        twice.sort();
        twice
    }

    /// Per key, the seqs in the order of their first `2xx` must be strictly increasing: the first
    /// key where not, with the order around it and that key's attempts around those seqs.
    fn first_2xx_order_violation(&self) -> Option<String> {
        let mut keys: Vec<&str> = self.attempts.iter().map(|a| a.key.as_str()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let order = self.first_2xx_seqs(key);
            let Some(i) = order.windows(2).position(|w| w[1] <= w[0]) else { continue };
            let (a, b) = (order[i], order[i + 1]);
            let around = &order[i.saturating_sub(5)..(i + 7).min(order.len())];
            let (lo, hi) = (a.min(b), a.max(b));
            let context: Vec<String> = self
                .attempts
                .iter()
                .filter(|x| x.key == key && x.seq + 2 >= lo && x.seq <= hi + 2)
                .map(describe_attempt)
                .collect();
            return Some(format!(
                "key {key}: seq {b} had its first 2xx after seq {a}'s although it was accepted first; \
                 seqs in order of first 2xx around it: {around:?}; the key's attempts around them:\n  {}",
                context.join("\n  ")
            ));
        }
        None
    }

    /// Attempts of a seq that arrived before every earlier accepted seq of its key had its `2xx`.
    fn early_attempts(&self, accepted: &HashSet<(String, u64)>) -> Vec<String> {
        let first = self.first_2xx();
        // per key: the tick of each accepted seq's first 2xx (u64::MAX: none)
        let mut done_at: BTreeMap<&str, BTreeMap<u64, u64>> = BTreeMap::new();
        for (k, s) in accepted {
            let at = first.get(&(k.clone(), *s)).and_then(|&i| self.attempts[i].answered).unwrap_or(u64::MAX);
            done_at.entry(k.as_str()).or_default().insert(*s, at);
        }
        let mut out = Vec::new();
        for a in &self.attempts {
            let Some(earlier) = done_at.get(a.key.as_str()) else { continue };
            if let Some((s, at)) = earlier.range(..a.seq).find(|(_, at)| **at > a.arrived) {
                let when = if *at == u64::MAX { "never delivered".to_string() } else { format!("2xx at tick {at}") };
                out.push(format!(
                    "key {}: seq {} was attempted ({}) before the earlier seq {s} was delivered ({when})",
                    a.key,
                    a.seq,
                    describe_attempt(a)
                ));
            }
        }
        out
    }

    /// Every attempt, one per line (for the small tests' failure messages).
    fn describe(&self) -> String {
        self.attempts.iter().map(describe_attempt).collect::<Vec<_>>().join("\n")
    }
}

fn describe_attempt(a: &Attempt) -> String {
    format!(
        "{}/{} {} run {} arrived at tick {} answered {} at {}",
        a.key,
        a.seq,
        a.webhook_id,
        a.run.map_or("?".to_string(), |r| r.to_string()),
        a.arrived,
        a.status.map_or("-".to_string(), |s| s.to_string()),
        a.answered.map_or("-".to_string(), |t| t.to_string())
    )
}

struct ReceiverState {
    policy: Policy,
    /// The gateway process sending now (bumped once the new one listens after a kill).
    run: AtomicUsize,
    /// Between a kill and the new process's `listening on` line.
    settling: AtomicBool,
    log: Mutex<ReceiverLog>,
}

/// The destination, on `127.0.0.1:0`: answers each attempt on `/orders` as its policy says, and
/// records it.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(policy: impl Fn(&str, u64) -> Plan + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState {
            policy: Box::new(policy),
            run: AtomicUsize::new(0),
            settling: AtomicBool::new(false),
            log: Mutex::new(ReceiverLog::default()),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.expect("receiver accept");
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(receive(state, req).await) }
                    });
                    // A connection cut by the kill is not a failure.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Receiver { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/orders", self.addr)
    }

    fn log(&self) -> MutexGuard<'_, ReceiverLog> {
        self.state.log.lock().unwrap()
    }

    /// Waits (polled, at most `timeout`) until each (key, seq) has had a `2xx`.
    async fn wait_delivered(&self, want: &[(&str, u64)], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let log = self.log();
                let first = log.first_2xx();
                let missing: Vec<_> = want.iter().filter(|(k, s)| !first.contains_key(&(k.to_string(), *s))).collect();
                if missing.is_empty() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "waited {timeout:?} for a 2xx of {missing:?}; the receiver saw:\n{}",
                        log.describe()
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Takes an attempt out of `in_flight` when its answer is ready, or when hyper drops the handler
/// because the gateway hung up (the kill).
struct Held {
    state: Arc<ReceiverState>,
    slot: Option<((String, usize), usize)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((key, i)) = self.slot.take() {
            let mut log = self.state.log.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = log.in_flight.get_mut(&key) {
                held.retain(|x| *x != i);
            }
        }
    }
}

async fn receive(state: Arc<ReceiverState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let v: Option<Value> = serde_json::from_slice(&body).ok();
    let key = v.as_ref().and_then(|v| v["key"].as_str()).map(str::to_string);
    let seq = v.as_ref().and_then(|v| v["seq"].as_u64());
    let (webhook_id, key, seq) = match (id, key, seq) {
        (Some(id), Some(key), Some(seq)) if parts.uri.path() == "/orders" && is_message_id(&id) => (id, key, seq),
        (id, _, _) => {
            let what =
                format!("{} {} webhook-id {id:?} body {:?}", parts.method, parts.uri, String::from_utf8_lossy(&body));
            state.log.lock().unwrap().malformed.push(what);
            return answer(StatusCode::BAD_REQUEST);
        }
    };
    let run = (!state.settling.load(Ordering::SeqCst)).then(|| state.run.load(Ordering::SeqCst));
    let plan = (state.policy)(&key, seq);
    let i = {
        let mut log = state.log.lock().unwrap();
        let arrived = log.tick();
        let i = log.attempts.len();
        let attempt = Attempt { key: key.clone(), seq, webhook_id, run, arrived, answered: None, status: None };
        if let Some(run) = run {
            let held = log.in_flight.entry((key.clone(), run)).or_default().clone();
            if let Some(&other) = held.first() {
                let overlap = format!(
                    "{} arrived while {} was held",
                    describe_attempt(&attempt),
                    describe_attempt(&log.attempts[other])
                );
                log.overlaps.push(overlap);
            }
            log.in_flight.entry((key.clone(), run)).or_default().push(i);
        }
        log.attempts.push(attempt);
        i
    };
    let _held = Held { state: state.clone(), slot: run.map(|run| ((key, run), i)) };
    tokio::time::sleep(plan.delay).await;
    let mut log = state.log.lock().unwrap();
    let at = log.tick();
    log.attempts[i].answered = Some(at);
    log.attempts[i].status = Some(plan.status.as_u16());
    if plan.status.is_success() {
        log.delivered.push(i);
    }
    drop(log);
    answer(plan.status)
}
