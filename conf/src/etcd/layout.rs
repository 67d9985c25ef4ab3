//! The documents under the prefix and their conversion to and from a
//! [`Config`]: which keys hold what is in `keys`, re-exported here.
//!
//! Values are JSON objects; a value that does not start with `{` is read as
//! TOML. `name` may be left out of a pool or route document (the key names
//! it); when present it must equal the key's name. Any other key under the
//! prefix is an error, so a typo cannot be silently ignored, and so is a
//! document larger than [`MAX_DOCUMENT`].
//!
//! [`gather`] reads every document it can and names each one it cannot (an
//! invalid key); [`assemble`] is the strict form that fails on any.

use std::collections::{BTreeMap, HashSet};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use super::keys::{
    AUTH, KeyKind, TIMEOUTS, filter_key, member_key, pool_key, rollback_key, route_key, tenant_key,
    weights_key,
};
use crate::access::types::{AuthConfig, TenantConfig};
use crate::error::{ConfigError, Problems, quoted};
use crate::filters::types::FilterConfig;
pub use crate::model::MAX_DOCUMENT;
use crate::model::{BackendConfig, Config, PoolConfig, RouteConfig, TimeoutsConfig, oversized};
use crate::resilience::types::RollbackRecord;

/// Documents under the prefix: relative key → raw value.
pub type Docs = BTreeMap<String, Vec<u8>>;

/// Reads a document: JSON when it starts with `{`, else TOML. A document
/// larger than [`MAX_DOCUMENT`] is refused unread.
pub fn parse_doc(raw: &[u8]) -> Result<Value, String> {
    if let Some(message) = oversized(raw.len()) {
        return Err(message);
    }
    let text = std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| format!("invalid TOML: {}", e.message()))?;
        serde_json::to_value(table).map_err(|e| format!("invalid TOML: {e}"))
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Fills in `name` from the key, or checks that it matches.
fn named(value: Value, name: &str) -> Result<Value, String> {
    let Value::Object(mut map) = value else {
        return Err("must be an object".to_owned());
    };
    match map.get("name") {
        None => {
            map.insert("name".to_owned(), Value::String(name.to_owned()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => return Err(format!("name {other} differs from the key's {name:?}")),
    }
    Ok(Value::Object(map))
}

/// Arm weights from a weights document.
pub fn parse_weights(raw: &[u8]) -> Result<BTreeMap<String, i64>, String> {
    let Value::Object(map) = parse_doc(raw)? else {
        return Err("must be an object of arm weights, e.g. {\"v1\":90,\"v2\":10}".to_owned());
    };
    if map.is_empty() {
        return Err("names no arm; delete the key to use the route's weights".to_owned());
    }
    let mut out = BTreeMap::new();
    let mut bad = Vec::new();
    for (arm, w) in map {
        match w.as_i64() {
            Some(w) if w >= 0 => {
                out.insert(arm, w);
            }
            Some(w) => bad.push(format!("{}: {w} must be >= 0", quoted(&arm))),
            None => bad.push(format!("{}: {w} is not an integer", quoted(&arm))),
        }
    }
    if bad.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "weights must be integers >= 0 ({})",
            bad.join(", ")
        ))
    }
}

/// What [`assemble`] includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// Registered members become backends of their pools (the gateway's view).
    Merge,
    /// Only the operator's documents (export, import checks).
    Ignore,
}

/// Like [`gather`], but fails when any document cannot be read.
pub fn assemble(
    base: &Config,
    docs: &Docs,
    prefix: &str,
    members: Members,
) -> Result<Config, ConfigError> {
    let (config, problems) = gather(base, docs, prefix, members);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { problems })
    }
}

/// Builds a whole [`Config`] from the documents under the prefix: `server`
/// and `source` from `base`, `timeouts` from the `timeouts` key (else from
/// `base`), pools and routes from their keys, with weights overrides applied
/// to the arms and registered members added to their pools.
///
/// A document that cannot be read on its own (unknown key, too large, not
/// JSON or TOML, wrong fields, a name that differs from its key's) is left
/// out, and its problem is returned named by its full key (`prefix` +
/// relative key); so is a weights override naming an unknown route or arm.
pub fn gather(base: &Config, docs: &Docs, prefix: &str, members: Members) -> (Config, Problems) {
    let mut problems = Problems::default();
    let mut config = Config {
        server: base.server.clone(),
        timeouts: base.timeouts.clone(),
        pools: Vec::new(),
        routes: Vec::new(),
        filters: Vec::new(),
        tenants: Vec::new(),
        auth: AuthConfig::default(),
        rollbacks: Vec::new(),
        limits: base.limits.clone(),
        source: base.source.clone(),
    };
    let mut weights: Vec<(&str, &str, BTreeMap<String, i64>)> = Vec::new();
    let mut registered: Vec<(&str, &str, BackendConfig)> = Vec::new();
    for (key, raw) in docs {
        let at = format!("{prefix}{key}");
        let Some(kind) = KeyKind::parse(key) else {
            problems.push(
                at,
                "unknown key: expected timeouts, auth, pools/<pool>, pools/<pool>/members/<addr>, \
                 routes/<route>, routes/<route>/weights, filters/<filter>, tenants/<tenant> \
                 or rollbacks/<route>/<arm>",
            );
            continue;
        };
        let parsed = match kind {
            KeyKind::Timeouts => parse_doc(raw)
                .and_then(typed::<TimeoutsConfig>)
                .map(|t| config.timeouts = t),
            KeyKind::Pool(name) => parse_doc(raw)
                .and_then(|v| named(v, name))
                .and_then(typed::<PoolConfig>)
                .map(|p| config.pools.push(p)),
            KeyKind::Route(name) => parse_doc(raw)
                .and_then(|v| named(v, name))
                .and_then(typed::<RouteConfig>)
                .map(|r| config.routes.push(r)),
            KeyKind::Filter(name) => parse_doc(raw)
                .and_then(|v| named(v, name))
                .and_then(typed::<FilterConfig>)
                .map(|f| config.filters.push(f)),
            KeyKind::Tenant(name) => parse_doc(raw)
                .and_then(|v| named(v, name))
                .and_then(typed::<TenantConfig>)
                .map(|t| config.tenants.push(t)),
            KeyKind::Auth => parse_doc(raw)
                .and_then(typed::<AuthConfig>)
                .map(|a| config.auth = a),
            KeyKind::Rollback { route, arm } => parse_doc(raw)
                .and_then(typed::<RollbackRecord>)
                .and_then(|rec| {
                    if rec.route == route && rec.arm == arm {
                        config.rollbacks.push(rec);
                        Ok(())
                    } else {
                        Err("route and arm differ from the key's".to_owned())
                    }
                }),
            KeyKind::Weights(route) => {
                parse_weights(raw).map(|w| weights.push((key.as_str(), route, w)))
            }
            KeyKind::Member { pool, addr } => match members {
                Members::Ignore => Ok(()),
                Members::Merge => parse_doc(raw)
                    .and_then(typed::<BackendConfig>)
                    .and_then(|b| {
                        if b.address == addr {
                            registered.push((pool, key.as_str(), b));
                            Ok(())
                        } else {
                            Err(format!("address {:?} differs from the key", b.address))
                        }
                    }),
            },
        };
        if let Err(message) = parsed {
            problems.push(at, message);
        }
    }
    for (key, route, w) in weights {
        apply_weights(&mut config, prefix, key, route, w, &mut problems);
    }
    for (pool, key, member) in registered {
        add_member(&mut config, pool, key, member);
    }
    if config.routes.is_empty() && problems.is_empty() {
        problems.push(
            prefix,
            "holds no routes; write a config with `weirctl config import FILE`",
        );
    }
    (config, problems)
}

fn apply_weights(
    config: &mut Config,
    prefix: &str,
    key: &str,
    route: &str,
    weights: BTreeMap<String, i64>,
    problems: &mut Problems,
) {
    let at = format!("{prefix}{key}");
    let Some(r) = config.routes.iter_mut().find(|r| r.name == route) else {
        problems.push(at, format!("no route named {route:?}"));
        return;
    };
    for (arm, w) in weights {
        match r.arms.iter_mut().find(|a| a.name == arm) {
            Some(a) => a.weight = w,
            None => problems.push(
                at.clone(),
                format!("route {route:?} has no arm named {arm:?}"),
            ),
        }
    }
}

/// Registered members join their pool unless a static backend already has
/// the address. A member of an unknown pool is left out (it may belong to a
/// pool that is being removed), and never makes the config invalid.
fn add_member(config: &mut Config, pool: &str, key: &str, member: BackendConfig) {
    match config.pools.iter_mut().find(|p| p.name == pool) {
        Some(p) => {
            if !p.backends.iter().any(|b| b.address == member.address) {
                p.backends.push(member);
            }
        }
        None => tracing::debug!(key, "registered member of an unknown pool, left out"),
    }
}

/// Splits a config into documents: `timeouts`, one per pool and one per
/// route (the inverse of [`assemble`] without weights keys or members).
pub fn explode(config: &Config) -> Result<Vec<(String, String)>, serde_json::Error> {
    let mut out =
        Vec::with_capacity(1 + config.pools.len() + config.routes.len() + config.filters.len());
    if config.timeouts != TimeoutsConfig::default() {
        out.push((
            TIMEOUTS.to_owned(),
            serde_json::to_string(&config.timeouts)?,
        ));
    }
    for p in &config.pools {
        out.push((pool_key(&p.name), serde_json::to_string(p)?));
    }
    for r in &config.routes {
        out.push((route_key(&r.name), serde_json::to_string(r)?));
    }
    for f in &config.filters {
        out.push((filter_key(&f.name), serde_json::to_string(f)?));
    }
    for t in &config.tenants {
        out.push((tenant_key(&t.name), serde_json::to_string(t)?));
    }
    if !config.auth.is_empty() {
        out.push((AUTH.to_owned(), serde_json::to_string(&config.auth)?));
    }
    for rec in &config.rollbacks {
        out.push((
            rollback_key(&rec.route, &rec.arm),
            serde_json::to_string(rec)?,
        ));
    }
    Ok(out)
}

/// Relative keys named twice by a config (duplicate pool or route names):
/// they cannot be stored one per key.
pub fn duplicate_keys(config: &Config) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut dup = Vec::new();
    for key in config
        .pools
        .iter()
        .map(|p| pool_key(&p.name))
        .chain(config.routes.iter().map(|r| route_key(&r.name)))
        .chain(config.filters.iter().map(|f| filter_key(&f.name)))
        .chain(config.tenants.iter().map(|t| tenant_key(&t.name)))
    {
        if !seen.insert(key.clone()) {
            dup.push(key);
        }
    }
    dup
}
