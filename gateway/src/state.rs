//! The gateway's live routing state.
//!
//! A [`Runtime`] is everything the request path needs, built from one
//! validated [`Snapshot`]: route matchers, arm tables, and one Pingora
//! [`LoadBalancer`] per pool. It is built fully off the request path and
//! published with a single `ArcSwap::store` in [`Shared::publish`]; a request
//! loads the `Arc` once and uses that one snapshot to the end.
//!
//! Pools whose definition did not change are carried over from the previous
//! runtime, so their health state and health-check task survive a reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer, discovery};
use prometheus::Histogram;
use weir_conf::model::{HealthCheckKind, Protocol};
use weir_conf::{Pool, Route, Snapshot};

use crate::metrics::Metrics;
use crate::routing::ArmTable;

/// Weighted round robin over a pool's healthy backends.
pub type Balancer = LoadBalancer<RoundRobin>;

/// A pool with its balancer and health-check task.
pub struct PoolRt {
    /// The validated pool definition.
    pub config: Pool,
    /// The balancer (weights and health).
    pub lb: Arc<Balancer>,
    health_task: Option<tokio::task::AbortHandle>,
}

impl Drop for PoolRt {
    fn drop(&mut self) {
        if let Some(task) = &self.health_task {
            task.abort();
        }
    }
}

impl PoolRt {
    /// Builds the balancer and starts its health checks on the current tokio runtime.
    pub async fn start(config: Pool, metrics: &Metrics) -> Result<Self, String> {
        let mut set = std::collections::BTreeSet::new();
        for b in &config.backends {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight as usize)
                .map_err(|e| format!("pool {}: backend {}: {e}", config.name, b.addr))?;
            set.insert(backend);
        }
        let mut lb = Balancer::from_backends(Backends::new(discovery::Static::new(set)));
        let hc = &config.health;
        let probe_timeout = hc.timeout;
        match hc.kind {
            HealthCheckKind::Tcp => {
                let mut check = TcpHealthCheck::new();
                check.consecutive_failure = hc.unhealthy_threshold;
                check.consecutive_success = hc.healthy_threshold;
                check.peer_template.options.connection_timeout = Some(probe_timeout);
                lb.set_health_check(check);
            }
            HealthCheckKind::Http => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.consecutive_failure = hc.unhealthy_threshold;
                check.consecutive_success = hc.healthy_threshold;
                check.peer_template.options.connection_timeout = Some(probe_timeout);
                check.peer_template.options.read_timeout = Some(probe_timeout);
                check
                    .req
                    .set_uri(hc.path.parse().map_err(|e| format!("health path: {e}"))?);
                lb.set_health_check(Box::new(check));
            }
            HealthCheckKind::None => {}
        }
        lb.update()
            .await
            .map_err(|e| format!("pool {}: {e}", config.name))?;
        let lb = Arc::new(lb);
        let health_task = (hc.kind != HealthCheckKind::None).then(|| {
            tokio::spawn(health_loop(
                Arc::clone(&lb),
                config.name.clone(),
                hc.interval,
                metrics.clone(),
            ))
            .abort_handle()
        });
        Ok(Self {
            config,
            lb,
            health_task,
        })
    }

    /// Whether `backend` currently passes health checks.
    pub fn healthy(&self, backend: &Backend) -> bool {
        self.lb.backends().ready(backend)
    }
}

async fn health_loop(lb: Arc<Balancer>, pool: String, interval: Duration, metrics: Metrics) {
    loop {
        lb.backends().run_health_check(true).await;
        for b in lb.backends().get_backend().iter() {
            let up = lb.backends().ready(b);
            metrics
                .backend_healthy
                .with_label_values(&[pool.as_str(), &b.addr.to_string()])
                .set(i64::from(up));
        }
        tokio::time::sleep(interval).await;
    }
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
}

/// One route at run time.
pub struct RouteRt {
    /// The validated route.
    pub config: Route,
    /// Arm selection table.
    pub table: ArmTable,
    /// The name as a ready-made `x-weir-route` header value.
    pub name_header: HeaderValue,
    /// Arms, in config order (indices match `table`).
    pub arms: Vec<ArmRt>,
}

impl RouteRt {
    /// Peer options for this route's upstream connections.
    pub fn peer(&self, backend: &Backend, protocol: Protocol) -> Box<HttpPeer> {
        let mut peer = Box::new(HttpPeer::new(backend.clone(), false, String::new()));
        let t = self.config.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if protocol == Protocol::H2c {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = 128;
        }
        peer
    }
}

/// Everything the request path needs from one config snapshot.
pub struct Runtime {
    /// Generation number (1 = first published).
    pub generation: u64,
    /// The snapshot it was built from.
    pub snapshot: Arc<Snapshot>,
    /// Routes in match order.
    pub routes: Vec<RouteRt>,
    /// Pools in config order.
    pub pools: Vec<Arc<PoolRt>>,
}

impl Runtime {
    /// Builds the runtime, reusing unchanged pools of `previous`.
    pub async fn build(
        snapshot: Snapshot,
        generation: u64,
        previous: Option<&Runtime>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let mut reusable: HashMap<&Pool, &Arc<PoolRt>> = HashMap::new();
        if let Some(prev) = previous {
            for p in &prev.pools {
                reusable.insert(&p.config, p);
            }
        }
        let mut pools = Vec::with_capacity(snapshot.pools.len());
        for p in &snapshot.pools {
            match reusable.get(p) {
                Some(existing) => pools.push(Arc::clone(existing)),
                None => pools.push(Arc::new(PoolRt::start(p.clone(), metrics).await?)),
            }
        }
        let routes = snapshot
            .routes
            .iter()
            .map(|r| RouteRt {
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
                    })
                    .collect(),
            })
            .collect();
        Ok(Self {
            generation,
            snapshot: Arc::new(snapshot),
            routes,
            pools,
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
    ready: AtomicBool,
    /// The metrics registry.
    pub metrics: Metrics,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Empty state: nothing published, not ready.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            metrics,
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The live runtime, if any (one atomic load, no lock).
    pub fn current(&self) -> Option<Arc<Runtime>> {
        self.current.load_full()
    }

    /// Whether the gateway serves traffic (a snapshot is live and the proxy listens).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the gateway ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Builds a runtime from `snapshot` off the request path and swaps it in.
    /// Returns the new generation, or leaves the live one untouched on error.
    pub async fn publish(&self, snapshot: Snapshot) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().await;
        let previous = self.current();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let runtime =
            Runtime::build(snapshot, generation, previous.as_deref(), &self.metrics).await?;
        self.current.store(Some(Arc::new(runtime)));
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
        tracing::error!(
            origin,
            "config rejected, keeping the last good one:\n{error}"
        );
    }
}
