//! The HTTP API (axum): OpenAI-compatible `/v1`, the Open Inference
//! Protocol's `/v2`, async tasks, repository control and `/metrics`.
//! Every response carries `x-weir-queue-depth`.

mod embeddings;
pub mod oip;
mod openai;
mod shared;
mod tasks;
mod v2;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::engine::Engine;
use crate::error::Error;

pub use openai::{CompletionRequest, Endpoint, complete};
pub use shared::{MODEL_VERSION_HEADER, QUEUE_DEPTH_HEADER};
pub use v2::{EXTENSIONS, SERVER_NAME};

/// Largest request body accepted (bytes).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Builds the router over the engine.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/tasks", post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::get))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{model}", get(v2::model_metadata))
        .route("/v2/models/{model}/ready", get(v2::model_ready))
        .route("/v2/models/{model}/config", get(v2::model_config))
        .route("/v2/models/{model}/infer", post(v2::infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(v2::model_metadata_v),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(v2::model_ready_v),
        )
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(v2::model_config_v),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2::infer_v),
        )
        .route("/v2/repository/index", post(v2::repository_index))
        .route("/v2/repository/models/{model}/load", post(v2::load))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(axum::middleware::from_fn(log_request))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(axum::middleware::map_response_with_state(
            engine.clone(),
            add_queue_depth,
        ))
        .with_state(engine)
}

async fn add_queue_depth(State(engine): State<Arc<Engine>>, mut response: Response) -> Response {
    response.headers_mut().insert(
        QUEUE_DEPTH_HEADER,
        HeaderValue::from(engine.metrics().total_depth()),
    );
    response
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    match engine.metrics().render() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// One line per request (target `weir_engine::access`): method, path,
/// status, time to the response header (a stream goes on after it), the
/// caller's request id and user agent. `/metrics` scrapes are left out.
async fn log_request(request: Request, next: axum::middleware::Next) -> Response {
    let start = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let header = |request: &Request, name: &str| -> String {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let request_id = header(&request, "x-request-id");
    let user_agent = header(&request, "user-agent");
    let response = next.run(request).await;
    if path != "/metrics" {
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: "weir_engine::access",
            method = %method,
            path,
            status = response.status().as_u16(),
            duration_ms = (ms * 1000.0).round() / 1000.0,
            request_id,
            user_agent,
        );
    }
    response
}

/// A server span per request when spans are exported (`crate::otel`), but
/// for `/metrics` and the health checks; handlers find it in the request's
/// extensions and add to it, and it ends when the response body has been
/// sent (a stream's last event) or dropped.
async fn trace_request(mut request: Request, next: axum::middleware::Next) -> Response {
    use http_body_util::BodyExt as _;
    use opentelemetry::KeyValue;

    let path = request.uri().path();
    if path == "/metrics" || path.starts_with("/v2/health") {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str());
    let attributes = vec![
        KeyValue::new("http.request.method", request.method().to_string()),
        KeyValue::new("url.path", path.to_owned()),
        KeyValue::new("http.route", route.to_owned()),
    ];
    let name = format!("{} {route}", request.method());
    let Some(span) = crate::otel::RequestSpan::start(name, request.headers(), attributes) else {
        return next.run(request).await;
    };
    request.extensions_mut().insert(span.clone());
    let response = next.run(request).await;
    let status = response.status();
    span.set([KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    )]);
    if status.is_server_error() {
        span.fail(status.to_string());
    }
    // The body holds the span to its end (size hint kept: a Content-Length
    // answer stays one).
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |frame| {
            let _held = &span;
            frame
        }))
    })
}

/// Answers 413 at once to a request whose `Content-Length` is over the
/// limit, before any handler waits for a body it would refuse anyway.
async fn refuse_declared_oversize(request: Request, next: axum::middleware::Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > BODY_LIMIT as u64 => {
            let protocol = if request.uri().path().starts_with("/v2") {
                crate::error::Protocol::V2
            } else {
                crate::error::Protocol::OpenAi
            };
            let mut response = Error::BodyTooLarge {
                declared: n,
                limit: BODY_LIMIT,
            }
            .into_http(protocol);
            // The body is never read: the connection cannot be reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
            response
        }
        _ => next.run(request).await,
    }
}

async fn not_found(request: Request) -> Response {
    Error::RouteNotFound(format!("{} {}", request.method(), request.uri().path())).into_response()
}
