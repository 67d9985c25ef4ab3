//! `POST /v1/tasks` (body: a completions request, or a chat request when
//! it has `messages`) answers `202 {"task_id","status"}` at once;
//! `GET /v1/tasks/{id}` reports status and, when done, the result.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::openai::{CompletionRequest, Endpoint, complete};
use super::shared::parse_json;
use crate::engine::Engine;
use crate::error::{Error, Result};

pub(super) async fn create(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    match create_inner(&engine, &body) {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn create_inner(engine: &Arc<Engine>, body: &[u8]) -> Result<Value> {
    let mut req: CompletionRequest = parse_json(body)?;
    if req.stream == Some(true) {
        return Err(Error::InvalidRequest(
            "stream: tasks run in the background; stream must be false".to_string(),
        ));
    }
    req.stream = Some(false);
    let endpoint = if req.messages.is_some() {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    // Refuse at once what cannot run: an unknown or non-LM model, or a full
    // queue (probed by taking a place and giving it back; the task takes its
    // own place when it starts, and fails with the same error if full then).
    let model = engine.resolve_openai(&req.model)?;
    if !model.is_lm() {
        return Err(Error::NotLanguageModel(model.name().to_string()));
    }
    drop(model.admission.admit()?);
    let id = engine.tasks.create();
    let task_engine = engine.clone();
    let task_id = id.clone();
    tokio::spawn(async move {
        task_engine.tasks.running(&task_id);
        let outcome = complete(&task_engine, req, endpoint).await;
        task_engine.tasks.finish(&task_id, outcome);
    });
    Ok(json!({ "task_id": id, "object": "task", "status": "queued" }))
}

pub(super) async fn get(State(engine): State<Arc<Engine>>, Path(id): Path<String>) -> Response {
    match engine.tasks.get(&id) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}
