//! What an attempt's result means and when the next attempt is due. Pure: the engine supplies the
//! random number, so every rule is testable without time passing.

use std::time::{Duration, SystemTime};

use http::StatusCode;

/// The result of one delivery attempt, judged by who is at fault and whether a retry can help.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// A 2xx response.
    Delivered { status: StatusCode },
    /// Worth another try: timeouts, connection and DNS errors, 408, 429 and 5xx. `throttled` marks
    /// a 429 or a timeout, after which the destination gets at least `throttle_floor`.
    Retryable { status: Option<StatusCode>, retry_after: Option<Duration>, throttled: bool, reason: String },
    /// A retry will not help: other 4xx (and 1xx/3xx, since redirects are not followed), an
    /// egress refusal.
    Failed { status: Option<StatusCode>, reason: String },
    /// `410 Gone`: the receiver says the endpoint no longer exists. The destination is paused (its
    /// deliveries wait in the store) until an operator resumes it.
    Gone,
}

impl AttemptOutcome {
    /// The status code and the error an attempt's record keeps.
    pub fn status_and_error(&self) -> (Option<u16>, Option<String>) {
        match self {
            AttemptOutcome::Delivered { status } => (Some(status.as_u16()), None),
            AttemptOutcome::Retryable { status, reason, .. } | AttemptOutcome::Failed { status, reason } => {
                (status.map(|s| s.as_u16()), Some(reason.clone()))
            }
            AttemptOutcome::Gone => (Some(410), Some("HTTP 410 Gone: destination paused".to_string())),
        }
    }

    /// Judges a response status. `retry_after` is the parsed `Retry-After` header, if any.
    pub fn from_status(status: StatusCode, retry_after: Option<Duration>) -> Self {
        if status.is_success() {
            AttemptOutcome::Delivered { status }
        } else if status == StatusCode::GONE {
            AttemptOutcome::Gone
        } else if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            AttemptOutcome::Retryable {
                status: Some(status),
                retry_after,
                throttled: status == StatusCode::TOO_MANY_REQUESTS,
                reason: format!("HTTP {}", status.as_u16()),
            }
        } else {
            AttemptOutcome::Failed { status: Some(status), reason: format!("HTTP {} is not retried", status.as_u16()) }
        }
    }

    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptOutcome::Delivered { .. } => "delivered",
            AttemptOutcome::Retryable { .. } => "retryable",
            AttemptOutcome::Failed { .. } => "failed",
            AttemptOutcome::Gone => "gone",
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (a date in the past means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How delays grow.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// Delay before retry 1, 2, …; its length is the number of retries.
    Schedule(Vec<Duration>),
    /// min(base × factor^(retry-1), cap), for at most `max_attempts` attempts in all.
    Exponential { base: Duration, factor: f64, cap: Duration, max_attempts: u32 },
}

/// A destination's retry policy (`destinations.<name>.retry`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Relative spread applied to computed delays, 0..=1.
    pub jitter: f64,
    /// Upper bound on a destination's `Retry-After`.
    pub max_retry_after: Duration,
    /// Smallest delay after a 429 or a timeout.
    pub throttle_floor: Duration,
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempts` attempts have failed, or `None` when the
    /// policy is exhausted (a dead letter). A `Retry-After` replaces the computed delay (clamped to
    /// `max_retry_after`, not jittered: the destination asked for that time). After a 429 or a
    /// timeout the delay is at least `throttle_floor`. `random` is uniform in [0, 1).
    pub fn delay(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        throttled: bool,
        random: f64,
    ) -> Option<Duration> {
        let retry = attempts.saturating_sub(1) as usize;
        let computed = match &self.backoff {
            Backoff::Schedule(s) => *s.get(retry)?,
            Backoff::Exponential { base, factor, cap, max_attempts } => {
                if attempts >= *max_attempts {
                    return None;
                }
                let d = base.as_secs_f64() * factor.powi(retry.min(1000) as i32);
                Duration::from_secs_f64(d.min(cap.as_secs_f64()))
            }
        };
        let delay = match retry_after {
            Some(ra) => ra.min(self.max_retry_after),
            None => computed.mul_f64((1.0 + self.jitter * (2.0 * random - 1.0)).max(0.0)),
        };
        Some(if throttled { delay.max(self.throttle_floor) } else { delay })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Schedule(vec![Duration::from_secs(5), Duration::from_secs(300)]),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
            throttle_floor: Duration::from_secs(60),
        }
    }

    #[test]
    fn classifies_statuses() {
        let cases = [
            (200, "delivered"),
            (204, "delivered"),
            (301, "failed"),
            (400, "failed"),
            (401, "failed"),
            (404, "failed"),
            (408, "retryable"),
            (410, "gone"),
            (422, "failed"),
            (429, "retryable"),
            (500, "retryable"),
            (502, "retryable"),
            (503, "retryable"),
        ];
        for (code, want) in cases {
            let got = AttemptOutcome::from_status(StatusCode::from_u16(code).unwrap(), None);
            assert_eq!(got.label(), want, "{code}");
        }
    }

    #[test]
    fn schedule_with_jitter_bounds() {
        let p = policy();
        assert_eq!(p.delay(1, None, false, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.delay(1, None, false, 0.0), Some(Duration::from_secs(4)));
        assert_eq!(p.delay(2, None, false, 0.0), Some(Duration::from_secs(240)));
        let hi = p.delay(2, None, false, 0.999_999).unwrap();
        assert!(hi > Duration::from_secs(359) && hi <= Duration::from_secs(360), "{hi:?}");
        assert_eq!(p.delay(3, None, false, 0.5), None, "exhausted after the schedule");
    }

    #[test]
    fn retry_after_is_honoured_and_clamped() {
        let p = policy();
        assert_eq!(p.delay(1, Some(Duration::from_secs(42)), false, 0.0), Some(Duration::from_secs(42)));
        assert_eq!(p.delay(1, Some(Duration::from_secs(86_400)), false, 0.0), Some(Duration::from_secs(3600)));
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(1)), false, 0.0),
            None,
            "Retry-After does not extend the schedule"
        );
    }

    #[test]
    fn throttle_floor_after_429_and_timeouts() {
        let p = policy();
        assert_eq!(p.delay(1, None, true, 0.5), Some(Duration::from_secs(60)), "5s schedule raised to the floor");
        assert_eq!(p.delay(1, Some(Duration::from_secs(2)), true, 0.5), Some(Duration::from_secs(60)));
        assert_eq!(p.delay(2, None, true, 0.5), Some(Duration::from_secs(300)), "longer delays are kept");
    }

    #[test]
    fn exponential_backoff() {
        let p = RetryPolicy {
            backoff: Backoff::Exponential {
                base: Duration::from_secs(1),
                factor: 2.0,
                cap: Duration::from_secs(10),
                max_attempts: 6,
            },
            jitter: 0.0,
            max_retry_after: Duration::from_secs(3600),
            throttle_floor: Duration::ZERO,
        };
        let delays: Vec<_> = (1..=6).map(|n| p.delay(n, None, false, 0.5)).collect();
        let s = |x| Some(Duration::from_secs(x));
        assert_eq!(delays, [s(1), s(2), s(4), s(8), s(10), None], "capped at 10 s; 6 attempts in all");
    }

    #[test]
    fn parses_retry_after() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
