//! A cheap monotonic clock ([`now_ms`]) and lock-free sliding-window
//! counters ([`Window`]), shared by the breakers, the retry budget, the
//! canary checks and the tenants' token limits. A leaf: imports nothing
//! from the crate.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds since the first call: a cheap monotonic clock for windows
/// and open times. It reads the kernel's coarse monotonic clock (advanced
/// at each scheduler tick, 1 to 4 ms), which costs a memory read where the
/// precise clock costs a timestamp-counter read and its scaling: several
/// calls a request, for windows of a second or more.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    let now = coarse_ms();
    now.saturating_sub(*BASE.get_or_init(|| now))
}

/// The coarse monotonic clock, in milliseconds.
fn coarse_ms() -> u64 {
    use nix::sys::time::TimeSpec;
    use nix::time::{ClockId, clock_gettime};
    // It cannot fail on Linux (the clock exists since 2.6.32).
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).unwrap_or(TimeSpec::new(0, 0));
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let ms = u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(ms)
}

const BUCKETS: usize = 10;

/// Two counters over a sliding window of ten buckets, lock-free. Bucket
/// resets race benignly with concurrent adds (a count may be lost at a
/// bucket boundary), which is fine for ratios.
pub struct Window {
    width_ms: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Default)]
struct Bucket {
    epoch: AtomicU64,
    a: AtomicU32,
    b: AtomicU32,
}

impl Window {
    /// A window of `span` (at least 10 ms).
    pub fn new(span: Duration) -> Self {
        let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        Self {
            width_ms: (span_ms / BUCKETS as u64).max(1),
            buckets: Default::default(),
        }
    }

    /// Adds `a` and `b` at time `now` (from [`now_ms`]).
    pub fn add(&self, now: u64, a: u32, b: u32) {
        // Epochs start at 1 so a fresh bucket (epoch 0) is never current.
        let epoch = now / self.width_ms + 1;
        let bucket = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = bucket.epoch.load(Ordering::Acquire);
        if seen != epoch
            && bucket
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// The sums of `a` and `b` over the window ending at `now`; with `since`
    /// > 0, only buckets that start after `since` count (both from [`now_ms`]).
    pub fn sum(&self, now: u64, since: u64) -> (u64, u64) {
        let current = now / self.width_ms + 1;
        let floor = if since == 0 {
            0
        } else {
            since / self.width_ms + 2
        };
        let (mut a, mut b) = (0u64, 0u64);
        for bucket in &self.buckets {
            let epoch = bucket.epoch.load(Ordering::Acquire);
            if epoch + (BUCKETS as u64) > current && epoch <= current && epoch >= floor {
                a += u64::from(bucket.a.load(Ordering::Relaxed));
                b += u64::from(bucket.b.load(Ordering::Relaxed));
            }
        }
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_keeps_time_with_the_precise_one() {
        let start = std::time::Instant::now();
        let first = now_ms();
        // 60 ms of real time, spent on the CPU (a sleep may oversleep).
        while start.elapsed() < Duration::from_millis(60) {
            std::hint::spin_loop();
        }
        let later = now_ms();
        let real = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Off by at most a tick or two (1 to 10 ms each), never backwards.
        assert!(later >= first);
        assert!(
            later - first <= real + 11,
            "{} ms in {real} ms",
            later - first
        );
        assert!(
            later - first + 20 >= 60,
            "{} ms in {real} ms",
            later - first
        );
    }

    #[test]
    fn window_sums_recent_buckets_only() {
        let w = Window::new(Duration::from_millis(1000));
        w.add(0, 1, 0);
        w.add(450, 2, 1);
        assert_eq!(w.sum(450, 0), (3, 1));
        assert_eq!(w.sum(450, 350), (2, 1));
        assert_eq!(w.sum(450, 450), (0, 0));
        // A second later, both buckets have left the window.
        assert_eq!(w.sum(1500, 0), (0, 0));
        w.add(1500, 5, 5);
        assert_eq!(w.sum(1500, 0), (5, 5));
    }
}
