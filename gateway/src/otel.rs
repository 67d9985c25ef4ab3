//! OpenTelemetry spans of each request, exported over OTLP/gRPC when
//! `[server.tracing] otlp_endpoint` is set (off by default).
//!
//! Three spans per request, in the caller's trace when it sent a valid
//! `traceparent` (its sampled flag decides), else in a new trace recorded at
//! `sample_ratio`:
//!
//! - `weir.request` (server): the whole exchange, with the method, path,
//!   status, route, arm, backend and the choice's reason;
//! - `weir.route` (internal): authentication, limits, route and arm choice;
//! - `weir.upstream` (client): from the first backend choice to the end of
//!   the answer; its span id is the parent in the `traceparent` sent
//!   upstream, so the engine's spans hang below it.
//!
//! Spans are batched and exported by `weir_conf::otlp::Exporter`; a full
//! queue or a collector that is down drops spans, never requests.

use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use weir_conf::otlp::Exporter;

use crate::trace::TraceContext;

/// The exporter and its tracer; kept for the process's life.
pub struct Otel {
    exporter: Exporter,
}

impl Otel {
    /// Starts the exporter for `settings` (`weir_conf::otlp`).
    pub fn start(settings: &weir_conf::Tracing) -> anyhow::Result<Self> {
        let exporter = Exporter::start(
            &settings.endpoint,
            &settings.service_name,
            settings.sample_ratio,
            "weir",
        )?;
        Ok(Self { exporter })
    }

    /// Opens the request and route spans of a request that started at
    /// `start`, under the caller's `traceparent` when valid.
    pub fn begin(&self, incoming: Option<TraceContext>, start: SystemTime) -> RequestSpans {
        let parent = match incoming {
            Some(t) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(t.trace_id),
                SpanId::from_bytes(t.span_id),
                TraceFlags::new(t.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let request = self
            .exporter
            .tracer
            .span_builder("weir.request")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .start_with_context(&self.exporter.tracer, &parent);
        let cx = parent.with_span(request);
        let route = self
            .exporter
            .tracer
            .span_builder("weir.route")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .start_with_context(&self.exporter.tracer, &cx);
        RequestSpans {
            cx,
            route: Some(route),
            upstream: None,
        }
    }

    /// Opens the upstream span (once per request) and returns the context
    /// to send upstream.
    pub fn upstream(&self, spans: &mut RequestSpans) -> TraceContext {
        let span = spans.upstream.get_or_insert_with(|| {
            self.exporter
                .tracer
                .span_builder("weir.upstream")
                .with_kind(SpanKind::Client)
                .start_with_context(&self.exporter.tracer, &spans.cx)
        });
        let sc = span.span_context();
        TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
    }
}

/// The open spans of one request.
pub struct RequestSpans {
    /// Holds the request span.
    cx: Context,
    route: Option<opentelemetry_sdk::trace::Span>,
    upstream: Option<opentelemetry_sdk::trace::Span>,
}

impl RequestSpans {
    /// Ends the route span (the arm is chosen, or the request refused).
    pub fn routed(&mut self) {
        if let Some(mut s) = self.route.take() {
            s.end();
        }
    }

    /// The trace id of the request span.
    pub fn trace_id(&self) -> [u8; 16] {
        self.cx.span().span_context().trace_id().to_bytes()
    }

    /// Ends every span with the request's outcome.
    pub fn finish(mut self, attributes: Vec<KeyValue>, status: u16, error: Option<String>) {
        self.routed();
        let failed = status == 0 || status >= 500 || error.is_some();
        if let Some(mut up) = self.upstream.take() {
            up.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if failed {
                up.set_status(Status::error(error.clone().unwrap_or_default()));
            }
            up.end();
        }
        let span = self.cx.span();
        for kv in attributes {
            span.set_attribute(kv);
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if failed {
            span.set_status(Status::error(error.unwrap_or_default()));
        }
        span.end();
    }
}
