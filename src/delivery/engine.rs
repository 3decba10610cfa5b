//! The delivery engine: runs every planned delivery until it is delivered, fails for good, or
//! exhausts its destination's retry schedule.
//!
//! In this release the queue is in memory: a delivery is a task that attempts, sleeps for its
//! retry delay (holding no permit), and attempts again. Pending deliveries are lost if the process
//! dies; graceful shutdown waits up to `server.shutdown_grace` for them. The durable store replaces
//! this queue behind the same [`Engine::enqueue`] boundary.
//!
//! Limits: `delivery.max_pending` bounds queued deliveries (a full queue refuses new events so the
//! sender retries, rather than accepting what might be lost), `delivery.max_in_flight` bounds
//! attempts overall and each destination's `max_in_flight` bounds attempts per destination.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use super::Delivery;
use super::client::AttemptReport;
use super::retry::AttemptOutcome;

/// How an attempt is carried out. [`HttpTransport`] in production; tests of retry timing under
/// `tokio::time::pause()` use a scripted one, since paused time and real sockets do not mix.
pub trait Transport: Send + Sync + 'static {
    fn attempt(&self, delivery: &Delivery) -> impl Future<Output = AttemptReport> + Send;
}

/// Sends each attempt with the destination's own pooled client.
pub struct HttpTransport;

impl Transport for HttpTransport {
    async fn attempt(&self, d: &Delivery) -> AttemptReport {
        d.destination
            .client
            .send(d.request(SystemTime::now()), d.destination.timeout)
            .await
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
pub struct EngineStats {
    pub pending: usize,
    pub attempts: u64,
    pub delivered: u64,
    pub retries: u64,
    /// Failed for good: a non-retryable answer, or the schedule ran out.
    pub dead: u64,
}

pub struct Engine<T: Transport = HttpTransport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Engine<T> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    transport: T,
    in_flight: Semaphore,
    max_pending: usize,
    pending: AtomicUsize,
    idle: Notify,
    attempts: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    dead: AtomicU64,
}

impl<T: Transport> Engine<T> {
    pub fn new(transport: T, max_in_flight: usize, max_pending: usize) -> Self {
        Engine {
            inner: Arc::new(Inner {
                transport,
                in_flight: Semaphore::new(max_in_flight),
                max_pending,
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                attempts: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                dead: AtomicU64::new(0),
            }),
        }
    }

    /// Queues all of `deliveries` or none of them.
    pub fn enqueue(&self, deliveries: Vec<Delivery>) -> Result<(), QueueFull> {
        let n = deliveries.len();
        let inner = &self.inner;
        let before = inner.pending.fetch_add(n, Ordering::AcqRel);
        if before + n > inner.max_pending {
            inner.pending.fetch_sub(n, Ordering::AcqRel);
            return Err(QueueFull {
                pending: before,
                limit: inner.max_pending,
            });
        }
        for d in deliveries {
            tokio::spawn(run(self.inner.clone(), d));
        }
        Ok(())
    }

    pub fn stats(&self) -> EngineStats {
        let i = &self.inner;
        EngineStats {
            pending: i.pending.load(Ordering::Acquire),
            attempts: i.attempts.load(Ordering::Relaxed),
            delivered: i.delivered.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            dead: i.dead.load(Ordering::Relaxed),
        }
    }

    /// Waits until no delivery is pending or `grace` has passed; returns how many are still pending.
    pub async fn drain(&self, grace: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        self.inner.pending.load(Ordering::Acquire)
    }
}

async fn run<T: Transport>(inner: Arc<Inner<T>>, d: Delivery) {
    let dest = &d.destination;
    let mut retry = 0;
    loop {
        let report = {
            // the destination's own limit first, so a slow destination does not hold global permits
            let _dest_permit = dest.limit.acquire().await.expect("never closed");
            let _permit = inner.in_flight.acquire().await.expect("never closed");
            inner.transport.attempt(&d).await
        };
        inner.attempts.fetch_add(1, Ordering::Relaxed);
        let attempt = retry + 1;
        let latency_ms = report.latency.as_millis() as u64;
        match report.outcome {
            AttemptOutcome::Delivered { status } => {
                inner.delivered.fetch_add(1, Ordering::Relaxed);
                info!(event_id = %d.event_id, route = %d.route, destination = %dest.name, status = status.as_u16(), attempt, latency_ms, "delivered");
                break;
            }
            AttemptOutcome::Failed { reason, .. } => {
                inner.dead.fetch_add(1, Ordering::Relaxed);
                error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; not retryable");
                break;
            }
            AttemptOutcome::Retryable {
                retry_after,
                reason,
                ..
            } => match dest.retry.delay(retry, retry_after, fastrand::f64()) {
                Some(delay) => {
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, retry_in_ms = delay.as_millis() as u64, "delivery attempt failed; will retry");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                None => {
                    inner.dead.fetch_add(1, Ordering::Relaxed);
                    error!(event_id = %d.event_id, route = %d.route, destination = %dest.name, attempt, %reason, "delivery failed; retry schedule exhausted");
                    break;
                }
            },
        }
    }
    if inner.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
        inner.idle.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
