//! The state shared by the proxy, the admin server and the config sources:
//! the live [`Runtime`] behind one `ArcSwapOption` (a request loads it once,
//! lock-free), readiness, and the canary rollbacks this gateway holds.
//!
//! Publishing is *prepare, then swap*: [`Shared::publish`] builds a runtime
//! off the request path ([`Runtime::build`], which changes nothing live),
//! swaps it in with one store, then runs its [`Runtime::commit`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use weir_conf::Snapshot;

use crate::metrics::Metrics;
use crate::runtime::{BuildError, Runtime};

pub use crate::runtime::Origin;

/// State shared by the proxy, the admin server and the config source.
pub struct Shared {
    current: ArcSwapOption<Runtime>,
    generation: AtomicU64,
    listening: AtomicBool,
    note: std::sync::Mutex<Option<String>>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The admin tokens (from `[server]`, read at start; none: the admin
    /// API is open for reads, writes only from this host).
    pub admin_tokens: Vec<weir_conf::snapshot::AdminToken>,
    /// Woken whenever what this gateway serves may have changed (a publish,
    /// a note), for the replica status it keeps in etcd.
    pub changed: tokio::sync::Notify,
    reload_lock: tokio::sync::Mutex<()>,
    /// Arms this gateway rolled back and no snapshot records yet.
    rollbacks: std::sync::Mutex<BTreeSet<(String, String)>>,
    /// Where rollbacks are recorded for other replicas (etcd), and who we are.
    sink: std::sync::OnceLock<RollbackSink>,
    /// The span exporter, when `[server.tracing]` names an endpoint (set
    /// once at start).
    pub otel: std::sync::OnceLock<crate::otel::Otel>,
    /// The addresses of the backends' host names.
    pub resolver: crate::resolve::Resolver,
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
    pub fn new(metrics: Metrics, admin_tokens: Vec<weir_conf::snapshot::AdminToken>) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            note: std::sync::Mutex::new(None),
            metrics,
            admin_tokens,
            changed: tokio::sync::Notify::new(),
            rollbacks: std::sync::Mutex::new(BTreeSet::new()),
            sink: std::sync::OnceLock::new(),
            otel: std::sync::OnceLock::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            resolver: crate::resolve::Resolver::default(),
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
        self.changed.notify_one();
    }

    /// A note on the config source for `/readyz` (e.g. serving from the cache).
    pub fn note(&self) -> Option<String> {
        self.note.lock().ok().and_then(|n| n.clone())
    }

    /// Sets or clears the config source note.
    pub fn set_note(&self, note: Option<String>) {
        if let Ok(mut n) = self.note.lock() {
            if *n == note {
                return;
            }
            *n = note;
        }
        self.changed.notify_one();
    }

    /// The etcd the config comes from, when it does.
    pub fn etcd_settings(&self) -> Option<weir_conf::etcd::EtcdSettings> {
        self.sink.get().and_then(|s| s.etcd.clone())
    }

    /// This gateway's name in rollback records and the replica status.
    pub fn identity(&self) -> String {
        self.sink
            .get()
            .map(|s| s.identity.clone())
            .unwrap_or_default()
    }

    /// Sets where rollbacks are recorded (once, at start).
    pub fn set_rollback_sink(&self, sink: RollbackSink) {
        let _ = self.sink.set(sink);
    }

    /// Builds a runtime from `snapshot` off the request path and swaps it in.
    /// Returns the new generation, or leaves the live one untouched on error.
    pub async fn publish(&self, snapshot: Snapshot, origin: Origin) -> Result<u64, BuildError> {
        let _guard = self.reload_lock.lock().await;
        self.publish_locked(snapshot, origin).await
    }

    /// Rebuilds the live runtime from its own snapshot (after a change of
    /// the local rollbacks).
    pub async fn republish(&self) -> Result<u64, BuildError> {
        let _guard = self.reload_lock.lock().await;
        let Some(current) = self.current() else {
            return Err(BuildError::NothingLive);
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
    pub async fn clear_rollback(
        &self,
        route: &str,
        arm: &str,
        actor: weir_conf::etcd::audit::Actor,
    ) -> Result<bool, String> {
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
                .clear_rollback(route, arm, &weir_conf::etcd::Write::by(actor))
                .await
                .map_err(|e| e.to_string())?;
        }
        if local {
            self.republish().await.map_err(|e| e.to_string())?;
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

    async fn publish_locked(&self, snapshot: Snapshot, origin: Origin) -> Result<u64, BuildError> {
        let previous = self.current();
        let local = self.rollbacks.lock().map(|s| s.clone()).unwrap_or_default();
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let revision = origin.revision().unwrap_or(0);
        // Names never looked up are resolved before the first build that
        // needs them; later changes come from resolve::run.
        self.resolver.refresh(&snapshot, true, &self.metrics).await;
        let runtime = Runtime::build(
            snapshot,
            origin,
            generation,
            previous.as_deref(),
            &local,
            &self.metrics,
            &self.resolver,
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
        let runtime = Arc::new(runtime);
        self.current.store(Some(Arc::clone(&runtime)));
        runtime.commit(previous.as_deref(), &self.metrics);
        self.metrics.revision.set(revision);
        self.generation.store(generation, Ordering::Release);
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics.reloads.with_label_values(&["applied"]).inc();
        self.changed.notify_one();
        Ok(generation)
    }

    /// Counts and logs a rejected config.
    pub fn reject(&self, origin: &str, error: &dyn std::fmt::Display) {
        self.metrics.reloads.with_label_values(&["rejected"]).inc();
        self.metrics.rejected.inc();
        // One line per problem list: a log shipper keeps a line together.
        let problems = error.to_string().replace(":\n", ": ").replace('\n', "; ");
        tracing::error!(
            origin,
            problems,
            "config rejected, keeping the last good one"
        );
    }
}
