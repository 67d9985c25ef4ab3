//! The etcd key layout: what each key under the prefix holds. Keys are
//! relative to the prefix (default `/weir/`):
//!
//! | key | value |
//! |---|---|
//! | `timeouts` | the `[timeouts]` table |
//! | `pools/<pool>` | one pool, the same fields as a `[[pools]]` entry |
//! | `pools/<pool>/members/<IP:PORT>` | a registered backend `{"address":…,"weight":…}`, kept alive by a lease |
//! | `routes/<route>` | one route, the same fields as a `[[routes]]` entry |
//! | `routes/<route>/weights` | `{"v1":90,"v2":10}`: arm weights overriding the route's |
//! | `filters/<filter>` | one content filter, the same fields as a `[[filters]]` entry |
//! | `tenants/<tenant>` | one tenant, the same fields as a `[[tenants]]` entry |
//! | `auth` | the `[auth]` table (JWT issuers) |
//! | `rollbacks/<route>/<arm>` | an arm rolled back by a gateway's canary check (a `[[rollbacks]]` record) |
//!
//! Values are JSON objects or TOML tables; `layout` reads and writes them.
//! Any other key under the prefix is an error.

/// The `timeouts` key.
pub const TIMEOUTS: &str = "timeouts";
/// The `auth` key.
pub const AUTH: &str = "auth";

/// What a key (relative to the prefix) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `timeouts`.
    Timeouts,
    /// `pools/<name>`.
    Pool(&'a str),
    /// `pools/<pool>/members/<addr>`.
    Member {
        /// The pool.
        pool: &'a str,
        /// The member's `IP:PORT`.
        addr: &'a str,
    },
    /// `routes/<name>`.
    Route(&'a str),
    /// `routes/<name>/weights`.
    Weights(&'a str),
    /// `filters/<name>`.
    Filter(&'a str),
    /// `tenants/<name>`.
    Tenant(&'a str),
    /// `auth`.
    Auth,
    /// `rollbacks/<route>/<arm>`.
    Rollback {
        /// The route.
        route: &'a str,
        /// The arm.
        arm: &'a str,
    },
}

impl<'a> KeyKind<'a> {
    /// Classifies a relative key; `None` for keys outside the layout.
    pub fn parse(key: &'a str) -> Option<Self> {
        let parts: Vec<&str> = key.split('/').collect();
        let named = |s: &str| !s.is_empty();
        match parts.as_slice() {
            ["timeouts"] => Some(Self::Timeouts),
            ["pools", p] if named(p) => Some(Self::Pool(p)),
            ["pools", p, "members", a] if named(p) && named(a) => {
                Some(Self::Member { pool: p, addr: a })
            }
            ["routes", r] if named(r) => Some(Self::Route(r)),
            ["routes", r, "weights"] if named(r) => Some(Self::Weights(r)),
            ["filters", f] if named(f) => Some(Self::Filter(f)),
            ["tenants", t] if named(t) => Some(Self::Tenant(t)),
            ["auth"] => Some(Self::Auth),
            ["rollbacks", r, a] if named(r) && named(a) => {
                Some(Self::Rollback { route: r, arm: a })
            }
            _ => None,
        }
    }

    /// Whether the key is operator config (everything but registered members).
    pub fn is_config(&self) -> bool {
        !matches!(self, Self::Member { .. })
    }
}

/// `pools/<pool>`.
pub fn pool_key(pool: &str) -> String {
    format!("pools/{pool}")
}
/// `pools/<pool>/members/<addr>`.
pub fn member_key(pool: &str, addr: &str) -> String {
    format!("pools/{pool}/members/{addr}")
}
/// `routes/<route>`.
pub fn route_key(route: &str) -> String {
    format!("routes/{route}")
}
/// `filters/<filter>`.
pub fn filter_key(filter: &str) -> String {
    format!("filters/{filter}")
}
/// `tenants/<tenant>`.
pub fn tenant_key(tenant: &str) -> String {
    format!("tenants/{tenant}")
}
/// `rollbacks/<route>/<arm>`.
pub fn rollback_key(route: &str, arm: &str) -> String {
    format!("rollbacks/{route}/{arm}")
}
/// `routes/<route>/weights`.
pub fn weights_key(route: &str) -> String {
    format!("routes/{route}/weights")
}
