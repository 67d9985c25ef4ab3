//! The Pingora `ProxyHttp` implementation: one [`GatewayCtx`] per request,
//! one job per hook, the work in the file that owns its concern.
//!
//! The hooks, in the order Pingora runs them:
//!
//! | phase | job | file |
//! |---|---|---|
//! | `new_ctx` | a fresh [`GatewayCtx`] | [`ctx`] |
//! | `request_filter` | load the runtime once; request id; the model catalogue; route, tenant and limits (401/403/429), declared body size (413), arm (task polls to their backend) | [`request`], [`catalogue`] |
//! | `request_body_filter` | count the body against the route's limit; buffer and filter it when the route filters requests | [`body`] |
//! | `upstream_peer` | the route's deadline; a healthy backend whose breaker admits the request; fallback arm | [`upstream`] |
//! | `fail_to_connect` | count the failure (breaker too); retry elsewhere within attempts and budget | [`upstream`] |
//! | `upstream_request_filter` | `x-request-id`, forwarding headers, `traceparent`, tenant header, the pool's headers and `Host`, chunked filtered body: as field edits ([`fields`]) applied to Pingora's copy | [`fields`], [`respond`], [`observe`], [`body`] |
//! | `upstream_response_filter` | the status to the breaker; retry the route's statuses for idempotent requests | [`upstream`] |
//! | `response_filter` | response filters, usage tap and stream clock; `x-weir-*` headers | [`body`], [`respond`] |
//! | `response_body_filter` | deadline; usage; filters; time to first token | [`body`] |
//! | `response_trailer_filter` | a gRPC call's status | [`observe`] |
//! | `error_while_proxy` | timeouts to the breaker; Pingora's reuse retry policy | [`upstream`] |
//! | `fail_to_proxy` | gateway-made errors as JSON or gRPC statuses | [`respond`] |
//! | `logging` | the breaker's last word; metrics, canary check, spans, access log | [`upstream`], [`observe`] |

mod body;
mod catalogue;
mod ctx;
pub mod direct;
mod fields;
mod head;
mod observe;
mod plain;
mod request;
mod respond;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

pub use ctx::{GatewayCtx, Routed};

use crate::errors::GatewayError;
use crate::state::Shared;

/// The proxy application.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// A proxy over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
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
        GatewayCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut GatewayCtx) -> Result<bool> {
        match request::admit(&self.shared, session, ctx).await {
            Ok(None) => Ok(false),
            Ok(Some(body)) => {
                respond::answer_json(session, ctx, 200, body).await;
                Ok(true)
            }
            Err(err) => {
                respond::answer_error(session, ctx, err).await;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        body::request_body(ctx, body, end_of_stream).map_err(|e| respond::refuse(ctx, e))
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut GatewayCtx,
    ) -> Result<Box<HttpPeer>> {
        upstream::choose_peer(&self.shared, ctx).map_err(|e| respond::refuse(ctx, e))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut GatewayCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        upstream::connect_failed(&self.shared, ctx, peer, e)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        body::new_attempt(ctx);
        upstream_edits(&self.shared, &*session, ctx)?.apply(upstream_request)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        observe::grpc_status_in_head(ctx, &*upstream_response);
        upstream::answered(&self.shared, &*session, upstream_response, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut GatewayCtx,
    ) -> Result<()> {
        let h1 = session.req_header().version == http::Version::HTTP_11;
        body::response_header(ctx, upstream_response, h1)?;
        respond::decorate(upstream_response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut GatewayCtx,
    ) -> Result<Option<Duration>> {
        body::response_body(ctx, body, end_of_stream)?;
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut GatewayCtx,
    ) -> Result<Option<Bytes>> {
        observe::grpc_status_in_trailers(ctx, upstream_trailers);
        Ok(None)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut GatewayCtx,
        client_reused: bool,
    ) -> Box<Error> {
        upstream::proxy_failed(peer, &*session, e, ctx, client_reused)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut GatewayCtx,
    ) -> FailToProxy {
        respond::fail_to_proxy(session, e, ctx).await
    }

    /// A client that went away is not the gateway's error: it is counted
    /// (status 499, outcome `client_closed`) and logged at INFO, not ERROR.
    fn suppress_error_log(&self, _session: &Session, ctx: &GatewayCtx, e: &Error) -> bool {
        let gone = matches!(ctx.error, Some(GatewayError::ClientClosed(_)));
        if gone {
            tracing::info!(request_id = ctx.id_str(), error = %e, "the client closed the connection");
        }
        gone
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut GatewayCtx) {
        upstream::settle_at_end(ctx, e);
        observe::finish(&self.shared, &*session, e, ctx);
    }
}

/// The request's fields as they go upstream, as edits of the client's:
/// `x-request-id`, forwarding headers, trace context, the tenant
/// (credentials removed), the pool's headers and `Host`, the framing of a
/// filtered body.
fn upstream_edits(
    shared: &Shared,
    client: &dyn crate::client::Client,
    ctx: &mut GatewayCtx,
) -> Result<fields::FieldEdits> {
    let mut edits = fields::FieldEdits::with_capacity(8);
    if let Some(id) = &ctx.request_id {
        edits.set_value(crate::headers::X_REQUEST_ID.name(), id.clone());
    }
    observe::forward_headers(client, ctx, &mut edits)?;
    observe::trace_upstream(shared, client.request(), ctx, &mut edits);
    // Only authentication names the tenant, never the client.
    edits.remove(crate::headers::X_WEIR_TENANT.name());
    if let Some(tenant) = &ctx.tenant {
        // The gateway consumed the credentials; the upstream learns who
        // is calling, not how they proved it.
        edits.remove(&http::header::AUTHORIZATION);
        edits.remove(crate::headers::X_API_KEY.name());
        edits.set(crate::headers::X_WEIR_TENANT.name(), tenant.header.clone());
    }
    respond::pool_headers(ctx, &mut edits)?;
    body::upstream_headers(ctx, &mut edits);
    Ok(edits)
}
