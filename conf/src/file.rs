//! The file source: a TOML document, read from a file or embedded, parsed
//! into a [`Config`] and validated into a [`Snapshot`].

use std::path::Path;

use crate::error::{ConfigError, Problems};
use crate::model::{Config, oversized};
use crate::snapshot::Snapshot;

/// The demo config compiled into the binary (`conf/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../demo.toml");

/// Parses a TOML document; `origin` names it in error messages. A document
/// larger than [`crate::model::MAX_DOCUMENT`] is refused unread.
pub fn parse_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
    if let Some(message) = oversized(text.len()) {
        return Err(ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        });
    }
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Reads, parses and validates a TOML file that serves on its own.
///
/// A file without routes is refused: every request would get 404. (A file
/// whose routes come from etcd has `[source.etcd]` or is used with
/// `--etcd`; the gateway then validates only its `[server]` part, and so
/// does this function when the file names `[source.etcd]`.)
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: shown.clone(),
        source,
    })?;
    let config = parse_toml(&text, &shown)?;
    let from_etcd = config.source.as_ref().is_some_and(|s| s.etcd.is_some());
    if config.routes.is_empty() && !from_etcd {
        let mut problems = match Snapshot::build(config) {
            Ok(_) => Problems::default(),
            Err(ConfigError::Invalid { problems }) => problems,
            Err(e) => return Err(e),
        };
        problems.push(
            "routes",
            "the config holds no routes: every request would get 404 no_route; \
             add a [[routes]] table (or take routes from etcd with [source.etcd] or --etcd)",
        );
        return Err(ConfigError::Invalid { problems });
    }
    Snapshot::build(config)
}

/// Parses and validates the embedded demo config.
pub fn demo() -> Result<Snapshot, ConfigError> {
    Snapshot::build(parse_toml(DEMO_CONFIG, "embedded demo config")?)
}
