//! Every retry rule under `tokio::time::pause()`, with a real store (SQLite in a temp dir) and a
//! scripted transport: paused time cannot drive real sockets (the clock would jump past every
//! timeout). Real-socket retries are covered by `tests/it/delivery.rs`.

use std::collections::VecDeque;
use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::*;
use crate::config::SyncMode;
use crate::delivery::egress::EgressPolicy;
use crate::delivery::{Backoff, BreakerSettings, HttpClient, InFlightLimit, RateLimiter, RetryPolicy, TlsRoots};
use crate::sign::{SignScheme, Signer};
use crate::store::{Accepted, EventId, Inspect, NewDelivery, NewEvent, StoreOptions};

/// Answers attempts from a script (then 200 forever) and records when each attempt happened.
#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<AttemptOutcome>>,
    times: Mutex<Vec<Instant>>,
    /// How long each attempt takes (virtual time).
    latency: Mutex<Duration>,
}

impl Transport for Arc<Script> {
    async fn attempt(&self, _: &Destination, _: &DueDelivery) -> AttemptReport {
        self.times.lock().unwrap().push(Instant::now());
        let latency = *self.latency.lock().unwrap();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let outcome =
            self.replies.lock().unwrap().pop_front().unwrap_or(AttemptOutcome::Delivered { status: StatusCode::OK });
        AttemptReport {
            outcome,
            latency: Duration::from_millis(1),
            response_body: Bytes::from_static(b"ok"),
            response_headers: Vec::new(),
        }
    }
}

struct Setup {
    backoff: Backoff,
    breaker: bool,
    rate: Option<f64>,
    /// Run the dispatcher's poller (retries and held-back work go through it); off for tests that
    /// drive `poll_once` by hand.
    poller: bool,
}

fn destination(name: &str, s: &Setup) -> Arc<Destination> {
    Arc::new(Destination {
        name: name.into(),
        url: Some("http://example.com/".parse().unwrap()),
        templates: Default::default(),
        hosts: None,
        method: http::Method::POST,
        headers: HeaderMap::new(),
        signer: Signer::new(SignScheme::None, None).unwrap(),
        timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            backoff: s.backoff.clone(),
            jitter: 0.0,
            max_retry_after: Duration::from_secs(3600),
            throttle_floor: Duration::from_secs(60),
        },
        limit: InFlightLimit::new(4),
        client: HttpClient::new(
            Arc::new(EgressPolicy::default()),
            &TlsRoots::webpki(),
            None,
            4,
            Duration::from_secs(1),
        )
        .unwrap(),
        breaker: BreakerSettings {
            enabled: s.breaker,
            failure_rate: 0.5,
            min_requests: 3,
            window: Duration::from_secs(600),
            cooldown: Duration::from_secs(30),
        },
        rate: s.rate.map(RateLimiter::new),
        ordering: None,
        batch: None,
    })
}

fn schedule(secs: &[u64]) -> Setup {
    Setup {
        backoff: Backoff::Schedule(secs.iter().map(|s| Duration::from_secs(*s)).collect()),
        breaker: false,
        rate: None,
        poller: true,
    }
}

/// A store whose due times follow tokio's clock, which these tests pause.
fn open_store(dir: &tempfile::TempDir) -> Store {
    let options = StoreOptions { sync: SyncMode::Normal, clock: Clock::tokio(), ..StoreOptions::default() };
    Store::open_with(&dir.path().join("db"), options).unwrap()
}

async fn accept(store: &Store, id: &str, dest: &str) -> Vec<DueDelivery> {
    let ev = NewEvent {
        id: id.into(),
        source: "s".into(),
        received_at_ms: store.clock().now_ms(),
        headers: vec![],
        body: Bytes::from_static(b"{}"),
        dedupe_key: None,
    };
    let d = NewDelivery::new("r".into(), dest.into(), format!("msg_{id}").into());
    match store.accept(ev, vec![d], None).await.unwrap() {
        Accepted::Stored(due) => due,
        Accepted::Duplicate { .. } => unreachable!(),
    }
}

fn retryable(retry_after: Option<u64>, throttled: bool) -> AttemptOutcome {
    AttemptOutcome::Retryable {
        status: Some(if throttled { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE }),
        retry_after: retry_after.map(Duration::from_secs),
        throttled,
        reason: "scripted".into(),
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    script: Arc<Script>,
    dispatcher: Dispatcher<Arc<Script>>,
    start: Instant,
    /// Whether to run the poller; it starts with the first `run_until`, so that its timers do not
    /// let paused time jump while a test is still accepting events (a store call is not a timer).
    with_poller: bool,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(p) = self.poller.lock().unwrap().take() {
            p.abort();
        }
    }
}

impl Harness {
    async fn new(replies: Vec<AttemptOutcome>, setup: Setup) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir);
        let script = Arc::new(Script {
            replies: Mutex::new(replies.into()),
            times: Mutex::default(),
            latency: Mutex::default(),
        });
        let dispatcher =
            Dispatcher::new(store.clone(), script.clone(), &[destination("dest", &setup)], 8, 1000).await.unwrap();
        Harness {
            _dir: dir,
            store,
            script,
            dispatcher,
            start: Instant::now(),
            with_poller: setup.poller,
            poller: Mutex::new(None),
        }
    }

    /// Offsets (whole seconds) of the attempts from the start.
    fn times(&self) -> Vec<u64> {
        self.script.times.lock().unwrap().iter().map(|t| (*t - self.start).as_secs()).collect()
    }

    async fn status(&self, id: &str) -> (String, u32) {
        let ev = self.store.event(id.into()).await.unwrap().unwrap();
        (ev.deliveries[0].delivery.status.to_string(), ev.deliveries[0].delivery.attempts)
    }

    /// Advances virtual time in steps, letting tasks run, until `done` or `limit`.
    async fn run_until(&self, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        if self.with_poller {
            let mut poller = self.poller.lock().unwrap();
            if poller.is_none() {
                let d = self.dispatcher.clone();
                *poller = Some(tokio::spawn(async move { d.run(std::future::pending()).await }));
            }
        }
        let end = Instant::now() + limit;
        while Instant::now() < end && !done(self) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fails_twice_then_succeeds_on_schedule() {
    let h = Harness::new(vec![retryable(None, false), retryable(None, false)], schedule(&[5, 300, 1800])).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(400), |h| h.dispatcher.stats().delivered == 1).await;
    assert_eq!(h.times(), [0, 5, 305]);
    assert_eq!(h.status("evt_1").await, ("delivered".into(), 3));
    let s = h.dispatcher.stats();
    assert_eq!((s.attempts, s.retries, s.pending), (3, 2, 0));
    let ev = h.store.event("evt_1".into()).await.unwrap().unwrap();
    let log = &ev.deliveries[0].attempt_log;
    assert_eq!(log.iter().map(|a| a.status_code).collect::<Vec<_>>(), [Some(503), Some(503), Some(200)]);
    assert_eq!(log[0].error.as_deref(), Some("scripted"));
}

#[tokio::test(start_paused = true)]
async fn exhausted_schedule_is_a_dead_letter() {
    let h = Harness::new(vec![retryable(None, false); 10], schedule(&[5, 300])).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(400), |h| h.dispatcher.stats().dead == 1).await;
    assert_eq!(h.times(), [0, 5, 305]);
    assert_eq!(h.status("evt_1").await, ("dead".into(), 3));
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_with_max_attempts() {
    let setup = Setup {
        backoff: Backoff::Exponential {
            base: Duration::from_secs(2),
            factor: 3.0,
            cap: Duration::from_secs(60),
            max_attempts: 5,
        },
        breaker: false,
        rate: None,
        poller: true,
    };
    let h = Harness::new(vec![retryable(None, false); 10], setup).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(400), |h| h.dispatcher.stats().dead == 1).await;
    // delays 2, 6, 18, 54 (cap 60); 5 attempts in all
    assert_eq!(h.times(), [0, 2, 8, 26, 80]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_clamped_and_floored_after_429() {
    // 503 + Retry-After 42 → 42 s; 429 + Retry-After 2 → the 60 s floor; 503 + Retry-After 1 day → 1 h
    let replies = vec![retryable(Some(42), false), retryable(Some(2), true), retryable(Some(86_400), false)];
    let h = Harness::new(replies, schedule(&[5, 5, 5, 5])).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(5000), |h| h.dispatcher.stats().delivered == 1).await;
    assert_eq!(h.times(), [0, 42, 102, 3702]);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_fails_at_once_and_is_kept() {
    let failed =
        AttemptOutcome::Failed { status: Some(StatusCode::BAD_REQUEST), reason: "HTTP 400 is not retried".into() };
    let h = Harness::new(vec![failed], schedule(&[5])).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(60), |h| h.dispatcher.stats().failed == 1).await;
    assert_eq!(h.times(), [0]);
    assert_eq!(h.status("evt_1").await, ("failed".into(), 1));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_holds_deliveries_then_half_opens_and_closes() {
    let setup = Setup { breaker: true, ..schedule(&[1, 1, 1, 1, 1, 1, 1, 1]) };
    let h = Harness::new(vec![retryable(None, false); 3], setup).await;
    for i in 0..3 {
        h.dispatcher.submit(accept(&h.store, &format!("evt_{i}"), "dest").await);
    }
    // three failures (100% of 3) open the breaker: the retries after 1 s find it open and wait
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.breaker_states() == [("dest".into(), "open")]).await;
    assert_eq!(h.dispatcher.breaker_states(), [("dest".into(), "open")]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.times(), [0, 0, 0], "no attempts while open");
    assert_eq!(h.store.pending_count().await.unwrap(), 3, "deliveries wait in the store, not failed");
    // after the 30 s cool-down the poller lets one probe through; it succeeds and closes the breaker
    h.run_until(Duration::from_secs(60), |h| h.dispatcher.stats().delivered == 3).await;
    assert_eq!(h.dispatcher.stats().delivered, 3);
    assert_eq!(h.dispatcher.breaker_states(), [("dest".into(), "closed")]);
    let times = h.times();
    assert_eq!(times.len(), 6);
    assert!(times[3] >= 30, "the probe came after the cool-down: {times:?}");
}

#[tokio::test(start_paused = true)]
async fn gone_pauses_the_destination_and_keeps_the_delivery() {
    let h = Harness::new(vec![AttemptOutcome::Gone], Setup { poller: false, ..schedule(&[5]) }).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.stats().attempts == 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.store.paused().await.unwrap(),
        [(DestinationName::from("dest"), Some("the destination answered 410 Gone".to_string()))]
    );
    assert_eq!(h.status("evt_1").await, ("pending".into(), 1));
    assert_eq!(h.dispatcher.poll_once().await.unwrap(), 0, "paused: nothing is due");
    h.store.set_paused(&"dest".into(), false, None).await.unwrap();
    // another process's resume is read from the store once a poll interval
    tokio::time::sleep(POLL_INTERVAL).await;
    assert_eq!(h.dispatcher.poll_once().await.unwrap(), 1, "resumed: due again");
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.stats().delivered == 1).await;
    assert_eq!(h.status("evt_1").await, ("delivered".into(), 2));
}

#[tokio::test(start_paused = true)]
async fn removed_destination_fails_the_delivery_with_a_reason() {
    let h = Harness::new(vec![], schedule(&[5])).await;
    h.dispatcher.submit(accept(&h.store, "evt_1", "gone-from-config").await);
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.stats().pending == 0).await;
    let ev = h.store.event("evt_1".into()).await.unwrap().unwrap();
    assert_eq!(ev.deliveries[0].delivery.status.as_str(), "failed");
    assert_eq!(
        ev.deliveries[0].delivery.last_error.as_deref(),
        Some("destination \"gone-from-config\" is not in the current config")
    );
    assert!(h.times().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_new_dispatcher_recovers_pending_work() {
    let h = Harness::new(vec![], Setup { poller: false, ..schedule(&[5]) }).await;
    // accepted but never submitted: as if the process died right after the commit
    accept(&h.store, "evt_1", "dest").await;
    accept(&h.store, "evt_2", "dest").await;
    let again = Dispatcher::new(h.store.clone(), h.script.clone(), &[destination("dest", &schedule(&[5]))], 8, 1000)
        .await
        .unwrap();
    assert_eq!(again.stats().pending, 2);
    tokio::time::sleep(Duration::from_secs(1)).await; // the rows' due time is the wall clock at insert
    assert_eq!(again.poll_once().await.unwrap(), 2);
    h.run_until(Duration::from_secs(10), |_| again.stats().delivered == 2).await;
    assert_eq!(again.stats().delivered, 2);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_delays_instead_of_dropping() {
    let setup = Setup { rate: Some(2.0), ..schedule(&[5]) };
    let h = Harness::new(vec![], setup).await;
    for i in 0..5 {
        h.dispatcher.submit(accept(&h.store, &format!("evt_{i}"), "dest").await);
    }
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.stats().delivered == 5).await;
    let mut times: Vec<u128> = h.script.times.lock().unwrap().iter().map(|t| (*t - h.start).as_millis()).collect();
    times.sort();
    let gaps: Vec<u128> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [500, 500, 500, 500], "2 per second: {times:?}");
}

#[tokio::test]
async fn queue_capacity_is_checked_before_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let d = Dispatcher::new(store.clone(), Arc::new(Script::default()), &[], 8, 2).await.unwrap();
    accept(&store, "evt_1", "x").await;
    accept(&store, "evt_2", "x").await;
    d.poll_once().await.unwrap();
    assert_eq!(d.check_capacity(1), Err(QueueFull { pending: 2, limit: 2 }));
    assert_eq!(d.check_capacity(0), Ok(()), "unrouted events need no room");
    let _ = Path::new("");
}

#[tokio::test(start_paused = true)]
async fn a_late_fast_path_does_not_resend_what_the_poller_delivered() {
    // the poller can see a committed row before the accepting request hands it over
    let h = Harness::new(vec![], Setup { poller: false, ..schedule(&[5]) }).await;
    let due = accept(&h.store, "evt_1", "dest").await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the row's due time is the wall clock at insert
    assert_eq!(h.dispatcher.poll_once().await.unwrap(), 1);
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.stats().delivered == 1).await;
    h.dispatcher.submit(due);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.times().len(), 1, "sent twice");
    assert_eq!(h.status("evt_1").await, ("delivered".into(), 1));
}

/// Every state a delivery can wait in when a reload removes its destination ends the same way:
/// failed with the reason, no longer pending (so no longer counted against `max_pending`).
async fn assert_failed_as_removed(h: &Harness, ids: &[&str]) {
    h.run_until(Duration::from_secs(30), |h| h.dispatcher.stats().pending == 0).await;
    for id in ids {
        let ev = h.store.event(EventId::from(*id)).await.unwrap().unwrap();
        let d = &ev.deliveries[0].delivery;
        assert_eq!(d.status.as_str(), "failed", "{id}");
        assert_eq!(d.last_error.as_deref(), Some("destination \"dest\" is not in the current config"), "{id}");
    }
    assert_eq!(h.store.pending_count().await.unwrap(), 0);
    assert_eq!(h.dispatcher.stats().pending, 0);
}

#[tokio::test(start_paused = true)]
async fn a_paused_destination_removed_by_a_reload_fails_its_deliveries() {
    let h = Harness::new(vec![], schedule(&[5])).await;
    h.store.set_paused(&"dest".into(), true, Some("by a test".into())).await.unwrap();
    h.dispatcher.set_paused(&"dest".into(), true);
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(3), |_| false).await;
    assert_eq!(h.status("evt_1").await, ("pending".into(), 0), "held by the pause");
    h.dispatcher.set_destinations(&[]);
    assert_failed_as_removed(&h, &["evt_1"]).await;
    assert!(h.times().is_empty(), "never sent");
}

#[tokio::test(start_paused = true)]
async fn an_open_breakers_destination_removed_by_a_reload_fails_its_deliveries() {
    let setup = Setup { breaker: true, ..schedule(&[1, 1, 1, 1]) };
    let h = Harness::new(vec![retryable(None, false); 3], setup).await;
    for i in 0..3 {
        h.dispatcher.submit(accept(&h.store, &format!("evt_{i}"), "dest").await);
    }
    h.run_until(Duration::from_secs(10), |h| h.dispatcher.breaker_states() == [("dest".into(), "open")]).await;
    assert_eq!(h.dispatcher.breaker_states(), [("dest".into(), "open")]);
    h.dispatcher.set_destinations(&[]);
    assert_failed_as_removed(&h, &["evt_0", "evt_1", "evt_2"]).await;
    assert_eq!(h.times().len(), 3, "no attempt after the removal");
    assert!(h.dispatcher.breaker_states().is_empty(), "the removed destination's breaker is gone");
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_destination_removed_by_a_reload_fails_what_waits_for_its_turn() {
    let h = Harness::new(vec![], Setup { rate: Some(0.1), ..schedule(&[5]) }).await;
    // accepted first, then handed over together: a store call lets paused time jump
    let mut due = Vec::new();
    for i in 0..3 {
        due.extend(accept(&h.store, &format!("evt_{i}"), "dest").await);
    }
    h.dispatcher.submit(due);
    // the first goes at once; the others wait 10 s and 20 s for their turn
    h.run_until(Duration::from_secs(2), |h| h.dispatcher.stats().delivered == 1).await;
    assert_eq!(h.dispatcher.stats().delivered, 1);
    h.dispatcher.set_destinations(&[]);
    assert_failed_as_removed(&h, &["evt_1", "evt_2"]).await;
    assert_eq!(h.times().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_destination_removed_mid_attempt_records_the_attempt_then_fails_the_delivery() {
    let h = Harness::new(vec![retryable(None, false)], schedule(&[5])).await;
    *h.script.latency.lock().unwrap() = Duration::from_secs(3);
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    h.run_until(Duration::from_secs(1), |_| false).await;
    assert_eq!(h.times().len(), 1, "the attempt is running");
    h.dispatcher.set_destinations(&[]);
    assert_failed_as_removed(&h, &["evt_1"]).await;
    let ev = h.store.event("evt_1".into()).await.unwrap().unwrap();
    let log: Vec<_> = ev.deliveries[0].attempt_log.iter().map(|a| (a.status_code, a.error.clone())).collect();
    assert_eq!(
        log,
        [
            (Some(503), Some("scripted".to_string())),
            (None, Some("destination \"dest\" is not in the current config".to_string()))
        ],
        "the running attempt's result is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn deliveries_waiting_for_a_slot_of_a_removed_destination_are_failed() {
    // the destination takes 4 at a time: 4 attempts run, 2 deliveries wait in the store
    let h = Harness::new(vec![], schedule(&[5])).await;
    *h.script.latency.lock().unwrap() = Duration::from_secs(3);
    let mut due = Vec::new();
    for i in 0..6 {
        due.extend(accept(&h.store, &format!("evt_{i}"), "dest").await);
    }
    h.dispatcher.submit(due);
    // 4 attempts hold the destination's slots; the other 2 are handed over in memory to them
    assert_eq!(h.dispatcher.in_memory(), 6);
    h.run_until(Duration::from_secs(1), |_| false).await;
    h.dispatcher.set_destinations(&[]);
    h.run_until(Duration::from_secs(30), |h| h.dispatcher.stats().pending == 0).await;
    assert_eq!(h.dispatcher.stats().delivered, 4, "the running attempts finish");
    assert_failed_as_removed(&h, &["evt_4", "evt_5"]).await;
}

#[tokio::test(start_paused = true)]
async fn memory_holds_only_the_attempts_in_flight_however_long_the_backlog() {
    // 200 deliveries to a destination that keeps failing: at no point are more of them in memory
    // than the attempts in flight and the bounded hand-over, and each still gets its retries
    let h = Harness::new(vec![retryable(None, false); 400], schedule(&[1, 1, 1, 1, 1, 1, 1, 1])).await;
    *h.script.latency.lock().unwrap() = Duration::from_millis(100);
    let mut most = 0;
    for i in 0..200 {
        h.dispatcher.submit(accept(&h.store, &format!("evt_{i}"), "dest").await);
        most = most.max(h.dispatcher.in_memory());
    }
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && h.dispatcher.stats().delivered < 200 {
        most = most.max(h.dispatcher.in_memory());
        h.run_until(Duration::from_millis(50), |_| false).await;
    }
    // the destination's 4 slots, and at most delivery.max_in_flight (8) handed over to them
    assert!(most <= 4 + 8, "{most} deliveries were in memory at once");
    assert_eq!(h.dispatcher.stats().delivered, 200, "the backlog drains once the failures stop");
    assert_eq!(h.dispatcher.stats().retries, 400);
}

/// Counts, per delivery, attempts running at the same moment, on a real multi-threaded runtime.
#[derive(Default)]
struct Overlap {
    running: Mutex<HashMap<DeliveryId, usize>>,
    worst: AtomicUsize,
    delivered: Mutex<HashMap<DeliveryId, usize>>,
    calls: AtomicUsize,
}

impl Transport for Arc<Overlap> {
    async fn attempt(&self, _: &Destination, d: &DueDelivery) -> AttemptReport {
        let now_running = {
            let mut r = self.running.lock().unwrap();
            let n = r.entry(d.id).or_default();
            *n += 1;
            *n
        };
        self.worst.fetch_max(now_running, Ordering::AcqRel);
        let call = self.calls.fetch_add(1, Ordering::AcqRel);
        // a real await point, with jitter, so that attempts interleave across threads
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
        *self.running.lock().unwrap().get_mut(&d.id).unwrap() -= 1;
        // every third call fails: retries (due in 1 ms) race the fast path and the pollers
        let outcome = if call.is_multiple_of(3) {
            retryable(None, false)
        } else {
            *self.delivered.lock().unwrap().entry(d.id).or_default() += 1;
            AttemptOutcome::Delivered { status: StatusCode::OK }
        };
        AttemptReport {
            outcome,
            latency: Duration::from_millis(1),
            response_body: Bytes::new(),
            response_headers: Vec::new(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_sender_per_delivery_with_many_workers_and_racing_pollers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let overlap = Arc::new(Overlap::default());
    let setup = Setup {
        backoff: Backoff::Schedule(vec![Duration::from_millis(1); 20]),
        breaker: false,
        rate: None,
        poller: true,
    };
    let dispatcher =
        Dispatcher::new(store.clone(), overlap.clone(), &[destination("dest", &setup)], 8, 10_000).await.unwrap();
    let poller = {
        let d = dispatcher.clone();
        tokio::spawn(async move { d.run(std::future::pending()).await })
    };
    // two more pollers, racing the first and the fast path
    let stop = Arc::new(AtomicBool::new(false));
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let (d, stop) = (dispatcher.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    d.poll_once().await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    const EVENTS: usize = 300;
    let senders: Vec<_> = (0..3)
        .map(|s| {
            let (d, store) = (dispatcher.clone(), store.clone());
            tokio::spawn(async move {
                for i in (s..EVENTS).step_by(3) {
                    d.submit(accept(&store, &format!("evt_{i}"), "dest").await);
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // the delivered count rises before the attempt's settle commits: wait for both
    while (dispatcher.stats().delivered < EVENTS as u64 || store.pending_count().await.unwrap() > 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    for r in racers {
        r.await.unwrap();
    }
    poller.abort();
    assert_eq!(dispatcher.stats().delivered, EVENTS as u64);
    assert_eq!(overlap.worst.load(Ordering::Acquire), 1, "two attempts of one delivery ran at once");
    let delivered = overlap.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), EVENTS);
    assert!(delivered.values().all(|n| *n == 1), "a delivered delivery was sent again");
    assert!(overlap.calls.load(Ordering::Acquire) > EVENTS, "retries happened");
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_handed_over_to_a_slot_that_goes_unused_is_still_sent() {
    // A poll holds every slot of the destination for rows it then finds no longer pending; an
    // event accepted in that moment is handed over to those slots. Giving an unused slot back
    // must start it, or it would stay claimed in memory, never sent.
    let h = Harness::new(vec![], Setup { poller: false, ..schedule(&[5]) }).await;
    let slots: Vec<Slot> = (0..4).map(|_| h.dispatcher.inner.slot_for("dest").unwrap()).collect();
    h.dispatcher.submit(accept(&h.store, "evt_1", "dest").await);
    assert_eq!(h.dispatcher.in_memory(), 1, "handed over, claimed");
    assert!(h.script.times.lock().unwrap().is_empty());
    for slot in slots {
        h.dispatcher.recycle(slot);
    }
    h.run_until(Duration::from_secs(5), |h| h.dispatcher.stats().delivered == 1).await;
    assert_eq!(h.status("evt_1").await, ("delivered".into(), 1));
    assert_eq!(h.dispatcher.in_memory(), 0);
}
