//! The validated runtime form of a config.
//!
//! [`Snapshot::build`] checks a [`Config`] completely, collecting every
//! problem with its path, and only then produces a `Snapshot` whose values are
//! typed (socket addresses, durations, indices instead of names), so the
//! request path never re-checks or looks anything up by string.
//!
//! The parts, each with its types and their validation:
//! - `server`: [`Server`] from `[server]` (listeners, TLS, tracing).
//! - `pool`: [`Pool`] from `[[pools]]` (backends, health checks, breakers).
//! - `upstream`: a pool's TLS, the headers it sets or removes and the
//!   secrets they read ([`UpstreamTls`], [`PoolHeaders`], [`Secret`]).
//! - `timeouts`: a route's effective [`Timeouts`].
//! - `route`: [`Route`] from `[[routes]]` (matching, arms, policies), and the
//!   checks across routes (overlaps, gRPC pools).
//! - `values`: addresses, durations and header names shared by the above.
//!
//! This module assembles them, with the filters, access settings and the
//! `[source.etcd]` settings validated by their own modules.

mod pool;
mod route;
mod server;
mod timeouts;
mod upstream;
mod values;

use std::collections::HashMap;

pub use pool::{Backend, HealthCheck, MAX_BACKEND_WEIGHT, Pool};
pub use route::{Arm, DEFAULT_MAX_BODY, MAX_ARM_WEIGHT, MAX_HOST, MAX_PREFIX, Route};
pub use server::{AdminToken, Scopes, Server, TlsListener, Tracing};
pub use timeouts::{DEFAULT_CONNECT, DEFAULT_READ, DEFAULT_WRITE, Timeouts};
pub use upstream::{PoolHeaders, Secret, UpstreamTls};
pub use values::MAX_HEADER_NAME;

use crate::access::check::{Access, check_access, check_limits};
use crate::error::{ConfigError, Problems};
use crate::etcd::settings::EtcdSettings;
use crate::filters::check::{FilterDef, check_filters};
use crate::matching::Request;
use crate::model::Config;
use pool::check_pools;
use route::{check_grpc_pools, check_overlaps, check_routes};
use server::check_server;
use timeouts::check_timeouts;

/// A validated config, ready for the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The document it was built from (for `/admin` and change detection).
    pub source: Config,
    /// Listener settings.
    pub server: Server,
    /// Pools, in document order; arms refer to them by index.
    pub pools: Vec<Pool>,
    /// Routes in match order: host-specific before any-host, then longest prefix first.
    pub routes: Vec<Route>,
    /// Content filter definitions; routes refer to them by index.
    pub filters: Vec<FilterDef>,
    /// Tenants, API keys and JWT issuers.
    pub access: Access,
}

impl Snapshot {
    /// Validates `config` and builds the runtime form, or returns every problem.
    pub fn build(config: Config) -> Result<Snapshot, ConfigError> {
        let mut problems = Problems::default();
        let server = check_server(&config, &mut problems);
        let pools = check_pools(&config.pools, &mut problems);
        let defaults = check_timeouts(
            &config.timeouts,
            "timeouts",
            Timeouts {
                connect: DEFAULT_CONNECT,
                read: DEFAULT_READ,
                write: DEFAULT_WRITE,
                total: None,
            },
            &mut problems,
        );
        let pool_index: HashMap<&str, usize> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let filters = check_filters(&config.filters, &mut problems);
        let filter_index: HashMap<&str, usize> = config
            .filters
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        let mut access = check_access(&config.tenants, &config.auth, &mut problems);
        access.redis = check_limits(&config.limits, &mut problems);
        let mut routes = check_routes(
            &config.routes,
            &pool_index,
            &filter_index,
            &access,
            defaults,
            &mut problems,
        );
        if let Some(etcd) = config.source.as_ref().and_then(|s| s.etcd.as_ref()) {
            EtcdSettings::from_config(etcd, "source.etcd", &mut problems);
        }
        check_overlaps(&routes, &mut problems);
        check_grpc_pools(&config.routes, &pool_index, &pools, &mut problems);
        apply_rollbacks(&config, &mut routes);
        match (server, problems.is_empty()) {
            (Some(server), true) => {
                sort_routes(&mut routes);
                Ok(Snapshot {
                    source: config,
                    server,
                    pools,
                    routes,
                    filters,
                    access,
                })
            }
            _ => Err(ConfigError::Invalid { problems }),
        }
    }

    /// The first route (in match order) that takes the request.
    pub fn route_for(&self, req: &Request<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.takes(req))
    }

    /// Index of the route called `name`.
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }
}

/// Marks the arms that `[[rollbacks]]` records name. A record for an arm
/// that no longer exists, or for a route's fallback arm, is ignored: records
/// are state written by gateways, and must not make a config invalid.
fn apply_rollbacks(config: &Config, routes: &mut [Route]) {
    for rec in &config.rollbacks {
        let Some(route) = routes.iter_mut().find(|r| r.name == rec.route) else {
            continue;
        };
        let fallback = route.fallback;
        if let Some(i) = route.arm_index(&rec.arm)
            && Some(i) != fallback
        {
            route.arms[i].rolled_back = true;
        }
    }
}

/// Host-specific routes first, then longer prefixes, then gRPC-only and
/// model-specific routes before the general ones, then by name for a stable order.
fn sort_routes(routes: &mut [Route]) {
    routes.sort_by(|a, b| {
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.prefix.len().cmp(&a.prefix.len()))
            .then(b.matcher.grpc.cmp(&a.matcher.grpc))
            .then(b.needs_model().cmp(&a.needs_model()))
            .then(a.name.cmp(&b.name))
    });
}
