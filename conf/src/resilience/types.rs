//! The file types of the resilience settings: a pool's `breaker`, a
//! route's `retry` and `rollback` tables, and `[[rollbacks]]` records.

use serde::{Deserialize, Serialize};

/// `breaker`: when a pool's backend is cut off and how it comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Whether backends of the pool have breakers at all.
    pub enabled: bool,
    /// Consecutive failures that open the breaker (0 = never on a streak).
    pub consecutive_failures: i64,
    /// Failure ratio over `window_ms` that opens the breaker, 0 to 1
    /// (0 = never on a ratio); needs `min_requests` in the window.
    pub failure_ratio: f64,
    /// Length of the sliding window for `failure_ratio`, milliseconds.
    pub window_ms: i64,
    /// Requests the window needs before its ratio counts.
    pub min_requests: i64,
    /// How long the breaker stays open after its first trip, milliseconds.
    pub open_ms: i64,
    /// Longest open time: each trip without a successful recovery in between
    /// doubles the open time up to this, milliseconds.
    pub max_open_ms: i64,
    /// Requests let through at once while half-open; as many successes in a
    /// row close the breaker, one failure opens it again.
    pub half_open_probes: i64,
    /// What counts as a failure: `"connect"` (connect errors), `"timeout"`
    /// (upstream timeouts), `"5xx"` (any 5xx answer) or a status such as
    /// `"503"`.
    pub failures: Vec<String>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window_ms: 10_000,
            min_requests: 20,
            open_ms: 1_000,
            max_open_ms: 30_000,
            half_open_probes: 1,
            failures: vec!["connect".into(), "timeout".into(), "5xx".into()],
        }
    }
}

impl BreakerConfig {
    /// Whether this is the default table (left out when serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `retry`: how a route retries on another backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Further attempts after the first, each on a backend not tried yet
    /// (0 = never retry), at most 5.
    pub attempts: i64,
    /// Upstream statuses that are retried as well as connect failures, only
    /// for idempotent methods or bodies the gateway still holds (e.g. `[503]`).
    pub on_statuses: Vec<i64>,
    /// Retries may be at most this share of the route's requests over the
    /// last 10 seconds, 0 to 1 ...
    pub budget_ratio: f64,
    /// ... but this many retries per second are always allowed.
    pub min_per_second: i64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 1,
            on_statuses: Vec::new(),
            budget_ratio: 0.2,
            min_per_second: 5,
        }
    }
}

impl RetryConfig {
    /// Whether this is the default table (left out when serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `rollback`: when a route's canary arms are taken out of its split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollbackConfig {
    /// An arm is rolled back when its error ratio (5xx and failed requests)
    /// exceeds the fallback arm's by more than this, 0 to 1 (0 = never on errors).
    pub error_ratio: f64,
    /// ... or when its P99 latency exceeds the fallback arm's by this factor
    /// (0 = never on latency; otherwise at least 1).
    pub latency_factor: f64,
    /// The sliding window both arms are compared over, milliseconds.
    pub window_ms: i64,
    /// Requests each of the two arms needs in the window before they are compared.
    pub min_requests: i64,
    /// Whether the A/B header still reaches a rolled-back arm (for debugging).
    pub header_reaches: bool,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        Self {
            error_ratio: 0.1,
            latency_factor: 0.0,
            window_ms: 30_000,
            min_requests: 50,
            header_reaches: true,
        }
    }
}

/// A rolled-back arm, as recorded by a gateway (in etcd under
/// `rollbacks/<route>/<arm>`, or in `[[rollbacks]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRecord {
    /// The route.
    pub route: String,
    /// The arm taken out of the split.
    pub arm: String,
    /// Why, e.g. `error ratio 0.21 vs 0.00 over 10 s`.
    #[serde(default)]
    pub reason: String,
    /// When, seconds since the Unix epoch.
    #[serde(default)]
    pub at: u64,
    /// Which gateway decided (its host name and listener).
    #[serde(default)]
    pub by: String,
}
