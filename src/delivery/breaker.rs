//! Per-destination circuit breaker and rate limiter. Both delay work; neither fails or drops a
//! delivery: while a breaker is open, deliveries wait in the store.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// `destinations.<name>.breaker`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    pub enabled: bool,
    pub failure_rate: f64,
    pub min_requests: usize,
    pub window: Duration,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// No attempts until `until`; then one probe (half-open).
    Open {
        until: Instant,
    },
    /// One probe is allowed; its result closes or re-opens the breaker.
    HalfOpen {
        probing: bool,
    },
}

impl BreakerState {
    pub fn label(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    /// Attempt results inside the window, oldest first.
    recent: VecDeque<(Instant, bool)>,
    /// How many of `recent` failed (kept in step so recording is O(1), not a scan of the window).
    failures: usize,
    state: BreakerState,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker { settings, recent: VecDeque::new(), failures: 0, state: BreakerState::Closed }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether an attempt could start now, without taking the half-open probe slot.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { probing } => !probing,
        }
    }

    /// Takes permission for one attempt (the probe, when half-open).
    pub fn allow(&mut self, now: Instant) -> bool {
        if !self.settings.enabled {
            return true;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::HalfOpen { probing: true } => false,
        }
    }

    /// Records an attempt's result. Returns the new state if it changed.
    pub fn record(&mut self, now: Instant, success: bool) -> Option<BreakerState> {
        if !self.settings.enabled {
            return None;
        }
        let before = self.state;
        match self.state {
            BreakerState::HalfOpen { .. } => {
                self.clear();
                self.state = if success {
                    BreakerState::Closed
                } else {
                    BreakerState::Open { until: now + self.settings.cooldown }
                };
            }
            BreakerState::Open { .. } => {} // a straggler from before the breaker opened
            BreakerState::Closed => {
                self.recent.push_back((now, success));
                self.failures += usize::from(!success);
                while let Some(&(t, ok)) = self.recent.front() {
                    if now.duration_since(t) <= self.settings.window {
                        break;
                    }
                    self.recent.pop_front();
                    self.failures -= usize::from(!ok);
                }
                let total = self.recent.len();
                if total >= self.settings.min_requests
                    && self.failures as f64 >= self.settings.failure_rate * total as f64
                {
                    self.clear();
                    self.state = BreakerState::Open { until: now + self.settings.cooldown };
                }
            }
        }
        (self.state != before).then_some(self.state)
    }

    fn clear(&mut self) {
        self.recent.clear();
        self.failures = 0;
    }
}

/// Spaces requests to at most `rate` per second, without burst: callers take turns (first come,
/// first served), each waiting until an interval has passed since the previous one *went*, so a
/// caller the scheduler woke late does not bring the next one closer. Several instances sharing a
/// store each take an equal share of the rate ([`RateLimiter::set_share`]), so their sum stays
/// within it.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    /// Between two requests of this instance: `1 / (per_second / share)`.
    interval: std::sync::Mutex<Duration>,
    /// When the last caller went; held by the caller whose turn it is.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> Self {
        RateLimiter {
            per_second,
            interval: std::sync::Mutex::new(Duration::from_secs_f64(1.0 / per_second)),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// This instance's share: `1/instances` of the configured rate.
    /// The configured rate (for the whole destination, all instances together).
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    pub fn set_share(&self, instances: usize) {
        let per_second = self.per_second / instances.max(1) as f64;
        *self.interval.lock().unwrap_or_else(|p| p.into_inner()) = Duration::from_secs_f64(1.0 / per_second);
    }

    /// Waits for this caller's turn: an interval after the previous caller went.
    pub async fn wait(&self) {
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            let interval = *self.interval.lock().unwrap_or_else(|p| p.into_inner());
            tokio::time::sleep_until(at + interval).await;
        }
        *last = Some(Instant::now());
    }
}

/// A destination's `max_in_flight` on this instance: all of it alone, its share when several
/// instances share the store ([`InFlightLimit::set_share`]). Attempts hold a permit from before
/// their task is spawned to its end.
#[derive(Debug)]
pub struct InFlightLimit {
    configured: usize,
    permits: tokio::sync::Semaphore,
    /// The permits this instance may hold now (its share).
    allowed: std::sync::Mutex<usize>,
    /// Permits held beyond a share that shrank while they were taken: not handed out again
    /// when given back.
    owed: std::sync::atomic::AtomicUsize,
}

impl InFlightLimit {
    pub fn new(max_in_flight: usize) -> Self {
        InFlightLimit {
            configured: max_in_flight,
            permits: tokio::sync::Semaphore::new(max_in_flight),
            allowed: std::sync::Mutex::new(max_in_flight),
            owed: Default::default(),
        }
    }

    /// Takes a permit if one is free.
    pub fn try_take(&self) -> bool {
        self.permits.try_acquire().map(|p| p.forget()).is_ok()
    }

    /// Gives a permit back (unless the share shrank meanwhile: then it is gone).
    pub fn give_back(&self) {
        use std::sync::atomic::Ordering;
        if self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1)).is_err() {
            self.permits.add_permits(1);
        }
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// The permits this instance may hold now.
    pub fn allowed(&self) -> usize {
        *self.allowed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This instance's share of the configured limit among `instances`, this one being the
    /// `rank`th (from 0) by id: the remainder goes to the first ones, and every instance gets at
    /// least one (so the cluster's total is `max(max_in_flight, instances)`).
    pub fn set_share(&self, instances: usize, rank: usize) {
        use std::sync::atomic::Ordering;
        let n = instances.max(1);
        let share = (self.configured / n + usize::from(rank < self.configured % n)).max(1);
        let mut allowed = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        if share > *allowed {
            let mut more = share - *allowed;
            // permits owed are cancelled first
            while more > 0 && self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_sub(1)).is_ok()
            {
                more -= 1;
            }
            self.permits.add_permits(more);
        } else if share < *allowed {
            let fewer = *allowed - share;
            let forgotten = self.permits.forget_permits(fewer);
            self.owed.fetch_add(fewer - forgotten, Ordering::AcqRel);
        }
        *allowed = share;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            enabled: true,
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn opens_on_failure_rate_then_half_opens_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        assert_eq!(b.record(t0, true), None);
        assert_eq!(b.record(t0, false), None);
        assert_eq!(b.record(t0, true), None);
        // 2 failures of 4 = 50%: opens
        assert_eq!(b.record(t0, false), Some(BreakerState::Open { until: t0 + Duration::from_secs(30) }));
        assert!(!b.allow(t0 + Duration::from_secs(29)));
        assert!(!b.would_allow(t0 + Duration::from_secs(29)));
        assert!(b.would_allow(t0 + Duration::from_secs(30)));
        assert!(b.allow(t0 + Duration::from_secs(30)), "one probe after the cool-down");
        assert_eq!(b.state(), BreakerState::HalfOpen { probing: true });
        assert!(!b.allow(t0 + Duration::from_secs(30)), "only one probe at a time");
        assert_eq!(b.record(t0 + Duration::from_secs(31), true), Some(BreakerState::Closed));
        assert!(b.allow(t0 + Duration::from_secs(31)));
    }

    #[test]
    fn failed_probe_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..4 {
            b.record(t0, false);
        }
        let t1 = t0 + Duration::from_secs(30);
        assert!(b.allow(t1));
        assert_eq!(b.record(t1, false), Some(BreakerState::Open { until: t1 + Duration::from_secs(30) }));
    }

    #[test]
    fn old_results_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(t0, false);
        }
        // the three failures are older than the window by now
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(b.record(t1, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_breaker_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerSettings { enabled: false, ..settings() });
        for _ in 0..100 {
            assert_eq!(b.record(t0, false), None);
        }
        assert!(b.allow(t0));
    }

    #[test]
    fn in_flight_shares_add_up_to_the_limit_and_shrink_as_permits_come_back() {
        let shares = |max: usize, n: usize| -> Vec<usize> {
            (0..n)
                .map(|rank| {
                    let l = InFlightLimit::new(max);
                    l.set_share(n, rank);
                    l.allowed()
                })
                .collect()
        };
        assert_eq!(shares(32, 3), vec![11, 11, 10]);
        assert_eq!(shares(2, 3), vec![1, 1, 1], "at least one each");
        let l = InFlightLimit::new(4);
        assert!((0..4).all(|_| l.try_take()));
        l.set_share(2, 0); // 2 allowed, 4 taken: 2 owed
        l.give_back();
        l.give_back();
        assert_eq!(l.available(), 0, "permits beyond the share are not handed out again");
        l.give_back();
        assert_eq!(l.available(), 1);
        l.set_share(1, 0); // back to 4: 2 more
        assert_eq!(l.available(), 3);
        l.give_back();
        assert_eq!((l.available(), l.allowed()), (4, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_rate_is_divided() {
        let limiter = RateLimiter::new(30.0);
        limiter.set_share(3);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(200), "30/s over 3 instances: 10/s here");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(10.0);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400), "5 requests at 10/s: the 5th at 400 ms");
    }
}
