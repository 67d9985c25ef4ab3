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

use std::collections::{BTreeSet, HashMap};
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
    /// Rolled back: out of the weighted and sticky split.
    pub rolled_back: bool,
    /// Recent outcomes, for routes with a rollback policy.
    pub stats: Option<Arc<crate::canary::ArmStats>>,
    /// `weir_time_to_first_token_seconds{route,arm}`.
    pub ttft: Histogram,
    /// `weir_time_per_output_token_seconds{route,arm}`.
    pub tpot: Histogram,
    /// `weir_tokens_total{route,arm,direction}`: `input`, then `output`.
    pub tokens: [prometheus::IntCounter; 2],
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
    /// When the arms were last compared ([`crate::breaker::now_ms`]).
    pub last_check: AtomicU64,
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
    /// Builds the runtime, reusing unchanged pools of `previous`; arms that
    /// the snapshot or `local_rollbacks` (route, arm) name are rolled back.
    pub async fn build(
        snapshot: Snapshot,
        origin: Origin,
        generation: u64,
        previous: Option<&Runtime>,
        local_rollbacks: &BTreeSet<(String, String)>,
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
                                .unwrap_or_else(|| Arc::new(crate::canary::ArmStats::new(policy)))
                        });
                        if r.rollback.is_some()
                            && Some(a.name.as_str()) != r.fallback.map(|f| r.arms[f].name.as_str())
                        {
                            metrics
                                .rollbacks
                                .with_label_values(&[r.name.as_str(), a.name.as_str()]);
                        }
                        ArmRt {
                            name: a.name.clone(),
                            pool: Arc::clone(&pools[a.pool]),
                            weight: a.weight,
                            name_header: header_value(&a.name),
                            duration: metrics.duration.with_label_values(&labels),
                            requests: Default::default(),
                            rolled_back,
                            stats,
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
                    arms,
                    last_check: AtomicU64::new(0),
                }
            })
            .collect();
        let access =
            crate::access::AccessRt::build(&snapshot.access, previous.map(|p| &p.access), metrics)?;
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
    /// Arms this gateway rolled back and no snapshot records yet.
    rollbacks: std::sync::Mutex<BTreeSet<(String, String)>>,
    /// Where rollbacks are recorded for other replicas (etcd), and who we are.
    sink: std::sync::OnceLock<RollbackSink>,
    /// The span exporter, when `[server.tracing]` names an endpoint (set
    /// once at start).
    pub otel: std::sync::OnceLock<crate::otel::Otel>,
}

/// Where a gateway records its rollbacks.
pub struct RollbackSink {
    /// The etcd the config comes from, if it does.
    pub etcd: Option<weir_conf::etcd::EtcdSettings>,
    /// This gateway, for the record's `by`.
    pub identity: String,
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
            rollbacks: std::sync::Mutex::new(BTreeSet::new()),
            sink: std::sync::OnceLock::new(),
            otel: std::sync::OnceLock::new(),
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

    /// Sets where rollbacks are recorded (once, at start).
    pub fn set_rollback_sink(&self, sink: RollbackSink) {
        let _ = self.sink.set(sink);
    }

    /// Builds a runtime from `snapshot` off the request path and swaps it in.
    /// Returns the new generation, or leaves the live one untouched on error.
    pub async fn publish(&self, snapshot: Snapshot, origin: Origin) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        self.publish_locked(snapshot, origin).await
    }

    /// Rebuilds the live runtime from its own snapshot (after a change of
    /// the local rollbacks).
    pub async fn republish(&self) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        let Some(current) = self.current() else {
            return Err("no configuration loaded".to_owned());
        };
        self.publish_locked((*current.snapshot).clone(), current.origin.clone())
            .await
    }

    /// Takes `arm` of `route` out of the route's split, records why (in etcd
    /// when the config comes from there, so every replica follows), and
    /// counts it. Called from the request path: the work happens in a task.
    pub fn roll_back(self: &Arc<Self>, route: &str, arm: &str, reason: String) {
        let key = (route.to_owned(), arm.to_owned());
        match self.rollbacks.lock() {
            Ok(mut set) if !set.contains(&key) => {
                set.insert(key);
            }
            _ => return,
        }
        self.metrics
            .rollbacks
            .with_label_values(&[route, arm])
            .inc();
        tracing::warn!(route, arm, reason = %reason, "canary rolled back");
        let shared = Arc::clone(self);
        let record = weir_conf::resilience::RollbackRecord {
            route: route.to_owned(),
            arm: arm.to_owned(),
            reason,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            by: self
                .sink
                .get()
                .map(|s| s.identity.clone())
                .unwrap_or_default(),
        };
        tokio::spawn(async move {
            if let Err(e) = shared.republish().await {
                tracing::error!(error = %e, "could not apply the rollback");
            }
            let Some(etcd) = shared.sink.get().and_then(|s| s.etcd.clone()) else {
                return;
            };
            let written = async {
                let mut store = weir_conf::etcd::Store::connect(etcd).await?;
                store.put_rollback(&record).await
            }
            .await;
            if let Err(e) = written {
                tracing::error!(error = %e, route = %record.route, arm = %record.arm,
                    "could not record the rollback in etcd; it holds on this gateway only");
            }
        });
    }

    /// Clears a rollback this gateway holds, and its etcd record. Returns
    /// whether there was one.
    pub async fn clear_rollback(&self, route: &str, arm: &str) -> Result<bool, String> {
        let key = (route.to_owned(), arm.to_owned());
        let local = self
            .rollbacks
            .lock()
            .map(|mut s| s.remove(&key))
            .unwrap_or(false);
        let mut recorded = false;
        if let Some(etcd) = self.sink.get().and_then(|s| s.etcd.clone()) {
            let mut store = weir_conf::etcd::Store::connect(etcd)
                .await
                .map_err(|e| e.to_string())?;
            recorded = store
                .clear_rollback(route, arm)
                .await
                .map_err(|e| e.to_string())?;
        }
        if local {
            self.republish().await?;
        }
        Ok(local || recorded)
    }

    /// Rolled-back arms no snapshot records yet.
    pub fn local_rollbacks(&self) -> Vec<(String, String)> {
        self.rollbacks
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn publish_locked(&self, snapshot: Snapshot, origin: Origin) -> Result<u64, String> {
        let previous = self.current();
        let local = self.rollbacks.lock().map(|s| s.clone()).unwrap_or_default();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let revision = origin.revision().unwrap_or(0);
        let runtime = Runtime::build(
            snapshot,
            origin,
            generation,
            previous.as_deref(),
            &local,
            &self.metrics,
        )
        .await?;
        // Rollbacks the snapshot now records (read back from etcd) need no
        // local copy any more: clearing the record clears them.
        if let Ok(mut set) = self.rollbacks.lock() {
            for r in &runtime.snapshot.routes {
                for a in r.arms.iter().filter(|a| a.rolled_back) {
                    set.remove(&(r.name.clone(), a.name.clone()));
                }
            }
        }
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
