//! What a filter decided about a piece of content, and masking.

use std::sync::Arc;

use crate::FilterError;
use crate::abi::Match;
use crate::spec::Policy;

/// What to do with the content. `T` is the replacement content: a `String`
/// for text, the re-serialised bytes for a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Forward the content unchanged.
    Pass,
    /// Forward this instead: the content with every match masked.
    Masked(T),
    /// Refuse the content (HTTP 400): a word of `category` matched and the
    /// action is `block`. Never echo the word.
    Blocked {
        /// The matched word's category.
        category: Arc<str>,
    },
    /// Refuse the content (HTTP 503): the filter failed and its policy is
    /// `fail_closed`. The error is in [`Outcome::error`].
    Unavailable,
}

/// A verdict with what the gateway records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    /// What to do.
    pub verdict: Verdict<T>,
    /// The category of every match (`weir_filter_matches_total`).
    pub hits: Vec<Arc<str>>,
    /// The filter's failure under either policy (`weir_filter_errors_total`,
    /// label `kind` = [`FilterError::kind`]).
    pub error: Option<FilterError>,
}

impl<T> Outcome<T> {
    /// The outcome of a failed filter under `policy`.
    pub fn failed(policy: Policy, error: FilterError) -> Self {
        Self {
            verdict: match policy {
                Policy::FailOpen => Verdict::Pass,
                Policy::FailClosed => Verdict::Unavailable,
            },
            hits: Vec::new(),
            error: Some(error),
        }
    }
}

/// Replaces every character inside `matches` with `with`, character for
/// character. Matches must be sorted, non-overlapping and on character
/// boundaries (as [`crate::abi::decode_result`] guarantees); out-of-range
/// parts are ignored.
pub fn mask(text: &str, matches: &[Match], with: char) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for m in matches {
        let (Some(before), Some(inside)) = (text.get(at..m.start), text.get(m.start..m.end)) else {
            continue;
        };
        out.push_str(before);
        out.extend(std::iter::repeat_n(with, inside.chars().count()));
        at = m.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: usize, end: usize) -> Match {
        Match {
            start,
            end,
            category: 0,
        }
    }

    #[test]
    fn masks_char_for_char() {
        assert_eq!(mask("a坏词b", &[m(1, 7)], '*'), "a**b");
        assert_eq!(mask("abc", &[], '*'), "abc");
        assert_eq!(mask("abcdef", &[m(0, 1), m(3, 6)], '＊'), "＊bc＊＊＊");
        // out of range or off a boundary: ignored, never a panic
        assert_eq!(mask("ab坏", &[m(2, 3)], '*'), "ab坏");
        assert_eq!(mask("ab", &[m(1, 9)], '*'), "ab");
    }
}
