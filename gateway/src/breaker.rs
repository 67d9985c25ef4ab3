//! Per-backend circuit breakers, on the sliding-window counters of
//! [`crate::window`].
//!
//! A [`Breaker`] is closed (traffic flows), open (no traffic until its open
//! time has passed) or half-open (a limited number of probe requests). It
//! opens on a streak of failures or on a failure ratio over a window with
//! enough requests; each trip without a recovery in between doubles the open
//! time, up to a cap. The closed path is lock-free: one atomic load to admit,
//! a few atomic adds to record. Transitions are compare-and-swap on the state,
//! logged, counted (`weir_breaker_transitions_total{pool,backend,to}`) and
//! shown in `weir_breaker_state{pool,backend}` (0 closed, 1 open, 2 half-open).
//!
//! Breakers belong to a pool's [`BreakerSet`] and survive config reloads: a
//! rebuilt pool takes over the breakers of its surviving members as long as
//! its breaker settings are the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use prometheus::IntGauge;
use weir_conf::resilience::Breaker as Settings;

use crate::metrics::Metrics;
use crate::window::Window;

/// Breaker states, as stored and as reported by the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Traffic flows.
    Closed = 0,
    /// No traffic until the open time has passed.
    Open = 1,
    /// A limited number of probes.
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// Whether a request may go to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// No: the breaker is open (or its probes are all out).
    No,
    /// Yes, as ordinary traffic.
    Yes,
    /// Yes, as one of the half-open probes.
    Probe,
}

/// What one attempt on a backend came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way the breaker counts.
    Failure,
    /// Neither (e.g. the client went away): only frees a probe slot.
    Ignored,
}

/// The circuit breaker of one backend.
pub struct Breaker {
    settings: Arc<Settings>,
    pool: String,
    backend: String,
    metrics: Metrics,
    gauge: IntGauge,
    state: AtomicU8,
    streak: AtomicU32,
    /// `a` = requests, `b` = failures.
    window: Window,
    /// Outcomes before this time (a close) do not count towards the ratio.
    counted_since: AtomicU64,
    open_until: AtomicU64,
    trips: AtomicU32,
    probes_out: AtomicU32,
    probe_successes: AtomicU32,
}

impl Breaker {
    fn new(settings: Arc<Settings>, pool: &str, addr: SocketAddr, metrics: &Metrics) -> Self {
        let backend = addr.to_string();
        let gauge = metrics
            .breaker_state
            .with_label_values(&[pool, backend.as_str()]);
        gauge.set(0);
        // Zero-valued from the start, so rate() and dashboards see the series.
        for to in [State::Open, State::HalfOpen, State::Closed] {
            metrics
                .breaker_transitions
                .with_label_values(&[pool, backend.as_str(), to.as_str()]);
        }
        Self {
            window: Window::new(settings.window),
            settings,
            pool: pool.to_owned(),
            backend,
            metrics: metrics.clone(),
            gauge,
            state: AtomicU8::new(State::Closed as u8),
            streak: AtomicU32::new(0),
            counted_since: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            trips: AtomicU32::new(0),
            probes_out: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether [`Breaker::admit`] could let a request through at `now`,
    /// without taking a probe slot: for comparing backends before choosing.
    pub fn may_admit(&self, now: u64) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => now >= self.open_until.load(Ordering::Acquire),
            State::HalfOpen => {
                self.probes_out.load(Ordering::Acquire) < self.settings.half_open_probes
            }
        }
    }

    /// Whether a request may go to this backend now; a `Probe` answer holds a
    /// probe slot until [`Breaker::record`] is called with `probe = true`.
    pub fn admit(&self, now: u64) -> Admit {
        match self.state() {
            State::Closed => Admit::Yes,
            State::Open => {
                if now < self.open_until.load(Ordering::Acquire) {
                    return Admit::No;
                }
                if self.transition(State::Open, State::HalfOpen) {
                    self.probes_out.store(0, Ordering::Release);
                    self.probe_successes.store(0, Ordering::Release);
                }
                self.take_probe()
            }
            State::HalfOpen => self.take_probe(),
        }
    }

    fn take_probe(&self) -> Admit {
        let max = self.settings.half_open_probes;
        let taken = self
            .probes_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) if self.state() == State::HalfOpen => Admit::Probe,
            Ok(_) => {
                // Closed or reopened meanwhile: give the slot back.
                self.release_probe();
                if self.state() == State::Closed {
                    Admit::Yes
                } else {
                    Admit::No
                }
            }
            Err(_) => Admit::No,
        }
    }

    fn release_probe(&self) {
        let _ = self
            .probes_out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records the outcome of one attempt admitted at `Yes` or `Probe`.
    pub fn record(&self, outcome: Outcome, probe: bool, now: u64) {
        if probe {
            self.release_probe();
            if self.state() != State::HalfOpen {
                return;
            }
            match outcome {
                Outcome::Success => {
                    let ok = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                    if ok >= self.settings.half_open_probes {
                        self.close(now);
                    }
                }
                Outcome::Failure => self.open(State::HalfOpen, now),
                Outcome::Ignored => {}
            }
            return;
        }
        if self.state() != State::Closed || outcome == Outcome::Ignored {
            // Answers to requests admitted before a trip say nothing new.
            return;
        }
        let failed = outcome == Outcome::Failure;
        self.window.add(now, 1, u32::from(failed));
        if !failed {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::AcqRel) + 1;
        let s = &self.settings;
        let on_streak = s.consecutive_failures > 0 && streak >= s.consecutive_failures;
        let on_ratio = s.failure_permille > 0 && {
            let (total, failures) = self
                .window
                .sum(now, self.counted_since.load(Ordering::Acquire));
            total >= u64::from(s.min_requests.max(1))
                && failures * 1000 >= total * u64::from(s.failure_permille)
        };
        if on_streak || on_ratio {
            self.open(State::Closed, now);
        }
    }

    fn open(&self, from: State, now: u64) {
        let trips = self.trips.load(Ordering::Acquire);
        let open_ms = u64::try_from(self.settings.open.as_millis()).unwrap_or(u64::MAX);
        let max_ms = u64::try_from(self.settings.max_open.as_millis()).unwrap_or(u64::MAX);
        let wait = open_ms.saturating_mul(1u64 << trips.min(30)).min(max_ms);
        self.open_until.store(now + wait, Ordering::Release);
        if self.transition(from, State::Open) {
            self.trips.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(pool = %self.pool, backend = %self.backend, open_ms = wait, from = from.as_str(), "circuit breaker opened");
        }
    }

    fn close(&self, now: u64) {
        if self.transition(State::HalfOpen, State::Closed) {
            self.streak.store(0, Ordering::Release);
            self.trips.store(0, Ordering::Release);
            self.counted_since.store(now, Ordering::Release);
            tracing::info!(pool = %self.pool, backend = %self.backend, "circuit breaker closed");
        }
    }

    fn transition(&self, from: State, to: State) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.gauge.set(to as i64);
            self.metrics
                .breaker_transitions
                .with_label_values(&[self.pool.as_str(), self.backend.as_str(), to.as_str()])
                .inc();
            if to == State::HalfOpen {
                tracing::info!(pool = %self.pool, backend = %self.backend, "circuit breaker half-open: probing");
            }
        }
        moved
    }
}

/// One request's attempt on a backend, waiting to tell its breaker how it
/// went.
pub struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl Attempt {
    /// An attempt through `breaker`; `probe` when admitted as a half-open probe.
    pub fn new(breaker: Arc<Breaker>, probe: bool) -> Self {
        Self { breaker, probe }
    }

    /// Tells the breaker how the attempt went.
    pub fn settle(self, outcome: Outcome, now: u64) {
        self.breaker.record(outcome, self.probe, now);
    }

    /// The breaker's settings.
    pub fn settings(&self) -> &Settings {
        self.breaker.settings()
    }
}

/// The breakers of one pool's backends.
pub struct BreakerSet {
    settings: Arc<Settings>,
    /// Sorted by address.
    members: Vec<(SocketAddr, Arc<Breaker>)>,
}

impl BreakerSet {
    /// Breakers for `addrs`, taking over those of `previous` for addresses it
    /// had when its settings are the same. Changes nothing live: see
    /// [`BreakerSet::retire_departed`].
    pub fn build(pool: &weir_conf::Pool, previous: Option<&BreakerSet>, metrics: &Metrics) -> Self {
        let previous = previous.filter(|p| *p.settings == pool.breaker);
        let settings = previous
            .map(|p| Arc::clone(&p.settings))
            .unwrap_or_else(|| Arc::new(pool.breaker.clone()));
        let mut members: Vec<(SocketAddr, Arc<Breaker>)> = pool
            .backends
            .iter()
            .map(|b| {
                let kept = previous.and_then(|p| p.get(&b.addr)).map(Arc::clone);
                let breaker = kept.unwrap_or_else(|| {
                    Arc::new(Breaker::new(
                        Arc::clone(&settings),
                        &pool.name,
                        b.addr,
                        metrics,
                    ))
                });
                (b.addr, breaker)
            })
            .collect();
        members.sort_by_key(|(a, _)| *a);
        Self { settings, members }
    }

    /// Removes the series of `previous`'s members that this set does not
    /// have, when this set took `previous`'s over (same settings). Run once
    /// this set is live.
    pub fn retire_departed(&self, previous: &BreakerSet, pool: &str, metrics: &Metrics) {
        if *previous.settings != *self.settings {
            return;
        }
        for (addr, _) in &previous.members {
            if self.get(addr).is_some() {
                continue;
            }
            let addr = addr.to_string();
            let _ = metrics.breaker_state.remove_label_values(&[pool, &addr]);
            for to in [State::Open, State::HalfOpen, State::Closed] {
                let _ =
                    metrics
                        .breaker_transitions
                        .remove_label_values(&[pool, &addr, to.as_str()]);
            }
        }
    }

    /// Whether the pool's backends have breakers.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// The breaker of the backend at `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Arc<Breaker>> {
        self.members
            .binary_search_by_key(addr, |(a, _)| *a)
            .ok()
            .map(|i| &self.members[i].1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use weir_conf::resilience::{BreakerConfig, check_breaker};

    fn breaker(f: impl FnOnce(&mut BreakerConfig)) -> Breaker {
        let mut c = BreakerConfig::default();
        f(&mut c);
        let mut problems = weir_conf::Problems::default();
        let s = check_breaker(&c, "pools[t]", &mut problems);
        assert!(problems.is_empty(), "{problems}");
        let metrics = Metrics::new().unwrap();
        Breaker::new(Arc::new(s), "t", "127.0.0.1:1".parse().unwrap(), &metrics)
    }

    #[test]
    fn streak_opens_then_probes_close_with_growing_open_times() {
        let b = breaker(|c| {
            c.consecutive_failures = 3;
            c.failure_ratio = 0.0;
            c.open_ms = 100;
            c.max_open_ms = 250;
            c.half_open_probes = 2;
        });
        for _ in 0..2 {
            b.record(Outcome::Failure, false, 10);
        }
        b.record(Outcome::Success, false, 10);
        for _ in 0..2 {
            b.record(Outcome::Failure, false, 10);
        }
        assert_eq!(b.state(), State::Closed, "a success resets the streak");
        b.record(Outcome::Failure, false, 10);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(50), Admit::No);
        // Open time passed: two probes, no third.
        assert_eq!(b.admit(110), Admit::Probe);
        assert_eq!(b.admit(110), Admit::Probe);
        assert_eq!(b.admit(110), Admit::No);
        // A probe fails: open again for twice as long.
        b.record(Outcome::Failure, true, 120);
        assert_eq!(b.state(), State::Open);
        b.record(Outcome::Ignored, true, 120);
        assert_eq!(b.admit(300), Admit::No);
        assert_eq!(b.admit(320), Admit::Probe);
        b.record(Outcome::Failure, true, 320);
        // Third trip: 400 ms capped at 250.
        assert_eq!(b.admit(560), Admit::No);
        assert_eq!(b.admit(570), Admit::Probe);
        assert_eq!(b.admit(570), Admit::Probe);
        b.record(Outcome::Success, true, 580);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(Outcome::Success, true, 580);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(580), Admit::Yes);
        // Recovered: the next trip waits the base time again.
        for _ in 0..3 {
            b.record(Outcome::Failure, false, 600);
        }
        assert_eq!(b.admit(699), Admit::No);
        assert_eq!(b.admit(700), Admit::Probe);
    }

    #[test]
    fn ratio_needs_min_requests_and_ignores_answers_from_before_a_close() {
        let b = breaker(|c| {
            c.consecutive_failures = 0;
            c.failure_ratio = 0.5;
            c.min_requests = 10;
            c.half_open_probes = 1;
            c.open_ms = 10;
        });
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            b.record(o, false, 100);
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "9 requests are below min_requests"
        );
        b.record(Outcome::Failure, false, 100);
        assert_eq!(b.state(), State::Open, "6 of 10 failed");
        assert_eq!(b.admit(200), Admit::Probe);
        b.record(Outcome::Success, true, 200);
        assert_eq!(b.state(), State::Closed);
        // The earlier failures no longer count.
        b.record(Outcome::Failure, false, 300);
        assert_eq!(b.state(), State::Closed);
        // Fresh buckets count again; answers to requests sent before a trip
        // are ignored while open.
        for _ in 0..20 {
            b.record(Outcome::Failure, false, 1500);
        }
        assert_eq!(b.state(), State::Open);
        b.record(Outcome::Success, false, 1500);
        assert_eq!(b.state(), State::Open);
    }
}
