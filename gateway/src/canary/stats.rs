//! The outcome windows of canary arms ([`ArmStats`]: errors, and latencies
//! when the policy compares them) and the [`verdict`] that compares an arm
//! with the stable one. A leaf below the runtime: imports only
//! [`crate::window`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use weir_conf::resilience::Rollback;

use crate::window::Window;

const TIME_BUCKETS: usize = 10;
/// Four latency buckets per power of two, from 1 µs to ~70 min.
const LATENCY_BUCKETS: usize = 128;

/// How often a route's arms are compared, at most.
pub const EVALUATE_EVERY_MS: u64 = 250;

/// Latency bucket of `us` microseconds: `4·log2(us)` plus the next two bits.
fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (e - 2)) & 3) as usize;
    (e * 4 + sub).min(LATENCY_BUCKETS - 1)
}

/// The largest latency (µs) of a bucket.
fn bucket_top(i: usize) -> u64 {
    // Indices 4..8 are never used: values from 4 up start at index 8.
    if i < 8 {
        return i as u64;
    }
    let (e, sub) = (i / 4, (i % 4) as u64);
    ((4 + sub + 1) << (e - 2)) - 1
}

#[derive(Default)]
struct LatencyBucket {
    epoch: AtomicU64,
    counts: Vec<AtomicU32>,
}

/// Latency counts over a sliding window of ten time buckets.
struct LatencyWindow {
    width_ms: u64,
    buckets: Vec<LatencyBucket>,
}

impl LatencyWindow {
    fn new(span: Duration) -> Self {
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        Self {
            width_ms: (span_ms / TIME_BUCKETS as u64).max(1),
            buckets: (0..TIME_BUCKETS)
                .map(|_| LatencyBucket {
                    epoch: AtomicU64::new(0),
                    counts: (0..LATENCY_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
                })
                .collect(),
        }
    }

    fn add(&self, now: u64, us: u64) {
        let epoch = now / self.width_ms + 1;
        let b = &self.buckets[(epoch % TIME_BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in &b.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        b.counts[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th percentile over the window (upper bound of its bucket), µs.
    fn p99(&self, now: u64) -> Option<u64> {
        let current = now / self.width_ms + 1;
        let mut sum = [0u64; LATENCY_BUCKETS];
        let mut total = 0u64;
        for b in &self.buckets {
            let epoch = b.epoch.load(Ordering::Acquire);
            if epoch + (TIME_BUCKETS as u64) > current && epoch <= current {
                for (i, c) in b.counts.iter().enumerate() {
                    let n = u64::from(c.load(Ordering::Relaxed));
                    sum[i] += n;
                    total += n;
                }
            }
        }
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, n) in sum.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_top(i));
            }
        }
        None
    }
}

/// One arm's recent outcomes.
pub struct ArmStats {
    /// `a` = requests, `b` = errors.
    outcomes: Window,
    latency: Option<LatencyWindow>,
}

/// What an arm did over the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Requests answered.
    pub requests: u64,
    /// Of which errors.
    pub errors: u64,
    /// P99 latency, µs (when latencies are kept).
    pub p99_us: Option<u64>,
}

impl ArmStats {
    /// Empty stats for `policy`.
    pub fn new(policy: &Rollback) -> Self {
        Self {
            outcomes: Window::new(policy.window),
            latency: (policy.latency_factor_permille > 0)
                .then(|| LatencyWindow::new(policy.window)),
        }
    }

    /// Records one answered request.
    pub fn record(&self, now: u64, error: bool, elapsed: Duration) {
        self.outcomes.add(now, 1, u32::from(error));
        if let Some(l) = &self.latency {
            l.add(now, u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// The window ending at `now`.
    pub fn summary(&self, now: u64) -> Summary {
        let (requests, errors) = self.outcomes.sum(now, 0);
        Summary {
            requests,
            errors,
            p99_us: self.latency.as_ref().and_then(|l| l.p99(now)),
        }
    }
}

/// Why `arm` should be rolled back against `stable`, or `None`.
pub fn verdict(policy: &Rollback, stable: Summary, arm: Summary) -> Option<String> {
    let min = u64::from(policy.min_requests);
    if stable.requests < min || arm.requests < min {
        return None;
    }
    if policy.error_permille > 0 {
        // arm/n_a - stable/n_s > margin, in integers.
        let lhs =
            (arm.errors * stable.requests).saturating_sub(stable.errors * arm.requests) * 1000;
        let rhs = u64::from(policy.error_permille) * arm.requests * stable.requests;
        if lhs > rhs {
            return Some(format!(
                "error ratio {:.3} vs stable {:.3} over {} and {} requests",
                arm.errors as f64 / arm.requests as f64,
                stable.errors as f64 / stable.requests as f64,
                arm.requests,
                stable.requests
            ));
        }
    }
    if policy.latency_factor_permille > 0
        && let (Some(a), Some(s)) = (arm.p99_us, stable.p99_us)
        && a * 1000 > s.max(1) * u64::from(policy.latency_factor_permille)
    {
        return Some(format!(
            "P99 latency {:.1} ms vs stable {:.1} ms (limit {:.2}x)",
            a as f64 / 1000.0,
            s as f64 / 1000.0,
            f64::from(policy.latency_factor_permille) / 1000.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn policy(error_ratio: f64, latency_factor: f64) -> Rollback {
        let mut p = weir_conf::Problems::default();
        let r = weir_conf::resilience::check_rollback(
            &weir_conf::resilience::RollbackConfig {
                error_ratio,
                latency_factor,
                window_ms: 10_000,
                min_requests: 50,
                header_reaches: true,
            },
            "routes[t]",
            &mut p,
        );
        assert!(p.is_empty(), "{p}");
        r
    }

    fn summary(requests: u64, errors: u64, p99_us: Option<u64>) -> Summary {
        Summary {
            requests,
            errors,
            p99_us,
        }
    }

    #[test]
    fn latency_buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1_000, 65_535, 1 << 30] {
            let b = bucket_of(us);
            assert!(b >= last);
            assert!(
                bucket_top(b) >= us,
                "{us} above its bucket top {}",
                bucket_top(b)
            );
            last = b;
        }
        let w = LatencyWindow::new(Duration::from_secs(10));
        for _ in 0..990 {
            w.add(10, 1_000);
        }
        for _ in 0..10 {
            w.add(10, 50_000);
        }
        let p99 = w.p99(10).unwrap();
        assert!((1_000..1_300).contains(&p99), "{p99}");
        w.add(10, 50_000);
        assert!(w.p99(10).unwrap() >= 50_000);
    }

    #[test]
    fn an_arm_is_rolled_back_on_clearly_more_errors_with_enough_requests() {
        let p = policy(0.1, 0.0);
        assert!(verdict(&p, summary(900, 9, None), summary(100, 20, None)).is_some());
        // 20% vs 11%: within the margin.
        assert!(verdict(&p, summary(900, 99, None), summary(100, 20, None)).is_none());
        // Too few requests on either side.
        assert!(verdict(&p, summary(900, 0, None), summary(49, 49, None)).is_none());
        assert!(verdict(&p, summary(49, 0, None), summary(100, 100, None)).is_none());
    }

    #[test]
    fn an_arm_is_rolled_back_on_a_slower_p99_when_asked() {
        let p = policy(0.0, 2.0);
        assert!(
            verdict(
                &p,
                summary(100, 0, Some(10_000)),
                summary(100, 0, Some(25_000))
            )
            .is_some()
        );
        assert!(
            verdict(
                &p,
                summary(100, 0, Some(10_000)),
                summary(100, 0, Some(19_000))
            )
            .is_none()
        );
        assert!(verdict(&p, summary(100, 0, None), summary(100, 0, Some(19_000))).is_none());
    }
}
