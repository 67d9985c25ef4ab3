//! Secrets in config values: `${env:NAME}` and `${file:PATH}` (a
//! Kubernetes Secret mounted as files, or an environment variable), for
//! upstream header values, admin token digests and the etcd password.

use crate::error::Problems;

/// Longest value once its secrets are read, bytes.
pub const MAX_SECRET: usize = 8_192;

/// The text before the first `${` of `rest`, then what is inside it and
/// the text after its `}` (`None` for an unclosed `${`); `None` when `rest`
/// holds no `${`.
fn next_reference(rest: &str) -> Option<(&str, Option<(&str, &str)>)> {
    let start = rest.find("${")?;
    let after = &rest[start + 2..];
    let reference = after
        .find('}')
        .map(|end| (&after[..end], &after[end + 1..]));
    Some((&rest[..start], reference))
}

/// The files `value`'s `${file:PATH}` references name, as [`expand`] would
/// read them (for a sandbox that must leave them readable).
pub fn files(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some((_, Some((reference, after)))) = next_reference(rest) {
        if let Some(("file", path)) = reference.split_once(':') {
            out.push(path);
        }
        rest = after;
    }
    out
}

/// Replaces `${env:NAME}` and `${file:PATH}` in `value` (a file's trailing
/// line break is dropped); the result must be visible ASCII, spaces and
/// tabs (a valid header value), at most [`MAX_SECRET`] bytes. Problems are
/// recorded under `at` and name the variable or file, never a value.
pub fn expand(value: &str, at: &str, problems: &mut Problems) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some((before, reference)) = next_reference(rest) {
        out.push_str(before);
        let Some((reference, after)) = reference else {
            problems.push(
                at,
                "an unclosed ${ (secrets are ${env:NAME} or ${file:PATH})",
            );
            return None;
        };
        match reference.split_once(':') {
            Some(("env", name)) => match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => {
                    problems.push(at, format!("environment variable {name:?} is not set"));
                    return None;
                }
            },
            Some(("file", path)) => {
                let too_big = std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_SECRET as u64);
                match std::fs::read_to_string(path) {
                    Ok(_) if too_big => {
                        problems.push(
                            at,
                            format!("secret file {path:?} is over {MAX_SECRET} bytes"),
                        );
                        return None;
                    }
                    Ok(v) => out.push_str(v.trim_end_matches(['\n', '\r'])),
                    Err(e) => {
                        problems.push(at, format!("cannot read secret file {path:?}: {e}"));
                        return None;
                    }
                }
            }
            _ => {
                problems.push(
                    at,
                    format!("${{{reference}}} is neither ${{env:NAME}} nor ${{file:PATH}}"),
                );
                return None;
            }
        }
        rest = after;
    }
    out.push_str(rest);
    if out.len() > MAX_SECRET {
        problems.push(at, format!("the value is over {MAX_SECRET} bytes"));
        return None;
    }
    // Visible ASCII and spaces/tabs only: no line breaks, no control bytes.
    if out.is_empty() || !out.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        problems.push(
            at,
            "the value (after reading its secrets) is empty or not a valid header value",
        );
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn files_names_the_file_references_only() {
        assert_eq!(
            files("a${file:/x/p}b${env:E}c${file:/y}${unclosed"),
            ["/x/p", "/y"]
        );
        assert!(files("plain").is_empty());
    }
}
