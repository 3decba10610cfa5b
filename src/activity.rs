//! What a running gateway did lately, for the console: events and deliveries per 5 seconds over
//! the last 5 minutes, each destination's recent attempts (success rate, latency percentiles), and
//! the live tail (every accepted event and every attempt's outcome, to whoever listens).
//!
//! It is in memory and per process: a restart starts it empty (the store keeps the history), and
//! in a cluster each instance shows what it did. Its cost on the ingress path is one relaxed
//! atomic add per event, and a broadcast only while someone tails; an attempt takes a short
//! lock on its destination's window.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

/// The chart's resolution.
pub const STEP: Duration = Duration::from_secs(5);
/// The chart's length: 5 minutes of [`STEP`]s.
pub const STEPS: usize = 60;
/// The window a destination's health is computed over.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Attempts kept per destination for its health (the newest; older ones leave the window first).
const MAX_KEPT: usize = 4096;
/// Items a slow tail may fall behind before it is told it missed some: more than 100 ms of
/// 16,000 items a second (the tail gathers that long, see `admin::console`).
const TAIL_CAPACITY: usize = 4096;

/// One line of the live tail.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TailItem {
    /// An event was committed (acknowledged to its sender).
    Event { id: String, source: String, received_at_ms: i64, routes: Vec<String>, deliveries: usize },
    /// An attempt ended; `status` is the delivery's status after it.
    Delivery {
        id: i64,
        event_id: String,
        route: String,
        destination: String,
        status: &'static str,
        attempts: u32,
        last_status: Option<u16>,
        latency_ms: u64,
    },
}

/// Per 5 s over the last 5 minutes, oldest first; `end_ms` closes the last step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub step_s: u64,
    pub end_ms: i64,
    pub accepted: Vec<u64>,
    pub delivered: Vec<u64>,
    /// Attempts that did not deliver (retried, failed, dead).
    pub failed: Vec<u64>,
    /// Delivered attempts over all attempts in the window; `None` with no attempt.
    pub success_rate: Option<f64>,
}

/// A destination's recent attempts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Health {
    pub attempts_5m: usize,
    pub success_rate: Option<f64>,
    pub latency_p50_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// When an attempt ended, its latency (ms) and whether it delivered.
type Attempt = (Instant, u32, bool);

struct Sample {
    at_ms: i64,
    counts: [u64; 3],
}

pub struct Activity {
    counts: Counters,
    /// Cumulative counts at each step's end, the newest last (one more than [`STEPS`], so every
    /// step has a start).
    samples: Mutex<VecDeque<Sample>>,
    /// Per destination: its latest attempts.
    attempts: Mutex<HashMap<String, VecDeque<Attempt>>>,
    tail: broadcast::Sender<TailItem>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            counts: Counters::default(),
            samples: Mutex::new(VecDeque::new()),
            attempts: Mutex::new(HashMap::new()),
            tail: broadcast::channel(TAIL_CAPACITY).0,
        }
    }
}

impl Activity {
    /// An event was committed.
    pub fn accepted(&self, item: impl FnOnce() -> TailItem) {
        self.counts.accepted.fetch_add(1, Ordering::Relaxed);
        self.publish(item);
    }

    /// An attempt ended; `item` goes to the tail.
    pub fn attempt(&self, destination: &str, latency: Duration, delivered: bool, item: impl FnOnce() -> TailItem) {
        self.record(destination, latency, delivered);
        self.publish(item);
    }

    /// An attempt ended that the tail does not show (a batch's: it counts once, for its request).
    pub fn record(&self, destination: &str, latency: Duration, delivered: bool) {
        let counter = if delivered { &self.counts.delivered } else { &self.counts.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let latency_ms = latency.as_millis().min(u32::MAX as u128) as u32;
        let mut all = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let kept = match all.get_mut(destination) {
            Some(kept) => kept,
            None => all.entry(destination.to_string()).or_default(),
        };
        if kept.len() == MAX_KEPT {
            kept.pop_front();
        }
        kept.push_back((now, latency_ms, delivered));
    }

    /// Builds and sends `item` only while someone tails.
    fn publish(&self, item: impl FnOnce() -> TailItem) {
        if self.tail.receiver_count() > 0 {
            let _ = self.tail.send(item());
        }
    }

    /// A live tail from now on. A receiver that falls behind by more than 4,096 items gets
    /// `Lagged` (the console says how many it missed) and goes on from the oldest it still has.
    pub fn subscribe(&self) -> broadcast::Receiver<TailItem> {
        self.tail.subscribe()
    }

    /// Takes the counts at a step's end: called every [`STEP`] by [`Activity::sample_every_step`].
    pub fn sample(&self, at_ms: i64) {
        let counts = [
            self.counts.accepted.load(Ordering::Relaxed),
            self.counts.delivered.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        ];
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == STEPS + 1 {
            samples.pop_front();
        }
        samples.push_back(Sample { at_ms, counts });
    }

    /// Samples every [`STEP`] until `stop` resolves.
    pub async fn sample_every_step(self: std::sync::Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(STEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(crate::store::now_ms()),
                _ = &mut stop => return,
            }
        }
    }

    /// The chart: the counts of each step so far, zero before the first sample. The step in
    /// progress is not shown (it would always look low).
    pub fn series(&self) -> Series {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Series {
            step_s: STEP.as_secs(),
            end_ms: samples.back().map_or_else(crate::store::now_ms, |s| s.at_ms),
            accepted: vec![0; STEPS],
            delivered: vec![0; STEPS],
            failed: vec![0; STEPS],
            success_rate: None,
        };
        let steps: Vec<[u64; 3]> = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| [0, 1, 2].map(|i| b.counts[i].saturating_sub(a.counts[i])))
            .collect();
        let offset = STEPS - steps.len();
        for (i, s) in steps.iter().enumerate() {
            out.accepted[offset + i] = s[0];
            out.delivered[offset + i] = s[1];
            out.failed[offset + i] = s[2];
        }
        let (delivered, failed): (u64, u64) = (out.delivered.iter().sum(), out.failed.iter().sum());
        out.success_rate = (delivered + failed > 0).then(|| delivered as f64 / (delivered + failed) as f64);
        out
    }

    /// `destination`'s attempts in the last 5 minutes.
    pub fn health(&self, destination: &str) -> Health {
        let now = Instant::now();
        let all = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(kept) = all.get(destination) else { return Health::default() };
        let recent: Vec<&Attempt> =
            kept.iter().filter(|(at, _, _)| now.saturating_duration_since(*at) <= WINDOW).collect();
        if recent.is_empty() {
            return Health::default();
        }
        let mut latencies: Vec<u32> = recent.iter().map(|(_, l, _)| *l).collect();
        latencies.sort_unstable();
        // nearest rank: the smallest latency at or above which p% of the attempts are
        let rank = |p: f64| latencies[((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1];
        let delivered = recent.iter().filter(|(_, _, ok)| *ok).count();
        Health {
            attempts_5m: recent.len(),
            success_rate: Some(delivered as f64 / recent.len() as f64),
            latency_p50_ms: Some(rank(0.50) as u64),
            latency_p99_ms: Some(rank(0.99) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> TailItem {
        TailItem::Event {
            id: format!("evt_{n}"),
            source: "app".into(),
            received_at_ms: 1,
            routes: vec!["r".into()],
            deliveries: 1,
        }
    }

    #[test]
    fn the_series_counts_each_step_and_the_success_rate() {
        let a = Activity::default();
        a.sample(1_000);
        for _ in 0..3 {
            a.accepted(|| event(0));
        }
        a.attempt("d", Duration::from_millis(5), true, || event(0));
        a.attempt("d", Duration::from_millis(5), false, || event(0));
        a.sample(6_000);
        a.accepted(|| event(0));
        a.attempt("d", Duration::from_millis(5), true, || event(0));
        a.attempt("d", Duration::from_millis(5), true, || event(0));
        a.sample(11_000);
        let s = a.series();
        assert_eq!((s.step_s, s.end_ms), (5, 11_000));
        assert_eq!(s.accepted.len(), STEPS);
        assert_eq!(&s.accepted[STEPS - 2..], &[3, 1]);
        assert_eq!(&s.delivered[STEPS - 2..], &[1, 2]);
        assert_eq!(&s.failed[STEPS - 2..], &[1, 0]);
        assert!(s.accepted[..STEPS - 2].iter().all(|n| *n == 0));
        assert_eq!(s.success_rate, Some(0.75));
        // five minutes later the first steps have left the chart
        for i in 3..=(STEPS as u32 + 2) {
            a.sample(1_000 + i as i64 * 5_000);
        }
        assert!(a.series().accepted.iter().all(|n| *n == 0));
        assert_eq!(a.series().success_rate, None);
    }

    #[test]
    fn health_is_the_last_five_minutes_of_attempts() {
        let a = Activity::default();
        assert_eq!(a.health("d"), Health::default());
        for ms in 1..=100 {
            a.attempt("d", Duration::from_millis(ms), ms % 10 != 0, || event(0));
        }
        a.attempt("other", Duration::from_millis(1), false, || event(0));
        let h = a.health("d");
        assert_eq!(h.attempts_5m, 100);
        assert_eq!(h.success_rate, Some(0.9));
        assert_eq!((h.latency_p50_ms, h.latency_p99_ms), (Some(50), Some(99)));
        assert_eq!(a.health("other").success_rate, Some(0.0));
    }

    #[tokio::test]
    async fn the_tail_sees_what_happens_while_it_listens() {
        let a = Activity::default();
        let built = std::sync::atomic::AtomicUsize::new(0);
        // nobody listens: the item is not even built
        a.accepted(|| {
            built.fetch_add(1, Ordering::Relaxed);
            event(1)
        });
        assert_eq!(built.load(Ordering::Relaxed), 0);
        let mut rx = a.subscribe();
        a.accepted(|| event(2));
        match rx.recv().await.unwrap() {
            TailItem::Event { id, .. } => assert_eq!(id, "evt_2"),
            other => panic!("{other:?}"),
        }
        // a tail that falls behind is told how much it missed
        for n in 0..TAIL_CAPACITY + 5 {
            a.accepted(|| event(n));
        }
        assert!(matches!(rx.recv().await, Err(broadcast::error::RecvError::Lagged(5))));
    }
}
