//! The engine: which model versions are served, and loading them.
//!
//! Served models live in one immutable map published through `ArcSwap`.
//! Loading is *prepare, then swap*: new versions are read, verified and
//! started beside the running ones, then one `store` publishes the new map.
//! Requests that already hold the old version finish on it; its workers
//! drain their queues and stop when the last handle goes. A load that fails
//! anywhere publishes nothing, so the old version keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{Args, ModelSelection};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{ModelVersion, VersionSettings};
use crate::repository::Repository;
use crate::repository::manifest::PublicKey;
use crate::runtime::{self, Runtime};
use crate::tasks::TaskStore;

/// Which versions of a model are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The highest version on disk.
    Latest,
    /// Exactly these versions.
    Specific(BTreeSet<u64>),
}

/// The served versions of one model (never empty); the highest is the
/// default for requests that name no version.
pub struct ModelSet {
    /// Version number → running version.
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
}

impl ModelSet {
    /// The version served by default.
    pub fn default_version(&self) -> Option<&Arc<ModelVersion>> {
        self.versions.values().next_back()
    }
}

/// Every served model by name.
pub type ModelMap = BTreeMap<String, Arc<ModelSet>>;

/// What a successful load did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Model name.
    pub model: String,
    /// Versions served now.
    pub versions: Vec<String>,
    /// Versions that were started fresh (the others were unchanged and kept).
    pub started: Vec<String>,
    /// Versions no longer served (draining).
    pub retired: Vec<String>,
}

/// The engine's shared state.
pub struct Engine {
    models: ArcSwap<ModelMap>,
    repository: Repository,
    runtime: Runtime,
    settings: VersionSettings,
    metrics: Metrics,
    policies: Mutex<BTreeMap<String, VersionPolicy>>,
    serve_all: bool,
    load_lock: tokio::sync::Mutex<()>,
    /// Async completion tasks.
    pub tasks: TaskStore,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// When the engine started.
    pub started: Instant,
}

impl Engine {
    /// Loads ONNX Runtime and every selected model. Blocking; fails if any
    /// selected model does not load (nothing unverified is ever served).
    pub fn start(args: &Args) -> Result<Arc<Self>> {
        let selections = args.validate()?;
        let key_path = args.public_key_path();
        let key = PublicKey::from_hex_file(&key_path)?;
        tracing::info!(path = %key_path.display(), key_id = key.key_id(), "trusting model signing key");
        let library = runtime::resolve_library(args.ort_lib.as_deref())?;
        runtime::init_environment(&library)?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        let runtime = Runtime::new(args.device, args.intra_threads)?;
        let repository = Repository::new(args.models.clone(), key);
        let policies = initial_policies(&repository, &selections)?;
        let engine = Engine {
            models: ArcSwap::from_pointee(ModelMap::new()),
            repository,
            runtime,
            settings: VersionSettings {
                queue_capacity: args.queue_capacity,
                batching: !args.no_batching,
                max_context: args.max_context,
                kv_cache_mb: args.kv_cache_mb,
                prefill_chunk: args.prefill_chunk,
            },
            metrics: Metrics::new()?,
            policies: Mutex::new(BTreeMap::new()),
            serve_all: selections.is_empty(),
            load_lock: tokio::sync::Mutex::new(()),
            tasks: TaskStore::new(std::time::Duration::from_secs(args.task_ttl_secs)),
            max_tokens_limit: args.max_tokens_limit,
            started: Instant::now(),
        };
        let mut map = ModelMap::new();
        for (name, policy) in &policies {
            let set = engine.prepare(name, policy).inspect_err(|e| {
                engine.metrics.model_load(name, "error");
                tracing::error!(model = %name, error = %e, "model refused");
            })?;
            engine.metrics.model_load(name, "ok");
            for v in set.versions.values() {
                tracing::info!(model = %name, version = v.version(), kind = ?v.config.kind, "model loaded");
            }
            map.insert(name.clone(), Arc::new(set));
        }
        engine.models.store(Arc::new(map));
        if let Ok(mut p) = engine.policies.lock() {
            *p = policies;
        }
        Ok(Arc::new(engine))
    }

    /// The current served-model map.
    pub fn models(&self) -> Arc<ModelMap> {
        self.models.load_full()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The device sessions run on.
    pub fn device(&self) -> runtime::Device {
        self.runtime.device()
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    /// True when every model is served (no `--model` flags).
    pub fn serves_all(&self) -> bool {
        self.serve_all
    }

    /// Finds a served version; `version` None or empty picks the default.
    pub fn resolve(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>> {
        let models = self.models.load();
        let set = models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_string()))?;
        let found = match version.filter(|v| !v.is_empty()) {
            None => set.default_version(),
            Some(v) => v.parse::<u64>().ok().and_then(|n| set.versions.get(&n)),
        };
        found.cloned().ok_or_else(|| Error::VersionNotFound {
            model: name.to_string(),
            version: version.unwrap_or_default().to_string(),
        })
    }

    /// Resolves an OpenAI `model` field: `name` or `name:version`.
    pub fn resolve_openai(&self, model: &str) -> Result<Arc<ModelVersion>> {
        match model.split_once(':') {
            Some((name, version)) => self.resolve(name, Some(version)),
            None => self.resolve(model, None),
        }
    }

    /// (Re)loads a model from the repository and swaps it in. `version`
    /// pins the model to that version from now on; None keeps its policy
    /// (highest version for models not served yet).
    pub async fn load(self: &Arc<Self>, name: &str, version: Option<u64>) -> Result<LoadReport> {
        let _serial = self.load_lock.lock().await;
        let policy = match version {
            Some(v) => VersionPolicy::Specific(BTreeSet::from([v])),
            None => self
                .policies
                .lock()
                .ok()
                .and_then(|p| p.get(name).cloned())
                .unwrap_or(VersionPolicy::Latest),
        };
        let engine = self.clone();
        let owned = name.to_string();
        let policy_for_load = policy.clone();
        let prepared =
            tokio::task::spawn_blocking(move || engine.prepare(&owned, &policy_for_load))
                .await
                .map_err(|e| Error::Runtime(format!("load task failed: {e}")))?;
        let set = match prepared {
            Ok(set) => set,
            Err(e) => {
                self.metrics.model_load(name, "error");
                tracing::error!(model = %name, error = %e, "load refused; the served version is unchanged");
                return Err(e);
            }
        };
        let old = self.models.load_full();
        let old_set = old.get(name);
        let report = LoadReport {
            model: name.to_string(),
            versions: set
                .versions
                .values()
                .map(|v| v.version().to_string())
                .collect(),
            started: set
                .versions
                .iter()
                .filter(|(n, v)| {
                    old_set
                        .and_then(|s| s.versions.get(n))
                        .is_none_or(|o| !Arc::ptr_eq(o, v))
                })
                .map(|(_, v)| v.version().to_string())
                .collect(),
            retired: old_set
                .map(|s| {
                    s.versions
                        .iter()
                        .filter(|(n, o)| set.versions.get(n).is_none_or(|v| !Arc::ptr_eq(o, v)))
                        .map(|(_, o)| o.version().to_string())
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut next = ModelMap::clone(&old);
        next.insert(name.to_string(), Arc::new(set));
        self.models.store(Arc::new(next));
        if let Ok(mut p) = self.policies.lock() {
            p.insert(name.to_string(), policy);
        }
        self.metrics.model_load(name, "ok");
        tracing::info!(model = %name, versions = ?report.versions, started = ?report.started, retired = ?report.retired, "model swapped in");
        Ok(report)
    }

    /// Reads, verifies and starts the versions `policy` selects; versions
    /// already running from the same manifest are reused.
    fn prepare(&self, name: &str, policy: &VersionPolicy) -> Result<ModelSet> {
        let on_disk = self.repository.versions(name)?;
        let wanted: Vec<u64> = match policy {
            VersionPolicy::Latest => on_disk.last().copied().into_iter().collect(),
            VersionPolicy::Specific(set) => set.iter().copied().collect(),
        };
        if wanted.is_empty() {
            return Err(Error::ModelNotFound(format!(
                "{name} (no version folders under {})",
                self.repository.root().join(name).display()
            )));
        }
        let current = self.models.load().get(name).cloned();
        let mut versions = BTreeMap::new();
        for number in wanted {
            let verified = self.repository.read_version(name, number)?;
            let running = current
                .as_ref()
                .and_then(|s| s.versions.get(&number))
                .filter(|v| v.manifest_digest == verified.files.manifest_digest);
            let version = match running {
                Some(v) => v.clone(),
                None => {
                    let metrics = self.metrics.for_model(name, &verified.config.version);
                    Arc::new(ModelVersion::start(
                        &verified,
                        number,
                        &self.runtime,
                        self.settings,
                        metrics,
                    )?)
                }
            };
            versions.insert(number, version);
        }
        Ok(ModelSet { versions })
    }
}

fn initial_policies(
    repository: &Repository,
    selections: &[ModelSelection],
) -> Result<BTreeMap<String, VersionPolicy>> {
    let mut policies = BTreeMap::new();
    if selections.is_empty() {
        for name in repository.model_names()? {
            policies.insert(name, VersionPolicy::Latest);
        }
        if policies.is_empty() {
            return Err(Error::Config(format!(
                "--models {}: no model folders",
                repository.root().display()
            )));
        }
        return Ok(policies);
    }
    for s in selections {
        let entry = policies
            .entry(s.name.clone())
            .or_insert_with(|| VersionPolicy::Specific(BTreeSet::new()));
        match (s.version, &mut *entry) {
            (None, _) => *entry = VersionPolicy::Latest,
            (Some(v), VersionPolicy::Specific(set)) => {
                set.insert(v);
            }
            (Some(_), VersionPolicy::Latest) => {}
        }
    }
    Ok(policies)
}
