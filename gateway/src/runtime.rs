//! The routing state built from one snapshot.
//!
//! A [`Runtime`] is everything the request path needs, built from one
//! validated [`Snapshot`]: route matchers, arm tables, and one Pingora
//! load balancer per pool. [`Runtime::build`] is *pure*: it reads the
//! previous runtime (to carry over pools, breakers, filters, budgets and
//! limiter state) but changes nothing that is live, so a build that fails
//! leaves the serving runtime exactly as it was. The caller publishes the
//! result with one `ArcSwap::store` ([`crate::state::Shared::publish`]) and
//! then calls [`Runtime::commit`], which does the side effects: health
//! reporting moves to the new balancers, health checks of new pools start,
//! metric series of departed backends go, the rollback counters of watched
//! arms appear at 0. (Metric *handles* are resolved during the build, which
//! creates their series at 0; nothing is ever removed there.)
//!
//! Pools whose definition did not change are carried over from the previous
//! runtime, so their health state and health-check task survive a reload; a
//! pool whose members changed keeps the health of its surviving members
//! (see [`crate::pool`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::Backend;
use prometheus::Histogram;
use weir_conf::model::Protocol;
use weir_conf::{Pool, Route, Snapshot};

use crate::filtering::LoadedFilter;
use crate::metrics::{Metrics, STATUS_LABELS};
use crate::pool::PoolRt;
use crate::routing::ArmTable;

/// Why a runtime could not be built from a valid snapshot (the live one
/// keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A pool's balancer or health check could not be set up.
    #[error("{0}")]
    Pool(String),
    /// A content filter failed to load.
    #[error("{0}")]
    Filter(String),
    /// Tenants, JWT issuers or the Redis limits could not be set up.
    #[error("{0}")]
    Access(String),
    /// Nothing is live to rebuild from.
    #[error("no configuration loaded")]
    NothingLive,
}

/// One arm at run time.
pub struct ArmRt {
    /// Arm name.
    pub name: String,
    /// Its pool.
    pub pool: Arc<PoolRt>,
    /// Configured weight.
    pub weight: u32,
    /// The name as a ready-made `x-weir-arm` header value.
    pub name_header: HeaderValue,
    /// `weir_request_duration_seconds{route,arm}`, resolved once.
    pub duration: Histogram,
    /// `weir_requests_total{route,arm,status}`, resolved on first use per
    /// status (indexed like [`STATUS_LABELS`]), so a request costs an
    /// atomic add rather than a labelled lookup.
    pub requests: [std::sync::OnceLock<prometheus::IntCounter>; STATUS_LABELS.len()],
    /// Rolled back: out of the weighted and sticky split.
    pub rolled_back: bool,
    /// Recent outcomes, for routes with a rollback policy.
    pub stats: Option<Arc<crate::canary::stats::ArmStats>>,
    /// `weir_time_to_first_token_seconds{route,arm}`.
    pub ttft: Histogram,
    /// `weir_time_per_output_token_seconds{route,arm}`.
    pub tpot: Histogram,
    /// `weir_tokens_total{route,arm,direction}`: `input`, then `output`.
    pub tokens: [prometheus::IntCounter; 2],
    /// The model name the arm's upstream knows, if the arm renames.
    pub model: Option<String>,
}

/// One route at run time.
pub struct RouteRt {
    /// Filters over request bodies, in order (empty: bodies stream through).
    pub request_filters: Vec<Arc<LoadedFilter>>,
    /// Filters over responses, in order.
    pub response_filters: Vec<Arc<LoadedFilter>>,
    /// The validated route.
    pub config: Route,
    /// Arm selection table.
    pub table: ArmTable,
    /// The name as a ready-made `x-weir-route` header value.
    pub name_header: HeaderValue,
    /// `ab_header`, parsed once (looked up in every request).
    pub ab_header: Option<http::HeaderName>,
    /// `sticky_header`, parsed once.
    pub sticky_header: Option<http::HeaderName>,
    /// Arms, in config order (indices match `table`).
    pub arms: Vec<ArmRt>,
    /// Retries spent against requests (kept across reloads by route name).
    pub budget: Arc<crate::retry::RetryBudget>,
    /// When the arms were last compared ([`crate::window::now_ms`]).
    pub last_check: AtomicU64,
}

impl RouteRt {
    /// Peer options for this route's upstream connections to a backend of
    /// `pool`; `remaining` (of the route's total timeout) caps the connect
    /// and read timeouts. With TLS, the server name is the pool's
    /// `tls.sni`, else the backend's host (an IP address is verified
    /// against the certificate's IP addresses: verification is never
    /// skipped for want of a name).
    pub fn peer(
        &self,
        backend: &Backend,
        pool: &PoolRt,
        remaining: Option<Duration>,
    ) -> Box<HttpPeer> {
        let protocol = pool.config.protocol;
        let mut peer = match &pool.tls {
            None => Box::new(HttpPeer::new(backend.clone(), false, String::new())),
            Some(tls) => {
                let sni = tls
                    .sni
                    .clone()
                    .or_else(|| pool.host_name(backend).map(str::to_owned))
                    .unwrap_or_else(|| host_of(backend));
                let mut p = Box::new(HttpPeer::new(backend.clone(), true, sni));
                p.options.verify_cert = tls.verify;
                p.options.verify_hostname = tls.verify;
                p.options.ca = tls.ca.clone();
                p.client_cert_key = tls.client.clone();
                p
            }
        };
        let t = self.timeouts(remaining);
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        if protocol != Protocol::Http1 {
            // h2c: prior knowledge; h2: ALPN "h2" in the TLS handshake.
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = 128;
        }
        peer
    }

    /// An attempt's connect, read and write timeouts: the route's, each
    /// capped by `remaining` (of the route's total timeout).
    pub fn timeouts(&self, remaining: Option<Duration>) -> AttemptTimeouts {
        let t = self.config.timeouts;
        let cap = |d: Duration| remaining.map_or(d, |r| d.min(r));
        AttemptTimeouts {
            connect: cap(t.connect),
            read: cap(t.read),
            write: cap(t.write),
        }
    }
}

/// One attempt's timeouts ([`RouteRt::timeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeouts {
    /// To connect to the backend.
    pub connect: Duration,
    /// For each read of the answer.
    pub read: Duration,
    /// For each write of the request.
    pub write: Duration,
}

/// How long an idle upstream connection is kept for reuse.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// A backend's host: its address without the port.
fn host_of(backend: &Backend) -> String {
    match backend.addr.as_inet() {
        Some(a) => a.ip().to_string(),
        None => backend.addr.to_string(),
    }
}

/// Where a published snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The demo config compiled into the binary.
    Embedded,
    /// A config file (its path).
    File(String),
    /// etcd (endpoints and prefix) at a revision.
    Etcd {
        /// `etcd ENDPOINTS PREFIX`.
        location: String,
        /// The etcd revision.
        revision: i64,
    },
    /// The last-good cache of an etcd config, used while etcd is unreachable.
    EtcdCache {
        /// The cache file.
        path: String,
        /// The etcd revision the cache was written at.
        revision: i64,
    },
}

impl Origin {
    /// `embedded`, `file`, `etcd` or `etcd-cache`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Embedded => "embedded",
            Origin::File(_) => "file",
            Origin::Etcd { .. } => "etcd",
            Origin::EtcdCache { .. } => "etcd-cache",
        }
    }

    /// The etcd revision, for etcd configs.
    pub fn revision(&self) -> Option<i64> {
        match self {
            Origin::Etcd { revision, .. } | Origin::EtcdCache { revision, .. } => Some(*revision),
            Origin::Embedded | Origin::File(_) => None,
        }
    }

    /// The file, cache file or etcd location.
    pub fn location(&self) -> &str {
        match self {
            Origin::Embedded => "embedded demo config",
            Origin::File(path) | Origin::EtcdCache { path, .. } => path,
            Origin::Etcd { location, .. } => location,
        }
    }
}

/// Everything the request path needs from one config snapshot.
pub struct Runtime {
    /// Generation number (1 = first published).
    pub generation: u64,
    /// Where the snapshot came from.
    pub origin: Origin,
    /// The snapshot it was built from.
    pub snapshot: Arc<Snapshot>,
    /// Routes in match order.
    pub routes: Vec<RouteRt>,
    /// Pools in config order.
    pub pools: Vec<Arc<PoolRt>>,
    /// Loaded content filters, in config order.
    pub filters: Vec<Arc<LoadedFilter>>,
    /// Tenants, API keys, JWT verifiers and limiter state.
    pub access: crate::access::AccessRt,
    /// Some route names models: the gateway may answer `GET /v1/models`
    /// itself (`proxy/catalogue.rs`), which no request needs to check
    /// otherwise.
    pub names_models: bool,
}

impl Runtime {
    /// Builds the runtime, reusing unchanged pools of `previous`; arms that
    /// the snapshot or `local_rollbacks` (route, arm) name are rolled back.
    /// Changes nothing live: see [`Runtime::commit`].
    pub async fn build(
        snapshot: Snapshot,
        origin: Origin,
        generation: u64,
        previous: Option<&Runtime>,
        local_rollbacks: &BTreeSet<(String, String)>,
        metrics: &Metrics,
        resolver: &crate::resolve::Resolver,
    ) -> Result<Self, BuildError> {
        let mut reusable: HashMap<&Pool, &Arc<PoolRt>> = HashMap::new();
        let mut by_name: HashMap<&str, &Arc<PoolRt>> = HashMap::new();
        if let Some(prev) = previous {
            for p in &prev.pools {
                reusable.insert(&p.config, p);
                by_name.insert(p.config.name.as_str(), p);
            }
        }
        let mut pools = Vec::with_capacity(snapshot.pools.len());
        for p in &snapshot.pools {
            let resolved = crate::pool::resolved(p, resolver);
            match reusable.get(p).filter(|e| e.resolved == resolved) {
                Some(existing) => pools.push(Arc::clone(existing)),
                None => {
                    let before = by_name.get(p.name.as_str()).map(|rt| rt.as_ref());
                    let pool = PoolRt::build(p.clone(), resolved, before, metrics).await;
                    pools.push(Arc::new(pool.map_err(BuildError::Pool)?));
                }
            }
        }
        let filters = crate::filtering::load(
            &snapshot.filters,
            previous.map(|p| p.filters.as_slice()).unwrap_or(&[]),
            metrics,
        )
        .await
        .map_err(BuildError::Filter)?;
        let mut budgets: HashMap<&str, &Arc<crate::retry::RetryBudget>> = HashMap::new();
        if let Some(prev) = previous {
            for r in &prev.routes {
                budgets.insert(r.config.name.as_str(), &r.budget);
            }
        }
        let chain = |idx: &[usize]| -> Vec<Arc<LoadedFilter>> {
            idx.iter().map(|&i| Arc::clone(&filters[i])).collect()
        };
        let routes: Vec<RouteRt> = snapshot
            .routes
            .iter()
            .map(|r| {
                let rolled = |a: &weir_conf::Arm| {
                    a.rolled_back || local_rollbacks.contains(&(r.name.clone(), a.name.clone()))
                };
                let before =
                    previous.and_then(|p| p.routes.iter().find(|x| x.config.name == r.name));
                let arms: Vec<ArmRt> = r
                    .arms
                    .iter()
                    .map(|a| {
                        let labels = [r.name.as_str(), a.name.as_str()];
                        let rolled_back = rolled(a);
                        let old = before.and_then(|b| b.arms.iter().find(|x| x.name == a.name));
                        // A cleared rollback starts from an empty window.
                        let stats = r.rollback.as_ref().map(|policy| {
                            old.filter(|o| !o.rolled_back || rolled_back)
                                .filter(|_| before.is_some_and(|b| b.config.rollback == r.rollback))
                                .and_then(|o| o.stats.clone())
                                .unwrap_or_else(|| {
                                    Arc::new(crate::canary::stats::ArmStats::new(policy))
                                })
                        });
                        ArmRt {
                            name: a.name.clone(),
                            pool: Arc::clone(&pools[a.pool]),
                            weight: a.weight,
                            name_header: header_value(&a.name),
                            duration: metrics.duration.with_label_values(&labels),
                            requests: Default::default(),
                            rolled_back,
                            stats,
                            model: a.model.clone(),
                            ttft: metrics.ttft.with_label_values(&labels),
                            tpot: metrics.tpot.with_label_values(&labels),
                            tokens: ["input", "output"].map(|d| {
                                metrics.tokens.with_label_values(&[labels[0], labels[1], d])
                            }),
                        }
                    })
                    .collect();
                RouteRt {
                    budget: budgets
                        .get(r.name.as_str())
                        .map(|b| Arc::clone(b))
                        .unwrap_or_default(),
                    request_filters: chain(&r.filters.request),
                    response_filters: chain(&r.filters.response),
                    table: arm_table(r, &arms),
                    config: r.clone(),
                    name_header: header_value(&r.name),
                    ab_header: http::HeaderName::from_bytes(r.ab_header.as_bytes()).ok(),
                    sticky_header: r
                        .sticky_header
                        .as_deref()
                        .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
                    arms,
                    last_check: AtomicU64::new(0),
                }
            })
            .collect();
        let access =
            crate::access::AccessRt::build(&snapshot.access, previous.map(|p| &p.access), metrics)
                .map_err(BuildError::Access)?;
        let names_models = routes.iter().any(|r| r.config.catalogue().next().is_some());
        Ok(Self {
            generation,
            origin,
            snapshot: Arc::new(snapshot),
            names_models,
            routes,
            pools,
            filters,
            access,
        })
    }

    /// The side effects of publishing this runtime, run once it is live:
    /// the health gauges follow the new balancers and new pools start their
    /// health checks; series of backends that left a pool go; rollback-watched
    /// arms get their zero series. `previous` is the runtime
    /// this one replaced.
    pub fn commit(&self, previous: Option<&Runtime>, metrics: &Metrics) {
        for pool in &self.pools {
            let before =
                previous.and_then(|p| p.pools.iter().find(|x| x.config.name == pool.config.name));
            pool.commit(before.map(Arc::as_ref), metrics);
        }
        // Series known from the config exist at zero from the start, so a
        // rate() over them works before the first event.
        for r in &self.snapshot.routes {
            for kind in ["token", "local"] {
                metrics
                    .config_changes
                    .with_label_values(&[r.name.as_str(), kind]);
            }
        }
        for tenant in &self.snapshot.access.tenants {
            for direction in ["input", "output"] {
                metrics
                    .genai
                    .tenant_tokens
                    .with_label_values(&[tenant.name.as_str(), direction]);
            }
        }
        for r in &self.snapshot.routes {
            if r.rollback.is_none() {
                continue;
            }
            let fallback = r.fallback.map(|f| r.arms[f].name.as_str());
            for a in r.arms.iter().filter(|a| Some(a.name.as_str()) != fallback) {
                metrics
                    .rollbacks
                    .with_label_values(&[r.name.as_str(), a.name.as_str()]);
            }
        }
    }
}

/// The selection table: rolled-back arms have weight 0 (and leave the A/B
/// header's reach when the policy says so); when nothing weighted is left,
/// the fallback arm takes the weighted traffic.
fn arm_table(r: &Route, arms: &[ArmRt]) -> ArmTable {
    let mut weights: Vec<u32> = arms
        .iter()
        .map(|a| if a.rolled_back { 0 } else { a.weight })
        .collect();
    if let Some(fb) = r.fallback
        && weights.iter().all(|w| *w == 0)
    {
        weights[fb] = 1;
    }
    let mut table = ArmTable::new(
        arms.iter()
            .zip(&weights)
            .map(|(a, w)| (a.name.as_str(), *w)),
    );
    let header_reaches = r.rollback.as_ref().is_none_or(|p| p.header_reaches);
    for (i, a) in arms.iter().enumerate() {
        if a.rolled_back && !header_reaches {
            table.exclude_from_header(i);
        }
    }
    table
}

/// Route and arm names are validated to plain ASCII, so this never falls back.
fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
