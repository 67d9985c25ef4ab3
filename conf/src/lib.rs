//! Weir's config model.
//!
//! - [`model`]: the serde types of the TOML document (unknown fields rejected).
//! - [`Snapshot`]: the validated runtime form; [`Snapshot::build`] reports every
//!   problem with its path (`routes[chat].arms[v2].pool: no pool named "x"`).
//! - [`parse_toml`] / [`load_file`]: the file source. [`DEMO_CONFIG`] is the
//!   embedded default used when no file is given.
//! - [`etcd`]: the etcd source (key layout, watch and resync, last-good
//!   cache), operator writes for `weirctl`, and backend registration.
//!
//! Nothing here knows about Pingora: the gateway turns a `Snapshot` into its
//! own routing state.

pub mod access;
pub mod error;
pub mod etcd;
pub mod filters;
pub mod matching;
pub mod model;
pub mod resilience;
pub mod snapshot;

pub use error::{ConfigError, Problem, Problems};
pub use model::Config;
pub use snapshot::{Arm, Backend, HealthCheck, Pool, Route, Server, Snapshot, Timeouts, Tracing};

use std::path::Path;

/// The demo config compiled into the binary (`conf/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../demo.toml");

/// Parses a TOML document; `origin` names it in error messages.
pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Reads, parses and validates a TOML file.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Snapshot::build(parse_toml(&text, &path.display().to_string())?)
}

/// Parses and validates the embedded demo config.
pub fn demo() -> Result<Snapshot, ConfigError> {
    Snapshot::build(parse_toml(DEMO_CONFIG, "embedded demo config")?)
}

#[cfg(test)]
mod tests;
