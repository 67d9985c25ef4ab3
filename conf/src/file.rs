//! The file source: a TOML document, read from a file or embedded, parsed
//! into a [`Config`] and validated into a [`Snapshot`].

use std::path::Path;

use crate::error::ConfigError;
use crate::model::Config;
use crate::snapshot::Snapshot;

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
