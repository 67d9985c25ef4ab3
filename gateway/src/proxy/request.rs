//! The request phase: request id, route, tenant, limits and arm.
//!
//! The request loads the live runtime once; the route is matched
//! ([`crate::route_match`]: host, prefix, gRPC service or method, model);
//! on a route with `auth = "required"` the tenant is authenticated and
//! admitted under its limits ([`crate::access`]: 401/403/429); a declared
//! body over the route's limit is refused (413); the arm is chosen (A/B
//! header, sticky key, weighted random; [`crate::routing`]).

use std::borrow::Cow;

use super::fields::FieldValue;
use weir_conf::access::AuthMode;

use super::ctx::{GatewayCtx, Routed};
use crate::client::Downstream;
use crate::errors::GatewayError;
use crate::request_head::RequestHead;
use crate::route_match::content_length;
use crate::routing::Reason;
use crate::state::Shared;
use crate::window::now_ms;

/// Longest accepted client-supplied `x-request-id`.
const MAX_REQUEST_ID: usize = 128;

/// Routes and admits the request, or says which error to answer with.
/// `Some` is an answer the gateway gives itself (the model catalogue).
pub(super) async fn admit(
    shared: &Shared,
    client: &mut impl Downstream,
    ctx: &mut GatewayCtx,
) -> Result<Option<bytes::Bytes>, GatewayError> {
    ctx.request_id = request_id(client.request());
    super::observe::begin(shared, client.request(), ctx);
    let runtime = shared.current().ok_or(GatewayError::NotReady)?;
    if let Some(answer) = super::catalogue::answer(shared, &runtime, client.request()) {
        return answer.map(Some);
    }
    normalize_path(client.request_mut())?;
    ctx.grpc = crate::grpc::is_grpc(client.request());
    ctx.openai = is_openai_call(client.request());
    let task = super::catalogue::task_request(client.request_mut())?;
    ctx.body.task = task.is_some();
    let routed = ctx.routed.insert(Routed {
        runtime,
        route: None,
        arm: None,
    });
    let (route_idx, model) =
        crate::route_match::choose_route(client, &routed.runtime.routes, ctx.grpc).await?;
    let polled = task.flatten();
    routed.route = Some(route_idx);
    let route = &routed.runtime.routes[route_idx];
    let req = client.request();
    ctx.body.max = route.config.max_body;
    if route.config.auth == AuthMode::Required {
        let admitted = routed
            .runtime
            .access
            .authorize(req, &route.config, &shared.metrics)
            .await?;
        ctx.tenant = Some(admitted.tenant);
        ctx.permit = Some(admitted.permit);
        ctx.rate_headers = admitted.headers;
    }
    if content_length(req).is_some_and(|n| n > route.config.max_body) {
        let limit = route.config.max_body;
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let ab = route.ab_header.as_ref().and_then(|h| header(req, h));
    let sticky = route.sticky_header.as_ref().and_then(|h| header(req, h));
    // A task poll goes to the backend that runs the task; a request naming
    // an arm's upstream model (a pinned version) goes to that arm, whatever
    // the split says.
    let pinned = match polled {
        Some((tag, id)) => {
            let arm = route.arms.iter().position(|a| a.pool.has_tag(tag));
            ctx.upstream.pinned = Some(tag);
            Some((arm.ok_or(GatewayError::TaskNotFound { id })?, Reason::Task))
        }
        None => model
            .as_deref()
            .and_then(|m| route.config.arm_for_model(m))
            .map(|i| (i, Reason::Model)),
    };
    if ctx.openai {
        ctx.body.request_model.clone_from(&model);
    }
    let picked = pinned.or_else(|| route.table.select(ab, sticky));
    route.budget.request(now_ms());
    let (arm, reason) = picked.ok_or_else(|| GatewayError::NoArm {
        route: route.config.name.clone(),
    })?;
    routed.arm = Some(arm);
    ctx.reason = Some(reason);
    let rename = (ctx.openai || ctx.body.task) && route.config.renames_model();
    ctx.body.plan(route, req, ctx.tenant.as_deref(), rename)?;
    Ok(None)
}

/// Replaces the request's path with its normalised form
/// ([`crate::normalize::path`]): what routes match and what the upstream
/// receives. Refused paths answer 400.
fn normalize_path(req: &mut dyn RequestHead) -> Result<(), GatewayError> {
    let refused = |e: &dyn std::fmt::Display| GatewayError::BadRequest(e.to_string());
    let normal = match crate::normalize::path(req.uri().path()) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(normal)) => normal,
        Err(e) => return Err(refused(&e)),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let target = target.parse().map_err(|e| refused(&e))?;
    req.set_path_and_query(target).map_err(|e| refused(&e))
}

/// Whether a request is an OpenAI call whose answer reports `usage`.
fn is_openai_call(req: &dyn RequestHead) -> bool {
    let path = req.uri().path();
    *req.method() == http::Method::POST
        && (path.ends_with("/completions") || path.ends_with("/embeddings"))
}

/// A header's value, when present and not empty.
fn header<'a>(req: &'a dyn RequestHead, name: &http::HeaderName) -> Option<&'a [u8]> {
    req.field(name).filter(|v| !v.is_empty())
}

/// The client's `x-request-id` when it is usable, else a new UUID (held
/// in place, [`FieldValue::inline`]).
fn request_id(req: &dyn RequestHead) -> Option<FieldValue> {
    match req.field_value(crate::headers::X_REQUEST_ID.name()) {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.to_str().is_ok() => {
            Some(id.into())
        }
        _ => {
            // A random (version 4) UUID from the thread's fast generator:
            // an id to correlate logs, not a secret.
            let random = fastrand::u128(..).to_le_bytes();
            let id = uuid::Builder::from_random_bytes(random).into_uuid();
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            FieldValue::inline(id.hyphenated().encode_lower(&mut buf).as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use pingora_http::RequestHeader;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn a_usable_request_id_is_kept_and_others_are_replaced() {
        let kept = request_id(&req("GET", "/", &[("x-request-id", "abc-1")])).unwrap();
        assert_eq!(kept, "abc-1");
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for bad in ["", long.as_str()] {
            let made = request_id(&req("GET", "/", &[("x-request-id", bad)])).unwrap();
            assert_eq!(
                made.as_bytes().len(),
                uuid::fmt::Hyphenated::LENGTH,
                "{bad:?}"
            );
        }
        let made = request_id(&req("GET", "/", &[])).unwrap();
        let made = uuid::Uuid::parse_str(made.to_str().unwrap()).unwrap();
        assert_eq!(made.get_version_num(), 4);
        let again = request_id(&req("GET", "/", &[])).unwrap();
        assert_ne!(again.as_bytes(), made.to_string().as_bytes());
    }

    #[test]
    fn only_posts_to_completions_and_embeddings_are_openai_calls() {
        assert!(is_openai_call(&req("POST", "/v1/chat/completions", &[])));
        assert!(is_openai_call(&req("POST", "/v1/embeddings", &[])));
        assert!(!is_openai_call(&req("GET", "/v1/chat/completions", &[])));
        assert!(!is_openai_call(&req("POST", "/v2/models/m/infer", &[])));
    }

    #[test]
    fn empty_headers_count_as_absent() {
        let r = req("GET", "/", &[("x-ab-group", ""), ("x-user", "u1")]);
        let name = http::HeaderName::from_static;
        assert_eq!(header(&r, &name("x-ab-group")), None);
        assert_eq!(header(&r, &name("x-user")), Some(&b"u1"[..]));
        assert_eq!(header(&r, &name("x-none")), None);
    }
}
