//! Observing a request: its spans and the W3C trace context sent upstream
//! ([`crate::otel`], [`crate::trace`]), the gRPC status it ended with, and
//! at the end the per-arm metrics, token counts, canary evaluation, the
//! exported spans and the access-log line.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use pingora_error::{Error, OkOrErr};

use super::ctx::GatewayCtx;
use crate::client::Client;
use crate::errors::GatewayError;
use crate::metrics::{STATUS_LABELS, status_index};
use crate::request_head::RequestHead;
use crate::routing::Reason;
use crate::state::Shared;

/// Opens the request's spans, when spans are exported.
pub(super) fn begin(shared: &Shared, req: &dyn RequestHead, ctx: &mut GatewayCtx) {
    if let Some(otel) = shared.otel.get() {
        let start = std::time::SystemTime::now()
            .checked_sub(ctx.start.elapsed())
            .unwrap_or_else(std::time::SystemTime::now);
        let incoming = crate::trace::TraceContext::incoming(req);
        ctx.observe.spans = Some(Box::new(otel.begin(incoming, start)));
    }
}

/// Sends the trace context upstream: a child span's when spans are
/// exported, else one context for every attempt of the request.
pub(super) fn trace_upstream(
    shared: &Shared,
    client_request: &dyn RequestHead,
    ctx: &mut GatewayCtx,
    edits: &mut super::fields::FieldEdits,
) {
    let state = &mut ctx.observe;
    let trace = match (shared.otel.get(), state.spans.as_mut()) {
        (Some(otel), Some(spans)) => otel.upstream(spans),
        _ => state
            .trace
            .unwrap_or_else(|| crate::trace::TraceContext::for_request(client_request)),
    };
    state.trace = Some(trace);
    let header = trace.header_bytes();
    if let Some(value) = header.and_then(|h| super::fields::FieldValue::inline(&h)) {
        edits.set_value(crate::headers::TRACEPARENT.name(), value);
    }
}

/// Reads the `grpc-status` of a gRPC answer's headers: a trailers-only
/// answer carries it there.
pub(super) fn grpc_status_in_head(ctx: &mut GatewayCtx, head: &impl super::head::AnswerHead) {
    if ctx.grpc {
        ctx.observe.grpc_status = head.field("grpc-status").and_then(crate::grpc::status_of);
    }
}

/// Reads the `grpc-status` of a gRPC answer's trailers.
pub(super) fn grpc_status_in_trailers(ctx: &mut GatewayCtx, trailers: &http::HeaderMap) {
    if ctx.grpc {
        ctx.observe.grpc_status = crate::grpc::status_in(trailers).or(ctx.observe.grpc_status);
    }
}

/// The end of a request: metrics, spans, access log.
pub(super) fn finish(
    shared: &Arc<Shared>,
    client: &dyn Client,
    e: Option<&Error>,
    ctx: &mut GatewayCtx,
) {
    // A gRPC error is written as HTTP 200: count it by what it means.
    let grpc_error = ctx.error.as_ref().filter(|_| ctx.grpc);
    let status = grpc_error
        .map(GatewayError::status)
        .or_else(|| client.answered())
        .or_else(|| ctx.error.as_ref().map(GatewayError::status))
        .unwrap_or(0);
    let elapsed = ctx.start.elapsed();
    count(shared, ctx, status, elapsed);
    if ctx.openai {
        count_genai(shared, client, ctx, status, elapsed);
    }
    let trace_id = ctx
        .observe
        .trace
        .map(|t| t.trace_id)
        .or_else(|| ctx.observe.spans.as_ref().map(|s| s.trace_id()));
    if let Some(spans) = ctx.observe.spans.take() {
        let error = ctx
            .error
            .as_ref()
            .map(|e| e.to_string())
            .or_else(|| e.map(|e| e.to_string()));
        spans.finish(span_attributes(client.request(), ctx), status, error);
    }
    let access_log = ctx
        .routed
        .as_ref()
        .is_some_and(|r| r.runtime.snapshot.server.access_log);
    if access_log {
        log_access(client, e, ctx, status, elapsed, trace_id);
    }
}

/// The request's per-arm metrics, token counts and canary evaluation.
fn count(shared: &Arc<Shared>, ctx: &GatewayCtx, status: u16, elapsed: Duration) {
    let metrics = &shared.metrics;
    let code = status_index(status);
    let (route, arm) = (ctx.route_name(), ctx.arm_name());
    if let (Some(route_rt), Some(arm_rt)) = (ctx.route(), ctx.arm()) {
        // Resolved once per arm and status, then a plain atomic add.
        arm_rt.requests[code]
            .get_or_init(|| {
                metrics
                    .requests
                    .with_label_values(&[route, arm, STATUS_LABELS[code]])
            })
            .inc();
        arm_rt.duration.observe(elapsed.as_secs_f64());
        if let Some(tap) = &ctx.body.usage {
            crate::usage::record_tokens(arm_rt, tap, ctx.body.stream.as_ref());
        }
        if let Some(stats) = &arm_rt.stats {
            let failed = status == 0 || status >= 500;
            for (arm, reason) in crate::canary::check(route_rt, stats, failed, elapsed) {
                shared.roll_back(route, &arm, reason);
            }
        }
    } else {
        metrics
            .requests
            .with_label_values(&[route, arm, STATUS_LABELS[code]])
            .inc();
    }
    if ctx.grpc {
        let code = match (&ctx.error, ctx.observe.grpc_status) {
            (Some(err), _) => crate::grpc::status_name(u16::from(err.grpc_status())),
            (None, Some(code)) => crate::grpc::status_name(code),
            (None, None) => "UNKNOWN",
        };
        metrics
            .grpc_responses
            .with_label_values(&[route, arm, code])
            .inc();
    }
}

/// The model an OpenAI request named (as the client wrote it) and the model
/// its arm sends upstream, when either is known.
fn genai_models(ctx: &GatewayCtx) -> (Option<&str>, Option<&str>) {
    let asked = ctx
        .body
        .client_model
        .as_deref()
        .or(ctx.body.request_model.as_deref());
    let arm = ctx
        .route()
        .and_then(|r| r.config.arms.get(ctx.routed.as_ref()?.arm?));
    (asked, arm.and_then(|a| a.model.as_deref()))
}

/// The GenAI metrics of an OpenAI request (`crate::genai`).
fn count_genai(
    shared: &Arc<Shared>,
    client: &dyn Client,
    ctx: &GatewayCtx,
    status: u16,
    elapsed: Duration,
) {
    let Some(op) = crate::genai::operation(client.request().uri().path()) else {
        return;
    };
    let Some(route) = ctx.route() else { return };
    let (asked, arm_model) = genai_models(ctx);
    let request_model = crate::genai::model_label(&route.config, asked);
    let response_model = arm_model.unwrap_or(request_model);
    let tenant = ctx.tenant.as_ref().map_or("", |t| t.name.as_str());
    let labels = [
        op,
        request_model,
        response_model,
        ctx.route_name(),
        ctx.arm_name(),
        tenant,
    ];
    let g = &shared.metrics.genai;
    let mut with_error = labels.to_vec();
    with_error.push(crate::genai::error_type(status));
    g.duration
        .with_label_values(&with_error)
        .observe(elapsed.as_secs_f64());
    let Some(tap) = &ctx.body.usage else { return };
    let input = tap.usage().and_then(|u| u.prompt);
    let output = tap.output_tokens();
    for (kind, n) in [("input", input), ("output", output)] {
        let Some(n) = n else { continue };
        let mut l = vec![kind];
        l.extend(labels);
        g.token_usage.with_label_values(&l).observe(n as f64);
        if !tenant.is_empty() {
            g.tenant_tokens.with_label_values(&[tenant, kind]).inc_by(n);
        }
    }
    if let Some(clock) = &ctx.body.stream
        && let Some(first) = clock.first()
    {
        g.ttft
            .with_label_values(&labels)
            .observe((first - ctx.start).as_secs_f64());
        if let Some(n) = output.filter(|n| *n >= 2) {
            let per = clock.last().duration_since(first).as_secs_f64() / (n - 1) as f64;
            g.tpot.with_label_values(&labels).observe(per);
        }
    }
}

/// The attributes of the request's server span.
fn span_attributes(req: &dyn RequestHead, ctx: &GatewayCtx) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("http.request.method", req.method().to_string()),
        KeyValue::new("url.path", req.uri().path().to_owned()),
        KeyValue::new("weir.route", ctx.route_name().to_owned()),
        KeyValue::new("weir.arm", ctx.arm_name().to_owned()),
        KeyValue::new("weir.fallback", ctx.upstream.fallback),
    ];
    if let Some(reason) = ctx.reason {
        attributes.push(KeyValue::new("weir.reason", reason.as_str()));
    }
    if let Some(b) = ctx.upstream.backend() {
        attributes.push(KeyValue::new("server.address", b.addr.to_string()));
    }
    // The GenAI semantic conventions, for OpenAI calls.
    if let (true, Some(op), Some(_)) = (
        ctx.openai,
        crate::genai::operation(req.uri().path()),
        ctx.route(),
    ) {
        attributes.push(KeyValue::new("gen_ai.operation.name", op));
        let (asked, arm_model) = genai_models(ctx);
        if let Some(m) = asked {
            attributes.push(KeyValue::new("gen_ai.request.model", m.to_owned()));
        }
        if let Some(m) = arm_model.or(asked) {
            attributes.push(KeyValue::new("gen_ai.response.model", m.to_owned()));
        }
        if let Some(tap) = &ctx.body.usage {
            if let Some(n) = tap.usage().and_then(|u| u.prompt) {
                attributes.push(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
            }
            if let Some(n) = tap.output_tokens() {
                attributes.push(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
            }
            let reasons = tap.finish_reasons();
            if !reasons.is_empty() {
                let reasons = reasons
                    .iter()
                    .map(|r| opentelemetry::StringValue::from(r.to_string()))
                    .collect::<Vec<_>>();
                attributes.push(KeyValue::new(
                    "gen_ai.response.finish_reasons",
                    opentelemetry::Value::Array(reasons.into()),
                ));
            }
        }
    }
    attributes
}

/// The request's forwarding headers, as `[server] forwarded_headers` and
/// `trusted_proxies` say (`crate::forwarded`); `None` without a peer
/// address (a Unix socket).
fn forwarded_of(client: &dyn Client, ctx: &GatewayCtx) -> Option<crate::forwarded::Forwarded> {
    let peer = client.peer()?.ip();
    let server = &ctx.routed.as_ref()?.runtime.snapshot.server;
    let req = client.request();
    let tls = client.tls();
    // A peer that is not a trusted proxy has its headers replaced: they
    // are not even looked up.
    let trusted = crate::forwarded::trusted(peer, &server.trusted_proxies);
    let header =
        |name: &pingora_http::StaticHeaderName| trusted.then(|| req.field(name.name())).flatten();
    Some(crate::forwarded::forwarded(
        peer,
        header(&crate::headers::X_FORWARDED_FOR),
        header(&crate::headers::X_FORWARDED_PROTO),
        tls,
        &server.trusted_proxies,
    ))
}

/// `X-Forwarded-For` and `X-Forwarded-Proto` towards the upstream.
pub(super) fn forward_headers(
    client: &dyn Client,
    ctx: &GatewayCtx,
    edits: &mut super::fields::FieldEdits,
) -> pingora_error::Result<()> {
    let on = ctx
        .routed
        .as_ref()
        .is_some_and(|r| r.runtime.snapshot.server.forwarded_headers);
    if !on {
        return Ok(());
    }
    if let Some(f) = forwarded_of(client, ctx) {
        let value = super::fields::FieldValue::of_text(&f.for_header).or_err(
            pingora_error::ErrorType::InvalidHTTPHeader,
            "invalid X-Forwarded-For",
        )?;
        edits.set_value(crate::headers::X_FORWARDED_FOR.name(), value);
        let proto = http::HeaderValue::from_static(f.proto);
        edits.set(crate::headers::X_FORWARDED_PROTO.name(), proto);
    }
    Ok(())
}

/// Milliseconds with three decimals, as the access log writes durations.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The access-log line (`target: weir::access`).
fn log_access(
    client: &dyn Client,
    e: Option<&Error>,
    ctx: &GatewayCtx,
    status: u16,
    elapsed: Duration,
    trace_id: Option<[u8; 16]>,
) {
    let req = client.request();
    let backend = ctx
        .upstream
        .backend()
        .map(|b| b.addr.to_string())
        .unwrap_or_default();
    let peer = client.peer().map(|a| a.to_string()).unwrap_or_default();
    // The client the trusted proxies name, else the peer.
    let forwarded_client = forwarded_of(client, ctx)
        .map(|f| f.client.to_string())
        .unwrap_or_else(|| peer.clone());
    let header = |name: &http::HeaderName| req.field_str(name).unwrap_or("");
    let host = req
        .uri()
        .host()
        .unwrap_or_else(|| header(&http::header::HOST));
    let usage = ctx.body.usage.as_ref().and_then(|u| u.usage());
    let tokens_out = ctx.body.usage.as_ref().and_then(|u| u.output_tokens());
    let upstream_ms = ctx.upstream.header_at.map(|t| ms(t - ctx.start));
    let ttft_ms = ctx
        .body
        .stream
        .as_ref()
        .and_then(|s| s.first())
        .map(|t| ms(t - ctx.start));
    tracing::info!(
        target: "weir::access",
        request_id = ctx.id_str(),
        trace_id = trace_id.map(hex::encode).unwrap_or_default(),
        client = %forwarded_client,
        peer = %peer,
        method = %req.method(),
        version = ?req.version(),
        host,
        path = %req.uri().path(),
        user_agent = header(&http::header::USER_AGENT),
        tenant = ctx.tenant.as_ref().map_or("", |t| t.name.as_str()),
        route = ctx.route_name(),
        arm = ctx.arm_name(),
        model = ctx.body.client_model.as_deref().unwrap_or(""),
        reason = ctx.reason.map(Reason::as_str).unwrap_or(""),
        fallback = ctx.upstream.fallback,
        backend = %backend,
        status,
        outcome = if e.is_some() || ctx.error.is_some() { "error" } else { "ok" },
        bytes_in = client.bytes_read(),
        bytes_out = client.bytes_sent(),
        tokens_in = usage.and_then(|u| u.prompt),
        tokens_out,
        upstream_ms,
        ttft_ms,
        duration_ms = ms(elapsed),
        error = e.map(|e| e.to_string()).unwrap_or_default(),
    );
}
