//! OpenTelemetry spans of the engine's API requests, exported over OTLP
//! when `--otlp-endpoint` is set (`weir_conf::otlp::Exporter`; off by
//! default).
//!
//! One server span per request: HTTP requests but `/metrics` and the health
//! checks, and gRPC `ModelInfer` calls. A request that carries a valid W3C
//! `traceparent` (the gateway sends its upstream span's) gets its span in
//! that trace, as the child of the caller's span; its sampled flag decides
//! whether the span is recorded. OpenAI calls carry the GenAI semantic
//! conventions' attributes (`gen_ai.operation.name`, request and response
//! model, token usage, finish reasons) and are named
//! `{operation} {model}`; a streamed answer's span ends when its last event
//! has been sent.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use weir_conf::otlp::Exporter;

use crate::config::Args;
use crate::error::{Error, Result};

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts the exporter when `--otlp-endpoint` is set (once per process).
pub fn start(args: &Args) -> Result<()> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(());
    };
    if EXPORTER.get().is_some() {
        return Ok(());
    }
    let exporter = Exporter::start(
        endpoint,
        &args.otlp_service_name,
        args.otlp_sample_ratio,
        "weir-engine",
    )
    .map_err(|e| Error::Config(format!("--otlp-endpoint {endpoint}: {e}")))?;
    let _ = EXPORTER.set(exporter);
    tracing::info!(
        endpoint,
        service = args.otlp_service_name,
        sample_ratio = args.otlp_sample_ratio,
        "exporting request spans over OTLP"
    );
    Ok(())
}

/// One request's span. Its holders (the handler, a stream it returns, the
/// response body) share it; it ends when the last of them drops it.
#[derive(Clone)]
pub struct RequestSpan(Arc<Mutex<opentelemetry_sdk::trace::Span>>);

/// `traceparent` and `tracestate` read from request headers (HTTP headers
/// or gRPC metadata).
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl RequestSpan {
    /// Starts a server span named `name` under the caller's `traceparent`
    /// in `headers` (a new trace without one); `None` when spans are off.
    pub fn start(name: String, headers: &HeaderMap, attributes: Vec<KeyValue>) -> Option<Self> {
        let exporter = EXPORTER.get()?;
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = exporter
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&exporter.tracer, &parent);
        Some(Self(Arc::new(Mutex::new(span))))
    }

    fn with(&self, f: impl FnOnce(&mut opentelemetry_sdk::trace::Span)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Adds or replaces attributes.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.with(|s| {
            for kv in attributes {
                s.set_attribute(kv);
            }
        });
    }

    /// Renames the span (once the operation and model are known).
    pub fn rename(&self, name: String) {
        self.with(|s| s.update_name(name));
    }

    /// Marks the span failed with `message`.
    pub fn fail(&self, message: String) {
        self.with(|s| s.set_status(Status::error(message)));
    }
}

/// The GenAI attributes of a finished generation: token usage and the
/// finish reason.
pub fn usage(input_tokens: usize, output_tokens: usize, finish_reason: &str) -> [KeyValue; 3] {
    [
        KeyValue::new(
            "gen_ai.usage.input_tokens",
            i64::try_from(input_tokens).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "gen_ai.usage.output_tokens",
            i64::try_from(output_tokens).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(
                vec![opentelemetry::StringValue::from(finish_reason.to_owned())].into(),
            ),
        ),
    ]
}
