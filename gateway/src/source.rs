//! The file config source: load once, then watch the file and apply every
//! valid change.
//!
//! The parent directory is watched (editors and `mv` replace the file rather
//! than write it in place). Bursts of events are coalesced; a change whose
//! parsed document equals the live one is ignored.

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
        if rt.snapshot.source == snapshot.source {
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
pub async fn watch_file(shared: Arc<Shared>, path: PathBuf) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = path.file_name().map(|n| n.to_os_string());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name)
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    tracing::info!(path = %path.display(), "watching config file");
    while rx.recv().await.is_some() {
        // Coalesce a burst (write + rename + chmod ...) into one reload.
        while let Ok(Some(())) = tokio::time::timeout(COALESCE, rx.recv()).await {}
        reload_file(&shared, &path).await;
    }
    drop(watcher);
    Ok(())
}
