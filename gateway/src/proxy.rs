//! The Pingora `ProxyHttp` implementation: one [`GatewayCtx`] per request,
//! one job per hook.
//!
//! - `request_filter`: load the snapshot once, assign the request id, match the
//!   route ([`crate::route_match`]: host, prefix, gRPC service or method,
//!   model), authenticate the tenant and apply its limits (401/403/429),
//!   refuse a declared body over the route's limit (413), choose the arm (A/B
//!   header, sticky key, weighted random).
//! - `upstream_peer`: choose a healthy backend of the arm whose breaker admits
//!   the request (weighted round robin, skipping backends already tried); fall
//!   back to the route's fallback arm when the arm has none.
//! - `fail_to_connect`: count the failure (breaker too) and retry on another
//!   backend within the route's attempts and retry budget.
//! - `upstream_response_filter`: feed 5xx answers to the breaker; retry the
//!   route's `on_statuses` for idempotent requests.
//! - `error_while_proxy`: timeouts count for the breaker; Pingora's policy
//!   for stale keep-alive connections otherwise.
//! - `upstream_request_filter` / `response_filter`: request id and `x-weir-*`
//!   headers; for filtered bodies, `Content-Length` gives way to chunked
//!   transfer (the headers leave before the filtered body is known).
//! - `request_body_filter`: buffer the body of a route with request filters
//!   (up to its `max_body_bytes`) and send the filtered body, or refuse it
//!   (400 blocked, 503 filter unavailable, 413 too large).
//! - `response_body_filter`: JSON answers buffered and filtered, SSE streams
//!   filtered chunk by chunk with a bounded hold-back.
//! - `fail_to_proxy`: gateway-made errors as OpenAI-shaped JSON, or as gRPC
//!   statuses for gRPC calls ([`crate::grpc`]).
//! - `upstream_request_filter` also sends the W3C `traceparent`
//!   ([`crate::trace`]); `response_body_filter` times streamed chunks
//!   (time to first token, time per output token) and reads token usage.
//! - `logging`: metrics and the access-log line.

use std::net::SocketAddr as StdSocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::Backend;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access::{Permit, RateHeaders, TenantRt};
use crate::breaker::{Admit, Breaker, Outcome, now_ms};
use crate::errors::GatewayError;
use crate::filtering::ResponseFilter;
use crate::route_match::{content_length, has_body};
use crate::routing::Reason;
use crate::state::{Runtime, Shared};

/// Longest accepted client-supplied `x-request-id`.
const MAX_REQUEST_ID: usize = 128;

/// Per-request state shared by the hooks.
pub struct GatewayCtx {
    start: Instant,
    runtime: Option<Arc<Runtime>>,
    request_id: Option<HeaderValue>,
    route: Option<usize>,
    arm: Option<usize>,
    reason: Option<Reason>,
    fallback: bool,
    backend: Option<Backend>,
    tried: Vec<SocketAddr>,
    /// Retries spent on this request.
    retries: u8,
    /// The backend attempt whose outcome the breaker has not heard yet.
    attempt: Option<Attempt>,
    /// Set when `upstream_response_filter` turned a status into a retry.
    retry_status: bool,
    /// Status of the upstream answer, once its header arrived.
    upstream_status: Option<u16>,
    /// End of the route's total timeout, from the first backend choice.
    deadline: Option<Instant>,
    /// The last connect failure, reported if no other backend is left.
    connect_error: Option<GatewayError>,
    error: Option<GatewayError>,
    /// The request body being buffered for the route's request filters.
    req_body: Option<BytesMut>,
    /// The route's response filters at work on this answer.
    resp_filter: Option<ResponseFilter>,
    /// The authenticated tenant.
    tenant: Option<Arc<TenantRt>>,
    /// The tenant's concurrency slot, held to the end of the request.
    _permit: Option<Permit>,
    /// `x-ratelimit-*` values for the response.
    rate_headers: RateHeaders,
    /// The route's largest request body, and the bytes seen so far.
    max_body: usize,
    body_seen: usize,
    /// The body is buffered to add `stream_options.include_usage`.
    inject_usage: bool,
    /// `include_usage` was added: its usage-only chunk is not the client's.
    strip_usage: bool,
    /// Reads the answer's token usage for the tenant's token limit.
    usage: Option<crate::usage::UsageTap>,
    /// A gRPC call: gateway-made errors are answered as gRPC statuses.
    grpc: bool,
    /// An OpenAI call that reports token usage (completions, embeddings).
    openai: bool,
    /// First and last streamed chunk of an SSE answer.
    stream: Option<StreamClock>,
    /// The W3C trace context sent upstream.
    trace: Option<crate::trace::TraceContext>,
    /// The request's spans, when spans are exported.
    spans: Option<crate::otel::RequestSpans>,
    /// The `grpc-status` the upstream ended a gRPC call with.
    grpc_status: Option<u16>,
}

/// When the chunks of a streamed answer left for the client.
struct StreamClock {
    first: Option<Instant>,
    last: Instant,
}

/// Whether a request is an OpenAI call whose answer reports `usage`.
fn is_openai_call(req: &RequestHeader) -> bool {
    let path = req.uri.path();
    req.method == http::Method::POST
        && (path.ends_with("/completions") || path.ends_with("/embeddings"))
}

/// One attempt on a backend, for its breaker.
struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
}

impl GatewayCtx {
    /// Tells the pending attempt's breaker how it went.
    fn settle(&mut self, outcome: Outcome) {
        if let Some(a) = self.attempt.take() {
            a.breaker.record(outcome, a.probe, now_ms());
        }
    }

    /// Settles the attempt as a failure of `kind` when its breaker counts
    /// that kind, else as ignored.
    fn settle_failure(&mut self, kind: FailureKind) {
        let counts = self.attempt.as_ref().is_some_and(|a| {
            let s = a.breaker.settings();
            match kind {
                FailureKind::Connect => s.on_connect,
                FailureKind::Timeout => s.on_timeout,
            }
        });
        self.settle(if counts {
            Outcome::Failure
        } else {
            Outcome::Ignored
        });
    }

    fn route_name(&self) -> &str {
        match (&self.runtime, self.route) {
            (Some(rt), Some(r)) => rt.routes[r].config.name.as_str(),
            _ => "",
        }
    }

    fn arm_name(&self) -> &str {
        match (&self.runtime, self.route, self.arm) {
            (Some(rt), Some(r), Some(a)) => rt.routes[r].arms[a].name.as_str(),
            _ => "",
        }
    }
}

/// Failures a breaker may count besides statuses.
#[derive(Clone, Copy)]
enum FailureKind {
    Connect,
    Timeout,
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// The proxy application.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A proxy over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Writes a gateway-made JSON error and records it in the context.
    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut GatewayCtx,
        err: GatewayError,
    ) -> u16 {
        let status = err.status();
        if ctx.grpc {
            let h1 = session.req_header().version < http::Version::HTTP_2;
            let written = async {
                let mut resp = crate::grpc::error_response(&err, h1)?;
                self.decorate(&mut resp, ctx)?;
                // One HEADERS frame that ends the stream (trailers-only).
                let task = pingora_core::protocols::http::HttpTask::Header(Box::new(resp), true);
                session.write_response_tasks(vec![task]).await.map(|_| ())
            }
            .await;
            ctx.error = Some(err);
            return match written {
                Ok(()) => 200,
                Err(e) => {
                    tracing::debug!(error = %e, "could not write gRPC error response");
                    0
                }
            };
        }
        let body = Bytes::from(err.body());
        let extra = err.headers();
        ctx.error = Some(err);
        let written = async {
            let mut resp = ResponseHeader::build(status, Some(6 + extra.len()))?;
            resp.insert_header("content-type", "application/json")?;
            resp.insert_header("content-length", body.len().to_string())?;
            for (name, value) in extra {
                resp.insert_header(name, value)?;
            }
            self.decorate(&mut resp, ctx)?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(resp), false).await?;
            session.write_response_body(Some(body), true).await
        }
        .await;
        match written {
            Ok(()) => status,
            Err(e) => {
                tracing::debug!(error = %e, "could not write error response");
                0
            }
        }
    }

    /// Records `err` as the answer and returns the error that stops proxying
    /// (`fail_to_proxy` then writes the JSON).
    fn refuse(&self, ctx: &mut GatewayCtx, err: GatewayError) -> Box<Error> {
        let status = err.status();
        let message = err.to_string();
        ctx.error = Some(err);
        Error::explain(ErrorType::HTTPStatus(status), message)
    }

    /// Takes a retry for `cause` if the route's attempts and budget allow it.
    fn take_retry(&self, ctx: &mut GatewayCtx, cause: &str) -> bool {
        let (Some(rt), Some(r)) = (&ctx.runtime, ctx.route) else {
            return false;
        };
        let route = &rt.routes[r];
        if ctx.retries >= route.config.retry.attempts {
            return false;
        }
        let granted = route.budget.try_retry(&route.config.retry, now_ms());
        let outcome = if granted {
            "retried"
        } else {
            "budget_exhausted"
        };
        self.shared
            .metrics
            .retries
            .with_label_values(&[route.config.name.as_str(), cause, outcome])
            .inc();
        if granted {
            ctx.retries += 1;
        }
        granted
    }

    /// Adds the `x-weir-*` and `x-request-id` headers.
    fn decorate(&self, resp: &mut ResponseHeader, ctx: &GatewayCtx) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        if let (Some(rt), Some(r)) = (&ctx.runtime, ctx.route) {
            let route = &rt.routes[r];
            resp.insert_header("x-weir-route", route.name_header.clone())?;
            if let Some(a) = ctx.arm {
                resp.insert_header("x-weir-arm", route.arms[a].name_header.clone())?;
            }
        }
        if ctx.fallback {
            resp.insert_header("x-weir-fallback", "1")?;
        }
        for (name, value) in ctx.rate_headers.pairs() {
            resp.insert_header(name, value.to_string())?;
        }
        Ok(())
    }

    /// Feeds one answer of an arm of a route with a rollback policy to the
    /// arm's window and, at most every [`crate::canary::EVALUATE_EVERY_MS`],
    /// compares the route's weighted arms with its fallback arm.
    fn check_canaries(
        &self,
        rt: &Runtime,
        r: usize,
        stats: &crate::canary::ArmStats,
        status: u16,
        elapsed: Duration,
    ) {
        let now = now_ms();
        stats.record(now, status == 0 || status >= 500, elapsed);
        let route = &rt.routes[r];
        let (Some(policy), Some(fb)) = (&route.config.rollback, route.config.fallback) else {
            return;
        };
        let last = route.last_check.load(std::sync::atomic::Ordering::Acquire);
        if now < last + crate::canary::EVALUATE_EVERY_MS
            || route
                .last_check
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::AcqRel,
                    std::sync::atomic::Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        let Some(stable) = route.arms[fb].stats.as_ref().map(|s| s.summary(now)) else {
            return;
        };
        for (i, arm) in route.arms.iter().enumerate() {
            if i == fb || arm.rolled_back || arm.weight == 0 {
                continue;
            }
            let Some(summary) = arm.stats.as_ref().map(|s| s.summary(now)) else {
                continue;
            };
            if let Some(reason) = crate::canary::verdict(policy, stable, summary) {
                self.shared.roll_back(&route.config.name, &arm.name, reason);
            }
        }
    }

    /// Counts an answer's tokens and, for a stream, its time per output token.
    fn record_tokens(
        &self,
        arm: &crate::state::ArmRt,
        tap: &crate::usage::UsageTap,
        stream: Option<&StreamClock>,
    ) {
        let output = tap.output_tokens();
        if let Some(n) = tap.usage().and_then(|u| u.prompt) {
            arm.tokens[0].inc_by(n);
        }
        if let Some(n) = output {
            arm.tokens[1].inc_by(n);
        }
        if let (Some(clock), Some(n)) = (stream, output)
            && let Some(first) = clock.first
            && n >= 2
        {
            let per = clock.last.duration_since(first).as_secs_f64() / (n - 1) as f64;
            arm.tpot.observe(per);
        }
    }

    /// Authenticates the caller of a route with `auth = "required"`, checks
    /// the route's allow-list and admits the request under the tenant's limits.
    async fn authorize(
        &self,
        req: &RequestHeader,
        rt: &Runtime,
        route: &crate::state::RouteRt,
        ctx: &mut GatewayCtx,
    ) -> std::result::Result<(), GatewayError> {
        let counted = |e: GatewayError| {
            self.shared
                .metrics
                .auth_failures
                .with_label_values(&[route.config.name.as_str(), e.code()])
                .inc();
            e
        };
        let idx = rt.access.authenticate(req).map_err(counted)?;
        let tenant = &rt.access.tenants[idx];
        if !route.config.tenants.is_empty() && !route.config.tenants.contains(&idx) {
            return Err(counted(GatewayError::TenantNotAllowed {
                tenant: tenant.name.clone(),
                route: route.config.name.clone(),
            }));
        }
        ctx.tenant = Some(Arc::clone(tenant));
        match tenant.admit(rt.access.redis.as_deref()).await {
            Ok(admission) => {
                ctx._permit = Some(admission.permit);
                ctx.rate_headers = admission.headers;
                Ok(())
            }
            Err(e) => {
                if let GatewayError::RateLimited { limit, .. } = &e {
                    self.shared
                        .metrics
                        .rate_limited
                        .with_label_values(&[tenant.name.as_str(), limit.as_str()])
                        .inc();
                }
                Err(e)
            }
        }
    }
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get(name)
        .map(|v| v.as_bytes())
        .filter(|v| !v.is_empty())
}

/// The client's `x-request-id` when it is usable, else a new UUID.
fn request_id(req: &RequestHeader) -> Option<HeaderValue> {
    match req.headers.get("x-request-id") {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok() => {
            Some(id.clone())
        }
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(text).ok()
        }
    }
}

/// The request id for logs.
fn id_str(id: &Option<HeaderValue>) -> &str {
    id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = GatewayCtx;

    /// No downstream modules. Pingora's default adds its response
    /// compression module switched off, which still costs every request a
    /// context allocation and three filter calls; the gateway passes bodies
    /// through as the upstream encoded them.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    fn new_ctx(&self) -> GatewayCtx {
        GatewayCtx {
            start: Instant::now(),
            runtime: None,
            request_id: None,
            route: None,
            arm: None,
            reason: None,
            fallback: false,
            backend: None,
            tried: Vec::new(),
            retries: 0,
            attempt: None,
            retry_status: false,
            upstream_status: None,
            deadline: None,
            connect_error: None,
            error: None,
            req_body: None,
            resp_filter: None,
            tenant: None,
            _permit: None,
            rate_headers: RateHeaders::default(),
            max_body: usize::MAX,
            body_seen: 0,
            inject_usage: false,
            strip_usage: false,
            usage: None,
            grpc: false,
            openai: false,
            stream: None,
            trace: None,
            spans: None,
            grpc_status: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut GatewayCtx) -> Result<bool> {
        ctx.request_id = request_id(session.req_header());
        if let Some(otel) = self.shared.otel.get() {
            let start = std::time::SystemTime::now()
                .checked_sub(ctx.start.elapsed())
                .unwrap_or_else(std::time::SystemTime::now);
            let incoming = crate::trace::TraceContext::incoming(session.req_header());
            ctx.spans = Some(otel.begin(incoming, start));
        }
        let Some(rt) = self.shared.current() else {
            self.answer_error(session, ctx, GatewayError::NotReady)
                .await;
            return Ok(true);
        };
        ctx.grpc = crate::grpc::is_grpc(session.req_header());
        ctx.openai = is_openai_call(session.req_header());
        let route_idx = match crate::route_match::choose_route(session, &rt.routes, ctx.grpc).await
        {
            Ok(i) => i,
            Err(err) => {
                ctx.runtime = Some(rt);
                self.answer_error(session, ctx, err).await;
                return Ok(true);
            }
        };
        let req = session.req_header();
        let route = &rt.routes[route_idx];
        ctx.route = Some(route_idx);
        ctx.max_body = route.config.max_body;
        if route.config.auth == weir_conf::access::AuthMode::Required
            && let Err(err) = self.authorize(req, &rt, route, ctx).await
        {
            ctx.runtime = Some(Arc::clone(&rt));
            self.answer_error(session, ctx, err).await;
            return Ok(true);
        }
        if content_length(req).is_some_and(|n| n > route.config.max_body) {
            let limit = route.config.max_body;
            ctx.runtime = Some(Arc::clone(&rt));
            self.answer_error(session, ctx, GatewayError::BodyTooLarge { limit })
                .await;
            return Ok(true);
        }
        let ab = header(req, &route.config.ab_header);
        let sticky = route
            .config
            .sticky_header
            .as_deref()
            .and_then(|h| header(req, h));
        let picked = route.table.select(ab, sticky);
        route.budget.request(now_ms());
        match picked {
            Some((arm, reason)) => {
                ctx.arm = Some(arm);
                ctx.reason = Some(reason);
                if !route.request_filters.is_empty() && has_body(req) {
                    let limit = route.config.filters.max_body;
                    if content_length(req).is_some_and(|n| n > limit) {
                        ctx.runtime = Some(rt);
                        self.answer_error(session, ctx, GatewayError::BodyTooLarge { limit })
                            .await;
                        return Ok(true);
                    }
                    ctx.req_body = Some(BytesMut::new());
                }
                if ctx.tenant.as_ref().is_some_and(|t| t.counts_tokens()) && has_body(req) {
                    ctx.inject_usage = true;
                    ctx.req_body.get_or_insert_with(BytesMut::new);
                }
                ctx.runtime = Some(rt);
                Ok(false)
            }
            None => {
                let err = GatewayError::NoArm {
                    route: route.config.name.clone(),
                };
                ctx.runtime = Some(rt);
                self.answer_error(session, ctx, err).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut GatewayCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(rt), Some(route_idx), Some(mut arm_idx)) =
            (ctx.runtime.clone(), ctx.route, ctx.arm)
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream_peer without a route",
            ));
        };
        // An attempt nobody settled (a stale keep-alive connection retried
        // by Pingora) says nothing about the backend.
        ctx.settle(Outcome::Ignored);
        if let Some(spans) = ctx.spans.as_mut() {
            spans.routed();
        }
        let route = &rt.routes[route_idx];
        let remaining = match (route.config.timeouts.total, ctx.deadline) {
            (None, _) => None,
            (Some(total), None) => {
                ctx.deadline = Some(ctx.start + total);
                Some(total.saturating_sub(ctx.start.elapsed()))
            }
            (Some(_), Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
        };
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(self.refuse(
                ctx,
                GatewayError::UpstreamTimeout("the route's total timeout passed".into()),
            ));
        }
        let now = now_ms();
        loop {
            let arm = &route.arms[arm_idx];
            let tried = &ctx.tried;
            let breakers = &arm.pool.breakers;
            let probe = std::cell::Cell::new(false);
            let pick = arm.pool.lb.select_with(b"", 256, |b, healthy| {
                if !healthy || tried.contains(&b.addr) {
                    return false;
                }
                if !breakers.enabled() {
                    return true;
                }
                match b.addr.as_inet().and_then(|a| breakers.get(a)) {
                    None => true,
                    Some(breaker) => match breaker.admit(now) {
                        Admit::No => false,
                        Admit::Yes => true,
                        Admit::Probe => {
                            probe.set(true);
                            true
                        }
                    },
                }
            });
            if let Some(backend) = pick {
                if breakers.enabled() {
                    ctx.attempt =
                        backend
                            .addr
                            .as_inet()
                            .and_then(|a| breakers.get(a))
                            .map(|breaker| Attempt {
                                breaker: Arc::clone(breaker),
                                probe: probe.get(),
                            });
                }
                let peer = route.peer(&backend, arm.pool.config.protocol, remaining);
                ctx.arm = Some(arm_idx);
                ctx.backend = Some(backend);
                return Ok(peer);
            }
            match route.config.fallback {
                Some(fb) if fb != arm_idx && !ctx.fallback => {
                    self.shared
                        .metrics
                        .fallbacks
                        .with_label_values(&[
                            route.config.name.as_str(),
                            arm.name.as_str(),
                            route.arms[fb].name.as_str(),
                        ])
                        .inc();
                    ctx.fallback = true;
                    arm_idx = fb;
                }
                _ => {
                    ctx.arm = Some(arm_idx);
                    // Backends were tried and failed: report that failure
                    // (502/504) rather than "no healthy backend" (503).
                    let err = ctx.connect_error.take().unwrap_or_else(|| {
                        GatewayError::NoHealthyBackend {
                            route: route.config.name.clone(),
                            arm: arm.name.clone(),
                        }
                    });
                    let (status, msg) = (err.status(), err.to_string());
                    ctx.error = Some(err);
                    return Err(Error::explain(ErrorType::HTTPStatus(status), msg));
                }
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut GatewayCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(rt), Some(backend)) = (&ctx.runtime, &ctx.backend) {
            let pool = ctx
                .route
                .zip(ctx.arm)
                .map(|(r, a)| rt.routes[r].arms[a].pool.config.name.as_str())
                .unwrap_or("");
            self.shared
                .metrics
                .connect_failures
                .with_label_values(&[pool, &backend.addr.to_string()])
                .inc();
            ctx.tried.push(backend.addr.clone());
        }
        tracing::warn!(request_id = id_str(&ctx.request_id), peer = %peer, error = %e, "upstream connect failed");
        ctx.settle_failure(if is_timeout(&e) {
            FailureKind::Timeout
        } else {
            FailureKind::Connect
        });
        ctx.connect_error = Some(GatewayError::from_proxy_error(&e));
        // Nothing reached the upstream: safe to retry whatever the method.
        e.set_retry(self.take_retry(ctx, "connect"));
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if ctx.grpc {
            // A trailers-only answer carries its status in the headers.
            ctx.grpc_status = crate::grpc::status_in(&upstream_response.headers);
        }
        if ctx
            .attempt
            .as_ref()
            .is_some_and(|a| a.breaker.settings().fails_on(status))
        {
            ctx.settle(Outcome::Failure);
        }
        let retried = match (&ctx.runtime, ctx.route) {
            (Some(rt), Some(r)) => rt.routes[r].config.retry.retries_status(status),
            _ => false,
        };
        // The upstream saw this request: only idempotent ones (with their
        // whole body still held) may be sent again.
        if retried
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && self.take_retry(ctx, "status")
        {
            if let Some(b) = &ctx.backend {
                ctx.tried.push(b.addr.clone());
            }
            ctx.upstream_status = None;
            ctx.retry_status = true;
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream status retried on another backend",
            ));
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut GatewayCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if std::mem::take(&mut ctx.retry_status) {
            e.set_retry(true);
            return e;
        }
        if is_timeout(&e) {
            ctx.settle_failure(FailureKind::Timeout);
        }
        // Pingora's own policy: a request on a reused connection that the
        // upstream had closed is sent again, if that is safe.
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let Some(id) = &ctx.request_id {
            upstream_request.insert_header("x-request-id", id.clone())?;
        }
        let trace = match (self.shared.otel.get(), ctx.spans.as_mut()) {
            (Some(otel), Some(spans)) => otel.upstream(spans),
            // Without spans, one context serves every attempt of the request.
            _ => ctx
                .trace
                .unwrap_or_else(|| crate::trace::TraceContext::for_request(upstream_request)),
        };
        ctx.trace = Some(trace);
        if let Some(value) = trace.header() {
            upstream_request.insert_header("traceparent", value)?;
        }
        if let Some(tenant) = &ctx.tenant {
            // The gateway consumed the credentials; the upstream learns who
            // is calling, not how they proved it.
            upstream_request.remove_header(&http::header::AUTHORIZATION);
            upstream_request.remove_header("x-api-key");
            upstream_request.insert_header("x-weir-tenant", tenant.header.clone())?;
        }
        if ctx.req_body.is_some() {
            // The filtered body's length is known only after the headers
            // have gone: send it chunked (HTTP/2 needs no length at all).
            upstream_request.remove_header(&http::header::CONTENT_LENGTH);
            let h2 = match (&ctx.runtime, ctx.route, ctx.arm) {
                (Some(rt), Some(r), Some(a)) => {
                    rt.routes[r].arms[a].pool.config.protocol == weir_conf::model::Protocol::H2c
                }
                _ => false,
            };
            if h2 {
                upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            } else {
                upstream_request.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let Some(chunk) = body.as_ref() {
            ctx.body_seen += chunk.len();
            if ctx.body_seen > ctx.max_body {
                let limit = ctx.max_body;
                return Err(self.refuse(ctx, GatewayError::BodyTooLarge { limit }));
            }
        }
        let Some(buf) = ctx.req_body.as_mut() else {
            return Ok(());
        };
        let (Some(rt), Some(r)) = (ctx.runtime.clone(), ctx.route) else {
            return Ok(());
        };
        let route = &rt.routes[r];
        let limit = if route.request_filters.is_empty() {
            ctx.max_body
        } else {
            route.config.filters.max_body
        };
        if let Some(chunk) = body.take() {
            if buf.len() + chunk.len() > limit {
                return Err(self.refuse(ctx, GatewayError::BodyTooLarge { limit }));
            }
            buf.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            // Empty, not None: Pingora reads None as the end of the body.
            *body = Some(Bytes::new());
            return Ok(());
        }
        let mut whole = std::mem::take(buf).freeze();
        ctx.req_body = None;
        if whole.is_empty() {
            // No body after all: nothing to filter.
            return Ok(());
        }
        if ctx.inject_usage {
            let (with_usage, added) = crate::usage::request_usage(whole);
            whole = with_usage;
            ctx.strip_usage = added;
        }
        let filtered = crate::filtering::filter_request(
            &route.request_filters,
            whole,
            route.config.filters.non_json,
            &self.shared.metrics,
        );
        match filtered {
            Ok(b) => {
                *body = Some(b);
                Ok(())
            }
            Err(e) => Err(self.refuse(ctx, e)),
        }
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        if let (Some(rt), Some(r)) = (&ctx.runtime, ctx.route)
            && upstream_response.status.is_success()
        {
            let route = &rt.routes[r];
            let content_type = upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !route.response_filters.is_empty() {
                ctx.resp_filter = ResponseFilter::for_content_type(
                    content_type,
                    &route.response_filters,
                    route.config.filters.max_body,
                );
            }
            let sse = crate::usage::is_event_stream(content_type);
            if sse {
                ctx.stream = Some(StreamClock {
                    first: None,
                    last: Instant::now(),
                });
            }
            if sse || ctx.openai || ctx.tenant.as_ref().is_some_and(|t| t.counts_tokens()) {
                ctx.usage = crate::usage::UsageTap::for_content_type(content_type, ctx.strip_usage);
            }
        }
        if ctx.resp_filter.is_some() || ctx.usage.as_ref().is_some_and(|u| u.rewrites()) {
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            let h1 = session.req_header().version == http::Version::HTTP_11;
            if h1
                && upstream_response
                    .headers
                    .get(http::header::TRANSFER_ENCODING)
                    .is_none()
            {
                upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        self.decorate(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<Option<Duration>> {
        if let Some(deadline) = ctx.deadline
            && !end_of_stream
            && Instant::now() >= deadline
        {
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the route's total timeout passed",
            ));
        }
        if let Some(tap) = ctx.usage.as_mut() {
            *body = tap.push(body.take(), end_of_stream);
            if end_of_stream && let (Some(tokens), Some(tenant)) = (tap.tokens(), &ctx.tenant) {
                let redis = ctx.runtime.as_ref().and_then(|rt| rt.access.redis.as_ref());
                tenant.record_tokens(tokens, redis);
            }
        }
        if let Some(filter) = ctx.resp_filter.as_mut() {
            *body = filter.push(body.take(), end_of_stream, &self.shared.metrics);
        }
        if let Some(clock) = ctx.stream.as_mut()
            && body.as_ref().is_some_and(|b| !b.is_empty())
        {
            let now = Instant::now();
            clock.last = now;
            if clock.first.is_none() {
                clock.first = Some(now);
                if let (Some(rt), Some(r), Some(a)) = (&ctx.runtime, ctx.route, ctx.arm) {
                    let arm = &rt.routes[r].arms[a];
                    arm.ttft
                        .observe(now.duration_since(ctx.start).as_secs_f64());
                }
            }
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut GatewayCtx,
    ) -> Result<Option<Bytes>> {
        if ctx.grpc {
            ctx.grpc_status = crate::grpc::status_in(upstream_trailers).or(ctx.grpc_status);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut GatewayCtx,
    ) -> FailToProxy {
        let err = match ctx.error.take() {
            Some(err) => err,
            None => GatewayError::from_proxy_error(e),
        };
        let already_answered = session.response_written().is_some();
        let code = if already_answered {
            ctx.error = Some(err);
            0
        } else {
            self.answer_error(session, ctx, err).await
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut GatewayCtx) {
        match e {
            Some(e) if is_timeout(e) => ctx.settle_failure(FailureKind::Timeout),
            _ if ctx.upstream_status.is_some() => ctx.settle(Outcome::Success),
            _ => ctx.settle(Outcome::Ignored),
        }
        // A gRPC error is written as HTTP 200: count it by what it means.
        let grpc_error = ctx.error.as_ref().filter(|_| ctx.grpc);
        let status = grpc_error
            .map(GatewayError::status)
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .or_else(|| ctx.error.as_ref().map(GatewayError::status))
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        let spans = ctx.spans.take();
        let trace_id = ctx
            .trace
            .map(|t| t.trace_id)
            .or_else(|| spans.as_ref().map(|s| s.trace_id()));
        let (route, arm) = (ctx.route_name(), ctx.arm_name());
        let metrics = &self.shared.metrics;
        let code = status_index(status);
        if let (Some(rt), Some(r), Some(a)) = (&ctx.runtime, ctx.route, ctx.arm) {
            // Resolved once per arm and status, then a plain atomic add.
            let arm_rt = &rt.routes[r].arms[a];
            arm_rt.requests[code]
                .get_or_init(|| {
                    metrics
                        .requests
                        .with_label_values(&[route, arm, STATUS_LABELS[code]])
                })
                .inc();
            arm_rt.duration.observe(elapsed.as_secs_f64());
            if let Some(tap) = &ctx.usage {
                self.record_tokens(arm_rt, tap, ctx.stream.as_ref());
            }
            if let Some(stats) = &arm_rt.stats {
                self.check_canaries(rt, r, stats, status, elapsed);
            }
        } else {
            metrics
                .requests
                .with_label_values(&[route, arm, STATUS_LABELS[code]])
                .inc();
        }
        if ctx.grpc {
            let code = match (&ctx.error, ctx.grpc_status) {
                (Some(err), _) => crate::grpc::status_name(u16::from(err.grpc_status())),
                (None, Some(code)) => crate::grpc::status_name(code),
                (None, None) => "UNKNOWN",
            };
            metrics
                .grpc_responses
                .with_label_values(&[route, arm, code])
                .inc();
        }
        if let Some(spans) = spans {
            let req = session.req_header();
            let mut attributes = vec![
                opentelemetry::KeyValue::new("http.request.method", req.method.to_string()),
                opentelemetry::KeyValue::new("url.path", req.uri.path().to_owned()),
                opentelemetry::KeyValue::new("weir.route", route.to_owned()),
                opentelemetry::KeyValue::new("weir.arm", arm.to_owned()),
                opentelemetry::KeyValue::new("weir.fallback", ctx.fallback),
            ];
            if let Some(reason) = ctx.reason {
                attributes.push(opentelemetry::KeyValue::new("weir.reason", reason.as_str()));
            }
            if let Some(b) = &ctx.backend {
                attributes.push(opentelemetry::KeyValue::new(
                    "server.address",
                    b.addr.to_string(),
                ));
            }
            let error = ctx
                .error
                .as_ref()
                .map(|e| e.to_string())
                .or_else(|| e.map(|e| e.to_string()));
            spans.finish(attributes, status, error);
        }
        let access_log = ctx
            .runtime
            .as_ref()
            .is_some_and(|rt| rt.snapshot.server.access_log);
        if access_log {
            let req = session.req_header();
            let backend = ctx
                .backend
                .as_ref()
                .map(|b| b.addr.to_string())
                .unwrap_or_default();
            let client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(StdSocketAddr::to_string)
                .unwrap_or_default();
            tracing::info!(
                target: "weir::access",
                request_id = id_str(&ctx.request_id),
                trace_id = trace_id.map(hex::encode).unwrap_or_default(),
                client = %client,
                method = %req.method,
                path = %req.uri.path(),
                route,
                arm,
                reason = ctx.reason.map(Reason::as_str).unwrap_or(""),
                fallback = ctx.fallback,
                backend = %backend,
                status,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                error = e.map(|e| e.to_string()).unwrap_or_default(),
            );
        }
    }
}

/// The `status` label values: the common codes, then classes for the rest.
pub const STATUS_LABELS: [&str; 19] = [
    "0", "200", "201", "204", "400", "401", "403", "404", "429", "499", "500", "502", "503", "504",
    "1xx", "2xx", "3xx", "4xx", "5xx",
];

/// Index into [`STATUS_LABELS`] of a status; avoids formatting on the hot path.
pub fn status_index(status: u16) -> usize {
    match status {
        0 => 0,
        200 => 1,
        201 => 2,
        204 => 3,
        400 => 4,
        401 => 5,
        403 => 6,
        404 => 7,
        429 => 8,
        499 => 9,
        500 => 10,
        502 => 11,
        503 => 12,
        504 => 13,
        s if s < 200 => 14,
        s if s < 300 => 15,
        s if s < 400 => 16,
        s if s < 500 => 17,
        _ => 18,
    }
}
