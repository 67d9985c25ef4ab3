//! What the gateway answers about models and tasks from its own config.
//!
//! `GET /v1/models` and `GET /v1/models/{id}` are answered by the gateway
//! when the routes that take the request's host and path name models
//! (`models` on routes, `model` on arms): the list is the union of those
//! names, whatever arm a split would pick, so a pinned `tiny-lm:1` is never
//! a 404 because the request happened to land on the arm serving version
//! 2. Routes that require authentication are listed only to a caller that
//! authenticates as a tenant they allow. When a route that takes the
//! request names no models (a catch-all `/` route), the gateway cannot know
//! the whole list and the request is proxied as any other. An id may hold `/` (`vendor/model`,
//! sent as `vendor%2Fmodel`): the catalogue reads the path before it is
//! normalised, so the escape that normalisation refuses is decoded here.
//!
//! Task polls (`/v1/tasks/{id}`) carry their backend's tag in the id (see
//! [`crate::rename`]): the tag is taken off before the request goes up, and
//! the request goes to that backend.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::json;
use weir_conf::access::AuthMode;

use crate::errors::GatewayError;
use crate::rename::split_task_id;
use crate::request_head::RequestHead;
use crate::runtime::{RouteRt, Runtime};
use crate::state::Shared;

/// The catalogue's answer to `req`: `None` when it is not a catalogue
/// request, or no route that takes it names a model.
pub(super) fn answer(
    shared: &Shared,
    runtime: &Runtime,
    req: &dyn RequestHead,
) -> Option<Result<Bytes, GatewayError>> {
    // Without a route that names models, every request is proxied (a bad
    // host is refused by route matching, as here).
    if *req.method() != http::Method::GET || !runtime.names_models {
        return None;
    }
    // Read before the path is normalised: a model id may hold `/`, which
    // clients send escaped (`vendor%2Fmodel`).
    let raw = req.uri().path();
    let path = "/v1/models";
    let id = match raw.strip_prefix(path) {
        Some("") => None,
        Some(rest) => {
            let escaped = rest.strip_prefix('/').filter(|id| !id.is_empty())?;
            let id = percent_encoding::percent_decode_str(escaped)
                .decode_utf8()
                .ok()?;
            Some(id.into_owned())
        }
        None => return None,
    };
    let host = match crate::route_match::request_host(req) {
        Ok(host) => host,
        Err(e) => return Some(Err(e)),
    };
    // Only a complete list is the gateway's to give: a route that takes
    // the request without naming its models leaves it to its backends
    // (decided before anything is allocated: the usual case).
    let takes = |r: &&RouteRt| r.config.matches(host.as_deref(), path, false);
    let mut taking = runtime.routes.iter().filter(takes).peekable();
    if taking.peek().is_none() || taking.any(|r| r.config.catalogue().next().is_none()) {
        return None;
    }
    let naming: Vec<&RouteRt> = runtime.routes.iter().filter(takes).collect();
    let visible = match visible(shared, runtime, req, &naming) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    let model =
        |id: &str| json!({"id": id, "object": "model", "created": created(), "owned_by": "weir"});
    let body = match id.as_deref() {
        Some(id) => {
            if !visible.iter().any(|r| r.config.serves_model(Some(id))) {
                return Some(Err(GatewayError::NoModelRoute {
                    model: id.to_owned(),
                    path: path.to_owned(),
                }));
            }
            model(id)
        }
        None => {
            let mut names: Vec<&str> = Vec::new();
            for name in visible.iter().flat_map(|r| r.config.catalogue()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            json!({"object": "list", "data": names.into_iter().map(model).collect::<Vec<_>>()})
        }
    };
    Some(Ok(Bytes::from(body.to_string())))
}

/// The routes the caller may see: those without authentication, and those
/// that allow the tenant the request authenticates as. When every naming
/// route needs authentication, failing it is the answer (401).
fn visible<'a>(
    shared: &Shared,
    runtime: &Runtime,
    req: &dyn RequestHead,
    naming: &[&'a RouteRt],
) -> Result<Vec<&'a RouteRt>, GatewayError> {
    let needs = |r: &&RouteRt| r.config.auth == AuthMode::Required;
    let tenant = if naming.iter().any(needs) {
        match runtime.access.authenticate(req) {
            Ok(t) => Some(t),
            Err(e) if naming.iter().all(needs) => {
                shared
                    .metrics
                    .auth_failures
                    .with_label_values(&[naming[0].config.name.as_str(), e.code()])
                    .inc();
                return Err(e);
            }
            Err(_) => None,
        }
    } else {
        None
    };
    Ok(naming
        .iter()
        .copied()
        .filter(|r| {
            !needs(r)
                || tenant
                    .is_some_and(|t| r.config.tenants.is_empty() || r.config.tenants.contains(&t))
        })
        .collect())
}

/// `created` of every model listed: when this gateway first answered.
fn created() -> u64 {
    static CREATED: OnceLock<u64> = OnceLock::new();
    *CREATED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// Whether the request creates or polls a task. `Some(None)`: it creates
/// one (`POST /v1/tasks`); `Some(Some((tag, id)))`: it polls one whose id
/// carries its backend's tag, and the tag is taken off the path that goes
/// up; `None`: anything else.
pub(super) fn task_request(
    req: &mut dyn RequestHead,
) -> Result<Option<Option<(u64, String)>>, GatewayError> {
    let path = req.uri().path();
    if path == "/v1/tasks" {
        return Ok((*req.method() == http::Method::POST).then_some(None));
    }
    let Some(id) = path.strip_prefix("/v1/tasks/") else {
        return Ok(None);
    };
    let Some((task, tag)) = split_task_id(id) else {
        return Ok(None);
    };
    let mut target = format!("/v1/tasks/{task}");
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let client_id = id.to_owned();
    let target = target
        .parse()
        .map_err(|e: http::uri::InvalidUri| GatewayError::BadRequest(e.to_string()))?;
    req.set_path_and_query(target)
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    Ok(Some(Some((tag, client_id))))
}
