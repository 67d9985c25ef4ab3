//! Per-request state: one [`GatewayCtx`] per request, holding [`Routed`],
//! the runtime the request loaded once with the route and arm chosen from
//! it, and one plain state struct per concern (upstream attempts, bodies,
//! observation). Their behaviour lives with the file that works on them
//! (`impl UpstreamState` in `upstream.rs`, and so on); this file imports
//! none of those, so the hooks' files sit on top of it without a cycle.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_load_balancing::Backend;

use crate::access::{Permit, TenantRt};
use crate::balance::InFlight;
use crate::breaker::Attempt;
use crate::errors::{GatewayError, RateHeaders};
use crate::filtering::ResponseFilter;
use crate::rename::AnswerRename;
use crate::routing::Reason;
use crate::runtime::{ArmRt, RouteRt, Runtime};
use crate::usage::{StreamClock, UsageTap};

/// The runtime a request loaded (once: a request never sees half of two
/// configs), with the route and arm chosen in it so far.
pub struct Routed {
    /// The live runtime when the request arrived.
    pub runtime: Arc<Runtime>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Index of the chosen arm of that route (the fallback arm after a
    /// fallback).
    pub arm: Option<usize>,
}

impl Routed {
    /// The matched route.
    pub fn route(&self) -> Option<&RouteRt> {
        self.route.map(|r| &self.runtime.routes[r])
    }

    /// The chosen arm.
    pub fn arm(&self) -> Option<&ArmRt> {
        Some(&self.route()?.arms[self.arm?])
    }
}

/// Per-request state shared by the hooks.
///
/// Pingora keeps it inside every request's future, which is built (and
/// copied once into a box) for each request: what only some requests need
/// (spans, response filters, usage taps, renames) is boxed, so the common
/// request carries a few hundred bytes, not kilobytes.
pub struct GatewayCtx {
    pub(super) start: Instant,
    pub(super) request_id: Option<super::fields::FieldValue>,
    /// Set once, when the request loads the live runtime.
    pub(super) routed: Option<Routed>,
    /// Why the arm was chosen.
    pub(super) reason: Option<Reason>,
    /// A gRPC call: gateway-made errors are answered as gRPC statuses.
    pub(super) grpc: bool,
    /// An OpenAI call that reports token usage (completions, embeddings).
    pub(super) openai: bool,
    /// The gateway-made error this request is answered with.
    pub(super) error: Option<GatewayError>,
    /// The authenticated tenant.
    pub(super) tenant: Option<Arc<TenantRt>>,
    /// The tenant's concurrency slot, held to the end of the request.
    pub(super) permit: Option<Permit>,
    /// `x-ratelimit-*` values for the response.
    pub(super) rate_headers: RateHeaders,
    pub(super) upstream: UpstreamState,
    pub(super) body: BodyState,
    pub(super) observe: ObserveState,
}

impl GatewayCtx {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            request_id: None,
            routed: None,
            reason: None,
            grpc: false,
            openai: false,
            error: None,
            tenant: None,
            permit: None,
            rate_headers: RateHeaders::default(),
            upstream: UpstreamState::default(),
            body: BodyState::default(),
            observe: ObserveState::default(),
        }
    }

    /// The matched route, if any.
    pub(super) fn route(&self) -> Option<&RouteRt> {
        self.routed.as_ref().and_then(Routed::route)
    }

    /// The chosen arm, if any.
    pub(super) fn arm(&self) -> Option<&ArmRt> {
        self.routed.as_ref().and_then(Routed::arm)
    }

    /// The route's name, or `""`.
    pub(super) fn route_name(&self) -> &str {
        self.route().map_or("", |r| r.config.name.as_str())
    }

    /// The arm's name, or `""`.
    pub(super) fn arm_name(&self) -> &str {
        self.arm().map_or("", |a| a.name.as_str())
    }

    /// The request id, for logs.
    pub(super) fn id_str(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(super::fields::FieldValue::to_str)
            .unwrap_or("")
    }
}

/// What the upstream phases keep for one request.
#[derive(Default)]
pub(super) struct UpstreamState {
    /// The backend of the current attempt.
    pub(super) backend: Option<Backend>,
    /// Backends already tried (a retry goes elsewhere).
    pub(super) tried: Vec<SocketAddr>,
    /// Retries spent on this request.
    pub(super) retries: u8,
    /// The backend attempt whose outcome the breaker has not heard yet.
    pub(super) attempt: Option<Attempt>,
    /// The current attempt, counted in its backend's load until dropped.
    pub(super) in_flight: Option<InFlight>,
    /// Set when an upstream status was turned into a retry.
    pub(super) retry_status: bool,
    /// Status of the upstream answer, once its header arrived.
    pub(super) status: Option<u16>,
    /// End of the route's total timeout, from the first backend choice.
    pub(super) deadline: Option<Instant>,
    /// The last connect failure, reported if no other backend is left.
    pub(super) connect_error: Option<GatewayError>,
    /// The request went to the route's fallback arm.
    pub(super) fallback: bool,
    /// A task poll: the tag of the backend that runs the task.
    pub(super) pinned: Option<u64>,
    /// When the upstream's response header arrived (the access log's
    /// upstream time).
    pub(super) header_at: Option<Instant>,
}

/// What the body phases keep for one request.
pub(super) struct BodyState {
    /// The route's largest request body.
    pub(super) max: usize,
    /// Request body bytes seen so far.
    pub(super) seen: usize,
    /// The request body being buffered (for filters or usage).
    pub(super) req: Option<BytesMut>,
    /// The plan buffers the body: each attempt buffers it again.
    pub(super) buffered: bool,
    /// The body is buffered to add `stream_options.include_usage`.
    pub(super) inject_usage: bool,
    /// `include_usage` was added: its usage-only chunk is not the client's.
    pub(super) strip_usage: bool,
    /// The route's response filters at work on this answer.
    pub(super) resp_filter: Option<Box<ResponseFilter>>,
    /// Reads the answer's token usage.
    pub(super) usage: Option<Box<UsageTap>>,
    /// First and last streamed chunk of an SSE answer.
    pub(super) stream: Option<StreamClock>,
    /// The body is buffered so the arm's `model` can replace the client's.
    pub(super) rename: bool,
    /// The model the client asked for, when the body was renamed: the
    /// answer's `model` goes back to it.
    pub(super) client_model: Option<String>,
    /// The model an OpenAI request named, when routing read it.
    pub(super) request_model: Option<String>,
    /// Renames the answer's `model` back (and tags its `task_id`).
    pub(super) resp_rename: Option<Box<AnswerRename>>,
    /// The request creates or polls a task: the answer's `task_id` gets
    /// its backend's tag.
    pub(super) task: bool,
}

impl Default for BodyState {
    fn default() -> Self {
        Self {
            max: usize::MAX,
            seen: 0,
            req: None,
            buffered: false,
            inject_usage: false,
            strip_usage: false,
            resp_filter: None,
            usage: None,
            stream: None,
            rename: false,
            client_model: None,
            request_model: None,
            resp_rename: None,
            task: false,
        }
    }
}

/// What observation keeps for one request.
#[derive(Default)]
pub(super) struct ObserveState {
    /// The W3C trace context sent upstream.
    pub(super) trace: Option<crate::trace::TraceContext>,
    /// The request's spans, when spans are exported.
    pub(super) spans: Option<Box<crate::otel::RequestSpans>>,
    /// The `grpc-status` the upstream ended a gRPC call with.
    pub(super) grpc_status: Option<u16>,
}
