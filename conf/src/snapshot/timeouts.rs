//! A route's effective timeouts: the `[timeouts]` defaults and a route's
//! own `timeouts` table over the built-in ones.

use std::time::Duration;

use super::values::check_ms;
use crate::error::Problems;
use crate::model::TimeoutsConfig;

/// Built-in connect timeout.
pub const DEFAULT_CONNECT: Duration = Duration::from_millis(1_000);
/// Built-in read timeout: the longest wait for the next upstream byte,
/// which for a non-streaming answer is the wait for the whole answer
/// (see `docs/resilience.md` § Timeouts for the choice).
pub const DEFAULT_READ: Duration = Duration::from_millis(30_000);
/// Built-in write timeout.
pub const DEFAULT_WRITE: Duration = Duration::from_millis(60_000);

/// Effective timeouts of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// Read (idle between bytes) timeout.
    pub read: Duration,
    /// Write timeout.
    pub write: Duration,
    /// Whole-exchange limit, if any.
    pub total: Option<Duration>,
}

pub(super) fn check_timeouts(
    t: &TimeoutsConfig,
    at: &str,
    base: Timeouts,
    problems: &mut Problems,
) -> Timeouts {
    Timeouts {
        connect: check_ms(
            t.connect_ms,
            format!("{at}.connect_ms"),
            base.connect,
            problems,
        ),
        read: check_ms(t.read_ms, format!("{at}.read_ms"), base.read, problems),
        write: check_ms(t.write_ms, format!("{at}.write_ms"), base.write, problems),
        total: match t.total_ms {
            None => base.total,
            Some(ms) => Some(check_ms(
                Some(ms),
                format!("{at}.total_ms"),
                DEFAULT_READ,
                problems,
            )),
        },
    }
}
