//! Weir's config model: the file types, their validation into the runtime
//! [`Snapshot`], and the config sources (a TOML file, etcd), plus the etcd
//! registration of backends.
//!
//! Nothing here knows about Pingora: the gateway turns a `Snapshot` into its
//! own routing state.
//!
//! # Layers
//!
//! Each module imports only from the layers below it (check with
//! `scripts/check-module-cycles.py conf/src`):
//!
//! | layer | module | owns | may import |
//! |---|---|---|---|
//! | 0 | [`error`] | [`Problem`], [`Problems`], [`ConfigError`] | nothing |
//! | 0 | `names` | the rule for names (`check_name`, `is_name`) | `error` |
//! | 1 | [`model`] | the TOML document: [`Config`], server, pools, routes, `[source.etcd]` | the concerns' `types` |
//! | 1 | [`access`]`::types`, [`filters`]`::types`, [`resilience`]`::types` | each concern's serde file types | `error` |
//! | 1 | [`etcd`]`::keys`, [`etcd::settings`] | the etcd key layout; validated connection settings | `error`, `names`, `model` |
//! | 2 | `access::{check, jwt}`, `filters::check`, `resilience::check` | each concern's validation and runtime types | layers 0-1 |
//! | 2 | [`matching`] | what a route matches besides host and prefix ([`matching::Matcher`], [`matching::Request`]) | layers 0-1 |
//! | 3 | [`snapshot`] | the runtime [`Snapshot`]: server, pools, routes, and [`Snapshot::build`] | layers 0-2 |
//! | 2 | `etcd::{error, client}`, [`etcd::register`] | etcd requests; backend registration | layers 0-1 |
//! | 4 | `file` | the file source: [`parse_toml`], [`load_file`], [`demo`] | layers 0-3 |
//! | 4 | [`etcd::layout`], [`etcd::cache`], [`etcd::watch`], [`etcd::store`] | the etcd source and operator writes | layers 0-3, lower etcd files |
//!
//! The concern modules ([`access`], [`filters`], [`resilience`]) and
//! [`etcd`] are facades: they re-export their files' public items and hold
//! no code of their own.
//!
//! # Features
//!
//! - `validate` (default): validation, the [`Snapshot`] and the file source
//!   (pulls `jsonwebtoken`, `toml`, `hex`).
//! - `register`: the etcd client and backend registration
//!   ([`etcd::Registration`]), without the validator: what `weir-engine`
//!   uses.
//! - `etcd` (default; `validate` + `register`): the etcd config source and
//!   the operator store (`weirctl`).
//!
//! Without any feature the crate holds the file types and the validated
//! etcd connection settings only.

pub mod access;
pub mod error;
pub mod etcd;
pub mod filters;
pub mod model;
#[cfg(any(feature = "validate", feature = "register"))]
pub(crate) mod names;
pub mod resilience;

#[cfg(feature = "validate")]
mod file;
#[cfg(feature = "validate")]
pub mod matching;
#[cfg(feature = "validate")]
pub mod snapshot;

pub use error::{ConfigError, Problem, Problems};
#[cfg(feature = "validate")]
pub use file::{DEMO_CONFIG, demo, load_file, parse_toml};
pub use model::Config;
#[cfg(feature = "validate")]
pub use snapshot::{Arm, Backend, HealthCheck, Pool, Route, Server, Snapshot, Timeouts, Tracing};

#[cfg(all(test, feature = "validate"))]
mod tests;
