//! The etcd config source.
//!
//! - [`layout`]: the key layout under the prefix and its conversion to and
//!   from a [`crate::Config`] (see `docs/etcd.md`).
//! - [`watch`]: the [`Watcher`]: initial read at revision `R`, watch from
//!   `R + 1`, reconnect with backoff, full resync after compaction.
//! - [`cache`]: the last-good cache file.
//! - [`store`]: reads and validated writes for operators (`weirctl`):
//!   weights with compare-and-swap, import, export, check.
//! - [`register`]: backends registering themselves in a pool with a lease.
//!
//! The gateway turns each [`Update`] into a snapshot and publishes it; this
//! module knows nothing about Pingora.

pub mod cache;
pub mod layout;
pub mod register;
pub mod settings;
pub mod store;
pub mod watch;

pub use cache::{CacheError, CacheFile};
pub use etcd_client;
pub use layout::{Docs, KeyKind, Members, assemble};
pub use register::{RegisterFlags, Registration, RegistrationOptions};
pub use settings::EtcdSettings;
pub use store::{Store, StoreError};
pub use watch::{Update, WatchStatus, Watcher};

use crate::error::ConfigError;
use crate::model::Config;
use crate::snapshot::Snapshot;

/// A failed etcd operation.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The request failed (etcd unreachable, refused, ...).
    #[error("etcd {op}: {source}")]
    Request {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        source: Box<etcd_client::Error>,
    },
    /// The request took longer than the request timeout.
    #[error("etcd {0}: timed out")]
    Timeout(&'static str),
    /// The server closed the watch stream.
    #[error("etcd closed the watch stream")]
    Closed,
    /// The server cancelled the watch (for a reason other than compaction).
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
    /// The TLS files could not be used.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// A lease could not be kept.
    #[error("etcd lease: {0}")]
    Lease(String),
}

impl EtcdError {
    /// Wraps a client error.
    pub fn request(op: &'static str, source: etcd_client::Error) -> Self {
        Self::Request {
            op,
            source: Box::new(source),
        }
    }
}

/// Builds a validated snapshot from documents read under `prefix`, with
/// registered members merged into their pools (the gateway's view).
pub fn build(base: &Config, docs: &Docs, prefix: &str) -> Result<Snapshot, ConfigError> {
    Snapshot::build(assemble(base, docs, prefix, Members::Merge)?)
}

#[cfg(test)]
mod tests;
