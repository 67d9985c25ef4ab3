//! Plain values shared by the parts of a snapshot: socket addresses,
//! millisecond durations and header names.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Problems, quoted};

/// Longest header name (`ab_header`, `sticky_header`), bytes.
pub const MAX_HEADER_NAME: usize = 128;

/// Longest timeout or probe interval, milliseconds.
pub(super) const MAX_TIMEOUT_MS: i64 = 3_600_000;

pub(super) fn parse_addr(value: &str, path: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(path, format!("{value:?} is not an IP:PORT address"));
            None
        }
    }
}

pub(super) fn check_header(name: &str, path: &str, problems: &mut Problems) -> String {
    if !check_len(name, MAX_HEADER_NAME, path, problems) {
        return String::new();
    }
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        problems.push(path, format!("{} is not a valid header name", quoted(name)));
    }
    name.to_ascii_lowercase()
}

/// Records a problem at `path` when `value` is longer than `max` bytes;
/// true when it is not.
pub(super) fn check_len(value: &str, max: usize, path: &str, problems: &mut Problems) -> bool {
    if value.len() <= max {
        return true;
    }
    problems.push(
        path,
        format!("{} bytes, longer than the limit of {max}", value.len()),
    );
    false
}

pub(super) fn check_ms(
    value: Option<i64>,
    path: String,
    fallback: Duration,
    problems: &mut Problems,
) -> Duration {
    match value {
        None => fallback,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms.unsigned_abs()),
        Some(ms) => {
            problems.push(
                path,
                format!("{ms} must be between 1 and {MAX_TIMEOUT_MS} ms"),
            );
            fallback
        }
    }
}
