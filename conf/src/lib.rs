//! Weir's config model: the file types, their validation into the runtime
//! [`Snapshot`], and the config sources (a TOML file, etcd), plus the etcd
//! registration of backends.
//!
//! Nothing here knows about Pingora: the gateway turns a `Snapshot` into its
//! own routing state.
//!
//! # Layers
//!
//! Read from the bottom up. A file imports only from the layers below its
//! own and from the files listed above it in its own layer; nothing
//! imports upwards, so there is no import cycle
//! (`scripts/check-module-cycles.py conf/src` checks it). The facades
//! ([`access`], [`filters`], [`resilience`], [`snapshot`], [`etcd`] and
//! this root) re-export their files' public items for other crates; inside
//! the crate, files import from the file that defines an item.
//!
//! | layer | module | owns | may import |
//! |---|---|---|---|
//! | 0 names, errors | [`error`] | [`Problem`], [`Problems`], [`ConfigError`], [`error::quoted`] | nothing |
//! | 0 | [`secrets`] | `${env:NAME}`/`${file:PATH}` in values: [`secrets::expand`] | `error` |
//! | 0 | [`sandbox`] | Landlock and seccomp for both binaries (feature `sandbox`) | nothing |
//! | 0 | [`otlp`] | [`otlp::Exporter`]: the OTLP span exporter (feature `otlp`) | nothing |
//! | 0 | `names` | the rule for names: `is_name`, `check_name`, `entry_path` | `error` |
//! | 1 file types | `access::types` | `[[tenants]]`, `[auth]`, `[limits]`, [`access::AuthMode`] | nothing |
//! | 1 | `filters::types` | `[[filters]]`, a route's `filters` table | nothing |
//! | 1 | `resilience::types` | `breaker`, `retry`, `rollback`, `[[rollbacks]]` | nothing |
//! | 1 | [`model`] | [`Config`]: `[server]`, `[timeouts]`, `[[pools]]`, `[[routes]]`, `[source.etcd]`; [`model::MAX_DOCUMENT`] | the `types` above |
//! | 1 | [`etcd::keys`] | the key layout under the etcd prefix | nothing |
//! | 2 validation | `access::keys` | [`access::JwtKeys`] and the one JWT key decoder | nothing |
//! | 2 | `access::jwt` | [`access::JwtIssuer`]: `[[auth.jwt]]` checked, key files read | layers 0-1, `access::keys` |
//! | 2 | `access::check` | [`access::Access`]: tenants, API key digests, limits, route access | layers 0-1, `access::jwt` |
//! | 2 | `filters::check` | [`filters::FilterDef`], [`filters::RouteFilters`]; reads filter files | layers 0-1 |
//! | 2 | `resilience::check` | [`resilience::Breaker`], [`resilience::Retry`], [`resilience::Rollback`] | layers 0-1 |
//! | 2 | [`matching`] | [`matching::Matcher`], [`matching::Request`]: what a route matches besides host and prefix | layers 0-1 |
//! | 2 | [`etcd::settings`] | [`etcd::EtcdSettings`]: `[source.etcd]` and the registration flags, checked | layers 0-1 |
//! | 3 snapshot | `snapshot::values` | addresses, millisecond durations, header names, length limits | layers 0-2 |
//! | 3 | `snapshot::timeouts` | [`Timeouts`] and the built-in defaults | layers 0-2, `values` |
//! | 3 | `snapshot::pool` | [`Pool`], [`Backend`], [`HealthCheck`] | layers 0-2, `values` |
//! | 3 | `snapshot::server` | [`Server`], [`snapshot::TlsListener`], [`Tracing`] | layers 0-2, `values` |
//! | 3 | `snapshot::route` | [`Route`] (and what it takes), [`Arm`], the checks across routes | layers 0-2, `values`, `timeouts`, `pool` |
//! | 3 | [`snapshot`] | [`Snapshot`], [`Snapshot::build`], [`Snapshot::route_for`] | layers 0-2, its files |
//! | 3 etcd client | `etcd::error`, [`etcd::backoff`], `etcd::client` | [`etcd::EtcdError`], the reconnect delay, connecting and timed requests | layers 0-2 |
//! | 3 | [`etcd::register`] | [`etcd::Registration`]: a backend's member key kept alive with a lease | layers 0-2, the etcd files above |
//! | 4 sources | `file` | [`DEMO_CONFIG`], [`parse_toml`], [`load_file`], [`demo`] | layers 0-3 |
//! | 4 | [`etcd::layout`] | [`etcd::Docs`]: documents under the prefix to and from a [`Config`] | layers 0-1, `etcd::keys` |
//! | 4 | [`etcd::cache`] | [`etcd::CacheFile`]: the last-good cache | `etcd::layout` |
//! | 4 | [`etcd::watch`] | [`etcd::Watcher`]: read, watch, reconnect, resync | layers 0-3, `etcd::layout` |
//! | 4 | `etcd::snapshot` | [`etcd::build`]: documents to a validated [`Snapshot`], problems named by key; [`etcd::invalid_keys`] | layers 0-3, `etcd::layout` |
//! | 4 | [`etcd::store`] | [`etcd::Store`]: validated reads and writes for `weirctl` | layers 0-3, the etcd files above |
//! | 4 | `etcd::store::import` | [`etcd::Store::import`], [`etcd::Prune`] | layers 0-3, the etcd files above, `etcd::store` |
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
//! - `sandbox`: the process sandbox (Landlock, seccomp) both binaries put
//!   themselves in.
//! - `otlp`: the OTLP/gRPC span exporter ([`otlp::Exporter`]) both
//!   binaries start from their tracing settings.
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
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod resilience;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod secrets;

#[cfg(feature = "validate")]
mod file;
#[cfg(feature = "validate")]
pub mod matching;
#[cfg(feature = "validate")]
pub mod paths;
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
