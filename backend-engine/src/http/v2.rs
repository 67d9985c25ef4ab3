//! Open Inference Protocol (KServe v2) over HTTP, including the binary
//! tensor extension (`Inference-Header-Content-Length`) that
//! `tritonclient.http` uses by default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::oip::{self, Parameters, TritonConfig};
use super::shared::{MODEL_VERSION_HEADER, parse_json};
use crate::engine::Engine;
use crate::error::{Error, Result, V2Error};
use crate::model::ModelVersion;
use crate::tensor::{DataType, NamedTensor, TensorData, element_count};

/// Header giving the JSON part's length when binary tensors follow it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The server's name in metadata.
pub const SERVER_NAME: &str = "weir-engine";

/// Protocol extensions served.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository"];

type V2Result<T> = std::result::Result<T, V2Error>;

pub(super) async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

pub(super) async fn ready(State(engine): State<Arc<Engine>>) -> Response {
    let ready = !engine.models().is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let sandbox = weir_conf::sandbox::detail(crate::sandbox::APPLIED.get());
    (status, Json(json!({ "ready": ready, "sandbox": sandbox }))).into_response()
}

pub(super) async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

/// Model metadata in the protocol's JSON shape.
pub fn metadata_json(engine: &Engine, model: &ModelVersion) -> Value {
    let versions: Vec<String> = engine
        .models()
        .get(model.name())
        .map(|s| {
            s.versions
                .values()
                .map(|v| v.version().to_string())
                .collect()
        })
        .unwrap_or_default();
    let specs = |list: &[crate::repository::model_config::TensorSpec]| -> Vec<Value> {
        list.iter()
            .map(|s| json!({ "name": s.name, "datatype": s.datatype.as_str(), "shape": s.shape }))
            .collect()
    };
    json!({
        "name": model.name(),
        "versions": versions,
        "platform": super::oip::PLATFORM,
        "inputs": specs(&model.config.inputs),
        "outputs": specs(&model.config.outputs),
    })
}

pub(super) async fn model_metadata(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, None)?;
    Ok(Json(metadata_json(&engine, &m)))
}

pub(super) async fn model_metadata_v(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, Some(&version))?;
    Ok(Json(metadata_json(&engine, &m)))
}

pub(super) async fn model_config(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, None)?;
    Ok(Json(TritonConfig::of(&m.config).to_json(&m.config)))
}

pub(super) async fn model_config_v(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, Some(&version))?;
    Ok(Json(TritonConfig::of(&m.config).to_json(&m.config)))
}

pub(super) async fn model_ready(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, None)?;
    Ok(Json(
        json!({ "name": m.name(), "version": m.version(), "ready": true }),
    ))
}

pub(super) async fn model_ready_v(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
) -> V2Result<Json<Value>> {
    let m = engine.resolve(&model, Some(&version))?;
    Ok(Json(
        json!({ "name": m.name(), "version": m.version(), "ready": true }),
    ))
}

pub(super) async fn repository_index(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let models = engine.models();
    let index: Vec<Value> = models
        .values()
        .flat_map(|s| s.versions.values())
        .map(
            |v| json!({ "name": v.name(), "version": v.version(), "state": "READY", "reason": "" }),
        )
        .collect();
    Json(Value::Array(index))
}

#[derive(Debug, Default, Deserialize)]
struct LoadBody {
    #[serde(default)]
    parameters: HashMap<String, Value>,
}

/// `POST /v2/repository/models/{m}/load`: body optional;
/// `{"parameters":{"version":"2"}}` pins the model to version 2.
pub(super) async fn load(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
    body: Bytes,
) -> V2Result<Json<Value>> {
    let parsed: LoadBody = if body.iter().all(u8::is_ascii_whitespace) {
        LoadBody::default()
    } else {
        parse_json(&body)?
    };
    let version = match parsed.parameters.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<u64>().map_err(|_| {
            Error::InvalidRequest(format!("parameters.version '{s}' is not a version number"))
        })?),
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            Error::InvalidRequest(format!("parameters.version {n} is not a version number"))
        })?),
        Some(other) => {
            return Err(Error::InvalidRequest(format!(
                "parameters.version must be a string or integer, not {other}"
            ))
            .into());
        }
    };
    let report = engine.load(&model, version).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or(Value::Null)))
}

#[derive(Debug, Deserialize)]
struct InferRequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Debug, Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: HashMap<String, Value>,
}

pub(super) async fn infer(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer_inner(&engine, &model, None, &headers, &body)
        .await
        .unwrap_or_else(|e| V2Error(e).into_response())
}

pub(super) async fn infer_v(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer_inner(&engine, &model, Some(&version), &headers, &body)
        .await
        .unwrap_or_else(|e| V2Error(e).into_response())
}

async fn infer_inner(
    engine: &Engine,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let target = engine.resolve(model, version)?;
    let (json_part, mut binary) = split_binary(headers, body)?;
    let request: InferRequestJson = parse_json(json_part)?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        inputs.push(decode_input(input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "{} bytes of binary data follow the JSON header but no input claims them",
            binary.len()
        )));
    }
    let wanted: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    let outputs = oip::infer(engine, &target, inputs, &request.parameters, &wanted).await?;
    let all_binary = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let binary_for = |name: &str| {
        request
            .outputs
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.get("binary_data").and_then(Value::as_bool))
            .unwrap_or(all_binary)
    };
    let mut blobs: Vec<u8> = Vec::new();
    let mut out_json = Vec::with_capacity(outputs.len());
    for t in &outputs {
        let mut o =
            json!({ "name": t.name, "datatype": t.data.datatype().as_str(), "shape": t.shape });
        if binary_for(&t.name) {
            let raw = t.data.to_raw();
            o["parameters"] = json!({ "binary_data_size": raw.len() });
            blobs.extend_from_slice(&raw);
        } else {
            o["data"] = t.data.to_json();
        }
        out_json.push(o);
    }
    let mut head = json!({
        "model_name": target.name(),
        "model_version": target.version(),
        "outputs": out_json,
    });
    if let Some(id) = request.id {
        head["id"] = Value::String(id);
    }
    let mut response = if blobs.is_empty() {
        Json(head).into_response()
    } else {
        let mut bytes = serde_json::to_vec(&head).map_err(|e| Error::Runtime(e.to_string()))?;
        let json_len = bytes.len();
        bytes.extend_from_slice(&blobs);
        let mut r = bytes.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut()
            .insert(HEADER_LENGTH, HeaderValue::from(json_len));
        r
    };
    if let Ok(v) = HeaderValue::from_str(target.version()) {
        response.headers_mut().insert(MODEL_VERSION_HEADER, v);
    }
    Ok(response)
}

/// Splits a body with binary tensors into its JSON part and the rest.
fn split_binary<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let len = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| Error::InvalidRequest(format!("{HEADER_LENGTH} must be a byte count")))?;
    if len > body.len() {
        return Err(Error::InvalidRequest(format!(
            "{HEADER_LENGTH} is {len} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(len))
}

fn decode_input(input: &InputJson, binary: &mut &[u8]) -> Result<NamedTensor> {
    let datatype: DataType = input
        .datatype
        .parse()
        .map_err(|e: Error| Error::InvalidRequest(format!("input '{}': {e}", input.name)))?;
    let count = element_count(&input.shape, &input.name)?;
    let binary_size = input.parameters.get("binary_data_size");
    let data = match (binary_size, &input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "input '{}': binary_data_size must be a byte count",
                        input.name
                    ))
                })?;
            if size > binary.len() {
                return Err(Error::InvalidRequest(format!(
                    "input '{}': binary_data_size {size} exceeds the {} binary bytes left",
                    input.name,
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            TensorData::from_raw(datatype, mine, count)
                .map_err(|e| Error::InvalidRequest(format!("input '{}': {e}", input.name)))?
        }
        (None, Some(data)) => TensorData::from_json(datatype, data, &input.name)?,
        (Some(_), Some(_)) => {
            return Err(Error::InvalidRequest(format!(
                "input '{}': give either data or binary_data_size, not both",
                input.name
            )));
        }
        (None, None) => {
            return Err(Error::InvalidRequest(format!(
                "input '{}': no data (give data, or binary_data_size with binary data)",
                input.name
            )));
        }
    };
    NamedTensor::new(input.name.clone(), input.shape.clone(), data)
}
