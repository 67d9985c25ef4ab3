//! The OTLP/gRPC span exporter that both binaries start from their tracing
//! settings (`[server.tracing]` for weir, `--otlp-*` flags for
//! weir-engine): spans are batched and exported from a background thread
//! (every second, or when 512 are waiting), over a gRPC channel that
//! connects lazily on a one-thread runtime of its own; a full queue or a
//! collector that is down drops spans, never requests.
//!
//! Sampling is parent-based: a caller's `traceparent` decides for the traces
//! it started (its sampled flag), and new traces are recorded at the given
//! ratio.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};

/// A running exporter and its tracer; keep it for the process's life
/// (dropping it stops the export).
pub struct Exporter {
    /// Starts the spans.
    pub tracer: SdkTracer,
    _provider: SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The exporter's runtime could not start.
    #[error("cannot start the OTLP exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The endpoint or the exporter's settings were refused.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

impl Exporter {
    /// Starts exporting to `endpoint` (an OTLP/gRPC collector URL such as
    /// `http://127.0.0.1:4317`) as `service_name`, recording
    /// `sample_ratio` (0.0-1.0) of the traces that start here; `scope` names
    /// the tracer (the instrumentation scope).
    pub fn start(
        endpoint: &str,
        service_name: &str,
        sample_ratio: f64,
        scope: &'static str,
    ) -> Result<Self, OtlpError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-otlp")
            .enable_all()
            .build()?;
        // The channel's background task is spawned on this runtime; entering
        // it (not blocking on it) works from inside another runtime too.
        let provider = {
            let _entered = runtime.enter();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_owned())
                .with_timeout(Duration::from_secs(5))
                .build()?;
            let batch = BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .build();
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build();
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service_name.to_owned())
                .build();
            SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    sample_ratio,
                ))))
                .with_resource(resource)
                .build()
        };
        Ok(Self {
            tracer: provider.tracer(scope),
            _provider: provider,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Exporter {
    /// Lets the runtime go without waiting for it, so that an exporter may
    /// be dropped inside another runtime.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
