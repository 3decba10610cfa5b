//! The time the store and the dispatcher read, and how they wait for the store's writer thread:
//! the seam beside `delivery::Transport` that lets unit tests run retry schedules and commit
//! timeouts under `tokio::time::pause()` without a `cfg(test)` branch in the product.
//!
//! An enum rather than a trait: the store is not generic (its callers hold one `Store` type), and
//! a match on two variants costs nothing on the per-event path (no allocation, no dynamic call).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// Where "now" comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system's clock. The product's.
    #[default]
    System,
    /// Tokio's clock, which a test pauses and advances: unix ms read at [`Clock::tokio`] plus the
    /// (virtual) time since. A wait for another OS thread holds this clock still (see
    /// [`Clock::wait_for_thread`]).
    Tokio { base_ms: i64, base: tokio::time::Instant },
}

/// How a wait for another thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<T> {
    Answer(T),
    /// The sender was dropped without answering.
    Gone,
    /// No answer within the limit.
    TimedOut,
}

impl Clock {
    /// A clock that follows tokio's (pausable) clock from now. Call inside the runtime.
    pub fn tokio() -> Clock {
        Clock::Tokio { base_ms: system_now_ms(), base: tokio::time::Instant::now() }
    }

    /// Unix milliseconds now.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_now_ms(),
            Clock::Tokio { base_ms, base } => base_ms + base.elapsed().as_millis() as i64,
        }
    }

    /// Waits for `answer`, which another OS thread sends (the store's writer), for at most
    /// `limit`. With the system clock it is a plain channel wait. With tokio's clock it waits on
    /// the blocking pool: tokio does not advance paused time while a blocking task runs, so the
    /// clock stands still while the other thread works, instead of jumping to the next timer
    /// (which would also fire `limit` at once).
    pub async fn wait_for_thread<T: Send + 'static>(
        &self,
        answer: oneshot::Receiver<T>,
        limit: Option<Duration>,
    ) -> Waited<T> {
        let got = match (self, limit) {
            (Clock::System, None) => Ok(answer.await.ok()),
            (Clock::System, Some(limit)) => tokio::time::timeout(limit, answer).await.map(Result::ok),
            (Clock::Tokio { .. }, limit) => {
                let blocking = tokio::task::spawn_blocking(move || answer.blocking_recv().ok());
                let joined = match limit {
                    None => Ok(blocking.await),
                    Some(limit) => tokio::time::timeout(limit, blocking).await,
                };
                joined.map(|j| j.ok().flatten())
            }
        };
        match got {
            Ok(Some(t)) => Waited::Answer(t),
            Ok(None) => Waited::Gone,
            Err(_) => Waited::TimedOut,
        }
    }
}

/// Unix milliseconds now, by the system's clock.
pub fn system_now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time_and_holds_it_while_another_thread_works() {
        let clock = Clock::tokio();
        let t0 = clock.now_ms();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.now_ms() - t0, 5_000);

        // the other thread takes real time; paused time must not jump to the limit meanwhile
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        let started = tokio::time::Instant::now();
        assert_eq!(clock.wait_for_thread(rx, Some(Duration::from_secs(60))).await, Waited::Answer(7));
        assert!(started.elapsed() < Duration::from_secs(60), "the limit did not fire");

        let (tx, rx) = oneshot::channel::<()>();
        drop(tx);
        assert_eq!(clock.wait_for_thread(rx, None).await, Waited::Gone);
    }

    #[tokio::test]
    async fn system_clock_times_out() {
        let (_tx, rx) = oneshot::channel::<()>();
        let waited = Clock::System.wait_for_thread(rx, Some(Duration::from_millis(10))).await;
        assert_eq!(waited, Waited::TimedOut);
    }
}
