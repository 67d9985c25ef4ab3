//! Least-request balancing: each backend's load estimate and the power of
//! two choices over it.
//!
//! A backend's **cost** is its latency estimate times the requests it has
//! (in flight, plus the queue depth it last reported in
//! `x-weir-queue-depth`, plus the one about to be sent). The latency
//! estimate is the larger of
//!
//! - a *peak-EWMA* of the time to the answer's header: a slower answer
//!   takes the estimate at once, faster ones pull it down with a 10 s decay
//!   time, and time without answers decays it towards zero (as Finagle's
//!   and Linkerd's balancers do), so a backend that was slow gets tried
//!   again later; and
//! - the mean age of the requests it has in flight, so a backend that stops
//!   answering looks slower with every millisecond its requests wait, long
//!   before any of them times out. Counts alone are not enough: with
//!   closed-loop clients a hung backend would keep half the connections.
//!
//! A pick draws two different backends by weight and takes the first unless
//! the second costs clearly less (under 80 %): with equal load the traffic
//! follows the weights, and a slow or hung backend loses every comparison.
//!
//! Everything is a handful of relaxed atomics per backend; the estimate is
//! approximate by design (races lose an observation, never correctness).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The decay time of the latency estimate.
const DECAY_NS: f64 = 10e9;
/// The second draw wins when it costs less than this share of the first.
const CLEARLY_LESS: f64 = 0.8;
/// The floor of a latency estimate: an idle backend with no history still
/// costs more the more it has in flight.
const FLOOR_NS: f64 = 1_000.0;

/// Nanoseconds on a process-wide monotonic clock.
pub fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` on [`now_ns`]'s clock: for a caller that has read the clock
/// already (a reading is among the dearer things a request does).
pub fn ns_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| at);
    u64::try_from(at.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

/// The load estimate of one backend. Shared by consecutive runtimes while
/// the backend stays in its pool.
#[derive(Debug, Default)]
pub struct Load {
    in_flight: AtomicU64,
    /// Sum of the start times of the requests in flight.
    started_sum: AtomicU64,
    /// The latency estimate in ns (`f64` bits).
    estimate: AtomicU64,
    /// When the estimate was last updated.
    stamp: AtomicU64,
    /// The queue depth the backend last reported.
    queue: AtomicU64,
}

impl Load {
    /// A request to this backend begins at `now`; the guard ends it.
    pub fn start(self: &Arc<Self>, now: u64) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started_sum.fetch_add(now, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(self),
            started: now,
            observed: false,
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate at `now` in ns: the decayed peak-EWMA or the
    /// mean age of the requests in flight, whichever is larger.
    pub fn latency_ns(&self, now: u64) -> f64 {
        let n = self.in_flight.load(Ordering::Relaxed);
        let sum = self.started_sum.load(Ordering::Relaxed);
        // The two loads may race a start or an end: an age from a torn pair
        // is clamped, and the next pick reads a fresh one.
        let age = now
            .saturating_mul(n)
            .saturating_sub(sum)
            .checked_div(n)
            .unwrap_or(0) as f64;
        let est = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let since = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = est * (-since / DECAY_NS).exp();
        decayed.max(age)
    }

    /// What sending one more request here costs, at `now`.
    pub fn cost(&self, now: u64) -> f64 {
        let pending = self.in_flight.load(Ordering::Relaxed) + self.queue.load(Ordering::Relaxed);
        self.latency_ns(now).max(FLOOR_NS) * (pending + 1) as f64
    }

    /// Folds one latency observation into the estimate: a peak is taken at
    /// once, lower values are averaged in by the time since the last one.
    fn observe(&self, rtt_ns: f64, now: u64) {
        let prev = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let since = now.saturating_sub(self.stamp.swap(now, Ordering::Relaxed)) as f64;
        let next = if rtt_ns > prev {
            rtt_ns
        } else {
            let w = (-since / DECAY_NS).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.estimate.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Records the backend's reported queue depth.
    pub fn set_queue(&self, depth: u64) {
        self.queue.store(depth, Ordering::Relaxed);
    }
}

/// One request in flight to a backend; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<Load>,
    started: u64,
    observed: bool,
}

impl InFlight {
    /// The answer's header arrived at `now`: the time since the start is a
    /// latency observation. A failed answer (`ok = false`, a 5xx) may raise
    /// the estimate but never lowers it: a backend failing fast must not
    /// look fast (its breaker is what takes it out).
    pub fn answered(&mut self, now: u64, ok: bool) {
        if !self.observed {
            self.observed = true;
            let rtt = now.saturating_sub(self.started) as f64;
            if ok || rtt > f64::from_bits(self.load.estimate.load(Ordering::Relaxed)) {
                self.load.observe(rtt, now);
            }
        }
    }

    /// The backend's load, to record its reported queue depth.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = now_ns();
        // A request that ended without an answer (a timeout, a reset) took
        // at least this long: count it when it raises the estimate.
        if !self.observed {
            let waited = now.saturating_sub(self.started) as f64;
            let est = f64::from_bits(self.load.estimate.load(Ordering::Relaxed));
            if waited > est {
                self.load.observe(waited, now);
            }
        }
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load
            .started_sum
            .fetch_sub(self.started, Ordering::Relaxed);
    }
}

/// Draws an index by weight: `cumulative[i]` is the sum of the weights of
/// members `0..=i`.
fn draw(cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let r = fastrand::u64(..total);
    cumulative.partition_point(|&c| c <= r)
}

/// Power of two choices: the index of the member to send to among those
/// `eligible` says yes to, or `None` when none is.
///
/// Two different members are drawn by weight; when both are eligible the
/// first wins unless the second costs clearly less. When a draw is not
/// eligible (unhealthy, tried, breaker open), the cheapest eligible member
/// is taken instead (a scan, the rare path).
pub fn pick(
    cumulative: &[u64],
    cost: impl Fn(usize) -> f64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = cumulative.len();
    match n {
        0 => return None,
        1 => return eligible(0).then_some(0),
        _ => {}
    }
    let a = draw(cumulative);
    let mut b = draw(cumulative);
    for _ in 0..3 {
        if b != a {
            break;
        }
        b = draw(cumulative);
    }
    if b == a {
        b = (a + 1) % n;
    }
    match (eligible(a), eligible(b)) {
        (true, true) => Some(if cost(b) < cost(a) * CLEARLY_LESS {
            b
        } else {
            a
        }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => (0..n)
            .filter(|&i| i != a && i != b && eligible(i))
            .min_by(|&x, &y| cost(x).total_cmp(&cost(y))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_reading_given_is_placed_on_the_same_clock() {
        let before = Instant::now();
        let a = now_ns();
        let at = Instant::now();
        let b = ns_at(at);
        let c = now_ns();
        assert!(a <= b && b <= c, "{a} {b} {c}");
        // A reading older than the clock's start is its start, not a wrap.
        assert!(ns_at(before) <= a);
        assert_eq!(
            ns_at(at + std::time::Duration::from_millis(5)) - b,
            5_000_000
        );
    }

    #[test]
    fn a_peak_is_taken_at_once_and_decays_with_later_answers() {
        let load = Arc::new(Load::default());
        let t0 = 1_000_000_000;
        let mut f = load.start(t0);
        f.answered(t0 + 500_000_000, true);
        drop(f);
        assert!((load.latency_ns(t0 + 500_000_000) - 5e8).abs() < 1.0);
        // Fast answers pull it down, the more the longer after the peak.
        let t1 = t0 + 10_000_000_000;
        let mut g = load.start(t1);
        g.answered(t1 + 1_000_000, true);
        drop(g);
        let est = load.latency_ns(t1 + 1_000_000);
        assert!(est < 5e8 * 0.5 && est > 1e6, "{est}");
    }

    #[test]
    fn a_fast_failure_never_lowers_the_estimate() {
        let load = Arc::new(Load::default());
        let mut f = load.start(0);
        f.answered(50_000_000, true);
        drop(f);
        let mut g = load.start(60_000_000);
        g.answered(60_001_000, false);
        drop(g);
        assert!(load.latency_ns(60_001_000) > 4e7);
    }

    #[test]
    fn requests_in_flight_age_the_estimate() {
        let load = Arc::new(Load::default());
        let _a = load.start(1_000);
        let _b = load.start(3_000);
        // Ages 9,000 and 7,000 at 10,000: mean 8,000.
        assert!((load.latency_ns(10_000) - 8_000.0).abs() < 1.0);
        assert!(load.cost(10_000) > load.cost(5_000));
        drop(_a);
        drop(_b);
        assert_eq!(load.in_flight(), 0);
    }

    #[test]
    fn a_request_ending_without_an_answer_counts_as_at_least_its_wait() {
        let load = Arc::new(Load::default());
        let f = load.start(now_ns());
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(f);
        assert!(load.latency_ns(now_ns()) > 4e6);
    }

    #[test]
    fn equal_loads_follow_the_weights_and_a_hung_member_loses() {
        // Weights 3 and 1.
        let cumulative = [3, 4];
        let mut counts = [0usize; 2];
        for _ in 0..10_000 {
            let i = pick(&cumulative, |_| 1.0, |_| true).unwrap();
            counts[i] += 1;
        }
        let share = counts[0] as f64 / 10_000.0;
        assert!((0.70..0.80).contains(&share), "{counts:?}");
        // Member 0 costs 100x: member 1 gets everything.
        let mut counts = [0usize; 2];
        for _ in 0..1_000 {
            let i = pick(&cumulative, |i| if i == 0 { 100.0 } else { 1.0 }, |_| true).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [0, 1_000]);
    }

    #[test]
    fn ineligible_members_are_skipped_and_none_means_none() {
        let cumulative = [1, 2, 3, 4];
        for _ in 0..200 {
            let i = pick(&cumulative, |i| i as f64, |i| i == 2).unwrap();
            assert_eq!(i, 2);
        }
        assert_eq!(pick(&cumulative, |_| 1.0, |_| false), None);
        assert_eq!(pick(&[5], |_| 1.0, |_| true), Some(0));
        assert_eq!(pick(&[], |_| 1.0, |_| true), None);
    }
}
