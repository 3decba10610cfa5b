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

/// Spaces requests to at most `rate` per second (a GCRA without burst): a caller waits for its slot.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    next_free: std::sync::Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> Self {
        RateLimiter { interval: Duration::from_secs_f64(1.0 / per_second), next_free: std::sync::Mutex::new(None) }
    }

    /// Reserves the next slot and sleeps until it.
    pub async fn wait(&self) {
        let slot = {
            let now = Instant::now();
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
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
