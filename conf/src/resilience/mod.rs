//! Resilience settings: the circuit breaker of a pool's backends and the
//! retry policy of a route, with their validation.
//!
//! ```toml
//! [[pools]]
//! name = "v2"
//! breaker = { consecutive_failures = 5, failure_ratio = 0.5, window_ms = 10000,
//!             min_requests = 20, open_ms = 1000, max_open_ms = 30000,
//!             half_open_probes = 1, failures = ["connect", "timeout", "5xx"] }
//!
//! [[routes]]
//! name = "chat"
//! retry = { attempts = 1, on_statuses = [503], budget_ratio = 0.2, min_per_second = 5 }
//! ```
//!
//! A route may also roll a misbehaving canary back to its `fallback` (stable)
//! arm automatically:
//!
//! ```toml
//! rollback = { error_ratio = 0.1, latency_factor = 2.0, window_ms = 30000,
//!              min_requests = 50, header_reaches = true }
//! ```
//!
//! Every value has a default, so a pool without a `breaker` table has a
//! breaker with the settings above, and a route without `retry` retries a
//! failed connect once on another backend.

//!
//! - `types`: the file types (serde, unknown fields rejected).
//! - `check`: their validation into [`Breaker`], [`Retry`] and [`Rollback`]
//!   (feature `validate`).

pub(crate) mod types;

#[cfg(feature = "validate")]
pub(crate) mod check;

#[cfg(feature = "validate")]
pub use check::{Breaker, Retry, Rollback, check_breaker, check_retry, check_rollback};
pub use types::{BreakerConfig, RetryConfig, RollbackConfig, RollbackRecord};
