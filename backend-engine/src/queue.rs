//! Admission control: each model version admits at most `capacity`
//! outstanding requests (waiting or running, tensor and generation alike).
//! Past that, requests are refused at once (HTTP 429 / RESOURCE_EXHAUSTED)
//! instead of queueing without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::metrics::ModelMetrics;

/// One model version's bounded queue.
pub struct Admission {
    outstanding: Arc<AtomicUsize>,
    capacity: usize,
    model: String,
    version: String,
    metrics: ModelMetrics,
}

/// A place in the queue; released when dropped (when the request is answered
/// or abandoned).
pub struct Slot {
    outstanding: Arc<AtomicUsize>,
    metrics: ModelMetrics,
}

impl Admission {
    /// A queue of `capacity` places.
    pub fn new(capacity: usize, model: &str, version: &str, metrics: ModelMetrics) -> Self {
        Admission {
            outstanding: Arc::new(AtomicUsize::new(0)),
            capacity,
            model: model.to_string(),
            version: version.to_string(),
            metrics,
        }
    }

    /// Takes a place, or fails with [`Error::QueueFull`].
    pub fn admit(&self) -> Result<Slot> {
        let taken = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics.rejected.inc();
            return Err(Error::QueueFull {
                model: self.model.clone(),
                version: self.version.clone(),
                capacity: self.capacity,
            });
        }
        self.metrics.queue_depth.inc();
        self.metrics.total_depth.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            outstanding: self.outstanding.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// The shared count of admitted places (for the batcher).
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.outstanding.clone()
    }

    /// Requests admitted and not yet released.
    pub fn depth(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.metrics.queue_depth.dec();
        self.metrics.total_depth.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending end of a model version's worker queue (a batcher, a decode
/// loop, an embedder): a full queue is [`Error::QueueFull`] (429 /
/// `RESOURCE_EXHAUSTED`), a stopped worker [`Error::Unavailable`].
pub struct JobSender<T> {
    tx: std::sync::mpsc::SyncSender<T>,
    model: String,
    version: String,
    capacity: usize,
}

impl<T> JobSender<T> {
    /// The queue of `model`'s `version`, holding `capacity` jobs.
    pub fn new(
        tx: std::sync::mpsc::SyncSender<T>,
        model: &str,
        version: &str,
        capacity: usize,
    ) -> Self {
        Self {
            tx,
            model: model.to_owned(),
            version: version.to_owned(),
            capacity,
        }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: T) -> Result<()> {
        use std::sync::mpsc::TrySendError;
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Error::QueueFull {
                model: self.model.clone(),
                version: self.version.clone(),
                capacity: self.capacity,
            },
            TrySendError::Disconnected(_) => Error::Unavailable(self.model.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn refuses_past_capacity_and_frees_on_drop() {
        let metrics = Metrics::new().unwrap();
        let q = Admission::new(2, "m", "1", metrics.for_model("m", "1"));
        let a = q.admit().unwrap();
        let _b = q.admit().unwrap();
        assert!(matches!(
            q.admit(),
            Err(Error::QueueFull { capacity: 2, .. })
        ));
        assert_eq!(metrics.total_depth(), 2);
        drop(a);
        assert_eq!(q.depth(), 1);
        assert!(q.admit().is_ok());
    }
}
