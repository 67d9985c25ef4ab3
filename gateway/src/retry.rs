//! The retry budget of a route: retries may be at most a share of the
//! route's requests over the last 10 seconds (plus a floor per second), so a
//! failing pool cannot turn every request into two or more.
//!
//! A route's budget survives config reloads (it is taken over by name), so
//! weights flipping every 100 ms do not reset it.

use std::time::Duration;

use weir_conf::resilience::Retry;

use crate::window::Window;

/// Seconds the budget looks back.
const SPAN_SECONDS: u64 = 10;

/// Requests and retries of one route over a sliding window.
pub struct RetryBudget {
    /// `a` = requests, `b` = retries.
    window: Window,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            window: Window::new(Duration::from_secs(SPAN_SECONDS)),
        }
    }
}

impl RetryBudget {
    /// Counts a request (its first attempt) at `now` ([`crate::window::now_ms`]).
    pub fn request(&self, now: u64) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if `policy` allows it now.
    pub fn try_retry(&self, policy: &Retry, now: u64) -> bool {
        let (requests, retries) = self.window.sum(now, 0);
        let floor = u64::from(policy.min_per_second) * SPAN_SECONDS;
        let share = requests * u64::from(policy.budget_permille) / 1000;
        if retries >= floor.max(share) {
            return false;
        }
        self.window.add(now, 0, 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_or_the_floor() {
        let policy = Retry {
            attempts: 1,
            on_statuses: Vec::new(),
            budget_permille: 200,
            min_per_second: 1,
        };
        let budget = RetryBudget::default();
        // The floor: 10 retries in 10 s with no traffic to speak of.
        let granted = (0..50).filter(|_| budget.try_retry(&policy, 5)).count();
        assert_eq!(granted, 10);
        // 1000 requests: 20% = 200 retries, of which 10 are spent.
        for _ in 0..1000 {
            budget.request(5);
        }
        let granted = (0..1000).filter(|_| budget.try_retry(&policy, 5)).count();
        assert_eq!(granted, 190);
        // Ten seconds later the window is empty again.
        assert!(budget.try_retry(&policy, 10_500));
    }
}
