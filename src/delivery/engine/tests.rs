//! Retry timing under `tokio::time::pause()`, with a scripted transport (paused time cannot drive
//! real sockets: the clock would jump past every timeout). Real-socket retries are covered by
//! `tests/delivery.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::*;
use crate::delivery::egress::EgressPolicy;
use crate::delivery::{Destination, HttpClient, RetryPolicy, TlsRoots};
use crate::sign::{SignScheme, Signer};

/// Answers attempts from a script and records when each attempt happened.
struct Script {
    replies: Mutex<VecDeque<AttemptOutcome>>,
    times: Mutex<Vec<Instant>>,
}

impl Script {
    fn new(replies: Vec<AttemptOutcome>) -> Self {
        Script {
            replies: Mutex::new(replies.into()),
            times: Mutex::new(Vec::new()),
        }
    }
}

impl Transport for Arc<Script> {
    async fn attempt(&self, _: &Delivery) -> AttemptReport {
        self.times.lock().unwrap().push(Instant::now());
        let outcome =
            self.replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(AttemptOutcome::Delivered {
                    status: StatusCode::OK,
                });
        AttemptReport {
            outcome,
            latency: Duration::ZERO,
            response_body: Bytes::new(),
        }
    }
}

fn delivery(schedule: &[u64], max_retry_after: u64) -> Delivery {
    let destination = Destination {
        name: "dest".into(),
        url: "http://example.com/".parse().unwrap(),
        headers: HeaderMap::new(),
        signer: Signer::new(SignScheme::None, None).unwrap(),
        timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            jitter: 0.0,
            max_retry_after: Duration::from_secs(max_retry_after),
        },
        limit: tokio::sync::Semaphore::new(4),
        client: HttpClient::new(
            Arc::new(EgressPolicy::default()),
            &TlsRoots::webpki(),
            4,
            Duration::from_secs(1),
        )
        .unwrap(),
    };
    Delivery {
        event_id: "evt_1".into(),
        route: "r".into(),
        destination: Arc::new(destination),
        msg_id: "msg_1".into(),
        forwarded: HeaderMap::new(),
        body: Bytes::from_static(b"{}"),
    }
}

fn retryable(retry_after: Option<u64>) -> AttemptOutcome {
    AttemptOutcome::Retryable {
        status: Some(StatusCode::SERVICE_UNAVAILABLE),
        retry_after: retry_after.map(Duration::from_secs),
        reason: "HTTP 503".into(),
    }
}

fn failed() -> AttemptOutcome {
    AttemptOutcome::Failed {
        status: Some(StatusCode::BAD_REQUEST),
        reason: "HTTP 400 is not retried".into(),
    }
}

/// Runs one delivery to completion and returns the offsets of its attempts from the start.
async fn run_script(
    replies: Vec<AttemptOutcome>,
    schedule: &[u64],
    max_retry_after: u64,
) -> (Vec<Duration>, EngineStats) {
    let script = Arc::new(Script::new(replies));
    let engine = Engine::new(script.clone(), 8, 100);
    let start = Instant::now();
    engine
        .enqueue(vec![delivery(schedule, max_retry_after)])
        .unwrap();
    assert_eq!(
        engine.drain(Duration::from_secs(1_000_000)).await,
        0,
        "delivery still pending"
    );
    let times = script
        .times
        .lock()
        .unwrap()
        .iter()
        .map(|t| *t - start)
        .collect();
    (times, engine.stats())
}

fn secs(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs(*s)).collect()
}

#[tokio::test(start_paused = true)]
async fn fails_twice_then_succeeds_on_schedule() {
    let (times, stats) = run_script(
        vec![retryable(None), retryable(None)],
        &[5, 300, 1800],
        3600,
    )
    .await;
    assert_eq!(times, secs(&[0, 5, 305]));
    assert_eq!(
        stats,
        EngineStats {
            pending: 0,
            attempts: 3,
            delivered: 1,
            retries: 2,
            dead: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_schedule_is_a_dead_letter() {
    let (times, stats) = run_script(vec![retryable(None); 10], &[5, 300], 3600).await;
    assert_eq!(times, secs(&[0, 5, 305]));
    assert_eq!(
        stats,
        EngineStats {
            pending: 0,
            attempts: 3,
            delivered: 0,
            retries: 2,
            dead: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_replaces_the_schedule_and_is_clamped() {
    let (times, _) = run_script(
        vec![retryable(Some(42)), retryable(Some(100_000))],
        &[5, 300, 1800],
        3600,
    )
    .await;
    assert_eq!(times, secs(&[0, 42, 42 + 3600]));
}

#[tokio::test(start_paused = true)]
async fn non_retryable_fails_at_once() {
    let (times, stats) = run_script(vec![failed()], &[5, 300], 3600).await;
    assert_eq!(times, secs(&[0]));
    assert_eq!(
        stats,
        EngineStats {
            pending: 0,
            attempts: 1,
            delivered: 0,
            retries: 0,
            dead: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn queue_limit_refuses_whole_batches() {
    let script = Arc::new(Script::new(vec![retryable(None); 100]));
    let engine = Engine::new(script, 8, 3);
    engine
        .enqueue(vec![delivery(&[5], 60), delivery(&[5], 60)])
        .unwrap();
    let full = engine
        .enqueue(vec![delivery(&[5], 60), delivery(&[5], 60)])
        .unwrap_err();
    assert_eq!(
        full,
        QueueFull {
            pending: 2,
            limit: 3
        }
    );
    engine.enqueue(vec![delivery(&[5], 60)]).unwrap();
    assert_eq!(engine.stats().pending, 3);
    assert_eq!(engine.drain(Duration::from_secs(60)).await, 0);
}

#[tokio::test(start_paused = true)]
async fn drain_gives_up_after_grace() {
    let script = Arc::new(Script::new(vec![retryable(None); 100]));
    let engine = Engine::new(script, 8, 10);
    engine.enqueue(vec![delivery(&[3600], 60)]).unwrap();
    assert_eq!(engine.drain(Duration::from_secs(10)).await, 1);
}
