//! The validated routes: what each takes (host, prefix, gRPC service or
//! method, models), its arms, timeouts, retry and rollback policy, filters
//! and access.

use std::collections::{HashMap, HashSet};

use super::pool::Pool;
use super::timeouts::{Timeouts, check_timeouts};
use super::values::{check_header, check_len};
use crate::access::check::{Access, check_route_access};
use crate::access::types::AuthMode;
use crate::error::{Problems, quoted};
use crate::filters::check::{RouteFilters, check_route_filters};
use crate::matching::{Matcher, Request, check_matcher, check_model_name};
use crate::model::{Protocol, RouteConfig};
use crate::names::{check_name, entry_path};
use crate::resilience::check::{Retry, Rollback, check_retry, check_rollback};

/// Largest weight an arm may have.
pub const MAX_ARM_WEIGHT: i64 = 1_000_000;
/// Default largest request body of a route.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;
/// Longest path prefix (and gRPC service or method) of a route, bytes.
pub const MAX_PREFIX: usize = 1024;
/// Longest host name (DNS allows 253).
pub const MAX_HOST: usize = 253;
/// Largest `max_body_bytes` of a route.
const MAX_BODY: i64 = 1 << 30;

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Route name.
    pub name: String,
    /// Path prefix.
    pub prefix: String,
    /// Host to match (lower case, no port), if any.
    pub host: Option<String>,
    /// gRPC service or method, and models.
    pub matcher: Matcher,
    /// A/B header name (lower case).
    pub ab_header: String,
    /// Sticky header name (lower case), if any.
    pub sticky_header: Option<String>,
    /// Index into `arms` of the fallback arm, if any.
    pub fallback: Option<usize>,
    /// Effective timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: Retry,
    /// Canary rollback policy, if any.
    pub rollback: Option<Rollback>,
    /// The arms.
    pub arms: Vec<Arm>,
    /// Content filters.
    pub filters: RouteFilters,
    /// Whether callers must authenticate.
    pub auth: AuthMode,
    /// Tenants allowed (indices into `Snapshot::access.tenants`; empty = all).
    pub tenants: Vec<usize>,
    /// Largest request body.
    pub max_body: usize,
}

/// A validated arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    /// Arm name.
    pub name: String,
    /// Index into [`crate::Snapshot::pools`].
    pub pool: usize,
    /// Weight (0 = reachable only through the A/B header).
    pub weight: u32,
    /// Rolled back (a `[[rollbacks]]` record names it): no weighted or
    /// sticky traffic, whatever its weight.
    pub rolled_back: bool,
    /// The model name the arm's upstream knows (see
    /// [`crate::model::ArmConfig::model`]).
    pub model: Option<String>,
}

impl Route {
    /// Index of the arm called `name`.
    pub fn arm_index(&self, name: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.name == name)
    }

    /// Whether the route takes the request by host, path and protocol,
    /// whatever its model.
    pub fn matches(&self, host: Option<&str>, path: &str, grpc: bool) -> bool {
        let path_ok = if self.matcher.exact {
            path == self.prefix
        } else {
            path.starts_with(self.prefix.as_str())
        };
        if !path_ok || (self.matcher.grpc && !grpc) {
            return false;
        }
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        }
    }

    /// Whether the route names the models it serves (so the request's
    /// model must be known to choose it).
    pub fn needs_model(&self) -> bool {
        !self.matcher.models.is_empty()
    }

    /// Whether the route serves `model`: `tiny-lm` in `models` serves
    /// `tiny-lm` and every version of it (`tiny-lm:2`); an arm's `model`
    /// is served by its exact name.
    pub fn serves_model(&self, model: Option<&str>) -> bool {
        if self.matcher.models.is_empty() {
            return true;
        }
        let Some(model) = model else {
            return false;
        };
        self.arm_for_model(model).is_some()
            || self.matcher.models.iter().any(|m| {
                model == m
                    || model
                        .strip_prefix(m.as_str())
                        .is_some_and(|rest| rest.starts_with(':'))
            })
    }

    /// The arm whose `model` is exactly `model`: a request naming an
    /// arm's upstream model (a pinned version) goes to that arm.
    pub fn arm_for_model(&self, model: &str) -> Option<usize> {
        self.arms
            .iter()
            .position(|a| a.model.as_deref() == Some(model))
    }

    /// Whether an arm renames the model (so OpenAI bodies are read and
    /// rewritten).
    pub fn renames_model(&self) -> bool {
        self.arms.iter().any(|a| a.model.is_some())
    }

    /// The model names the route serves, as a catalogue lists them: its
    /// `models`, then its arms' `model` names, each once.
    pub fn catalogue(&self) -> impl Iterator<Item = &str> {
        let arms = self.arms.iter().filter_map(|a| a.model.as_deref());
        let mut seen = Vec::new();
        self.matcher
            .models
            .iter()
            .map(String::as_str)
            .chain(arms)
            .filter(move |m| {
                let new = !seen.contains(m);
                if new {
                    seen.push(*m);
                }
                new
            })
    }

    /// Whether the route takes the whole request.
    pub fn takes(&self, req: &Request<'_>) -> bool {
        self.matches(req.host, req.path, req.grpc) && self.serves_model(req.model)
    }
}

pub(super) fn check_routes(
    routes: &[RouteConfig],
    pool_index: &HashMap<&str, usize>,
    filter_index: &HashMap<&str, usize>,
    access: &Access,
    defaults: Timeouts,
    problems: &mut Problems,
) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let at = entry_path("routes", i, &r.name);
        check_name(&r.name, &format!("{at}.name"), problems);
        if !names.insert(r.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate route name");
        }
        if !r.prefix.starts_with('/') {
            problems.push(format!("{at}.prefix"), "must start with '/'");
        }
        check_len(&r.prefix, MAX_PREFIX, &format!("{at}.prefix"), problems);
        if let Some(g) = &r.grpc {
            check_len(g, MAX_PREFIX, &format!("{at}.grpc"), problems);
        }
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host
            && check_len(h, MAX_HOST, &format!("{at}.host"), problems)
            && (h.is_empty() || h.contains(':') || h.contains('/'))
        {
            problems.push(
                format!("{at}.host"),
                "must be a host name without port or path",
            );
        }
        let (matcher, prefix) = check_matcher(r, &at, problems);
        let ab_header = check_header(&r.ab_header, &format!("{at}.ab_header"), problems);
        let sticky_header = r
            .sticky_header
            .as_ref()
            .map(|h| check_header(h, &format!("{at}.sticky_header"), problems));
        let timeouts = check_timeouts(&r.timeouts, &format!("{at}.timeouts"), defaults, problems);
        let arms = check_arms(r, &at, pool_index, problems);
        let fallback = match &r.fallback {
            None => None,
            Some(f) => {
                let idx = arms.iter().position(|a| a.name == *f);
                if idx.is_none() {
                    problems.push(
                        format!("{at}.fallback"),
                        format!("no arm named {}", quoted(f)),
                    );
                }
                idx
            }
        };
        let filters = check_route_filters(&r.filters, &at, filter_index, problems);
        let retry = check_retry(&r.retry, &at, problems);
        let rollback = r.rollback.as_ref().map(|rb| {
            if fallback.is_none() {
                problems.push(
                    format!("{at}.rollback"),
                    "needs a fallback arm to compare with and roll back to",
                );
            }
            check_rollback(rb, &at, problems)
        });
        let tenants = check_route_access(r.auth, &r.tenants, &at, access, problems);
        let max_body = match r.max_body_bytes {
            None => DEFAULT_MAX_BODY,
            Some(n) if (1..=MAX_BODY).contains(&n) => {
                usize::try_from(n).unwrap_or(DEFAULT_MAX_BODY)
            }
            Some(n) => {
                problems.push(
                    format!("{at}.max_body_bytes"),
                    format!("{n} must be between 1 and {MAX_BODY}"),
                );
                DEFAULT_MAX_BODY
            }
        };
        out.push(Route {
            retry,
            rollback,
            auth: r.auth,
            tenants,
            max_body,
            filters,
            name: r.name.clone(),
            prefix,
            host,
            matcher,
            ab_header,
            sticky_header,
            fallback,
            timeouts,
            arms,
        });
    }
    out
}

fn check_arms(
    r: &RouteConfig,
    at: &str,
    pool_index: &HashMap<&str, usize>,
    problems: &mut Problems,
) -> Vec<Arm> {
    if r.arms.is_empty() {
        problems.push(format!("{at}.arms"), "needs at least one arm");
    }
    let mut seen = HashSet::new();
    let mut total: i64 = 0;
    let mut arms = Vec::with_capacity(r.arms.len());
    for (j, a) in r.arms.iter().enumerate() {
        let aat = entry_path(&format!("{at}.arms"), j, &a.name);
        check_name(&a.name, &format!("{aat}.name"), problems);
        if !seen.insert(a.name.as_str()) {
            problems.push(format!("{aat}.name"), "duplicate arm name");
        }
        let pool = pool_index.get(a.pool.as_str()).copied();
        if pool.is_none() {
            problems.push(
                format!("{aat}.pool"),
                format!("no pool named {}", quoted(&a.pool)),
            );
        }
        if a.weight < 0 {
            problems.push(format!("{aat}.weight"), "must be >= 0");
        } else if a.weight > MAX_ARM_WEIGHT {
            problems.push(
                format!("{aat}.weight"),
                format!("must be <= {MAX_ARM_WEIGHT}"),
            );
        }
        let weight = a.weight.clamp(0, MAX_ARM_WEIGHT);
        total += weight;
        if let Some(m) = &a.model {
            check_model_name(m, &format!("{aat}.model"), problems);
            if r.grpc.is_some() {
                problems.push(
                    format!("{aat}.model"),
                    "gRPC routes cannot rename models (they are inside the protobuf body)",
                );
            }
            if r.arms[..j].iter().any(|b| b.model.as_ref() == Some(m)) {
                problems.push(
                    format!("{aat}.model"),
                    format!(
                        "{} is another arm's model: a request naming it must pick one arm",
                        quoted(m)
                    ),
                );
            }
        }
        arms.push(Arm {
            name: a.name.clone(),
            pool: pool.unwrap_or(0),
            weight: u32::try_from(weight).unwrap_or(0),
            rolled_back: false,
            model: a.model.clone(),
        });
    }
    if !r.arms.is_empty() && total == 0 {
        problems.push(
            format!("{at}.arms"),
            "at least one arm needs a weight > 0 (weight-0 arms are reachable only by header)",
        );
    }
    arms
}

/// Reports routes that would take the same requests: the same host, prefix
/// and protocol with overlapping models (or both without models).
pub(super) fn check_overlaps(routes: &[Route], problems: &mut Problems) {
    /// Host, prefix, gRPC-only, exact path, model.
    type Key<'a> = (Option<&'a str>, &'a str, bool, bool, Option<&'a str>);
    let mut seen: HashMap<Key<'_>, &str> = HashMap::new();
    for r in routes {
        let key = |model| {
            (
                r.host.as_deref(),
                r.prefix.as_str(),
                r.matcher.grpc,
                r.matcher.exact,
                model,
            )
        };
        let models: Vec<Option<&str>> = if r.matcher.models.is_empty() {
            vec![None]
        } else {
            r.matcher.models.iter().map(|m| Some(m.as_str())).collect()
        };
        for model in models {
            if let Some(other) = seen.get(&key(model)) {
                let what = match model {
                    Some(m) => {
                        format!("route {other} already serves model {m:?} on this host and prefix")
                    }
                    None => format!("route {other} already matches this host and prefix"),
                };
                problems.push(format!("routes[{}].prefix", r.name), what);
            } else {
                seen.insert(key(model), r.name.as_str());
            }
        }
    }
}

/// Reports gRPC routes with arms on pools that do not speak `h2c`. An arm
/// whose pool does not exist is left to the check of the arms, which names
/// the missing pool.
pub(super) fn check_grpc_pools(
    routes: &[RouteConfig],
    pool_index: &HashMap<&str, usize>,
    pools: &[Pool],
    problems: &mut Problems,
) {
    for r in routes.iter().filter(|r| r.grpc.is_some()) {
        for arm in &r.arms {
            if let Some(pool) = pool_index
                .get(arm.pool.as_str())
                .and_then(|&i| pools.get(i))
                && pool.protocol == Protocol::Http1
            {
                problems.push(
                    format!("routes[{}].arms[{}].pool", r.name, arm.name),
                    format!(
                        "gRPC needs HTTP/2: pool {:?} must have protocol = \"h2c\" (or \"h2\" with tls)",
                        pool.name
                    ),
                );
            }
        }
    }
}
