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
    genai: GenAiFamilies,
    /// Outstanding requests over all models: the `x-weir-queue-depth` value.
    total_depth: Arc<AtomicUsize>,
}

/// The OpenTelemetry GenAI metrics in Prometheus form, by
/// `gen_ai_request_model`, `gen_ai_response_model` (both the model's name)
/// and `weir_model_version`.
#[derive(Clone)]
struct GenAiFamilies {
    duration: HistogramVec,
    ttft: HistogramVec,
    tpot: HistogramVec,
    tokens: HistogramVec,
}

/// The GenAI labels of the engine's metrics.
const GENAI_LABELS: [&str; 3] = [
    "gen_ai_request_model",
    "gen_ai_response_model",
    "weir_model_version",
];

impl GenAiFamilies {
    fn new() -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        };
        let mut token_labels = vec!["gen_ai_token_type"];
        token_labels.extend(GENAI_LABELS);
        Ok(Self {
            duration: histogram(
                "gen_ai_server_request_duration_seconds",
                "A generation from admission to its last token",
                vec![
                    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92,
                ],
                &GENAI_LABELS,
            )?,
            ttft: histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Admission to the first generated token",
                vec![
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0,
                ],
                &GENAI_LABELS,
            )?,
            tpot: histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "First to last generated token per token after the first",
                vec![
                    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                ],
                &GENAI_LABELS,
            )?,
            tokens: histogram(
                "gen_ai_client_token_usage",
                "Tokens per generation (gen_ai_token_type input = prompt, output = generated)",
                vec![
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                    1048576.0, 4194304.0,
                ],
                &token_labels,
            )?,
        })
    }
}

/// One model version's GenAI handles.
#[derive(Clone)]
pub struct GenAi {
    duration: Histogram,
    ttft: Histogram,
    tpot: Histogram,
    input_tokens: Histogram,
    output_tokens: Histogram,
}

impl GenAi {
    /// The first token of a generation admitted `ttft` ago.
    pub fn first_token(&self, ttft: std::time::Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    /// A finished generation: admitted, first token, now; prompt and
    /// generated token counts.
    pub fn finished(
        &self,
        admitted: std::time::Instant,
        first: Option<std::time::Instant>,
        now: std::time::Instant,
        prompt: usize,
        generated: usize,
    ) {
        self.duration
            .observe(now.duration_since(admitted).as_secs_f64());
        self.input_tokens.observe(prompt as f64);
        self.output_tokens.observe(generated as f64);
        if let Some(first) = first
            && generated >= 2
        {
            self.tpot
                .observe(now.duration_since(first).as_secs_f64() / (generated - 1) as f64);
        }
    }
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
    /// The GenAI conventions' metrics.
    pub genai: GenAi,
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
        let genai = GenAiFamilies::new().map_err(err)?;
        // Whether the process sandbox is in force (crate::sandbox): set once
        // at start, before the metrics exist.
        let sandbox = prometheus::IntGauge::new(
            "weir_engine_sandbox_enabled",
            "1 when the process runs in its sandbox (no_new_privs, Landlock, seccomp), else 0",
        )
        .map_err(err)?;
        sandbox.set(i64::from(
            crate::sandbox::APPLIED
                .get()
                .is_some_and(weir_conf::sandbox::Report::enabled),
        ));
        registry.register(Box::new(sandbox)).map_err(err)?;
        for c in [
            Box::new(genai.duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(genai.ttft.clone()),
            Box::new(genai.tpot.clone()),
            Box::new(genai.tokens.clone()),
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
            genai,
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
            genai: GenAi {
                duration: self
                    .genai
                    .duration
                    .with_label_values(&[model, model, version]),
                ttft: self.genai.ttft.with_label_values(&[model, model, version]),
                tpot: self.genai.tpot.with_label_values(&[model, model, version]),
                input_tokens: self
                    .genai
                    .tokens
                    .with_label_values(&["input", model, model, version]),
                output_tokens: self
                    .genai
                    .tokens
                    .with_label_values(&["output", model, model, version]),
            },
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
