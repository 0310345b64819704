//! Bounded retries with exponential backoff and jitter: one policy for
//! every cloud client. Which errors are worth retrying is each client's
//! business; how long to wait between tries is this module's.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included; 1 disables retries.
    pub attempts: u32,
    /// The pause after the first failure; it doubles after each one.
    pub base_delay: Duration,
    /// The longest pause, a server's `Retry-After` included.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The pause before retry number `retry` (0 for the first): between half
    /// and all of the exponential step, so clients that failed together do
    /// not come back together.
    pub fn delay(&self, retry: u32) -> Duration {
        jitter(exponential(self.base_delay, self.max_delay, retry))
    }

    /// The pause a server asked for (`Retry-After`), capped at `max_delay`;
    /// without one, the ordinary backoff.
    pub fn delay_after(&self, retry_after: Option<Duration>, retry: u32) -> Duration {
        match retry_after {
            Some(after) => after.min(self.max_delay),
            None => self.delay(retry),
        }
    }
}

/// `base * 2^step`, at most `max`; never overflows.
pub fn exponential(base: Duration, max: Duration, step: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(step)).min(max)
}

/// A random duration in `[delay / 2, delay]`.
pub fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    let spread = u64::try_from((delay - half).as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(rand::random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn delays_grow_stay_bounded_and_jitter() {
        let policy = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..12 {
            let step = exponential(policy.base_delay, policy.max_delay, retry);
            assert_eq!(
                step,
                Duration::from_millis(100 * 2u64.pow(retry)).min(Duration::from_secs(1))
            );
            let delay = policy.delay(retry);
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
        }
        // Far past the cap nothing overflows.
        assert_eq!(
            exponential(policy.base_delay, policy.max_delay, 200),
            policy.max_delay
        );
        assert!(policy.delay(500) <= policy.max_delay);
    }

    /// Waits at most 1 s, whatever the server asks.
    const CAPPED_AT_ONE_SECOND: RetryPolicy = RetryPolicy {
        attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };

    #[rstest]
    #[case::capped(Duration::from_secs(60), Duration::from_secs(1))]
    #[case::as_asked(Duration::from_millis(300), Duration::from_millis(300))]
    fn retry_after_is_honoured_up_to_the_cap(#[case] after: Duration, #[case] expected: Duration) {
        assert_eq!(CAPPED_AT_ONE_SECOND.delay_after(Some(after), 0), expected);
    }

    #[test]
    fn without_retry_after_the_backoff_applies() {
        let backoff = CAPPED_AT_ONE_SECOND.delay_after(None, 0);
        assert!(backoff >= Duration::from_millis(50) && backoff <= Duration::from_millis(100));
    }
}
