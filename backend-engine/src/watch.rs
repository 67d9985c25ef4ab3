//! Repository watch mode: file changes under `<repo>/<model>/` reload that
//! model (verify, then swap) after the changes settle.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Quiet time after the last change before a model is reloaded.
const SETTLE: Duration = Duration::from_millis(500);

/// Starts watching the engine's repository.
pub fn spawn(engine: Arc<Engine>) -> Result<()> {
    let root = engine.repository().root().to_path_buf();
    let canonical = root.canonicalize().unwrap_or_else(|_| root.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watch_root = canonical.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in &event.paths {
                if let Some(model) = model_of(&watch_root, path) {
                    let _ = tx.send(model);
                }
            }
        }
    })
    .map_err(|e| Error::Config(format!("--watch {}: {e}", root.display())))?;
    watcher
        .watch(&canonical, RecursiveMode::Recursive)
        .map_err(|e| Error::Config(format!("--watch {}: {e}", root.display())))?;
    tracing::info!(repository = %root.display(), "watching the repository for changes");
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while let Some(first) = rx.recv().await {
            let mut pending = BTreeSet::from([first]);
            // Collect until the repository has been quiet for SETTLE.
            while let Ok(Some(next)) = tokio::time::timeout(SETTLE, rx.recv()).await {
                pending.insert(next);
            }
            for model in pending {
                let served = engine.models().contains_key(&model);
                if !served && !engine.serves_all() {
                    continue;
                }
                match engine.load(&model, None).await {
                    Ok(report) => tracing::info!(?report, "watch: reloaded"),
                    Err(e) => tracing::warn!(model = %model, error = %e, "watch: reload refused"),
                }
            }
        }
    });
    Ok(())
}

fn model_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let first = rel.components().next()?;
    let name = first.as_os_str().to_str()?;
    (!name.starts_with('.')).then(|| name.to_string())
}
