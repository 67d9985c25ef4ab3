//! The validated runtime form of a config.
//!
//! [`Snapshot::build`] checks a [`Config`] completely, collecting every
//! problem with its path, and only then produces a `Snapshot` whose values are
//! typed (socket addresses, durations, indices instead of names), so the
//! request path never re-checks or looks anything up by string.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{ConfigError, Problems};
use crate::filters::{FilterDef, RouteFilters, check_filters, check_route_filters};
use crate::model::{Config, HealthCheckKind, PoolConfig, Protocol, RouteConfig, TimeoutsConfig};

/// Built-in connect timeout.
pub const DEFAULT_CONNECT: Duration = Duration::from_millis(1_000);
/// Built-in read timeout.
pub const DEFAULT_READ: Duration = Duration::from_millis(60_000);
/// Built-in write timeout.
pub const DEFAULT_WRITE: Duration = Duration::from_millis(60_000);
/// Largest weight an arm may have.
pub const MAX_ARM_WEIGHT: i64 = 1_000_000;
/// Largest weight a backend may have.
pub const MAX_BACKEND_WEIGHT: i64 = 65_535;
const MAX_TIMEOUT_MS: i64 = 3_600_000;
/// Default largest request body of a route.
pub const DEFAULT_MAX_BODY: usize = 32 << 20;
/// Largest `max_body_bytes` of a route.
const MAX_BODY: i64 = 1 << 30;

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
    pub access: crate::access::Access,
}

/// Validated listener settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// Graceful shutdown budget.
    pub grace_period: Duration,
    /// Whether to write access-log lines.
    pub access_log: bool,
    /// SHA-256 of the admin token, if the admin API needs one.
    pub admin_token: Option<[u8; 32]>,
    /// Longest wait for a request header.
    pub header_read_timeout: Duration,
    /// The graceful-upgrade socket.
    pub upgrade_sock: String,
    /// Span export, when an OTLP endpoint is configured.
    pub tracing: Option<Tracing>,
    /// The TLS proxy listener, if any.
    pub tls: Option<TlsListener>,
}

/// A validated `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// Validated `[server.tracing]` with an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The OTLP/gRPC collector URL.
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pool {
    /// Pool name.
    pub name: String,
    /// Protocol spoken upstream.
    pub protocol: Protocol,
    /// Backends with their weights.
    pub backends: Vec<Backend>,
    /// Health checking.
    pub health: HealthCheck,
    /// Circuit breaker settings of each backend.
    pub breaker: crate::resilience::Breaker,
}

/// A validated backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight within the pool (>= 1).
    pub weight: u32,
}

/// Validated health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: HealthCheckKind,
    /// Probe path for HTTP checks.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Longest a probe may take.
    pub timeout: Duration,
    /// Failures before unhealthy.
    pub unhealthy_threshold: usize,
    /// Successes before healthy.
    pub healthy_threshold: usize,
}

/// Effective timeouts of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect timeout.
    pub connect: Duration,
    /// Read (idle between bytes) timeout.
    pub read: Duration,
    /// Write timeout.
    pub write: Duration,
    /// Whole-exchange limit, if any.
    pub total: Option<Duration>,
}

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
    pub matcher: crate::matching::Matcher,
    /// A/B header name (lower case).
    pub ab_header: String,
    /// Sticky header name (lower case), if any.
    pub sticky_header: Option<String>,
    /// Index into `arms` of the fallback arm, if any.
    pub fallback: Option<usize>,
    /// Effective timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: crate::resilience::Retry,
    /// Canary rollback policy, if any.
    pub rollback: Option<crate::resilience::Rollback>,
    /// The arms.
    pub arms: Vec<Arm>,
    /// Content filters.
    pub filters: RouteFilters,
    /// Whether callers must authenticate.
    pub auth: crate::access::AuthMode,
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
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
    /// Weight (0 = reachable only through the A/B header).
    pub weight: u32,
    /// Rolled back (a `[[rollbacks]]` record names it): no weighted or
    /// sticky traffic, whatever its weight.
    pub rolled_back: bool,
}

impl Route {
    /// Index of the arm called `name`.
    pub fn arm_index(&self, name: &str) -> Option<usize> {
        self.arms.iter().position(|a| a.name == name)
    }
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
        let mut access = crate::access::check_access(&config.tenants, &config.auth, &mut problems);
        access.redis = crate::access::check_limits(&config.limits, &mut problems);
        let mut routes = check_routes(
            &config.routes,
            &pool_index,
            &filter_index,
            &access,
            defaults,
            &mut problems,
        );
        if let Some(etcd) = config.source.as_ref().and_then(|s| s.etcd.as_ref()) {
            crate::etcd::EtcdSettings::from_config(etcd, "source.etcd", &mut problems);
        }
        crate::matching::check_overlaps(&routes, &mut problems);
        crate::matching::check_grpc_pools(&routes, &pools, &mut problems);
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
    pub fn route_for(&self, req: &crate::matching::Request<'_>) -> Option<&Route> {
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

fn parse_addr(value: &str, path: &str, problems: &mut Problems) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(path, format!("{value:?} is not an IP:PORT address"));
            None
        }
    }
}

fn check_server(config: &Config, problems: &mut Problems) -> Option<Server> {
    let s = &config.server;
    let proxy = parse_addr(&s.proxy, "server.proxy", problems);
    let admin = parse_addr(&s.admin, "server.admin", problems);
    if s.threads > 1024 {
        problems.push("server.threads", "must be at most 1024");
    }
    if s.grace_period_seconds > 3600 {
        problems.push("server.grace_period_seconds", "must be at most 3600");
    }
    let admin_token = match &s.admin_token_sha256 {
        None => None,
        Some(text) => {
            let digest = crate::access::parse_digest(text);
            if digest.is_none() {
                problems.push(
                    "server.admin_token_sha256",
                    "must be the token's SHA-256 as 64 hex digits, never the token itself",
                );
            }
            digest
        }
    };
    let header_read_timeout = check_ms(
        Some(s.header_read_timeout_ms),
        "server.header_read_timeout_ms".to_owned(),
        Duration::from_secs(10),
        problems,
    );
    if s.upgrade_sock.is_empty() {
        problems.push("server.upgrade_sock", "must be a path");
    }
    let tracing = check_tracing(&s.tracing, problems);
    let tls = s.tls.as_ref().and_then(|t| {
        let listen = parse_addr(&t.listen, "server.tls.listen", problems);
        for (field, path) in [("cert", &t.cert), ("key", &t.key)] {
            if let Err(e) = std::fs::metadata(path) {
                problems.push(
                    format!("server.tls.{field}"),
                    format!("cannot read {path:?}: {e}"),
                );
            }
        }
        Some(TlsListener {
            listen: listen?,
            cert: t.cert.clone(),
            key: t.key.clone(),
        })
    });
    let (proxy, admin) = (proxy?, admin?);
    if proxy == admin && proxy.port() != 0 {
        problems.push("server.admin", "must differ from server.proxy");
    }
    if let Some(t) = &tls
        && t.listen.port() != 0
        && (t.listen == proxy || t.listen == admin)
    {
        problems.push(
            "server.tls.listen",
            "must differ from server.proxy and server.admin",
        );
    }
    Some(Server {
        proxy,
        admin,
        threads: s.threads,
        grace_period: Duration::from_secs(s.grace_period_seconds),
        access_log: s.access_log,
        admin_token,
        header_read_timeout,
        upgrade_sock: s.upgrade_sock.clone(),
        tracing,
        tls,
    })
}

fn check_tracing(t: &crate::model::TracingConfig, problems: &mut Problems) -> Option<Tracing> {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        problems.push(
            "server.tracing.sample_ratio",
            format!("{} must be between 0.0 and 1.0", t.sample_ratio),
        );
    }
    if t.service_name.is_empty() {
        problems.push("server.tracing.service_name", "must not be empty");
    }
    let endpoint = t.otlp_endpoint.as_ref()?;
    let ok = ["http://", "https://"].iter().any(|scheme| {
        endpoint
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if !ok {
        problems.push(
            "server.tracing.otlp_endpoint",
            format!("{endpoint:?} must be an http:// or https:// URL of an OTLP/gRPC collector"),
        );
    }
    Some(Tracing {
        endpoint: endpoint.clone(),
        service_name: t.service_name.clone(),
        sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
    })
}

/// Names go into headers, metric labels and etcd keys: keep them plain.
pub(crate) fn check_name(name: &str, path: &str, problems: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        problems.push(
            path,
            format!("{name:?} must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'"),
        );
    }
}

fn check_header(name: &str, path: &str, problems: &mut Problems) -> String {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        problems.push(path, format!("{name:?} is not a valid header name"));
    }
    name.to_ascii_lowercase()
}

fn check_ms(
    value: Option<i64>,
    path: String,
    fallback: Duration,
    problems: &mut Problems,
) -> Duration {
    match value {
        None => fallback,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms.unsigned_abs()),
        Some(ms) => {
            problems.push(
                path,
                format!("{ms} must be between 1 and {MAX_TIMEOUT_MS} ms"),
            );
            fallback
        }
    }
}

fn check_timeouts(
    t: &TimeoutsConfig,
    at: &str,
    base: Timeouts,
    problems: &mut Problems,
) -> Timeouts {
    Timeouts {
        connect: check_ms(
            t.connect_ms,
            format!("{at}.connect_ms"),
            base.connect,
            problems,
        ),
        read: check_ms(t.read_ms, format!("{at}.read_ms"), base.read, problems),
        write: check_ms(t.write_ms, format!("{at}.write_ms"), base.write, problems),
        total: match t.total_ms {
            None => base.total,
            Some(ms) => Some(check_ms(
                Some(ms),
                format!("{at}.total_ms"),
                DEFAULT_READ,
                problems,
            )),
        },
    }
}

fn check_pools(pools: &[PoolConfig], problems: &mut Problems) -> Vec<Pool> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pools.len());
    for (i, p) in pools.iter().enumerate() {
        let at = if p.name.is_empty() {
            format!("pools[{i}]")
        } else {
            format!("pools[{}]", p.name)
        };
        check_name(&p.name, &format!("{at}.name"), problems);
        if !seen.insert(p.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate pool name");
        }
        if p.backends.is_empty() && !p.registered {
            problems.push(
                format!("{at}.backends"),
                "needs at least one backend (or registered = true for a pool of registered members)",
            );
        }
        let mut addrs = HashSet::new();
        let mut backends = Vec::with_capacity(p.backends.len());
        for (j, b) in p.backends.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            if !(1..=MAX_BACKEND_WEIGHT).contains(&b.weight) {
                problems.push(
                    format!("{bat}.weight"),
                    format!("{} must be between 1 and {MAX_BACKEND_WEIGHT}", b.weight),
                );
            }
            if let Some(addr) = parse_addr(&b.address, &format!("{bat}.address"), problems) {
                if !addrs.insert(addr) {
                    problems.push(format!("{bat}.address"), format!("{addr} is listed twice"));
                }
                backends.push(Backend {
                    addr,
                    weight: u32::try_from(b.weight.clamp(1, MAX_BACKEND_WEIGHT)).unwrap_or(1),
                });
            }
        }
        let h = &p.health_check;
        if !(50..=MAX_TIMEOUT_MS).contains(&h.interval_ms) {
            problems.push(
                format!("{at}.health_check.interval_ms"),
                format!("{} must be between 50 and {MAX_TIMEOUT_MS}", h.interval_ms),
            );
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&h.timeout_ms) {
            problems.push(
                format!("{at}.health_check.timeout_ms"),
                format!("{} must be between 1 and {MAX_TIMEOUT_MS}", h.timeout_ms),
            );
        }
        for (name, v) in [
            ("unhealthy_threshold", h.unhealthy_threshold),
            ("healthy_threshold", h.healthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                problems.push(
                    format!("{at}.health_check.{name}"),
                    format!("{v} must be between 1 and 100"),
                );
            }
        }
        if h.kind == HealthCheckKind::Http {
            if p.protocol != Protocol::Http1 {
                problems.push(
                    format!("{at}.health_check.kind"),
                    "http checks need protocol = \"http1\"; use \"tcp\" for h2c pools",
                );
            }
            if !h.path.starts_with('/') {
                problems.push(format!("{at}.health_check.path"), "must start with '/'");
            }
        }
        let breaker = crate::resilience::check_breaker(&p.breaker, &at, problems);
        out.push(Pool {
            breaker,
            name: p.name.clone(),
            protocol: p.protocol,
            backends,
            health: HealthCheck {
                kind: h.kind,
                path: h.path.clone(),
                interval: Duration::from_millis(
                    h.interval_ms.clamp(50, MAX_TIMEOUT_MS).unsigned_abs(),
                ),
                timeout: Duration::from_millis(
                    h.timeout_ms.clamp(1, MAX_TIMEOUT_MS).unsigned_abs(),
                ),
                unhealthy_threshold: usize::try_from(h.unhealthy_threshold.clamp(1, 100))
                    .unwrap_or(1),
                healthy_threshold: usize::try_from(h.healthy_threshold.clamp(1, 100)).unwrap_or(1),
            },
        });
    }
    out
}

fn check_routes(
    routes: &[RouteConfig],
    pool_index: &HashMap<&str, usize>,
    filter_index: &HashMap<&str, usize>,
    access: &crate::access::Access,
    defaults: Timeouts,
    problems: &mut Problems,
) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let at = if r.name.is_empty() {
            format!("routes[{i}]")
        } else {
            format!("routes[{}]", r.name)
        };
        check_name(&r.name, &format!("{at}.name"), problems);
        if !names.insert(r.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate route name");
        }
        if !r.prefix.starts_with('/') {
            problems.push(format!("{at}.prefix"), "must start with '/'");
        }
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host
            && (h.is_empty() || h.contains(':') || h.contains('/'))
        {
            problems.push(
                format!("{at}.host"),
                "must be a host name without port or path",
            );
        }
        let (matcher, prefix) = crate::matching::check_matcher(r, &at, problems);
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
                    problems.push(format!("{at}.fallback"), format!("no arm named {f:?}"));
                }
                idx
            }
        };
        let filters = check_route_filters(&r.filters, &at, filter_index, problems);
        let retry = crate::resilience::check_retry(&r.retry, &at, problems);
        let rollback = r.rollback.as_ref().map(|rb| {
            if fallback.is_none() {
                problems.push(
                    format!("{at}.rollback"),
                    "needs a fallback arm to compare with and roll back to",
                );
            }
            crate::resilience::check_rollback(rb, &at, problems)
        });
        let tenants = crate::access::check_route_access(r.auth, &r.tenants, &at, access, problems);
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
        let aat = if a.name.is_empty() {
            format!("{at}.arms[{j}]")
        } else {
            format!("{at}.arms[{}]", a.name)
        };
        check_name(&a.name, &format!("{aat}.name"), problems);
        if !seen.insert(a.name.as_str()) {
            problems.push(format!("{aat}.name"), "duplicate arm name");
        }
        let pool = pool_index.get(a.pool.as_str()).copied();
        if pool.is_none() {
            problems.push(format!("{aat}.pool"), format!("no pool named {:?}", a.pool));
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
        arms.push(Arm {
            name: a.name.clone(),
            pool: pool.unwrap_or(0),
            weight: u32::try_from(weight).unwrap_or(0),
            rolled_back: false,
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
