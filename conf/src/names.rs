//! Names: the one rule for the names of pools, routes, arms, filters,
//! tenants and JWT issuers.
//!
//! Names go into headers, metric labels and etcd keys, so they are kept
//! plain: 1-64 characters of `A-Z`, `a-z`, `0-9`, `-`, `_` or `.`.

/// Longest name.
pub const MAX_NAME: usize = 64;

/// Whether `name` follows the rule.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The path of the `i`th entry of `table` called `name`: `routes[chat]`, or
/// `routes[3]` when the name is empty or too long to repeat.
#[cfg(feature = "validate")]
pub fn entry_path(table: &str, i: usize, name: &str) -> String {
    if name.is_empty() || name.len() > MAX_NAME {
        format!("{table}[{i}]")
    } else {
        format!("{table}[{name}]")
    }
}

/// Records a problem at `path` unless `name` follows the rule.
#[cfg(feature = "validate")]
pub fn check_name(name: &str, path: &str, problems: &mut crate::error::Problems) {
    if !is_name(name) {
        problems.push(
            path,
            format!(
                "{} must be 1-{MAX_NAME} characters of A-Z, a-z, 0-9, '-', '_' or '.'",
                crate::error::quoted(name)
            ),
        );
    }
}
