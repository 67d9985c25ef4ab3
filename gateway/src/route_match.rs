//! Choosing the route of a request: host, path prefix, gRPC service or
//! method, and, where routes name models, the requested model.
//!
//! The model comes from the Open Inference Protocol path
//! (`/v2/models/NAME/...`) when there is one, else from the `model` field of
//! a JSON body (`content-type: application/json`; gRPC and other bodies are
//! never read ahead). The body is then read ahead, before a backend is chosen;
//! Pingora keeps what was read and replays it to the upstream (and to the
//! request body filters), which it can do for at most
//! [`MODEL_PEEK_LIMIT`] bytes: a larger body on a path whose routes choose
//! by model is refused with 413. A route whose arms rename the model reads
//! it the same way (a request naming an arm's model goes to that arm),
//! except a body declared larger than the limit, which is renamed without
//! pinning. Nothing is read for any other route.

use std::borrow::Cow;

use weir_conf::matching::{Request, path_model};

use crate::client::Downstream;
use crate::errors::GatewayError;
use crate::request_head::RequestHead;
use crate::runtime::RouteRt;

/// Largest body read ahead for its `model` (Pingora's replay buffer).
pub const MODEL_PEEK_LIMIT: usize = 64 * 1024;

/// The index of the route that takes the request, and the model the
/// request names when it was read (for a route that chooses by model or
/// whose arms rename it).
pub async fn choose_route(
    client: &mut impl Downstream,
    routes: &[RouteRt],
    grpc: bool,
) -> Result<(usize, Option<String>), GatewayError> {
    let req = client.request();
    let host = request_host(req)?;
    let host = host.as_deref();
    let path = req.uri().path();
    let Some(first) = routes
        .iter()
        .position(|r| r.config.matches(host, path, grpc))
    else {
        return Err(GatewayError::NoRoute {
            path: path.to_owned(),
        });
    };
    let first_route = &routes[first].config;
    if !first_route.needs_model() && !first_route.renames_model() {
        return Ok((first, None));
    }
    let needs_model = first_route.needs_model();
    // A route that only renames reads the model to honour a pinned
    // version; a body too large to read ahead is renamed without it.
    let too_large =
        !needs_model && content_length(client.request()).is_some_and(|n| n > MODEL_PEEK_LIMIT);
    let (host, path) = (host.map(str::to_owned), path.to_owned());
    let model = match path_model(&path) {
        Some(m) => Some(m.to_owned()),
        // A gRPC call's body is protobuf, and may never end (a stream).
        None if grpc || too_large || !is_json(client.request()) => None,
        None => body_model(client).await?,
    };
    if !needs_model {
        return Ok((first, model));
    }
    let wanted = Request {
        host: host.as_deref(),
        path: &path,
        grpc,
        model: model.as_deref(),
    };
    routes[first..]
        .iter()
        .position(|r| r.config.takes(&wanted))
        .map(|i| (first + i, model.clone()))
        .ok_or_else(|| GatewayError::NoModelRoute {
            model: model.unwrap_or_default(),
            path,
        })
}

/// Reads the whole body (kept for the upstream) and returns its JSON
/// `model` field, if it has one.
async fn body_model(client: &mut impl Downstream) -> Result<Option<String>, GatewayError> {
    let req = client.request();
    if !has_body(req) {
        return Ok(None);
    }
    let limit = MODEL_PEEK_LIMIT;
    if content_length(req).is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let buf = client.read_ahead(limit).await?;
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Named>(&buf) {
        Ok(named) => Ok(named.model.and_then(|m| m.as_str().map(str::to_owned))),
        // Clients and servers disagree on which of two `model`s counts.
        Err(e) if e.to_string().starts_with("duplicate field `model`") => Err(
            GatewayError::InvalidBody("the body names `model` twice".to_owned()),
        ),
        Err(_) => Ok(None),
    }
}

/// Whether the request says its body is JSON (`application/json`, `...+json`).
fn is_json(req: &dyn RequestHead) -> bool {
    req.field_str(&http::header::CONTENT_TYPE)
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim();
            t.eq_ignore_ascii_case("application/json")
                || t.get(t.len().saturating_sub(5)..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json"))
        })
}

/// `Content-Length`, when present and valid.
pub fn content_length(req: &dyn RequestHead) -> Option<usize> {
    req.field_str(&http::header::CONTENT_LENGTH)?
        .trim()
        .parse()
        .ok()
}

/// Whether a request may carry a body: POST, PUT or PATCH with a non-zero
/// length, chunked, or over HTTP/2 (where the length is optional).
pub fn has_body(req: &dyn RequestHead) -> bool {
    use http::Method;
    matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && (content_length(req).is_some_and(|n| n > 0)
            || req.has_field(&http::header::TRANSFER_ENCODING)
            || (req.version() == http::Version::HTTP_2 && content_length(req).is_none()))
}

/// The host routes compare ([`crate::normalize::host`]: lower-case, no
/// port, no trailing dot), from the `Host` header or the URI authority; a
/// host no host name looks like is refused (400).
pub fn request_host(req: &dyn RequestHead) -> Result<Option<Cow<'_, str>>, GatewayError> {
    let raw = req
        .field(&http::header::HOST)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()));
    match raw {
        None => Ok(None),
        Some(raw) => crate::normalize::host_bytes(raw)
            .map(Some)
            .map_err(|e| GatewayError::BadRequest(e.to_string())),
    }
}
