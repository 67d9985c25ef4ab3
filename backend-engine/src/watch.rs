//! Repository watch mode: a change under `<repo>/<model>/` reloads that
//! model (verify, then swap) once the change has settled.
//!
//! Only changes count. Reading a file is an event too (inotify reports every
//! open), and the engine reads the files of each model it loads: were reads
//! taken for changes, every reload would cause the next, forever.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, DebouncedEvent};
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::error::{Error, Result};

/// Quiet time after the last change to a file before its model is reloaded.
const SETTLE: Duration = Duration::from_millis(500);

/// Batches of changed models waiting for the reload task; past this the
/// debouncer's thread waits (its events keep gathering meanwhile).
const PENDING: usize = 16;

/// Starts watching the engine's repository.
pub fn spawn(engine: Arc<Engine>) -> Result<()> {
    let root = engine.repository().root().to_path_buf();
    let canonical = root.canonicalize().unwrap_or_else(|_| root.clone());
    let (tx, mut rx) = mpsc::channel::<BTreeSet<String>>(PENDING);
    let watch_root = canonical.clone();
    let watch_error = |e: notify::Error| Error::Config(format!("--watch {}: {e}", root.display()));
    let mut debouncer =
        notify_debouncer_full::new_debouncer(SETTLE, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) => {
                    let models = changed_models(&watch_root, &events);
                    if !models.is_empty() {
                        // The debouncer's own thread: blocking here is allowed.
                        let _ = tx.blocking_send(models);
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "watch: file events lost");
                    }
                }
            }
        })
        .map_err(watch_error)?;
    debouncer
        .watch(&canonical, RecursiveMode::Recursive)
        .map_err(watch_error)?;
    tracing::info!(repository = %root.display(), "watching the repository for changes");
    tokio::spawn(async move {
        // The debouncer (and its watcher) lives as long as this task.
        let _debouncer = debouncer;
        while let Some(models) = rx.recv().await {
            for model in models {
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

/// The models whose files changed in `events`; reads (open, access, close
/// without writing) are not changes.
fn changed_models(root: &Path, events: &[DebouncedEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| !e.kind.is_access())
        .flat_map(|e| &e.paths)
        .filter_map(|path| model_of(root, path))
        .collect()
}

fn model_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let first = rel.components().next()?;
    let name = first.as_os_str().to_str()?;
    (!name.starts_with('.')).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};

    use super::*;

    fn event(kind: EventKind, path: &str) -> DebouncedEvent {
        DebouncedEvent::new(
            notify::Event::new(kind).add_path(path.into()),
            std::time::Instant::now(),
        )
    }

    #[test]
    fn reads_are_not_changes_and_each_change_names_its_model() {
        let events = [
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Read)),
                "/r/mlp/1/model.onnx",
            ),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/r/mlp/1/model.toml",
            ),
            event(
                EventKind::Modify(ModifyKind::Any),
                "/r/tiny-lm/2/model.toml",
            ),
            event(EventKind::Create(CreateKind::Folder), "/r/.tmp123"),
            event(EventKind::Create(CreateKind::Folder), "/elsewhere/x"),
        ];
        assert_eq!(
            changed_models(Path::new("/r"), &events),
            BTreeSet::from(["tiny-lm".to_string()])
        );
    }
}
