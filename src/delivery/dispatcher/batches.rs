//! Batched delivery (`destinations.<name>.batch`): the dispatcher's side. Deliveries of a batched
//! destination are stored awaiting a batch and are never due alone; at each poll the dispatcher
//! asks the store to form the batches a limit closes ([`Queue::form_batch`]: `max_events`,
//! `max_bytes`, or the oldest's `max_wait`), then starts due batches (new, or retries) as it
//! starts deliveries: one attempt slot each, breaker, pause and rate limit applying alike. A batch
//! is one signed request with its own `webhook-id`, retried as a unit on its destination's retry
//! policy; its outcome is recorded onto each member ([`Queue::settle_batch`]).
//!
//! Accepts of batched deliveries are counted per destination ([`Dispatcher::batched`]): the first
//! one and one that fills `max_events` wake the poller, so a batch closes when full, not at the
//! next poll, and the wait of a batch's oldest member ends on time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, Bytes, BytesMut};
use tracing::{error, info, warn};

use super::{Dispatcher, Inner, NoSlot, Slot, Transport};
use crate::config::{BatchConfig, BatchFormat};
use crate::delivery::Destination;
use crate::delivery::retry::AttemptOutcome;
use crate::store::{
    AttemptRecord, BatchLimits, DeliveryId, DestinationName, DueBatch, DueDelivery, Formation, Queue, Settle,
};

/// Most batches one destination forms in one poll (a backlog is formed over several polls).
const MAX_FORMED_PER_POLL: usize = 64;

/// What the poller knows of each batched destination's deliveries awaiting a batch, so that it
/// asks the store to form one (a write) only when one may close: `max_events` are awaiting, the
/// oldest's wait has ended, or a poll interval passed (replays by another process, which this one
/// does not count).
#[derive(Default)]
pub(super) struct Awaiting(HashMap<Arc<str>, Known>);

#[derive(Clone, Copy)]
pub(super) struct Known {
    /// Awaiting (at most `max_events`, as the store counted them, plus those accepted since).
    count: usize,
    /// When the oldest's wait ends (unix ms); 0: not known yet.
    closes_at: i64,
    checked: tokio::time::Instant,
}

impl<T: Transport> Dispatcher<T> {
    /// Counts batched deliveries just accepted (their destinations' names); wakes the poller for
    /// the first one awaiting (its `max_wait` starts) and when one destination has `max_events`.
    pub fn batched<'a>(&self, destinations: impl IntoIterator<Item = &'a DestinationName>) {
        let current = self.inner.destinations.load();
        let mut wake = false;
        {
            let mut awaiting = self.inner.awaiting.lock().unwrap_or_else(|p| p.into_inner());
            for name in destinations {
                let Some(limit) = current.get(&**name).and_then(|d| d.batch.as_ref()).map(|b| b.max_events) else {
                    continue;
                };
                let known = awaiting.0.entry(name.0.clone()).or_insert(Known {
                    count: 0,
                    closes_at: 0,
                    checked: tokio::time::Instant::now(),
                });
                known.count += 1;
                if known.count == 1 {
                    known.closes_at = 0; // the poller learns the new oldest's deadline
                }
                wake |= known.count == 1 || known.count == limit;
            }
        }
        if wake {
            self.wake();
        }
    }

    /// Forms the batches a limit closes now, then starts due batches for the free slots.
    /// Returns when the oldest delivery awaiting a batch will have waited `max_wait` (the poller
    /// wakes then).
    pub(super) async fn poll_batches(&self) -> Option<i64> {
        let inner = &self.inner;
        if inner.stopping.load(Ordering::Acquire) {
            return None;
        }
        let now = inner.clock.now_ms();
        let mut next_close: Option<i64> = None;
        let destinations = inner.destinations.load_full();
        for d in destinations.values() {
            let Some(b) = &d.batch else { continue };
            if inner.held(&d.name) {
                continue;
            }
            // ask the store only when a batch may close (forming is a write)
            let known = inner.awaiting.lock().unwrap_or_else(|p| p.into_inner()).0.get(&d.name).copied();
            if let Some(k) = known
                && k.count < b.max_events
                && (k.count == 0 || k.closes_at > now)
                && k.checked.elapsed() < super::POLL_INTERVAL
            {
                if k.count > 0 {
                    next_close = Some(next_close.map_or(k.closes_at, |t| t.min(k.closes_at)));
                }
                continue;
            }
            let limits = limits(b);
            for _ in 0..MAX_FORMED_PER_POLL {
                let formed = inner.store.form_batch(DestinationName(d.name.clone()), limits, now).await;
                let (count, closes_at) = match formed {
                    Ok(Formation::Formed { .. }) => continue,
                    Ok(Formation::NotYet { due_at_ms, awaiting }) => {
                        next_close = Some(next_close.map_or(due_at_ms, |t| t.min(due_at_ms)));
                        (awaiting, due_at_ms)
                    }
                    Ok(Formation::Empty) => (0, 0),
                    Err(e) => {
                        error!(error = %e, destination = %d.name, "forming a batch failed; retried at the next poll");
                        (1, 0)
                    }
                };
                let known = Known { count, closes_at, checked: tokio::time::Instant::now() };
                inner.awaiting.lock().unwrap_or_else(|p| p.into_inner()).0.insert(d.name.clone(), known);
                break;
            }
        }
        let free = inner.in_flight.available_permits();
        if free == 0 {
            return next_close;
        }
        let claimed = inner.batch_claims.lock().unwrap_or_else(|p| p.into_inner()).len();
        let due = match inner.store.due_batches(now, claimed + free, self.blocked_destinations()).await {
            Ok(due) => due,
            Err(e) => {
                error!(error = %e, "reading the due batches failed");
                return next_close;
            }
        };
        for (id, destination) in due {
            if inner.batch_claims.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
                continue;
            }
            match inner.slot_for(&destination) {
                Ok(slot) => {
                    inner.batch_claims.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                    tokio::spawn(run(inner.clone(), id, slot));
                }
                Err(NoSlot::Full) => {
                    inner.backlog.store(true, Ordering::Release);
                    break;
                }
                Err(_) => inner.backlog.store(true, Ordering::Release),
            }
        }
        next_close
    }

    /// Deliveries awaiting a batch of a destination that does not batch in the current config
    /// (it no longer does, or is gone) are sent one by one (or failed as removed).
    pub(super) async fn release_unbatched(&self) {
        let batched = batched_names(&self.inner.destinations.load());
        match self.inner.store.unbatch(batched).await {
            Ok(0) => {}
            Ok(n) => {
                info!(
                    deliveries = n,
                    "deliveries awaiting a batch of a destination that no longer batches go one by one"
                );
                self.wake();
            }
            Err(e) => warn!(error = %e, "could not release deliveries awaiting a batch; retried at the next sweep"),
        }
    }
}

/// The destinations of `destinations` that batch, by name.
pub(super) fn batched_names(destinations: &HashMap<Arc<str>, Arc<Destination>>) -> Vec<DestinationName> {
    let mut names: Vec<DestinationName> =
        destinations.values().filter(|d| d.batch.is_some()).map(|d| DestinationName(d.name.clone())).collect();
    names.sort();
    names
}

fn limits(b: &BatchConfig) -> BatchLimits {
    BatchLimits { max_events: b.max_events, max_bytes: b.max_bytes.0, max_wait_ms: b.max_wait.0.as_millis() as i64 }
}

/// The request body of a batch: `[b1,b2,…]` or one body per line. A body that is JSON goes as it
/// is (on one line for `ndjson`); one that is not goes as a JSON string of its text (invalid UTF-8
/// replaced), so the whole is always valid JSON (or NDJSON).
pub(super) fn batch_body(members: &[(DeliveryId, Bytes)], format: BatchFormat) -> Bytes {
    let total: usize = members.iter().map(|(_, b)| b.len() + 1).sum();
    let mut out = BytesMut::with_capacity(total + 2);
    if format == BatchFormat::JsonArray {
        out.put_u8(b'[');
    }
    for (i, (_, body)) in members.iter().enumerate() {
        if i > 0 && format == BatchFormat::JsonArray {
            out.put_u8(b',');
        }
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) if format == BatchFormat::JsonArray || !body.contains(&b'\n') => out.put_slice(body.trim_ascii()),
            Ok(_) => {
                // a JSON body over several lines: on one line
                let v: serde_json::Value = serde_json::from_slice(body).expect("parsed just above");
                out.put_slice(v.to_string().as_bytes());
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                out.put_slice(serde_json::Value::String(text.into_owned()).to_string().as_bytes());
            }
        }
        if format == BatchFormat::Ndjson {
            out.put_u8(b'\n');
        }
    }
    if format == BatchFormat::JsonArray {
        out.put_u8(b']');
    }
    out.freeze()
}

/// One attempt of batch `id` with `slot`, recorded onto its members; then the slot goes back.
async fn run<T: Transport>(inner: Arc<Inner<T>>, id: i64, slot: Slot) {
    attempt(&inner, id, &slot).await;
    inner.batch_claims.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    if let Some((d, slot)) = inner.end_slot(slot) {
        // a delivery handed over meanwhile: its task takes the slot
        tokio::spawn(super::run(inner.clone(), d, slot));
    }
    if inner.backlog.load(Ordering::Acquire) {
        inner.wake.notify_one();
    }
}

async fn attempt<T: Transport>(inner: &Inner<T>, id: i64, slot: &Slot) {
    let batch = match inner.store.load_batch(id, inner.clock.now_ms()).await {
        Ok(Some(b)) => b,
        Ok(None) => return, // settled meanwhile (another instance), or nothing left in it
        Err(e) => {
            error!(error = %e, batch = id, "loading a due batch failed; retried at the next poll");
            return;
        }
    };
    let members: Vec<DeliveryId> = batch.members.iter().map(|m| m.0).collect();
    let n = members.len() as u64;
    let current = inner.destinations.load().get(&*batch.destination).cloned();
    let (Some(dest), Some(_)) = (current, &slot.dest) else {
        let reason = format!("destination \"{}\" is not in the current config", batch.destination);
        warn!(batch = id, destination = %batch.destination, "destination removed; batch kept as failed for replay");
        let record = record(inner, None, 0, Default::default(), Some(reason.clone()));
        settle(inner, &batch, members, record, Settle::Failed, Some(reason)).await;
        inner.failed.fetch_add(n, Ordering::Relaxed);
        return;
    };
    if !inner.admit(&dest) {
        return;
    }
    if let Some(rate) = &dest.rate {
        rate.wait().await;
    }
    let format = dest.batch.as_ref().map_or(BatchFormat::JsonArray, |b| b.format);
    let content_type = match format {
        BatchFormat::JsonArray => "application/json",
        BatchFormat::Ndjson => "application/x-ndjson",
    };
    let request = DueDelivery {
        id: DeliveryId(-id),
        event_id: format!("batch_{id}").as_str().into(),
        route: "batch".into(),
        destination: batch.destination.clone(),
        msg_id: batch.msg_id.clone(),
        attempts: batch.attempts,
        headers: Arc::new(vec![("content-type".into(), content_type.into())]),
        extra_headers: Some(Arc::new(vec![("x-hookyard-batch-events".into(), n.to_string())])),
        body: batch_body(&batch.members, format),
        order_key: None,
        url: None,
        leads: false,
        context: None,
        lease_until: batch.lease_until,
    };
    let Some(report) = inner.send(&dest, &request).await else { return };
    inner.attempts.fetch_add(1, Ordering::Relaxed);
    crate::metrics::attempt(&dest.name, report.latency.as_secs_f64());
    let number = batch.attempts + 1;
    let can_retry = dest.retry.delay(number, None, false, 0.5).is_some();
    for _ in 0..n {
        crate::metrics::delivery(&dest.name, super::outcome_label(&report.outcome, can_retry));
    }
    let delivered = matches!(report.outcome, AttemptOutcome::Delivered { .. });
    inner.activity.record(&dest.name, report.latency, delivered);
    let (code, error_text) = report.outcome.status_and_error();
    let latency_ms = report.latency.as_millis() as u64;
    let attempt = record(inner, code, latency_ms, report.response_body.clone(), error_text.clone());
    inner.record_in_breaker(&dest, !matches!(report.outcome, AttemptOutcome::Retryable { .. }));
    let settled = match report.outcome {
        AttemptOutcome::Delivered { status } => {
            info!(batch = id, msg_id = %batch.msg_id, destination = %dest.name, events = n, status = status.as_u16(), attempt = number, latency_ms, "batch delivered");
            inner.delivered.fetch_add(n, Ordering::Relaxed);
            Settle::Delivered
        }
        AttemptOutcome::Failed { ref reason, .. } => {
            error!(batch = id, destination = %dest.name, events = n, attempt = number, %reason, "batch failed; not retryable (its deliveries kept as failed)");
            inner.failed.fetch_add(n, Ordering::Relaxed);
            Settle::Failed
        }
        AttemptOutcome::Gone => {
            inner.pause_gone(&dest).await;
            error!(batch = id, destination = %dest.name, "destination answered 410 Gone; paused it (resume with `hookyard resume`)");
            Settle::Retry { next_at_ms: inner.clock.now_ms() }
        }
        AttemptOutcome::Retryable { retry_after, throttled, ref reason, .. } => {
            match dest.retry.delay(number, retry_after, throttled, fastrand::f64()) {
                Some(delay) => {
                    warn!(batch = id, destination = %dest.name, events = n, attempt = number, %reason, retry_in_ms = delay.as_millis() as u64, "batch attempt failed; will retry");
                    inner.retries.fetch_add(1, Ordering::Relaxed);
                    Settle::Retry { next_at_ms: inner.clock.now_ms() + delay.as_millis() as i64 }
                }
                None => {
                    error!(batch = id, destination = %dest.name, events = n, attempt = number, %reason, "batch failed; retries exhausted (its deliveries are dead letters)");
                    inner.dead.fetch_add(n, Ordering::Relaxed);
                    Settle::Dead
                }
            }
        }
    };
    settle(inner, &batch, members, attempt, settled, error_text).await;
    inner.attempt_ended();
}

fn record<T>(
    inner: &Inner<T>,
    status_code: Option<u16>,
    latency_ms: u64,
    response: Bytes,
    error: Option<String>,
) -> AttemptRecord {
    AttemptRecord { at_ms: inner.clock.now_ms(), status_code, latency_ms, response, error }
}

async fn settle<T>(
    inner: &Inner<T>,
    batch: &DueBatch,
    members: Vec<DeliveryId>,
    record: AttemptRecord,
    settle: Settle,
    error: Option<String>,
) {
    let n = members.len();
    let done = !matches!(settle, Settle::Retry { .. });
    match inner.store.settle_batch(batch.id, members, record, settle, error).await {
        Ok(()) if done => {
            let _ = inner.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| Some(p.saturating_sub(n)));
        }
        Ok(()) => inner.wake.notify_one(),
        Err(e) => error!(error = %e, batch = batch.id, "could not record the batch's attempt; it stays due"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(bodies: &[&str]) -> Vec<(DeliveryId, Bytes)> {
        bodies.iter().enumerate().map(|(i, b)| (DeliveryId(i as i64), Bytes::from(b.to_string()))).collect()
    }

    /// JSON bodies go as they are (one line each for NDJSON), others as JSON strings: the whole is
    /// always valid JSON, or valid NDJSON.
    #[test]
    fn a_batch_body_is_valid_json_or_ndjson_whatever_its_members() {
        let m = members(&["{\"a\":1}", "{\n  \"b\": [1, 2]\n}\n", "not json \"quoted\"", "7"]);
        let array = batch_body(&m, BatchFormat::JsonArray);
        let v: serde_json::Value = serde_json::from_slice(&array).unwrap();
        assert_eq!(v, serde_json::json!([{"a": 1}, {"b": [1, 2]}, "not json \"quoted\"", 7]));
        let nd = batch_body(&m, BatchFormat::Ndjson);
        let text = std::str::from_utf8(&nd).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":[1,2]}\n\"not json \\\"quoted\\\"\"\n7\n");
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(&batch_body(&members(&[]), BatchFormat::JsonArray)[..], b"[]");
    }
}
