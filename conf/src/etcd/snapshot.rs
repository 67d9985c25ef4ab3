//! The gateway's view of the documents under the prefix: assembled with
//! registered members merged into their pools, and validated.

use super::layout::{Docs, Members, assemble};
use crate::error::ConfigError;
use crate::model::Config;
use crate::snapshot::Snapshot;

/// Builds a validated snapshot from documents read under `prefix`, with
/// registered members merged into their pools (the gateway's view).
pub fn build(base: &Config, docs: &Docs, prefix: &str) -> Result<Snapshot, ConfigError> {
    Snapshot::build(assemble(base, docs, prefix, Members::Merge)?)
}
