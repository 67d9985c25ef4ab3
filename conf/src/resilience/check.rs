//! Validation of the resilience settings into the runtime [`Breaker`],
//! [`Retry`] and [`Rollback`].

use std::time::Duration;

use super::types::{BreakerConfig, RetryConfig, RollbackConfig};
use crate::error::Problems;

const MAX_MS: i64 = 3_600_000;

/// Validated rollback policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// Error ratio margin, thousandths (0 = off).
    pub error_permille: u32,
    /// P99 factor, thousandths (0 = off).
    pub latency_factor_permille: u32,
    /// Comparison window.
    pub window: Duration,
    /// Requests per arm before comparing.
    pub min_requests: u32,
    /// The A/B header still reaches a rolled-back arm.
    pub header_reaches: bool,
}

/// Validates a route's `rollback` table (`at` is the route's path).
pub fn check_rollback(r: &RollbackConfig, at: &str, problems: &mut Problems) -> Rollback {
    let at = format!("{at}.rollback");
    let latency_factor_permille = if r.latency_factor == 0.0 {
        0
    } else if (1.0..=1000.0).contains(&r.latency_factor) {
        // In range, so the product fits.
        (r.latency_factor * 1000.0).round() as u32
    } else {
        problems.push(
            format!("{at}.latency_factor"),
            format!("{} must be 0 (off) or between 1 and 1000", r.latency_factor),
        );
        0
    };
    let error_permille = permille(r.error_ratio, format!("{at}.error_ratio"), problems);
    if error_permille == 0 && latency_factor_permille == 0 {
        problems.push(
            at.clone(),
            "error_ratio and latency_factor are both off: nothing would roll back",
        );
    }
    let min_requests = count(
        r.min_requests,
        1_000_000,
        format!("{at}.min_requests"),
        problems,
    );
    if min_requests == 0 {
        problems.push(format!("{at}.min_requests"), "must be at least 1");
    }
    Rollback {
        error_permille,
        latency_factor_permille,
        window: ms(r.window_ms, 1000, format!("{at}.window_ms"), problems),
        min_requests: min_requests.max(1),
        header_reaches: r.header_reaches,
    }
}

/// Validated breaker settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Breaker {
    /// Whether breakers are on.
    pub enabled: bool,
    /// Streak that opens (0 = off).
    pub consecutive_failures: u32,
    /// Ratio that opens, in thousandths (0 = off).
    pub failure_permille: u32,
    /// Sliding window of the ratio.
    pub window: Duration,
    /// Requests needed in the window.
    pub min_requests: u32,
    /// First open time.
    pub open: Duration,
    /// Longest open time.
    pub max_open: Duration,
    /// Concurrent probes while half-open.
    pub half_open_probes: u32,
    /// Connect errors count as failures.
    pub on_connect: bool,
    /// Timeouts count as failures.
    pub on_timeout: bool,
    /// Statuses that count as failures, sorted.
    pub statuses: Vec<u16>,
}

impl Breaker {
    /// Whether an upstream answer with `status` counts as a failure.
    pub fn fails_on(&self, status: u16) -> bool {
        self.statuses.binary_search(&status).is_ok()
    }
}

/// Validated retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Further attempts after the first.
    pub attempts: u8,
    /// Retried upstream statuses, sorted.
    pub on_statuses: Vec<u16>,
    /// Budget share of requests, in thousandths.
    pub budget_permille: u32,
    /// Retries per second always allowed.
    pub min_per_second: u32,
}

impl Retry {
    /// Whether an upstream answer with `status` is retried.
    pub fn retries_status(&self, status: u16) -> bool {
        self.on_statuses.binary_search(&status).is_ok()
    }
}

fn ms(value: i64, min: i64, path: String, problems: &mut Problems) -> Duration {
    if !(min..=MAX_MS).contains(&value) {
        problems.push(
            path,
            format!("{value} must be between {min} and {MAX_MS} ms"),
        );
    }
    Duration::from_millis(value.clamp(min, MAX_MS).unsigned_abs())
}

fn count(value: i64, max: i64, path: String, problems: &mut Problems) -> u32 {
    if !(0..=max).contains(&value) {
        problems.push(path, format!("{value} must be between 0 and {max}"));
    }
    u32::try_from(value.clamp(0, max)).unwrap_or(0)
}

fn permille(value: f64, path: String, problems: &mut Problems) -> u32 {
    if !(0.0..=1.0).contains(&value) {
        problems.push(path, format!("{value} must be between 0 and 1"));
        return 0;
    }
    // In range, so the product is 0..=1000.
    (value * 1000.0).round() as u32
}

/// Validates a pool's `breaker` table (`at` is the pool's path).
pub fn check_breaker(b: &BreakerConfig, at: &str, problems: &mut Problems) -> Breaker {
    let at = format!("{at}.breaker");
    let (mut on_connect, mut on_timeout) = (false, false);
    let mut statuses = Vec::new();
    for (i, f) in b.failures.iter().enumerate() {
        match f.as_str() {
            "connect" => on_connect = true,
            "timeout" => on_timeout = true,
            "5xx" => statuses.extend(500..=599),
            s => match s.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => statuses.push(code),
                _ => problems.push(
                    format!("{at}.failures[{i}]"),
                    format!("{s:?} must be \"connect\", \"timeout\", \"5xx\" or a status 100-599"),
                ),
            },
        }
    }
    statuses.sort_unstable();
    statuses.dedup();
    let open = ms(b.open_ms, 1, format!("{at}.open_ms"), problems);
    let max_open = ms(b.max_open_ms, 1, format!("{at}.max_open_ms"), problems);
    if max_open < open {
        problems.push(format!("{at}.max_open_ms"), "must be >= open_ms");
    }
    let half_open_probes = count(
        b.half_open_probes,
        1000,
        format!("{at}.half_open_probes"),
        problems,
    );
    if half_open_probes == 0 {
        problems.push(format!("{at}.half_open_probes"), "must be at least 1");
    }
    Breaker {
        enabled: b.enabled,
        consecutive_failures: count(
            b.consecutive_failures,
            1_000_000,
            format!("{at}.consecutive_failures"),
            problems,
        ),
        failure_permille: permille(b.failure_ratio, format!("{at}.failure_ratio"), problems),
        window: ms(b.window_ms, 100, format!("{at}.window_ms"), problems),
        min_requests: count(
            b.min_requests,
            1_000_000,
            format!("{at}.min_requests"),
            problems,
        ),
        open,
        max_open: max_open.max(open),
        half_open_probes: half_open_probes.max(1),
        on_connect,
        on_timeout,
        statuses,
    }
}

/// Validates a route's `retry` table (`at` is the route's path).
pub fn check_retry(r: &RetryConfig, at: &str, problems: &mut Problems) -> Retry {
    let at = format!("{at}.retry");
    let mut on_statuses = Vec::with_capacity(r.on_statuses.len());
    for (i, &s) in r.on_statuses.iter().enumerate() {
        match u16::try_from(s) {
            Ok(code) if (500..=599).contains(&code) => on_statuses.push(code),
            _ => problems.push(
                format!("{at}.on_statuses[{i}]"),
                format!("{s} must be a 5xx status"),
            ),
        }
    }
    on_statuses.sort_unstable();
    on_statuses.dedup();
    Retry {
        attempts: u8::try_from(count(r.attempts, 5, format!("{at}.attempts"), problems))
            .unwrap_or(0),
        on_statuses,
        budget_permille: permille(r.budget_ratio, format!("{at}.budget_ratio"), problems),
        min_per_second: count(
            r.min_per_second,
            1_000_000,
            format!("{at}.min_per_second"),
            problems,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_count_connect_timeout_and_5xx() {
        let mut p = Problems::default();
        let b = check_breaker(&BreakerConfig::default(), "pools[a]", &mut p);
        let r = check_retry(&RetryConfig::default(), "routes[a]", &mut p);
        assert!(p.is_empty(), "{p}");
        assert!(b.enabled && b.on_connect && b.on_timeout);
        assert!(b.fails_on(500) && b.fails_on(599) && !b.fails_on(429));
        assert_eq!(b.failure_permille, 500);
        assert_eq!(r.attempts, 1);
        assert!(!r.retries_status(503));
    }

    #[test]
    fn bad_values_are_all_reported_with_paths() {
        let b = BreakerConfig {
            failure_ratio: 1.5,
            open_ms: 0,
            max_open_ms: 10,
            window_ms: 5,
            half_open_probes: 0,
            consecutive_failures: -1,
            failures: vec!["connect".into(), "6xx".into(), "700".into()],
            ..BreakerConfig::default()
        };
        let r = RetryConfig {
            attempts: 9,
            on_statuses: vec![404, 503],
            budget_ratio: -0.1,
            min_per_second: -3,
        };
        let mut p = Problems::default();
        let checked = check_breaker(&b, "pools[v2]", &mut p);
        let retry = check_retry(&r, "routes[chat]", &mut p);
        let text = p.to_string();
        for want in [
            "pools[v2].breaker.failure_ratio: 1.5 must be between 0 and 1",
            "pools[v2].breaker.open_ms: 0 must be between 1",
            "pools[v2].breaker.window_ms: 5 must be between 100",
            "pools[v2].breaker.half_open_probes: must be at least 1",
            "pools[v2].breaker.consecutive_failures: -1 must be between 0",
            "pools[v2].breaker.failures[1]: \"6xx\"",
            "pools[v2].breaker.failures[2]: \"700\"",
            "routes[chat].retry.attempts: 9 must be between 0 and 5",
            "routes[chat].retry.on_statuses[0]: 404 must be a 5xx status",
            "routes[chat].retry.budget_ratio: -0.1",
            "routes[chat].retry.min_per_second: -3",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(checked.statuses, Vec::<u16>::new());
        assert_eq!(retry.on_statuses, vec![503]);
    }
}
