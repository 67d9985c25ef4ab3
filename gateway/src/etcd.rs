//! The etcd config source, gateway side: every update of the watched prefix
//! becomes a snapshot that is published like a file reload (prepare, then
//! swap), or is rejected with its problem list while the last good one keeps
//! serving.
//!
//! Each applied config is also written to the last-good cache (when one is
//! configured) by a separate task, so the fsync never delays the next update.
//! While nothing has been applied yet and etcd cannot be reached, or holds
//! an invalid config (one bad raw write), the cache is served instead.
//! `/readyz` says so, and while etcd's newest state is invalid it names the
//! revision served, etcd's revision and the invalid keys
//! (`weir_config_invalid_keys` counts them).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use weir_conf::etcd::{CacheFile, EtcdSettings, Update, WatchStatus, Watcher};
use weir_conf::{Config, ConfigError, Problems};

use crate::state::{Origin, Shared};

/// Follows etcd until the task is dropped.
pub async fn run(shared: Arc<Shared>, base: Config, settings: EtcdSettings) {
    let location = settings.to_string();
    if !base.pools.is_empty() || !base.routes.is_empty() {
        tracing::info!(
            etcd = location,
            "pools and routes come from etcd; those in the config file are not used"
        );
    }
    let watcher = Watcher::spawn(settings.clone());
    let mut updates = watcher.updates();
    let mut status = watcher.status();
    let cache = settings.cache.clone().map(CacheWriter::spawn);
    let mut source = Source {
        shared,
        base,
        settings,
        location,
        cache,
        cache_tried: false,
        resyncs_seen: 0,
        invalid: None,
    };
    source
        .shared
        .set_note(Some(format!("waiting for {}", source.location)));
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    break;
                }
                let update = updates.borrow_and_update().clone();
                if let Some(update) = update {
                    source.apply(&update).await;
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let st = status.borrow_and_update().clone();
                source.on_status(&st).await;
            }
        }
    }
    tracing::error!("etcd watcher stopped");
}

struct Source {
    shared: Arc<Shared>,
    base: Config,
    settings: EtcdSettings,
    location: String,
    cache: Option<CacheWriter>,
    cache_tried: bool,
    resyncs_seen: u64,
    /// etcd's newest state, when it is invalid: its revision and its
    /// invalid keys in one line.
    invalid: Option<(i64, String)>,
}

/// Longest list of invalid keys in `/readyz`.
const SUMMARY: usize = 400;

impl Source {
    /// Builds and publishes one state of the prefix.
    async fn apply(&mut self, update: &Update) {
        let metrics = &self.shared.metrics;
        let origin_text = format!("{} revision {}", self.location, update.revision);
        let snapshot = match weir_conf::etcd::build(&self.base, &update.docs, &self.settings.prefix)
        {
            Ok(s) => s,
            Err(e) => {
                self.shared.reject(&origin_text, &e);
                self.rejected(update.revision, &e).await;
                return;
            }
        };
        self.invalid = None;
        metrics.invalid_keys.set(0);
        let unchanged = self.shared.current().is_some_and(|rt| {
            matches!(rt.origin, Origin::Etcd { .. }) && rt.snapshot.source == snapshot.source
        });
        if unchanged {
            // Same config at a newer revision (e.g. an identical put, or
            // an invalid key deleted again).
            metrics.revision.set(update.revision);
            self.shared.set_note(None);
            tracing::debug!(origin = origin_text, "config unchanged");
            return;
        }
        let origin = Origin::Etcd {
            location: self.location.clone(),
            revision: update.revision,
        };
        match self.shared.publish(snapshot, origin).await {
            Ok(generation) => {
                metrics
                    .apply_seconds
                    .observe(update.received.elapsed().as_secs_f64());
                self.shared.set_note(None);
                tracing::info!(origin = origin_text, generation, "config applied");
                if let Some(cache) = &self.cache {
                    cache.store(CacheFile::new(
                        &self.settings.prefix,
                        update.revision,
                        &update.docs,
                    ));
                }
            }
            Err(e) => self.shared.reject(&origin_text, &e),
        }
    }

    /// Records an invalid state of etcd: counts its invalid keys, serves the
    /// last-good cache when nothing is live yet, and says what is served.
    async fn rejected(&mut self, revision: i64, error: &ConfigError) {
        let problems = match error {
            ConfigError::Invalid { problems } => problems.clone(),
            other => {
                let mut p = Problems::default();
                p.push(self.settings.prefix.clone(), other.to_string());
                p
            }
        };
        let summary = weir_conf::etcd::summary(&problems, SUMMARY);
        self.invalid = Some((revision, summary.clone()));
        if self.shared.current().is_none() && !self.cache_tried {
            self.cache_tried = true;
            let why = format!("etcd revision {revision} is invalid ({summary})");
            self.serve_cache(&why).await;
        } else {
            self.shared.set_note(self.invalid_note());
        }
        // Last, so that whoever sees the count also finds the note.
        let keys = weir_conf::etcd::invalid_keys(&problems).len();
        self.shared
            .metrics
            .invalid_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// What is served while etcd's newest state is invalid, and why.
    fn invalid_note(&self) -> Option<String> {
        let (revision, summary) = self.invalid.as_ref()?;
        let current = self.shared.current();
        let serving = match current.as_deref().map(|rt| &rt.origin) {
            Some(Origin::Etcd { revision, .. }) => format!("serving etcd revision {revision}"),
            Some(Origin::EtcdCache { path, revision }) => {
                format!("serving the last-good cache {path} (etcd revision {revision})")
            }
            Some(other) => format!("serving {}", other.kind()),
            None => "no config".to_owned(),
        };
        Some(format!(
            "{serving}; etcd is at revision {revision}, which is invalid: {summary}"
        ))
    }

    /// Tracks the connection; serves the cache when etcd is unreachable and
    /// nothing else has been applied.
    async fn on_status(&mut self, st: &WatchStatus) {
        let metrics = &self.shared.metrics;
        metrics.etcd_connected.set(i64::from(st.connected));
        if st.resyncs > self.resyncs_seen {
            metrics.etcd_resyncs.inc_by(st.resyncs - self.resyncs_seen);
            self.resyncs_seen = st.resyncs;
        }
        if st.connected {
            let from_etcd = self
                .shared
                .current()
                .is_some_and(|rt| matches!(rt.origin, Origin::Etcd { .. }));
            if from_etcd {
                self.shared.set_note(self.invalid_note());
            }
            return;
        }
        let error = st.last_error.as_deref().unwrap_or("not connected");
        let current = self.shared.current();
        match current.as_deref().map(|rt| &rt.origin) {
            Some(Origin::Etcd { revision, .. }) => self.shared.set_note(Some(format!(
                "etcd unreachable ({error}); serving revision {revision} until it is back"
            ))),
            Some(Origin::EtcdCache { path, revision }) => self.shared.set_note(Some(format!(
                "serving the last-good cache {path} (etcd revision {revision}); etcd unreachable: {error}"
            ))),
            Some(_) => {}
            None if !self.cache_tried => {
                self.cache_tried = true;
                self.serve_cache(&format!("etcd unreachable ({error})"))
                    .await;
            }
            None => self.shared.set_note(Some(format!(
                "no config: etcd unreachable ({error}) and no usable last-good cache"
            ))),
        }
    }

    /// Serves the last-good cache while etcd has no config to give, `why`.
    async fn serve_cache(&mut self, why: &str) {
        let Some(path) = self.settings.cache.clone() else {
            self.shared.set_note(Some(format!(
                "no config: {why} and no last-good cache configured"
            )));
            tracing::error!(
                etcd = self.location,
                why,
                "no config from etcd and no cache configured; not ready"
            );
            return;
        };
        let shown = path.display().to_string();
        let cache = match CacheFile::read(&path, &self.settings.prefix) {
            Ok(c) => c,
            Err(e) => {
                self.shared.set_note(Some(format!(
                    "no config: {why} and the last-good cache is unusable ({e})"
                )));
                tracing::error!(etcd = self.location, why, cache = %e, "no config to serve; not ready");
                return;
            }
        };
        let snapshot =
            match weir_conf::etcd::build(&self.base, &cache.docs(), &self.settings.prefix) {
                Ok(s) => s,
                Err(e) => {
                    self.shared.reject(&shown, &e);
                    self.shared.set_note(Some(format!(
                        "no config: {why} and the last-good cache is invalid"
                    )));
                    return;
                }
            };
        let origin = Origin::EtcdCache {
            path: shown.clone(),
            revision: cache.revision,
        };
        match self.shared.publish(snapshot, origin).await {
            Ok(generation) => {
                tracing::warn!(
                    cache = shown,
                    revision = cache.revision,
                    generation,
                    why,
                    "serving the last-good cache until etcd gives a valid config"
                );
                self.shared.set_note(Some(format!(
                    "serving the last-good cache {shown} (etcd revision {}); {why}",
                    cache.revision
                )));
            }
            Err(e) => self.shared.reject(&shown, &e),
        }
    }
}

/// Writes the last-good cache off the apply path, newest state first: a
/// burst of updates costs one write of the last one.
struct CacheWriter {
    tx: watch::Sender<Option<CacheFile>>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CacheWriter {
    fn spawn(path: PathBuf) -> Self {
        let (tx, mut rx) = watch::channel::<Option<CacheFile>>(None);
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let Some(cache) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || cache.write(&path)).await;
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the last-good cache"),
                    Err(e) => tracing::warn!(error = %e, "cache writer failed"),
                }
            }
        });
        Self {
            tx,
            _task: AbortOnDrop(task.abort_handle()),
        }
    }

    fn store(&self, cache: CacheFile) {
        self.tx.send_replace(Some(cache));
    }
}
