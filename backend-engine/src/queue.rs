//! Admission control: each model version admits at most `capacity`
//! outstanding requests (waiting or running, tensor and generation alike).
//! Past that, requests are refused at once (HTTP 429 / RESOURCE_EXHAUSTED)
//! instead of queueing without bound. Also both ends of a worker's queue:
//! [`JobSender`] and, for the decode loops, [`Intake`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

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
    released: bool,
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
            released: false,
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

impl Slot {
    /// Gives the place back now (once; dropping does it otherwise). A
    /// worker calls this before the last part of an answer leaves, so that
    /// a client holding its answer never finds its own request still
    /// counted in the queue depth.
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.metrics.queue_depth.dec();
            self.metrics.total_depth.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Frees `slot`, then sends `answer` (see [`Slot::release`]).
pub fn answer<T>(mut slot: Slot, reply: tokio::sync::oneshot::Sender<T>, answer: T) {
    slot.release();
    let _ = reply.send(answer);
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

/// The receiving end of a decode loop's queue (byte-level and causal-lm
/// alike): jobs that arrived and wait for a place in the running batch.
pub struct Intake<T> {
    rx: Receiver<T>,
    waiting: VecDeque<T>,
    open: bool,
}

/// How long a decode loop waits for new work when every active sequence is
/// paused on a slow reader.
const PAUSED_WAIT: Duration = Duration::from_millis(2);

impl<T> Intake<T> {
    /// Jobs from `rx`.
    pub fn new(rx: Receiver<T>) -> Self {
        Self {
            rx,
            waiting: VecDeque::new(),
            open: true,
        }
    }

    /// Takes every job already queued; when `idle` (nothing running) and
    /// none waits, first blocks for one. False once the queue is closed
    /// and drained while idle: the loop should end.
    pub fn collect(&mut self, idle: bool) -> bool {
        if idle && self.waiting.is_empty() {
            match self.rx.recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(_) => return false,
            }
        }
        while self.open {
            match self.rx.try_recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.open = false,
            }
        }
        true
    }

    /// The oldest waiting jobs, at most `room` of them.
    pub fn take(&mut self, room: usize) -> std::collections::vec_deque::Drain<'_, T> {
        self.waiting.drain(..room.min(self.waiting.len()))
    }

    /// Every running sequence waits on a slow reader: waits a moment, or
    /// until a new job arrives.
    pub fn pause(&mut self) {
        if !self.open {
            std::thread::sleep(PAUSED_WAIT);
            return;
        }
        match self.rx.recv_timeout(PAUSED_WAIT) {
            Ok(job) => self.waiting.push_back(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.open = false,
        }
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
        let mut c = q.admit().unwrap();
        c.release();
        c.release();
        assert_eq!(q.depth(), 1);
        drop(c);
        assert_eq!(metrics.total_depth(), 1);
    }

    #[test]
    fn intake_takes_in_order_and_ends_when_closed_and_drained() {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let mut intake = Intake::new(rx);
        for job in 1..=3 {
            tx.send(job).unwrap();
        }
        drop(tx);
        assert!(intake.collect(true));
        assert_eq!(intake.take(2).collect::<Vec<_>>(), vec![1, 2]);
        intake.pause();
        assert!(intake.collect(false));
        assert_eq!(intake.take(5).collect::<Vec<_>>(), vec![3]);
        assert!(!intake.collect(true));
    }
}
