//! The gateway's live routing state.
//!
//! A [`Runtime`] is everything the request path needs, built from one
//! validated [`Snapshot`]: route matchers, arm tables, and one Pingora
//! load balancer per pool. It is built fully off the request path and
//! published with a single `ArcSwap::store` in [`Shared::publish`]; a request
//! loads the `Arc` once and uses that one snapshot to the end.
//!
//! Pools whose definition did not change are carried over from the previous
//! runtime, so their health state and health-check task survive a reload; a
//! pool whose members changed keeps the health of its surviving members
//! (see [`crate::pool`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::Backend;
use prometheus::Histogram;
use weir_conf::model::Protocol;
use weir_conf::{Pool, Route, Snapshot};

use crate::filtering::LoadedFilter;
use crate::metrics::Metrics;
use crate::routing::ArmTable;

pub use crate::pool::{Balancer, PoolRt};

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
    /// status (indexed like [`crate::proxy::STATUS_LABELS`]), so a request
    /// costs an atomic add rather than a labelled lookup.
    pub requests: [std::sync::OnceLock<prometheus::IntCounter>; crate::proxy::STATUS_LABELS.len()],
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
    /// Arms, in config order (indices match `table`).
    pub arms: Vec<ArmRt>,
    /// Retries spent against requests (kept across reloads by route name).
    pub budget: Arc<crate::retry::RetryBudget>,
}

impl RouteRt {
    /// Peer options for this route's upstream connections; `remaining` (of
    /// the route's total timeout) caps the connect and read timeouts.
    pub fn peer(
        &self,
        backend: &Backend,
        protocol: Protocol,
        remaining: Option<Duration>,
    ) -> Box<HttpPeer> {
        let mut peer = Box::new(HttpPeer::new(backend.clone(), false, String::new()));
        let t = self.config.timeouts;
        let cap = |d: Duration| remaining.map_or(d, |r| d.min(r));
        peer.options.connection_timeout = Some(cap(t.connect));
        peer.options.read_timeout = Some(cap(t.read));
        peer.options.write_timeout = Some(cap(t.write));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if protocol == Protocol::H2c {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = 128;
        }
        peer
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
}

impl Runtime {
    /// Builds the runtime, reusing unchanged pools of `previous`.
    pub async fn build(
        snapshot: Snapshot,
        origin: Origin,
        generation: u64,
        previous: Option<&Runtime>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
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
            match reusable.get(p) {
                Some(existing) => pools.push(Arc::clone(existing)),
                None => {
                    let before = by_name.get(p.name.as_str()).map(|rt| rt.as_ref());
                    pools.push(Arc::new(PoolRt::start(p.clone(), before, metrics).await?));
                }
            }
        }
        let filters = crate::filtering::load(
            &snapshot.filters,
            previous.map(|p| p.filters.as_slice()).unwrap_or(&[]),
        )
        .await?;
        for f in &filters {
            crate::filtering::register_series(metrics, &f.filter);
        }
        let mut budgets: HashMap<&str, &Arc<crate::retry::RetryBudget>> = HashMap::new();
        if let Some(prev) = previous {
            for r in &prev.routes {
                budgets.insert(r.config.name.as_str(), &r.budget);
            }
        }
        let chain = |idx: &[usize]| -> Vec<Arc<LoadedFilter>> {
            idx.iter().map(|&i| Arc::clone(&filters[i])).collect()
        };
        let routes = snapshot
            .routes
            .iter()
            .map(|r| RouteRt {
                budget: budgets
                    .get(r.name.as_str())
                    .map(|b| Arc::clone(b))
                    .unwrap_or_default(),
                request_filters: chain(&r.filters.request),
                response_filters: chain(&r.filters.response),
                config: r.clone(),
                table: ArmTable::new(r.arms.iter().map(|a| (a.name.as_str(), a.weight))),
                name_header: header_value(&r.name),
                arms: r
                    .arms
                    .iter()
                    .map(|a| ArmRt {
                        name: a.name.clone(),
                        pool: Arc::clone(&pools[a.pool]),
                        weight: a.weight,
                        name_header: header_value(&a.name),
                        duration: metrics
                            .duration
                            .with_label_values(&[r.name.as_str(), a.name.as_str()]),
                        requests: Default::default(),
                    })
                    .collect(),
            })
            .collect();
        let access = crate::access::AccessRt::build(&snapshot.access, previous.map(|p| &p.access))?;
        Ok(Self {
            generation,
            origin,
            snapshot: Arc::new(snapshot),
            routes,
            pools,
            filters,
            access,
        })
    }

    /// The route taking `host` (port stripped) and `path`, with its index.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&RouteRt> {
        self.routes.iter().find(|r| r.config.matches(host, path))
    }
}

/// Route and arm names are validated to plain ASCII, so this never falls back.
fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// State shared by the proxy, the admin server and the config source.
pub struct Shared {
    current: ArcSwapOption<Runtime>,
    generation: AtomicU64,
    listening: AtomicBool,
    note: std::sync::Mutex<Option<String>>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// SHA-256 of the admin token, when the admin API needs one (from
    /// `[server]`, read at start).
    pub admin_token: Option<[u8; 32]>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Empty state: nothing published, not ready.
    pub fn new(metrics: Metrics, admin_token: Option<[u8; 32]>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            note: std::sync::Mutex::new(None),
            metrics,
            admin_token,
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The live runtime, if any (one atomic load, no lock).
    pub fn current(&self) -> Option<Arc<Runtime>> {
        self.current.load_full()
    }

    /// Whether the gateway serves traffic (a snapshot is live and the proxy listens).
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.current.load().is_some()
    }

    /// Records whether the proxy listener accepts connections (ready once a
    /// snapshot is live too).
    pub fn set_ready(&self, listening: bool) {
        self.listening.store(listening, Ordering::Release);
    }

    /// A note on the config source for `/readyz` (e.g. serving from the cache).
    pub fn note(&self) -> Option<String> {
        self.note.lock().ok().and_then(|n| n.clone())
    }

    /// Sets or clears the config source note.
    pub fn set_note(&self, note: Option<String>) {
        if let Ok(mut n) = self.note.lock() {
            *n = note;
        }
    }

    /// Builds a runtime from `snapshot` off the request path and swaps it in.
    /// Returns the new generation, or leaves the live one untouched on error.
    pub async fn publish(&self, snapshot: Snapshot, origin: Origin) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        let previous = self.current();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let revision = origin.revision().unwrap_or(0);
        let runtime = Runtime::build(
            snapshot,
            origin,
            generation,
            previous.as_deref(),
            &self.metrics,
        )
        .await?;
        self.current.store(Some(Arc::new(runtime)));
        self.metrics.revision.set(revision);
        self.generation.store(generation, Ordering::Release);
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics.reloads.with_label_values(&["applied"]).inc();
        Ok(generation)
    }

    /// Counts and logs a rejected config.
    pub fn reject(&self, origin: &str, error: &dyn std::fmt::Display) {
        self.metrics.reloads.with_label_values(&["rejected"]).inc();
        self.metrics.rejected.inc();
        tracing::error!(
            origin,
            "config rejected, keeping the last good one:\n{error}"
        );
    }
}
