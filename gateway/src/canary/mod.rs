//! Canary auto-rollback: each arm of a route with a `rollback` policy keeps
//! a sliding window of its outcomes ([`stats`]); every quarter second at
//! most, a finished request of the route compares every weighted arm with
//! the fallback (stable) arm ([`check`]), and an arm that does clearly worse
//! is rolled back: its effective weight becomes 0 (see
//! [`crate::state::Shared::roll_back`]).
//!
//! Windows survive reloads (taken over by route and arm name), except that
//! an arm whose rollback was cleared starts afresh, so the failures that
//! rolled it back do not roll it back again.

pub mod stats;

use std::sync::atomic::Ordering;
use std::time::Duration;

pub use stats::{ArmStats, EVALUATE_EVERY_MS, Summary, verdict};

use crate::runtime::RouteRt;
use crate::window::now_ms;

/// Feeds one answer of an arm of `route` to the arm's window and, at most
/// every [`EVALUATE_EVERY_MS`] per route, compares the route's weighted arms
/// with its fallback arm. Returns the arms to roll back, with the reason.
pub fn check(
    route: &RouteRt,
    stats: &ArmStats,
    failed: bool,
    elapsed: Duration,
) -> Vec<(String, String)> {
    let now = now_ms();
    stats.record(now, failed, elapsed);
    let (Some(policy), Some(fb)) = (&route.config.rollback, route.config.fallback) else {
        return Vec::new();
    };
    let last = route.last_check.load(Ordering::Acquire);
    if now < last + EVALUATE_EVERY_MS
        || route
            .last_check
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return Vec::new();
    }
    let Some(stable) = route.arms[fb].stats.as_ref().map(|s| s.summary(now)) else {
        return Vec::new();
    };
    route
        .arms
        .iter()
        .enumerate()
        .filter(|(i, arm)| *i != fb && !arm.rolled_back && arm.weight != 0)
        .filter_map(|(_, arm)| {
            let summary = arm.stats.as_ref()?.summary(now);
            let reason = verdict(policy, stable, summary)?;
            Some((arm.name.clone(), reason))
        })
        .collect()
}
