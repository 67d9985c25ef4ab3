//! The etcd config source, operator writes and backend registration.
//!
//! From the bottom up (each file imports only from the ones above it in
//! this list, and from the lower layers of the crate):
//! - [`settings`]: validated connection settings ([`EtcdSettings`]), from
//!   `[source.etcd]` or from the registration flags.
//! - [`keys`]: the key layout under the prefix (see `docs/etcd.md`; feature
//!   `register`).
//! - `error`, `client`, [`backoff`]: [`EtcdError`]; connecting and timed
//!   requests; the reconnect delay of the watch and of registrations
//!   (feature `register`).
//! - [`register`]: backends registering themselves in a pool with a lease
//!   (feature `register`).
//! - [`layout`]: the documents under the prefix to and from a
//!   [`crate::Config`] (feature `etcd`).
//! - [`cache`]: the last-good cache file (feature `etcd`).
//! - [`watch`]: the [`Watcher`]: initial read at revision `R`, watch from
//!   `R + 1`, reconnect with backoff, full resync after compaction (feature
//!   `etcd`).
//! - `snapshot`: [`build`], documents to a validated snapshot, every problem
//!   named by its key (the invalid keys, [`invalid_keys`]) (feature `etcd`).
//! - [`audit`]: the hash-chained audit log of operator changes, beside
//!   the config prefix, and its verification (feature `etcd`).
//! - [`fleet`]: the status each gateway replica keeps under a lease, beside
//!   the config prefix (feature `etcd`).
//! - [`store`]: reads and validated writes for operators (`weirctl`):
//!   weights with compare-and-swap, import (`store::import`), export, check
//!   (feature `etcd`).
//!
//! The gateway turns each [`Update`] into a snapshot and publishes it; this
//! module knows nothing about Pingora.

pub mod settings;

#[cfg(feature = "register")]
pub mod backoff;
#[cfg(feature = "register")]
mod client;
#[cfg(feature = "register")]
mod error;
#[cfg(feature = "register")]
pub mod keys;
#[cfg(feature = "register")]
pub mod register;

#[cfg(feature = "etcd")]
pub mod audit;
#[cfg(feature = "etcd")]
pub mod cache;
#[cfg(feature = "etcd")]
pub mod fleet;
#[cfg(feature = "etcd")]
pub mod layout;
#[cfg(feature = "etcd")]
mod snapshot;
#[cfg(feature = "etcd")]
pub mod store;
#[cfg(feature = "etcd")]
pub mod watch;

pub use settings::EtcdSettings;

#[cfg(feature = "register")]
pub use error::EtcdError;
#[cfg(feature = "register")]
pub use etcd_client;
#[cfg(feature = "register")]
pub use keys::KeyKind;
#[cfg(feature = "register")]
pub use register::{Presence, RegisterFlags, Registration, RegistrationOptions};

#[cfg(feature = "etcd")]
pub use cache::{CacheError, CacheFile};
#[cfg(feature = "etcd")]
pub use layout::{Docs, Members, assemble, gather};
#[cfg(feature = "etcd")]
pub use snapshot::{build, invalid_keys, summary};
#[cfg(feature = "etcd")]
pub use store::audited::{AuditLog, WeightsChange, Write, Written};
#[cfg(feature = "etcd")]
pub use store::import::{ImportReport, Prune};
#[cfg(feature = "etcd")]
pub use store::{Exported, Store, StoreError};
#[cfg(feature = "etcd")]
pub use watch::{Update, WatchStatus, Watcher};

#[cfg(all(test, feature = "etcd"))]
mod tests;
