//! Prometheus metrics, per model and version, served at `GET /metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::{Error, Result};

/// The engine's metric families and its registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    queue_depth: IntGaugeVec,
    batch_size: HistogramVec,
    inference_seconds: HistogramVec,
    ttft_seconds: HistogramVec,
    output_tokens: IntCounterVec,
    tokens_per_second: HistogramVec,
    rejected: IntCounterVec,
    kv_cache_bytes: IntGaugeVec,
    kv_cache_limit_bytes: IntGaugeVec,
    prefill_chunks: IntCounterVec,
    decode_steps_during_prefill: IntCounterVec,
    model_loads: IntCounterVec,
    /// Outstanding requests over all models: the `x-weir-queue-depth` value.
    total_depth: Arc<AtomicUsize>,
}

/// One model version's metric handles, resolved once at load.
#[derive(Clone)]
pub struct ModelMetrics {
    /// Requests admitted and not yet answered.
    pub queue_depth: IntGauge,
    /// Rows (tensor) or sequences (LM) per ONNX run.
    pub batch_size: Histogram,
    /// Duration of one ONNX run.
    pub inference_seconds: Histogram,
    /// From admission to the first generated token.
    pub ttft_seconds: Histogram,
    /// Generated tokens.
    pub output_tokens: IntCounter,
    /// Per finished sequence: generated tokens / time since its first token.
    pub tokens_per_second: Histogram,
    /// Requests refused because the queue was full.
    pub rejected: IntCounter,
    /// KV-cache bytes reserved by the running sequences (causal-lm).
    pub kv_cache_bytes: IntGauge,
    /// The KV-cache budget in bytes (causal-lm).
    pub kv_cache_limit_bytes: IntGauge,
    /// Prompt chunks run by prefills (causal-lm).
    pub prefill_chunks: IntCounter,
    /// Decode steps run while a prompt was part-way through its prefill
    /// (causal-lm).
    pub decode_steps_during_prefill: IntCounter,
    /// Shared engine-wide outstanding count.
    pub total_depth: Arc<AtomicUsize>,
}

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let labels = &["model", "version"];
        let err = |e: prometheus::Error| Error::Config(format!("metrics: {e}"));
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "weir_engine_queue_depth",
                "Requests admitted and not yet answered (waiting or running)",
            ),
            labels,
        )
        .map_err(err)?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "weir_engine_batch_size",
                "Rows (tensor models) or sequences (language models) per ONNX run",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            labels,
        )
        .map_err(err)?;
        let inference_seconds = HistogramVec::new(
            HistogramOpts::new("weir_engine_inference_duration_seconds", "One ONNX run")
                .buckets(buckets(0.000_05, 2.0, 18)),
            labels,
        )
        .map_err(err)?;
        let ttft_seconds = HistogramVec::new(
            HistogramOpts::new(
                "weir_engine_time_to_first_token_seconds",
                "From admission to the first generated token",
            )
            .buckets(buckets(0.000_1, 2.0, 18)),
            labels,
        )
        .map_err(err)?;
        let output_tokens = IntCounterVec::new(
            Opts::new("weir_engine_output_tokens_total", "Generated tokens"),
            labels,
        )
        .map_err(err)?;
        let tokens_per_second = HistogramVec::new(
            HistogramOpts::new(
                "weir_engine_output_tokens_per_second",
                "Per finished sequence: generated tokens per second of decoding",
            )
            .buckets(buckets(1.0, 2.0, 18)),
            labels,
        )
        .map_err(err)?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "weir_engine_rejected_total",
                "Requests refused because the model's queue was full",
            ),
            labels,
        )
        .map_err(err)?;
        let kv_cache_bytes = IntGaugeVec::new(
            Opts::new(
                "weir_engine_kv_cache_bytes",
                "KV-cache bytes reserved by admitted causal-lm sequences (prompt + max_tokens \
                 positions each), freed when a sequence ends or its client goes",
            ),
            labels,
        )
        .map_err(err)?;
        let kv_cache_limit_bytes = IntGaugeVec::new(
            Opts::new(
                "weir_engine_kv_cache_limit_bytes",
                "KV-cache budget of a causal-lm version (kv_cache_mb / --kv-cache-mb)",
            ),
            labels,
        )
        .map_err(err)?;
        let prefill_chunks = IntCounterVec::new(
            Opts::new(
                "weir_engine_prefill_chunks_total",
                "Prompt chunks run by causal-lm prefills (--prefill-chunk tokens each at most)",
            ),
            labels,
        )
        .map_err(err)?;
        let decode_steps_during_prefill = IntCounterVec::new(
            Opts::new(
                "weir_engine_decode_steps_during_prefill_total",
                "Decode steps of the running causal-lm sequences taken while a prompt was \
                 part-way through its chunked prefill",
            ),
            labels,
        )
        .map_err(err)?;
        let model_loads = IntCounterVec::new(
            Opts::new("weir_engine_model_loads_total", "Model (re)loads by result"),
            &["model", "result"],
        )
        .map_err(err)?;
        for c in [
            Box::new(queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batch_size.clone()),
            Box::new(inference_seconds.clone()),
            Box::new(ttft_seconds.clone()),
            Box::new(output_tokens.clone()),
            Box::new(tokens_per_second.clone()),
            Box::new(rejected.clone()),
            Box::new(kv_cache_bytes.clone()),
            Box::new(kv_cache_limit_bytes.clone()),
            Box::new(prefill_chunks.clone()),
            Box::new(decode_steps_during_prefill.clone()),
            Box::new(model_loads.clone()),
        ] {
            registry.register(c).map_err(err)?;
        }
        Ok(Metrics {
            registry,
            queue_depth,
            batch_size,
            inference_seconds,
            ttft_seconds,
            output_tokens,
            tokens_per_second,
            rejected,
            kv_cache_bytes,
            kv_cache_limit_bytes,
            prefill_chunks,
            decode_steps_during_prefill,
            model_loads,
            total_depth: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Handles for one model version.
    pub fn for_model(&self, model: &str, version: &str) -> ModelMetrics {
        let l = &[model, version];
        ModelMetrics {
            queue_depth: self.queue_depth.with_label_values(l),
            batch_size: self.batch_size.with_label_values(l),
            inference_seconds: self.inference_seconds.with_label_values(l),
            ttft_seconds: self.ttft_seconds.with_label_values(l),
            output_tokens: self.output_tokens.with_label_values(l),
            tokens_per_second: self.tokens_per_second.with_label_values(l),
            rejected: self.rejected.with_label_values(l),
            kv_cache_bytes: self.kv_cache_bytes.with_label_values(l),
            kv_cache_limit_bytes: self.kv_cache_limit_bytes.with_label_values(l),
            prefill_chunks: self.prefill_chunks.with_label_values(l),
            decode_steps_during_prefill: self.decode_steps_during_prefill.with_label_values(l),
            total_depth: self.total_depth.clone(),
        }
    }

    /// Counts one load attempt (`result` is `ok` or `error`).
    pub fn model_load(&self, model: &str, result: &str) {
        self.model_loads.with_label_values(&[model, result]).inc();
    }

    /// Outstanding requests over all models.
    pub fn total_depth(&self) -> usize {
        self.total_depth.load(Ordering::Relaxed)
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| Error::Config(format!("metrics: {e}")))?;
        String::from_utf8(buf).map_err(|e| Error::Config(format!("metrics: {e}")))
    }
}
