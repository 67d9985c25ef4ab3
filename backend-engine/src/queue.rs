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
