//! The KV-cache budget of a causal-lm version: each sequence reserves
//! prompt + `max_tokens` positions when admitted and gives them back when it
//! ends or its client goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;

use crate::error::{Error, Result};
use crate::metrics::ModelMetrics;

/// The KV-cache budget of one version, shared by its sequences; the bytes
/// reserved show in `weir_engine_kv_cache_bytes`.
#[derive(Debug)]
pub struct KvBudget {
    used: AtomicUsize,
    limit: usize,
    per_token: usize,
    gauge: IntGauge,
}

/// A sequence's share of the budget, returned when dropped.
#[derive(Debug)]
pub struct KvReservation {
    budget: Arc<KvBudget>,
    bytes: usize,
}

impl KvReservation {
    /// Gives the share back now (once; dropping does it otherwise), before
    /// the sequence's last event leaves, so that a client holding its
    /// answer can count on the room it used.
    pub fn release(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
            self.budget.gauge.sub(gauge_value(bytes));
        }
    }
}

impl Drop for KvReservation {
    fn drop(&mut self) {
        self.release();
    }
}

impl KvBudget {
    /// A budget of `mb` MiB for tokens costing `per_token` bytes.
    pub fn new(mb: usize, per_token: usize, metrics: &ModelMetrics) -> Arc<Self> {
        let limit = mb.saturating_mul(1 << 20);
        metrics.kv_cache_limit_bytes.set(gauge_value(limit));
        Arc::new(KvBudget {
            used: AtomicUsize::new(0),
            limit,
            per_token: per_token.max(1),
            gauge: metrics.kv_cache_bytes.clone(),
        })
    }

    /// Reserves room for `tokens` cached positions.
    pub fn reserve(self: &Arc<Self>, model: &str, tokens: usize) -> Result<KvReservation> {
        let bytes = tokens.saturating_mul(self.per_token);
        if bytes > self.limit {
            return Err(Error::InvalidRequest(format!(
                "prompt + max_tokens = {tokens} tokens need {} MiB of KV cache, more than \
                 model '{model}''s whole budget of {} MiB (kv_cache_mb / --kv-cache-mb)",
                bytes.div_ceil(1 << 20),
                self.limit >> 20
            )));
        }
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used + bytes > self.limit {
                return Err(Error::KvCacheFull {
                    model: model.to_string(),
                    needed_mb: bytes.div_ceil(1 << 20),
                    free_mb: (self.limit - used) >> 20,
                });
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.gauge.add(gauge_value(bytes));
                    return Ok(KvReservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
