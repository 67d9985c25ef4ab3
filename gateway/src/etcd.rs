//! The etcd config source, gateway side: every update of the watched prefix
//! becomes a snapshot that is published like a file reload (prepare, then
//! swap), or is rejected with its problem list while the last good one keeps
//! serving.
//!
//! Each applied config is also written to the last-good cache (when one is
//! configured) by a separate task, so the fsync never delays the next update.
//! While etcd cannot be reached and nothing has been applied yet, the cache
//! is served instead; `/readyz` says so.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use weir_conf::Config;
use weir_conf::etcd::{CacheFile, EtcdSettings, Update, WatchStatus, Watcher};

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
}

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
                if self.shared.current().is_none() {
                    let mut why = e.to_string().lines().collect::<Vec<_>>().join(" ");
                    why.truncate(why.floor_char_boundary(500));
                    self.shared
                        .set_note(Some(format!("no config: {origin_text} is invalid: {why}")));
                }
                return;
            }
        };
        let unchanged = self.shared.current().is_some_and(|rt| {
            matches!(rt.origin, Origin::Etcd { .. }) && rt.snapshot.source == snapshot.source
        });
        if unchanged {
            // Same config at a newer revision (e.g. an identical put).
            metrics.revision.set(update.revision);
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
                self.shared.set_note(None);
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
                self.serve_cache(error).await;
            }
            None => self.shared.set_note(Some(format!(
                "no config: etcd unreachable ({error}) and no usable last-good cache"
            ))),
        }
    }

    async fn serve_cache(&mut self, error: &str) {
        let Some(path) = self.settings.cache.clone() else {
            self.shared.set_note(Some(format!(
                "no config: etcd unreachable ({error}) and no last-good cache configured"
            )));
            tracing::error!(
                etcd = self.location,
                error,
                "etcd unreachable and no cache configured; not ready"
            );
            return;
        };
        let shown = path.display().to_string();
        let cache = match CacheFile::read(&path, &self.settings.prefix) {
            Ok(c) => c,
            Err(e) => {
                self.shared.set_note(Some(format!(
                    "no config: etcd unreachable ({error}) and the last-good cache is unusable ({e})"
                )));
                tracing::error!(etcd = self.location, error, cache = %e, "no config to serve; not ready");
                return;
            }
        };
        let snapshot =
            match weir_conf::etcd::build(&self.base, &cache.docs(), &self.settings.prefix) {
                Ok(s) => s,
                Err(e) => {
                    self.shared.reject(&shown, &e);
                    self.shared.set_note(Some(format!(
                        "no config: etcd unreachable ({error}) and the last-good cache is invalid"
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
                    error,
                    "etcd unreachable: serving the last-good cache until it is back"
                );
                self.shared.set_note(Some(format!(
                    "serving the last-good cache {shown} (etcd revision {}); etcd unreachable: {error}",
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
