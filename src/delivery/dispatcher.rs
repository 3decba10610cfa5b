//! The dispatcher: runs due deliveries from the store until each is delivered, failed, dead, or
//! waiting (paused destination, open breaker).
//!
//! Newly accepted deliveries are handed over directly after their commit ([`Dispatcher::submit`]);
//! a poller picks up everything else that is due: deliveries recovered after a restart (what was
//! in flight when the process died is simply still pending: at-least-once), replays, and work held
//! back by a pause or a breaker. A delivery is "claimed" while a task owns it, so it is never sent
//! twice at once; its retry timer runs in that task, and its `next_at` in the store makes the retry
//! survive a restart.
//!
//! Limits: `delivery.max_pending` bounds pending deliveries (ingress answers 503 beyond it rather
//! than accept what it cannot hold), `delivery.max_in_flight` bounds attempts overall and each
//! destination's `max_in_flight` bounds attempts per destination.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::breaker::{Breaker, BreakerState};
use super::client::AttemptReport;
use super::retry::AttemptOutcome;
use super::{Destination, build_request};
use crate::store::{AttemptRecord, DueDelivery, Settle, Store};

/// Unix ms now. In unit tests it follows tokio's (pausable) clock, so due times in the store move
/// with virtual time.
fn now_ms() -> i64 {
    #[cfg(test)]
    {
        use std::sync::OnceLock;
        static BASE: OnceLock<(i64, std::time::Instant)> = OnceLock::new();
        let (wall, mono) = *BASE.get_or_init(|| (crate::store::now_ms(), std::time::Instant::now()));
        wall + Instant::now().into_std().saturating_duration_since(mono).as_millis() as i64
    }
    #[cfg(not(test))]
    crate::store::now_ms()
}

/// Shortest pause between two polls.
const MIN_POLL_GAP: Duration = Duration::from_millis(50);

/// How often the poller looks for due work it was not told about (replays from another process,
/// resumed destinations). Newly accepted events do not wait for it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How an attempt is carried out. [`HttpTransport`] in production; retry-timing tests under
/// `tokio::time::pause()` use a scripted one, since paused time and real sockets do not mix.
pub trait Transport: Send + Sync + 'static {
    fn attempt(&self, destination: &Destination, delivery: &DueDelivery) -> impl Future<Output = AttemptReport> + Send;
}

/// Sends each attempt with the destination's own pooled client.
pub struct HttpTransport;

impl Transport for HttpTransport {
    async fn attempt(&self, dest: &Destination, d: &DueDelivery) -> AttemptReport {
        dest.client.send(build_request(dest, d, SystemTime::now()), dest.timeout).await
    }
}

/// The queue is full: the event must not be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("delivery queue is full ({pending} pending, limit {limit})")]
pub struct QueueFull {
    pub pending: usize,
    pub limit: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    pub pending: usize,
    pub attempts: u64,
    pub delivered: u64,
    pub retries: u64,
    /// Not retryable (kept as failed).
    pub failed: u64,
    /// Retry policy exhausted (dead letters).
    pub dead: u64,
}

pub struct Dispatcher<T: Transport = HttpTransport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Dispatcher<T> {
    fn clone(&self) -> Self {
        Dispatcher { inner: self.inner.clone() }
    }
}

struct Inner<T> {
    store: Store,
    transport: T,
    destinations: ArcSwap<HashMap<Arc<str>, Arc<Destination>>>,
    in_flight: Semaphore,
    max_pending: AtomicUsize,
    pending: AtomicUsize,
    claims: Mutex<Claims>,
    /// Set at shutdown: no new attempt starts.
    stopping: AtomicBool,
    paused: Mutex<HashSet<String>>,
    breakers: Mutex<HashMap<Arc<str>, Breaker>>,
    wake: Notify,
    /// Attempts running now (shutdown waits for them).
    attempting: AtomicUsize,
    idle: Notify,
    attempts: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dead: AtomicU64,
}

impl<T: Transport> Dispatcher<T> {
    /// A dispatcher over `store`, sending to `destinations` (replace them with
    /// [`Dispatcher::set_destinations`] on reload).
    pub async fn new(
        store: Store,
        transport: T,
        destinations: &[Arc<Destination>],
        max_in_flight: usize,
        max_pending: usize,
    ) -> crate::store::Result<Self> {
        let pending = store.pending_count().await?;
        let paused = store.paused().await?.into_iter().map(|(n, _)| n).collect();
        let d = Dispatcher {
            inner: Arc::new(Inner {
                store,
                transport,
                destinations: ArcSwap::from_pointee(HashMap::new()),
                in_flight: Semaphore::new(max_in_flight),
                max_pending: AtomicUsize::new(max_pending),
                pending: AtomicUsize::new(pending),
                claims: Mutex::new(Claims::default()),
                stopping: AtomicBool::new(false),
                paused: Mutex::new(paused),
                breakers: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                attempting: AtomicUsize::new(0),
                idle: Notify::new(),
                attempts: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                dead: AtomicU64::new(0),
            }),
        };
        d.set_destinations(destinations);
        Ok(d)
    }

    /// Deliveries look their destination up by name at each attempt, so a reload takes effect on
    /// the next attempt; a destination that disappeared fails its deliveries as "destination
    /// removed" (kept for replay).
    pub fn set_destinations(&self, destinations: &[Arc<Destination>]) {
        let map = destinations.iter().map(|d| (d.name.clone(), d.clone())).collect();
        self.inner.destinations.store(Arc::new(map));
        let mut breakers = self.inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
        for d in destinations {
            // keep a breaker's state across reloads unless its settings changed
            if breakers.get(&d.name).is_none_or(|b| *b.settings() != d.breaker) {
                breakers.insert(d.name.clone(), Breaker::new(d.breaker.clone()));
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Refuses `n` more deliveries when the queue is full. Call before committing an event.
    pub fn check_capacity(&self, n: usize) -> Result<(), QueueFull> {
        let pending = self.inner.pending.load(Ordering::Acquire);
        let limit = self.inner.max_pending.load(Ordering::Relaxed);
        if n > 0 && pending.saturating_add(n) > limit { Err(QueueFull { pending, limit }) } else { Ok(()) }
    }

    /// Starts committed, due deliveries now (the fast path after an accept).
    pub fn submit(&self, due: Vec<DueDelivery>) {
        self.inner.pending.fetch_add(due.len(), Ordering::AcqRel);
        for d in due {
            self.claim_and_spawn(d, None);
        }
    }

    /// Claims `d` and starts its task, unless a task owns it or released it after `read_at` (a
    /// row read before that task's result committed still looks pending). One lock covers the
    /// check and the claim, and the task's release, so the two cannot interleave.
    fn claim_and_spawn(&self, d: DueDelivery, read_at: Option<Instant>) -> bool {
        {
            let mut claims = self.inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            // `None` (the fast path after an accept): any release means the poller saw the
            // committed row first and a task already handled it
            let stale = match (read_at, claims.released.get(&d.id)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(t), Some(at)) => *at >= t,
            };
            if stale || !claims.claimed.insert(d.id) {
                return false;
            }
        }
        let span =
            tracing::info_span!("delivery", event_id = %d.event_id, route = %d.route, destination = %d.destination);
        tokio::spawn(tracing::Instrument::instrument(run(self.inner.clone(), d), span));
        true
    }

    pub fn stats(&self) -> DispatcherStats {
        let i = &self.inner;
        DispatcherStats {
            pending: i.pending.load(Ordering::Acquire),
            attempts: i.attempts.load(Ordering::Relaxed),
            delivered: i.delivered.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            dead: i.dead.load(Ordering::Relaxed),
        }
    }

    /// Breaker state per destination.
    pub fn breaker_states(&self) -> Vec<(Arc<str>, &'static str)> {
        let b = self.inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = b.iter().map(|(k, b)| (k.clone(), b.state().label())).collect();
        v.sort();
        v
    }

    /// Wakes the poller now (after a replay or a resume in this process).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Polls the store for due work until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.poll_once().await {
                error!(error = %e, "polling the store for due deliveries failed");
            }
            // Deliveries owned by a task retry on their own timers; the poller only needs to be
            // prompt for rows due in the future that no task owns (retries recovered after a
            // restart). Rows due now are mostly owned, so they do not make it spin.
            let next = self.inner.store.next_due_ms().await.ok().flatten();
            let wait = match next {
                Some(at) if at > now_ms() => Duration::from_millis((at - now_ms()) as u64).min(POLL_INTERVAL),
                _ => POLL_INTERVAL,
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(MIN_POLL_GAP)) => {}
            }
        }
    }

    /// One poll: refresh paused destinations and the pending count, claim due work.
    pub async fn poll_once(&self) -> crate::store::Result<usize> {
        let inner = &self.inner;
        let paused: HashSet<String> = inner.store.paused().await?.into_iter().map(|(n, _)| n).collect();
        *inner.paused.lock().unwrap_or_else(|p| p.into_inner()) = paused;
        inner.pending.store(inner.store.pending_count().await?, Ordering::Release);
        let claimed = inner.claims.lock().unwrap_or_else(|p| p.into_inner()).claimed.len();
        // A task releases its claim right after its result committed. A row read before that
        // commit still looks pending, so ids released after this poll began are skipped.
        let poll_started = Instant::now();
        let due = inner.store.due_ids(now_ms(), claimed + 512).await?;
        let now = Instant::now();
        let wanted: Vec<i64> = {
            let mut claims = inner.claims.lock().unwrap_or_else(|p| p.into_inner());
            claims.released.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            let Claims { claimed, released } = &*claims;
            let breakers = inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
            due.into_iter()
                .filter(|(id, dest)| {
                    !claimed.contains(id)
                        && released.get(id).is_none_or(|at| *at < poll_started)
                        && breakers.get(dest.as_str()).is_none_or(|b| b.would_allow(now))
                })
                .map(|(id, _)| id)
                .collect()
        };
        if wanted.is_empty() {
            return Ok(0);
        }
        let mut started = 0;
        for d in inner.store.load_pending(wanted).await? {
            if self.claim_and_spawn(d, Some(poll_started)) {
                started += 1;
            }
        }
        Ok(started)
    }

    /// Marks a destination paused or not in this process at once (the store is the source of
    /// truth; the poller refreshes from it every second).
    pub fn set_paused(&self, destination: &str, paused: bool) {
        let mut set = self.inner.paused.lock().unwrap_or_else(|p| p.into_inner());
        if paused {
            set.insert(destination.to_string());
        } else {
            set.remove(destination);
        }
    }

    /// Stops starting attempts, then waits until none is running or `grace` has passed; returns
    /// how many still run. Everything not finished stays due in the store.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.stopping.store(true, Ordering::Release);
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.attempting.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.inner.attempting.load(Ordering::Acquire)
    }
}

/// Which deliveries tasks own, and when recently finished tasks gave theirs up.
#[derive(Default)]
struct Claims {
    claimed: HashSet<i64>,
    released: HashMap<i64, Instant>,
}

/// Owns one claimed delivery until it is finished or must wait in the store.
async fn run<T: Transport>(inner: Arc<Inner<T>>, mut d: DueDelivery) {
    while let Next::RetryIn(delay) = attempt_once(&inner, &d).await {
        d.attempts += 1;
        tokio::time::sleep(delay).await;
    }
    // record the release before dropping the claim, so a poll that read this row as pending
    // before our result committed cannot take it again
    let mut claims = inner.claims.lock().unwrap_or_else(|p| p.into_inner());
    claims.released.insert(d.id, Instant::now());
    claims.claimed.remove(&d.id);
}

enum Next {
    /// Attempted and recorded; try again after this delay (the store has the same due time).
    RetryIn(Duration),
    /// Finished: delivered, failed or dead.
    Done,
    /// Not attempted (paused, breaker open) or not recorded: leave it to the poller.
    Release,
}

async fn attempt_once<T: Transport>(inner: &Inner<T>, d: &DueDelivery) -> Next {
    let Some(dest) = inner.destinations.load().get(&d.destination).cloned() else {
        let reason = format!("destination \"{}\" is not in the current config", d.destination);
        let record = AttemptRecord {
            at_ms: now_ms(),
            status_code: None,
            latency_ms: 0,
            response: Default::default(),
            error: Some(reason.clone()),
        };
        warn!(event_id = %d.event_id, route = %d.route, destination = %d.destination, "destination removed; delivery kept as failed for replay");
        return finish(inner, d, record, Settle::Failed, Some(reason)).await;
    };
    if inner.paused.lock().unwrap_or_else(|p| p.into_inner()).contains(&*d.destination) {
        return Next::Release;
    }
    let admitted = {
        let mut breakers = inner.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.entry(dest.name.clone()).or_insert_with(|| Breaker::new(dest.breaker.clone())).allow(Instant::now())
    };
    if !admitted {
        return Next::Release;
    }
    if let Some(rate) = &dest.rate {
        rate.wait().await;
    }
    let report = {
        let _dest_permit = dest.limit.acquire().await.expect("never closed");
        let _permit = inner.in_flight.acquire().await.expect("never closed");
        // while this task waited for its turn, a shutdown or a pause may have come
        inner.attempting.fetch_add(1, Ordering::AcqRel);
        if inner.stopping.load(Ordering::Acquire)
            || inner.paused.lock().unwrap_or_else(|p| p.into_inner()).contains(&*d.destination)
        {
            if inner.attempting.fetch_sub(1, Ordering::AcqRel) == 1 {
                inner.idle.notify_waiters();
            }
            return Next::Release;
        }
        inner.transport.attempt(&dest, d).await
    };
    inner.attempts.fetch_add(1, Ordering::Relaxed);
    crate::metrics::attempt(&dest.name, report.latency.as_secs_f64());
    crate::metrics::delivery(
        &dest.name,
        outcome_label(&report.outcome, dest.retry.delay(d.attempts + 1, None, false, 0.5).is_some()),
    );
    let attempt = d.attempts + 1;
    let latency_ms = report.latency.as_millis() as u64;
    let (status_code, error_text) = match &report.outcome {
        AttemptOutcome::Delivered { status } => (Some(status.as_u16()), None),
        AttemptOutcome::Retryable { status, reason, .. } | AttemptOutcome::Failed { status, reason } => {
            (status.map(|s| s.as_u16()), Some(reason.clone()))
        }
        AttemptOutcome::Gone => (Some(410), Some("HTTP 410 Gone: destination paused".to_string())),
    };
    let record = AttemptRecord {
        at_ms: now_ms(),
        status_code,
        latency_ms,
        response: report.response_body.clone(),
        error: error_text.clone(),
    };
    let success = !matches!(report.outcome, AttemptOutcome::Retryable { .. });
    let changed = inner
        .breakers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(&dest.name)
        .and_then(|b| b.record(Instant::now(), success));
    match changed {
        Some(BreakerState::Open { .. }) => {
            warn!(destination = %dest.name, cooldown_ms = dest.breaker.cooldown.as_millis() as u64, "circuit breaker opened; deliveries wait in the store")
        }
        Some(BreakerState::Closed) => info!(destination = %dest.name, "circuit breaker closed"),
        _ => {}
    }
    let next = match report.outcome {
        AttemptOutcome::Delivered { status } => {
            info!(event_id = %d.event_id, route = %d.route, destination = %dest.name, status = status.as_u16(), attempt, latency_ms, "delivered");
            inner.delivered.fetch_add(1, Ordering::Relaxed);
            finish(inner, d, record, Settle::Delivered, None).await
        }
        AttemptOutcome::Failed { reason, .. } => {
            error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; not retryable (kept as failed)");
            inner.failed.fetch_add(1, Ordering::Relaxed);
            finish(inner, d, record, Settle::Failed, error_text).await
        }
        AttemptOutcome::Gone => {
            let reason = Some("the destination answered 410 Gone".to_string());
            if let Err(e) = inner.store.set_paused(&dest.name, true, reason).await {
                error!(error = %e, "could not record the pause");
            }
            // In memory after the store (a poll in between would read the store and undo it),
            // and logged after both, so the line is true when it appears: an event accepted
            // after it waits in the store.
            inner.paused.lock().unwrap_or_else(|p| p.into_inner()).insert(dest.name.to_string());
            error!(event_id = %d.event_id, destination = %dest.name, "destination answered 410 Gone; paused it (resume with `hookyard resume`)");
            let settled = inner.store.settle(d.id, record, Settle::Retry { next_at_ms: now_ms() }, error_text).await;
            if let Err(e) = settled {
                error!(error = %e, "could not record the attempt");
            }
            Next::Release
        }
        AttemptOutcome::Retryable { retry_after, throttled, reason, .. } => {
            match dest.retry.delay(attempt, retry_after, throttled, fastrand::f64()) {
                Some(delay) => {
                    warn!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, retry_in_ms = delay.as_millis() as u64, "delivery attempt failed; will retry");
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    let next_at_ms = now_ms() + delay.as_millis() as i64;
                    match inner.store.settle(d.id, record, Settle::Retry { next_at_ms }, error_text).await {
                        Ok(()) => Next::RetryIn(delay),
                        Err(e) => {
                            error!(error = %e, "could not record the attempt; the delivery stays due");
                            Next::Release
                        }
                    }
                }
                None => {
                    error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; retries exhausted (dead letter)");
                    inner.dead.fetch_add(1, Ordering::Relaxed);
                    finish(inner, d, record, Settle::Dead, error_text).await
                }
            }
        }
    };
    if inner.attempting.fetch_sub(1, Ordering::AcqRel) == 1 {
        inner.idle.notify_waiters();
    }
    next
}

/// The `outcome` label of the deliveries metric.
fn outcome_label(o: &AttemptOutcome, can_retry: bool) -> &'static str {
    match o {
        AttemptOutcome::Delivered { .. } => "delivered",
        AttemptOutcome::Failed { .. } => "failed",
        AttemptOutcome::Gone => "gone",
        AttemptOutcome::Retryable { .. } if can_retry => "retry",
        AttemptOutcome::Retryable { .. } => "dead",
    }
}

/// Records a final state.
async fn finish<T>(
    inner: &Inner<T>,
    d: &DueDelivery,
    record: AttemptRecord,
    settle: Settle,
    error: Option<String>,
) -> Next {
    match inner.store.settle(d.id, record, settle, error).await {
        Ok(()) => {
            // the poller also resets the count from the store, so never wrap below zero
            let _ = inner.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
            Next::Done
        }
        Err(e) => {
            error!(error = %e, delivery = d.id, "could not record the attempt; the delivery stays due");
            Next::Release
        }
    }
}

#[cfg(test)]
mod tests;
