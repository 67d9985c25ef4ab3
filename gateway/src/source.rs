//! The file config source: load once, then watch the file and apply every
//! valid change.
//!
//! The parent directory is watched (editors and `mv` replace the file rather
//! than write it in place). A burst of events is coalesced by a timer the
//! first one arms; reads of the file (ours included) are not changes; a
//! change whose parsed document equals the live one is ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::state::{Origin, Shared};

/// Quiet time after the last file event before the file is read.
const COALESCE: Duration = Duration::from_millis(30);

/// Reads `path` and publishes it if it is valid and differs from the live config.
pub async fn reload_file(shared: &Shared, path: &Path) {
    let origin = path.display().to_string();
    let snapshot = match weir_conf::load_file(path) {
        Ok(s) => s,
        Err(e) => {
            shared.reject(&origin, &e);
            return;
        }
    };
    if let Some(rt) = shared.current() {
        // The built snapshots, not the documents: files they read (word
        // lists, CA bundles, secrets) may have changed under the same text.
        if *rt.snapshot == snapshot {
            tracing::debug!(origin, "config unchanged");
            return;
        }
        if rt.snapshot.server != snapshot.server {
            tracing::warn!(
                origin,
                "changes to [server] take effect only after a restart"
            );
        }
    }
    match shared.publish(snapshot, Origin::File(origin.clone())).await {
        Ok(generation) => tracing::info!(origin, generation, "config applied"),
        Err(e) => shared.reject(&origin, &e),
    }
}

/// Watches `path` until the returned task is dropped or the process ends.
///
/// Event-driven: the watcher's thread sleeps in the kernel until the
/// directory changes, and a burst of events is coalesced by a timer armed
/// only then. (A polling debouncer woke 133 times a second on an idle
/// gateway, on the proxy's CPU.)
pub async fn watch_file(shared: Arc<Shared>, path: PathBuf) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|n| n.to_os_string());
    // One pending reload is enough: it reads the file as it is by then.
    let (tx, mut rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let changed = match event {
            Ok(event) => {
                !event.kind.is_access()
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref())
            }
            Err(e) => {
                // Events were lost: the file may have changed unseen, and
                // reading it again costs nothing when it did not.
                tracing::warn!(error = %e, "config watch: file events lost");
                true
            }
        };
        if changed {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tracing::info!(path = %path.display(), "watching config file");
    while rx.recv().await.is_some() {
        // Read once the burst (an editor's write, rename and chmod) is over.
        while let Ok(more) = tokio::time::timeout(COALESCE, rx.recv()).await {
            if more.is_none() {
                return Ok(());
            }
        }
        reload_file(&shared, &path).await;
    }
    drop(watcher);
    Ok(())
}

/// Refreshes the live config's backend host names ([`crate::resolve`]) for as long as the process runs,
/// every pool's shortest `resolve.refresh_ms`, rebuilding the runtime when
/// an answer changed.
pub async fn watch_names(shared: Arc<Shared>) {
    loop {
        let live = shared.current();
        let every = live
            .as_ref()
            .and_then(|rt| {
                rt.snapshot
                    .pools
                    .iter()
                    .filter(|p| !p.names.is_empty())
                    .map(|p| p.refresh)
                    .min()
            })
            .unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(every).await;
        let Some(rt) = shared.current() else {
            continue;
        };
        if rt.snapshot.pools.iter().all(|p| p.names.is_empty()) {
            continue;
        }
        if shared
            .resolver
            .refresh(&rt.snapshot, false, &shared.metrics)
            .await
            && let Err(e) = shared.republish().await
        {
            tracing::warn!(error = %e, "rebuild after a name changed its addresses failed");
        }
    }
}
