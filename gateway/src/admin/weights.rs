//! The weights write API: `GET`/`PUT /admin/routes/{route}/weights`,
//! `POST /admin/routes/{route}/rollback` and `GET /admin/changes?since=REV`.
//!
//! With the etcd source every write goes through the same validation,
//! compare-and-swap and audit record as `weirctl` (`weir_conf::etcd::Store`),
//! so every replica converges on it. With the file source the file is the
//! source of truth: writes answer 409 and say so.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_conf::etcd::audit::Actor;
use weir_conf::etcd::{Store, StoreError, WeightsChange, Write};

use super::auth::Caller;
use super::error;
use crate::state::Shared;

/// `PUT /admin/routes/{route}/weights`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    /// Arm → weight; arms not named keep theirs.
    weights: BTreeMap<String, i64>,
    /// The weights' revision the caller read (`GET` answers it); 0: no
    /// override may exist yet.
    expect_revision: Option<i64>,
    /// Why, for the audit log.
    reason: Option<String>,
    /// Check and answer what the weights would be; write nothing.
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/routes/{route}/rollback`'s body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    expect_revision: Option<i64>,
    reason: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

fn parse<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    empty_ok: bool,
) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) && empty_ok {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("the body is not valid: {e}"),
        ))
    })
}

/// The store the config comes from, or the answer saying there is none.
async fn store(shared: &Shared) -> Result<Store, Response> {
    let Some(settings) = shared.etcd_settings() else {
        return Err(error(
            StatusCode::CONFLICT,
            "file_source",
            "this gateway's config comes from a file, which is the source of truth: edit the file (the gateway reloads it); the write API needs the etcd source",
        ));
    };
    Store::connect(settings).await.map_err(store_error)
}

/// A store error as the admin API answers it.
fn store_error(e: StoreError) -> Response {
    let message = e.to_string();
    let (status, code) = match &e {
        StoreError::Refused(m) if m.starts_with("no route named") => {
            (StatusCode::NOT_FOUND, "route_not_found")
        }
        StoreError::Refused(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        StoreError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config"),
        StoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
        StoreError::WouldDelete { .. } => (StatusCode::CONFLICT, "would_delete"),
        StoreError::Etcd(_) => (StatusCode::SERVICE_UNAVAILABLE, "etcd_unavailable"),
    };
    error(status, code, &message)
}

fn arms(w: &weir_conf::etcd::store::Weights) -> Value {
    Value::Object(
        w.arms
            .iter()
            .map(|(a, n)| (a.clone(), Value::from(*n)))
            .collect(),
    )
}

fn change_json(c: &WeightsChange) -> Value {
    json!({
        "route": c.after.route,
        "dry_run": c.dry_run,
        "before": arms(&c.before),
        "after": arms(&c.after),
        "weights_revision": c.after.mod_revision,
        "revision": c.written.map_or(c.after.revision, |w| w.revision),
        "audit_seq": c.written.map(|w| w.audit_seq),
    })
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        name: caller.name.clone(),
        kind: caller.kind.to_owned(),
    }
}

/// `GET /admin/routes/{route}/weights`: the route's effective weights and
/// the revision to send back as `expect_revision` (from etcd with the etcd
/// source; from the live config, without a revision, with the file).
pub async fn get(State(shared): State<Arc<Shared>>, Path(route): Path<String>) -> Response {
    if shared.etcd_settings().is_some() {
        let mut store = match store(&shared).await {
            Ok(s) => s,
            Err(resp) => return resp,
        };
        return match store.weights(&route).await {
            Ok(w) => Json(json!({
                "route": w.route,
                "weights": arms(&w),
                "overridden": w.overridden,
                "weights_revision": w.mod_revision,
                "revision": w.revision,
                "source": "etcd",
            }))
            .into_response(),
            Err(e) => store_error(e),
        };
    }
    let Some(rt) = shared.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no configuration loaded yet",
        );
    };
    match rt.routes.iter().find(|r| r.config.name == route) {
        Some(r) => Json(json!({
            "route": route,
            "weights": Value::Object(r.arms.iter().map(|a| (a.name.clone(), Value::from(a.weight))).collect()),
            "overridden": false,
            "weights_revision": Value::Null,
            "revision": Value::Null,
            "source": rt.origin.kind(),
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "route_not_found",
            &format!("no route named {route:?}"),
        ),
    }
}

/// `PUT /admin/routes/{route}/weights`.
pub async fn put(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: PutBody = match parse(&body, false) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mut store = match store(&shared).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let write = write(&caller, body.expect_revision, body.dry_run, body.reason);
    let changes: Vec<(String, i64)> = body.weights.into_iter().collect();
    let done = store.set_weights(&route, &changes, &write).await;
    answer(&shared, &caller, &route, done, "set")
}

/// `POST /admin/routes/{route}/rollback`: back to the weights the route had
/// before its last change.
pub async fn rollback(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(route): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let body: RollbackBody = match parse(&body, true) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mut store = match store(&shared).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let write = write(&caller, body.expect_revision, body.dry_run, body.reason);
    let done = store.undo(&route, &write).await;
    answer(&shared, &caller, &route, done, "rolled back")
}

/// The write options of a request by `caller`.
fn write(caller: &Caller, expect: Option<i64>, dry_run: bool, reason: Option<String>) -> Write {
    Write {
        expect,
        dry_run,
        actor: actor(caller),
        reason,
    }
}

/// A weights write's answer; a real (not dry) write is counted and logged.
fn answer(
    shared: &Shared,
    caller: &Caller,
    route: &str,
    done: Result<WeightsChange, StoreError>,
    verb: &str,
) -> Response {
    match done {
        Ok(c) => {
            if !c.dry_run {
                shared.metrics.count_change(route, caller.kind);
                tracing::info!(
                    route,
                    actor = caller.name,
                    revision = ?c.written.map(|w| w.revision),
                    "weights {verb} through the admin API"
                );
            }
            Json(change_json(&c)).into_response()
        }
        Err(e) => store_error(e),
    }
}

/// `GET /admin/changes?since=REV[&route=R]`: weights changes after revision
/// `REV` (default 0: all etcd still holds), each with its audit record or
/// marked unaudited, and the other audited changes.
pub async fn changes(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let since = match q.get("since").map(|s| s.parse::<i64>()) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "since must be a revision (a whole number >= 0)",
            );
        }
    };
    let mut store = match store(&shared).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    match store
        .history(q.get("route").map(String::as_str), since)
        .await
    {
        Ok(h) => Json(json!({
            "since": since,
            "revision": h.revision,
            "compacted": h.compacted,
            "changes": h.changes.iter().map(|c| json!({
                "route": c.route,
                "revision": c.revision,
                "weights": c.weights,
                "audited": c.audit.is_some(),
                "audit": c.audit,
            })).collect::<Vec<_>>(),
            "other": h.other,
        }))
        .into_response(),
        Err(e) => store_error(e),
    }
}
