//! Errors of the config crate.

use std::fmt;

/// One problem found while validating a config, with the path of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the problem is, e.g. `routes[chat].arms[v2].pool`.
    pub path: String,
    /// What is wrong, e.g. `no pool named "engine-v3"`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem of one config, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Longest part of a value that a problem message repeats.
const QUOTED: usize = 64;

/// `value` quoted for a problem message; a long value is cut after
/// [`QUOTED`] bytes and its length given, so a megabyte value never ends up
/// in a log line whole.
pub fn quoted(value: &str) -> String {
    if value.len() <= QUOTED {
        return format!("{value:?}");
    }
    let cut = value.floor_char_boundary(QUOTED);
    format!("{:?}… ({} bytes)", &value[..cut], value.len())
}

/// Why a config could not be turned into a [`crate::Snapshot`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The document is not valid TOML or does not match the schema.
    #[error("{origin}: {message}")]
    Parse {
        /// Where the document came from (a path or a key).
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The document parsed but its values are inconsistent.
    #[error("{} problem(s):\n{problems}", problems.len())]
    Invalid {
        /// Every problem found.
        problems: Problems,
    },
}
