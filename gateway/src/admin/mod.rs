//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/admin/routes`,
//! the weights write API (`weights.rs`), rollbacks and CPU profiles.
//!
//! Who may call what is `auth.rs`: with admin tokens configured every path
//! but `/healthz` and `/readyz` needs one, and each token has scopes.

mod auth;
mod weights;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use weir_conf::model::{Balance, Protocol};

use crate::runtime::Runtime;
use crate::state::Shared;

/// The admin HTTP router.
pub fn router(shared: Arc<Shared>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/routes", get(routes))
        .route("/debug/pprof/profile", get(profile))
        .route(
            "/admin/rollbacks/{route}/{arm}",
            axum::routing::delete(clear_rollback),
        )
        .route(
            "/admin/routes/{route}/weights",
            get(weights::get).put(weights::put),
        )
        .route(
            "/admin/routes/{route}/rollback",
            axum::routing::post(weights::rollback),
        )
        .route("/admin/changes", get(weights::changes))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::require,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(shared)
}

/// An admin API error, in the proxy's shape:
/// `{"error":{"message","type","code"}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        s if s.is_server_error() => "server_error",
        _ => "invalid_request_error",
    };
    (
        status,
        axum::Json(json!({ "error": { "message": message, "type": kind, "code": code } })),
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let current = shared.current();
    let generation = current.as_ref().map(|rt| rt.generation);
    let ready = shared.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "ready": ready,
        "generation": generation,
        "sandbox": weir_conf::sandbox::detail(crate::sandbox::APPLIED.get()),
    });
    if let Some(rt) = &current {
        body["source"] = json!(rt.origin.kind());
        body["revision"] = json!(rt.origin.revision());
    }
    if let Some(note) = shared.note() {
        body["detail"] = json!(note);
    }
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `DELETE /admin/rollbacks/{route}/{arm}`: gives a rolled-back arm its
/// weight again (and deletes its etcd record, when there is one).
async fn clear_rollback(
    State(shared): State<Arc<Shared>>,
    axum::Extension(caller): axum::Extension<auth::Caller>,
    axum::extract::Path((route, arm)): axum::extract::Path<(String, String)>,
) -> Response {
    let actor = weir_conf::etcd::audit::Actor {
        name: caller.name.clone(),
        kind: caller.kind.to_owned(),
    };
    match shared.clear_rollback(&route, &arm, actor).await {
        Ok(cleared) => {
            if cleared {
                shared.metrics.count_change(&route, caller.kind);
            }
            axum::Json(json!({ "route": route, "arm": arm, "cleared": cleared })).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "etcd_unavailable",
            &format!("could not clear the rollback: {e}"),
        ),
    }
}

/// `GET /debug/pprof/profile?seconds=N[&format=svg|folded]`: samples the
/// running gateway's CPU for N seconds (1-60, default 10) at 99 Hz and
/// answers a flame graph (SVG, the default) or the folded stacks (text, one
/// `frame;frame;… count` per line, for speedscope, inferno or flamegraph.pl).
/// One profile at a time (409 otherwise).
async fn profile(
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
        None => 10,
        Some(Ok(n)) if (1..=60).contains(&n) => n,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "seconds must be a whole number from 1 to 60" })),
            )
                .into_response();
        }
    };
    let folded = match q.get("format").map(String::as_str) {
        None | Some("svg") => false,
        Some("folded") => true,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "format must be svg or folded" })),
            )
                .into_response();
        }
    };
    static BUSY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if BUSY.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({ "error": "a profile is already being taken" })),
        )
            .into_response();
    }
    // The profiler guard is not Send: it lives on a blocking thread.
    let taken = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        let report = guard.report().build().map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        if folded {
            for (frames, count) in &report.data {
                let stack: Vec<String> = frames
                    .frames
                    .iter()
                    .rev()
                    .flatten()
                    .map(|s| s.name())
                    .collect();
                out.extend_from_slice(format!("{} {count}\n", stack.join(";")).as_bytes());
            }
        } else {
            report.flamegraph(&mut out).map_err(|e| e.to_string())?;
        }
        // Give back what profiling took: the sample collector (released by
        // the patched pprof when the guard drops, see
        // `third_party/pprof/PATCHES.md`) and the debug information read
        // to name the frames (well over 100 MB for this binary).
        drop(report);
        drop(guard);
        backtrace::clear_symbol_cache();
        crate::alloc::give_back_freed_memory();
        Ok(out)
    })
    .await;
    BUSY.store(false, std::sync::atomic::Ordering::Release);
    // A panicked profiling thread is a failure like any other.
    match taken.unwrap_or_else(|e| Err(e.to_string())) {
        Ok(body) => {
            let ct = if folded {
                "text/plain; charset=utf-8"
            } else {
                "image/svg+xml"
            };
            ([(header::CONTENT_TYPE, ct)], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "error": format!("profiling failed: {e}") })),
        )
            .into_response(),
    }
}

async fn routes(State(shared): State<Arc<Shared>>) -> Response {
    match shared.current() {
        Some(rt) => axum::Json(describe(&rt)).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": "no configuration loaded yet" })),
        )
            .into_response(),
    }
}

/// A duration in whole milliseconds, as the config writes it.
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// JSON view of the live routes (with their effective timeouts), arms,
/// weights and backend health.
pub fn describe(rt: &Runtime) -> Value {
    let now = crate::balance::now_ns();
    let routes: Vec<Value> = rt
        .routes
        .iter()
        .map(|r| {
            let total = r.table.total_weight().max(1) as f64;
            let arms: Vec<Value> = r
                .arms
                .iter()
                .map(|a| {
                    let effective = if a.rolled_back { 0 } else { a.weight };
                    json!({
                        "name": a.name,
                        "pool": a.pool.config.name,
                        "weight": a.weight,
                        "effective_weight": effective,
                        "share": f64::from(effective) / total,
                        "rolled_back": a.rolled_back,
                    })
                })
                .collect();
            json!({
                "name": r.config.name,
                "prefix": r.config.prefix,
                "host": r.config.host,
                "ab_header": r.config.ab_header,
                "sticky_header": r.config.sticky_header,
                "fallback": r.config.fallback.map(|i| r.arms[i].name.as_str()),
                "timeouts": {
                    "connect_ms": ms(r.config.timeouts.connect),
                    "read_ms": ms(r.config.timeouts.read),
                    "write_ms": ms(r.config.timeouts.write),
                    "total_ms": r.config.timeouts.total.map(ms),
                },
                "arms": arms,
            })
        })
        .collect();
    let pools: Vec<Value> = rt
        .pools
        .iter()
        .map(|p| {
            let backends: Vec<Value> = p
                .lb
                .backends()
                .get_backend()
                .iter()
                .map(|b| {
                    let breaker = b
                        .addr
                        .as_inet()
                        .and_then(|a| p.breakers.get(a))
                        .filter(|_| p.breakers.enabled())
                        .map(|br| br.state().as_str());
                    let load = p.members.iter().find(|m| m.backend.addr == b.addr).map(|m| &m.load);
                    json!({
                        "address": b.addr.to_string(),
                        "weight": b.weight,
                        "healthy": p.healthy(b),
                        "breaker": breaker,
                        "in_flight": load.map(|l| l.in_flight()),
                        "latency_ms": load.map(|l| (l.latency_ns(now) / 1e4).round() / 100.0),
                    })
                })
                .collect();
            json!({
                "name": p.config.name,
                "balance": match p.config.balance { Balance::LeastRequest => "least_request", Balance::RoundRobin => "round_robin" },
                "protocol": match p.config.protocol { Protocol::Http1 => "http1", Protocol::H2c => "h2c", Protocol::H2 => "h2" },
                "tls": p.config.tls.as_ref().map(|t| json!({ "sni": t.sni, "verify": t.verify, "ca_file": t.ca_file.is_some(), "client_cert": t.client.is_some() })),
                "headers": { "set": p.config.headers.set.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), "remove": &p.config.headers.remove },
                "preserve_host": p.config.preserve_host,
                "names": p.config.names.iter().map(|n| json!({
                    "name": format!("{}:{}", n.host, n.port),
                    "addresses": p.resolved.iter().filter(|(_, h, _)| *h == n.host).map(|(a, _, _)| a.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "backends": backends,
            })
        })
        .collect();
    json!({
        "generation": rt.generation,
        "revision": rt.origin.revision(),
        "source": {
            "kind": rt.origin.kind(),
            "location": rt.origin.location(),
            "revision": rt.origin.revision(),
        },
        "routes": routes,
        "pools": pools,
    })
}
