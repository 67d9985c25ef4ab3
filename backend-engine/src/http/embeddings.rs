//! `POST /v1/embeddings` (OpenAI): `input` a string, an array of strings, a
//! token array or an array of token arrays; `encoding_format` `float` or
//! `base64` (little-endian f32); `dimensions` must equal the model's.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use opentelemetry::KeyValue;
use serde::Deserialize;
use serde_json::{Value, json};

use super::shared::{MODEL_VERSION_HEADER, parse_json};
use crate::engine::Engine;
use crate::error::{Error, Protocol, Result};
use crate::model::EmbedInput;

/// Most inputs per request (as OpenAI's).
const MAX_INPUTS: usize = 2048;

/// An embeddings request (unknown fields such as `user` are ignored).
#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

/// Reads `input` in any of its four shapes.
fn parse_input(input: Value) -> Result<EmbedInput> {
    let bad = || {
        Error::InvalidRequest(
            "input: expected a string, an array of strings, an array of token ids \
             or an array of arrays of token ids"
                .to_string(),
        )
    };
    let token = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    let parsed = match input {
        Value::String(s) => EmbedInput::Texts(vec![s]),
        Value::Array(items) if items.is_empty() => {
            return Err(Error::InvalidRequest("input: must not be empty".into()));
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => EmbedInput::Texts(
                items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(bad()),
                    })
                    .collect::<Result<_>>()?,
            ),
            Value::Number(_) => EmbedInput::Tokens(vec![
                items
                    .iter()
                    .map(token)
                    .collect::<Option<_>>()
                    .ok_or_else(bad)?,
            ]),
            Value::Array(_) => EmbedInput::Tokens(
                items
                    .iter()
                    .map(|v| {
                        v.as_array()
                            .and_then(|a| a.iter().map(token).collect::<Option<Vec<u32>>>())
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_>>()?,
            ),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    let (count, empty) = match &parsed {
        EmbedInput::Texts(t) => (t.len(), t.iter().any(String::is_empty)),
        EmbedInput::Tokens(t) => (t.len(), t.iter().any(Vec::is_empty)),
    };
    if empty {
        return Err(Error::InvalidRequest("input: an input is empty".into()));
    }
    if count > MAX_INPUTS {
        return Err(Error::InvalidRequest(format!(
            "input: at most {MAX_INPUTS} inputs per request, not {count}"
        )));
    }
    Ok(parsed)
}

pub(super) async fn embeddings(
    State(engine): State<Arc<Engine>>,
    span: Option<Extension<crate::otel::RequestSpan>>,
    body: Bytes,
) -> Response {
    let result = async {
        let req: EmbeddingRequest = parse_json(&body)?;
        let model = engine.resolve_openai(&req.model)?;
        let label = format!("{}:{}", model.name(), model.version());
        if let Some(Extension(span)) = &span {
            span.rename(format!("embeddings {}", req.model));
            span.set([
                KeyValue::new("gen_ai.operation.name", "embeddings"),
                KeyValue::new("gen_ai.request.model", req.model.clone()),
                KeyValue::new("gen_ai.response.model", label.clone()),
                KeyValue::new("weir.model_version", model.version().to_owned()),
            ]);
        }
        let settings = model.config.embedding.clone().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "model '{}' (kind {}) is not an embedding model",
                model.name(),
                model.config.kind.as_str()
            ))
        })?;
        if let Some(d) = req.dimensions
            && usize::try_from(d).ok() != Some(settings.dimensions)
        {
            return Err(Error::InvalidRequest(format!(
                "dimensions: this model gives {} dimensions only, not {d}",
                settings.dimensions
            )));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Error::InvalidRequest(format!(
                    "encoding_format: expected float or base64, not {other:?}"
                )));
            }
        };
        let (vectors, tokens) = model.embed(parse_input(req.input)?).await?;
        if let Some(Extension(span)) = &span {
            span.set([KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(tokens).unwrap_or(i64::MAX),
            )]);
        }
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({ "object": "embedding", "index": index, "embedding": embedding })
            })
            .collect();
        let mut response = Json(json!({
            "object": "list",
            "data": data,
            "model": label,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }))
        .into_response();
        if let Ok(v) = HeaderValue::from_str(model.version()) {
            response.headers_mut().insert(MODEL_VERSION_HEADER, v);
        }
        Ok::<_, Error>(response)
    }
    .await;
    result.unwrap_or_else(|e| e.into_http(Protocol::OpenAi))
}
