//! A request budget: at most `limit` requests in any `window`, shared by
//! every caller of one credential. A caller over the budget waits for the
//! oldest request to leave the window instead of being refused: a cloud
//! that blocks a credential past its limit (Cloudflare: 1,200 requests per
//! 5 minutes, then every call refused for 5 minutes) costs far more than
//! the wait.
//!
//! A sliding window rather than a refilling bucket: a bucket of `limit`
//! tokens refilled over `window` lets through up to twice `limit` in one
//! window (a full bucket, then its refill), which the cloud counts as over.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// How many requests a credential may make per window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetSettings {
    pub limit: u32,
    pub window: Duration,
}

/// The requests a budget admitted, newest last: only the ones still in the
/// window are kept, so its memory is at most `limit` instants.
#[derive(Debug)]
struct Window {
    settings: BudgetSettings,
    sent: VecDeque<Instant>,
}

impl Window {
    /// Admits a request at `now`, or says how long until one may go.
    fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        while let Some(oldest) = self.sent.front()
            && now.saturating_duration_since(*oldest) >= self.settings.window
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.settings.limit.max(1) as usize {
            self.sent.push_back(now);
            return Ok(());
        }
        let oldest = self.sent.front().copied().unwrap_or(now);
        Err((oldest + self.settings.window).saturating_duration_since(now))
    }

    fn left(&self) -> u32 {
        self.settings.limit.saturating_sub(self.sent.len() as u32)
    }
}

/// One credential's budget; share it (`Arc`) between the clients of that
/// credential. `left` is what a gauge shows.
#[derive(Debug)]
pub struct ApiBudget {
    window: Mutex<Window>,
    left: Gauge,
}

impl ApiBudget {
    /// `left` is set to what remains after each request.
    pub fn new(settings: BudgetSettings, left: Gauge) -> ApiBudget {
        left.set(i64::from(settings.limit));
        ApiBudget {
            window: Mutex::new(Window {
                settings,
                sent: VecDeque::new(),
            }),
            left,
        }
    }

    /// Waits until the budget admits one more request, then counts it.
    pub async fn take(&self) {
        loop {
            let wait = {
                let mut window = self.window.lock().expect("budget lock");
                let admitted = window.admit(Instant::now());
                self.left.set(i64::from(window.left()));
                match admitted {
                    Ok(()) => return,
                    Err(wait) => wait,
                }
            };
            tracing::debug!(?wait, "API budget spent: waiting");
            tokio::time::sleep(wait).await;
        }
    }

    /// Requests the window still admits.
    pub fn left(&self) -> u32 {
        self.window.lock().expect("budget lock").left()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const WINDOW: Duration = Duration::from_secs(300);

    /// Sends at the given offsets (seconds) into a budget of `limit`, and
    /// what each was told: `None` admitted, `Some(wait)` in seconds.
    fn run(limit: u32, at: &[u64]) -> Vec<Option<u64>> {
        let start = Instant::now();
        let mut window = Window {
            settings: BudgetSettings {
                limit,
                window: WINDOW,
            },
            sent: VecDeque::new(),
        };
        at.iter()
            .map(|&offset| {
                window
                    .admit(start + Duration::from_secs(offset))
                    .err()
                    .map(|wait| wait.as_secs())
            })
            .collect()
    }

    #[rstest]
    #[case::under_the_limit(3, &[0, 1, 2], vec![None, None, None])]
    #[case::over_waits_for_the_oldest(2, &[0, 10, 20], vec![None, None, Some(280)])]
    #[case::a_refused_request_is_not_counted(1, &[0, 100, 200, 300], vec![None, Some(200), Some(100), None])]
    #[case::the_window_slides(2, &[0, 200, 300, 310], vec![None, None, None, Some(190)])]
    fn a_window_admits_at_most_its_limit(
        #[case] limit: u32,
        #[case] at: &[u64],
        #[case] told: Vec<Option<u64>>,
    ) {
        assert_eq!(run(limit, at), told);
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_instead_of_refusing() {
        let budget = ApiBudget::new(
            BudgetSettings {
                limit: 2,
                window: WINDOW,
            },
            Gauge::default(),
        );
        let start = Instant::now();
        budget.take().await;
        budget.take().await;
        assert_eq!(budget.left(), 0);
        assert_eq!(budget.left.get(), 0);
        budget.take().await;
        assert_eq!(start.elapsed(), WINDOW);
    }
}
