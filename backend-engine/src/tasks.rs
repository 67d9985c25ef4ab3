//! Async tasks (`/v1/tasks`): a completion request runs in the background;
//! its status and result are kept until `ttl` after it finishes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Protocol};

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Admitted, not started.
    Queued,
    /// Generating.
    Running,
    /// Done; `result` holds the completion.
    Succeeded,
    /// Done; `error` says why.
    Failed,
}

#[derive(Debug, Clone)]
struct TaskRecord {
    status: TaskStatus,
    created: u64,
    finished: Option<(Instant, u64)>,
    result: Option<serde_json::Value>,
    error: Option<serde_json::Value>,
}

/// All tasks, finished ones until they expire.
pub struct TaskStore {
    tasks: Mutex<HashMap<String, TaskRecord>>,
    ttl: Duration,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl TaskStore {
    /// A store keeping finished tasks for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TaskStore {
            tasks: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, TaskRecord>) -> R) -> R {
        let mut guard = match self.tasks.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Registers a queued task; returns its id.
    pub fn create(&self) -> String {
        let id = format!("task-{}", uuid::Uuid::new_v4().simple());
        self.purge();
        self.with(|t| {
            t.insert(
                id.clone(),
                TaskRecord {
                    status: TaskStatus::Queued,
                    created: unix_now(),
                    finished: None,
                    result: None,
                    error: None,
                },
            )
        });
        id
    }

    /// Marks a task running.
    pub fn running(&self, id: &str) {
        self.with(|t| {
            if let Some(r) = t.get_mut(id) {
                r.status = TaskStatus::Running;
            }
        });
    }

    /// Records the outcome.
    pub fn finish(&self, id: &str, outcome: Result<serde_json::Value, Error>) {
        self.with(|t| {
            if let Some(r) = t.get_mut(id) {
                r.finished = Some((Instant::now(), unix_now()));
                match outcome {
                    Ok(v) => {
                        r.status = TaskStatus::Succeeded;
                        r.result = Some(v);
                    }
                    Err(e) => {
                        r.status = TaskStatus::Failed;
                        r.error = Some(e.body(Protocol::OpenAi)["error"].clone());
                    }
                }
            }
        });
    }

    /// The task as JSON, or [`Error::TaskNotFound`].
    pub fn get(&self, id: &str) -> Result<serde_json::Value, Error> {
        self.purge();
        self.with(|t| {
            let r = t
                .get(id)
                .ok_or_else(|| Error::TaskNotFound(id.to_string()))?;
            let mut v = serde_json::json!({
                "task_id": id,
                "object": "task",
                "status": r.status,
                "created": r.created,
            });
            if let Some((_, at)) = r.finished {
                v["finished"] = at.into();
            }
            if let Some(result) = &r.result {
                v["result"] = result.clone();
            }
            if let Some(error) = &r.error {
                v["error"] = error.clone();
            }
            Ok(v)
        })
    }

    /// Drops finished tasks older than the ttl.
    pub fn purge(&self) {
        let ttl = self.ttl;
        self.with(|t| {
            t.retain(|_, r| r.finished.is_none_or(|(at, _)| at.elapsed() < ttl));
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn lifecycle_and_expiry() {
        let store = TaskStore::new(Duration::ZERO);
        let id = store.create();
        assert_eq!(store.get(&id).unwrap()["status"], "queued");
        store.running(&id);
        assert_eq!(store.get(&id).unwrap()["status"], "running");
        store.finish(&id, Ok(serde_json::json!({"x": 1})));
        // A zero ttl expires a finished task at once.
        assert!(matches!(store.get(&id), Err(Error::TaskNotFound(_))));

        let kept = TaskStore::new(Duration::from_secs(3600));
        let id = kept.create();
        kept.finish(&id, Err(Error::InvalidRequest("bad".into())));
        let v = kept.get(&id).unwrap();
        assert_eq!(v["status"], "failed");
        assert_eq!(v["error"]["message"], "bad");
    }
}
