//! Open Inference Protocol inference, whatever the transport (HTTP in
//! `v2.rs`, gRPC in `grpc.rs`), and the model configuration both describe.
//!
//! Tensor and lm models run their graph through the batcher. Causal-lm and
//! embedding models take text, as Triton's LLM backends do:
//!
//! - causal-lm: input `text_input` BYTES `[N]` (one UTF-8 prompt per
//!   element, each generated as its own sequence, all at once), output
//!   `text_output` BYTES `[N]` (the generated text, without the prompt).
//!   Request parameters `max_tokens`, `temperature`, `top_p`, `seed`, `stop`
//!   and `ignore_eos` mean what they mean in `/v1/completions`, with the
//!   same defaults (16 tokens, temperature 1).
//! - embedding: input `text` BYTES `[N]`, output `embedding` FP32
//!   `[N, dimensions]`.
//!
//! The protocol's own request parameters (`sequence_id`, `priority`,
//! `timeout`, `binary_data_output`, ...) are ignored; any other parameter
//! a text model does not know is refused, naming it.

use serde_json::{Value, json};

use super::openai::{CompletionRequest, Endpoint, Stop, gather, sampling};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::lm::sampling::SamplingParams;
use crate::model::{EmbedInput, GenOptions, ModelVersion};
use crate::repository::model_config::{
    EMBEDDING_OUTPUT, ModelConfig, ModelKind, TEXT_OUTPUT, TensorSpec,
};
use crate::tensor::{NamedTensor, TensorData};

/// A request's parameters, from JSON (HTTP) or `InferParameter`s (gRPC).
pub type Parameters = serde_json::Map<String, Value>;

/// Parameters that clients set for the protocol itself (Triton's reserved
/// names); they do not concern the model.
const PROTOCOL_PARAMETERS: &[&str] = &[
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "priority",
    "timeout",
    "headers",
    "binary_data_output",
];

/// The generation parameters a causal-lm request may set.
const GENERATION_PARAMETERS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "ignore_eos",
];

/// Runs one inference request and keeps the outputs in `wanted` (all
/// when empty).
pub async fn infer(
    engine: &Engine,
    model: &ModelVersion,
    inputs: Vec<NamedTensor>,
    parameters: &Parameters,
    wanted: &[String],
) -> Result<Vec<NamedTensor>> {
    crate::validate::known_outputs(&model.config, wanted)?;
    let outputs = match model.config.kind {
        ModelKind::Tensor | ModelKind::Lm => model.infer(inputs).await?,
        ModelKind::CausalLm => generate(engine, model, inputs, parameters).await?,
        ModelKind::Embedding => embed(model, inputs, parameters).await?,
    };
    crate::validate::select_outputs(&model.config, outputs, wanted)
}

/// Generates the continuation of every prompt of `text_input`.
async fn generate(
    engine: &Engine,
    model: &ModelVersion,
    inputs: Vec<NamedTensor>,
    parameters: &Parameters,
) -> Result<Vec<NamedTensor>> {
    let prompts = texts(&model.config, inputs)?;
    let (params, options) = generation_parameters(engine, parameters)?;
    // Every sequence is queued before any is awaited, so they decode
    // together; if one is refused (queue or KV budget full), dropping the
    // others' receivers ends them.
    let mut generations = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        generations.push(model.generate(prompt, params.clone(), options)?);
    }
    let mut texts = Vec::with_capacity(generations.len());
    for mut g in generations {
        texts.push(gather(&mut g.events, model.name()).await?.text.into_bytes());
    }
    let shape = vec![len_i64(texts.len())];
    NamedTensor::new(TEXT_OUTPUT, shape, TensorData::Bytes(texts)).map(|t| vec![t])
}

/// Embeds every text of `text`.
async fn embed(
    model: &ModelVersion,
    inputs: Vec<NamedTensor>,
    parameters: &Parameters,
) -> Result<Vec<NamedTensor>> {
    refuse_parameters(parameters, &[])?;
    let texts = texts(&model.config, inputs)?;
    let rows = texts.len();
    let (vectors, _) = model.embed(EmbedInput::Texts(texts)).await?;
    let dim = vectors.first().map_or(0, Vec::len);
    let flat: Vec<f32> = vectors.into_iter().flatten().collect();
    NamedTensor::new(
        EMBEDDING_OUTPUT,
        vec![len_i64(rows), len_i64(dim)],
        TensorData::Fp32(flat),
    )
    .map(|t| vec![t])
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The texts of a text model's one BYTES input, checked against the model
/// (name, datatype, shape `[N]`, N up to `max_batch_size`), each non-empty
/// UTF-8.
fn texts(config: &ModelConfig, inputs: Vec<NamedTensor>) -> Result<Vec<String>> {
    let (inputs, _) = crate::validate::inputs(config, inputs)?;
    let Some(NamedTensor {
        name,
        data: TensorData::Bytes(items),
        ..
    }) = inputs.into_iter().next()
    else {
        return Err(Error::Runtime(format!(
            "model '{}' declares no BYTES input",
            config.name
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| match String::from_utf8(bytes) {
            Ok(text) if text.is_empty() => Err(Error::InvalidRequest(format!(
                "input '{name}': element {i} is empty"
            ))),
            Ok(text) => Ok(text),
            Err(_) => Err(Error::InvalidRequest(format!(
                "input '{name}': element {i} is not UTF-8 text"
            ))),
        })
        .collect()
}

/// Refuses every parameter that is neither the protocol's nor in `known`.
fn refuse_parameters(parameters: &Parameters, known: &[&str]) -> Result<()> {
    for name in parameters.keys() {
        let protocol = PROTOCOL_PARAMETERS.contains(&name.as_str()) || name.starts_with("triton_");
        if !protocol && !known.contains(&name.as_str()) {
            return Err(Error::InvalidRequest(if known.is_empty() {
                format!("parameter '{name}': this model takes no parameters")
            } else {
                format!(
                    "parameter '{name}': not supported (this model takes {})",
                    known.join(", ")
                )
            }));
        }
    }
    Ok(())
}

/// Reads the generation parameters, checked as `/v1/completions` checks
/// its own.
fn generation_parameters(
    engine: &Engine,
    parameters: &Parameters,
) -> Result<(SamplingParams, GenOptions)> {
    refuse_parameters(parameters, GENERATION_PARAMETERS)?;
    let get = |name: &str| parameters.get(name).filter(|v| !v.is_null());
    let bad = |name: &str, what: &str, v: &Value| {
        Error::InvalidRequest(format!("parameter '{name}': expected {what}, not {v}"))
    };
    let int = |name: &str| {
        get(name)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| bad(name, "a non-negative integer", v))
            })
            .transpose()
    };
    let number = |name: &str| {
        get(name)
            .map(|v| v.as_f64().ok_or_else(|| bad(name, "a number", v)))
            .transpose()
    };
    let seed = get("seed")
        .map(|v| {
            v.as_i64()
                .or_else(|| v.as_u64().map(u64::cast_signed))
                .ok_or_else(|| bad("seed", "an integer", v))
        })
        .transpose()?;
    let stop = get("stop")
        .map(|v| match v {
            Value::String(s) => Ok(Stop::One(s.clone())),
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(Stop::Many)
                .ok_or_else(|| bad("stop", "a string or an array of strings", v)),
            other => Err(bad("stop", "a string or an array of strings", other)),
        })
        .transpose()?;
    let ignore_eos = get("ignore_eos")
        .map(|v| v.as_bool().ok_or_else(|| bad("ignore_eos", "a boolean", v)))
        .transpose()?;
    let request = CompletionRequest {
        max_tokens: int("max_tokens")?,
        temperature: number("temperature")?,
        top_p: number("top_p")?,
        seed,
        stop,
        ..CompletionRequest::default()
    };
    let params = sampling(engine, request.max_tokens, &request, Endpoint::Completions)?;
    let options = GenOptions {
        explicit_max_tokens: request.max_tokens.is_some(),
        ignore_eos: ignore_eos.unwrap_or(false),
    };
    Ok((params, options))
}

/// A model's configuration in Triton's terms (`GET .../config`, gRPC
/// `ModelConfig`): with `max_batch_size` > 0 each tensor's `dims` leave out
/// the batch dimension. The text kinds batch nothing themselves (their
/// `[N]` is a list of texts), so they say 0 and give the whole shape.
pub struct TritonConfig<'a> {
    /// Largest batch, or 0.
    pub max_batch_size: usize,
    /// (tensor, dims) per input.
    pub inputs: Vec<(&'a TensorSpec, &'a [i64])>,
    /// (tensor, dims) per output.
    pub outputs: Vec<(&'a TensorSpec, &'a [i64])>,
}

impl<'a> TritonConfig<'a> {
    /// The configuration of `config`.
    pub fn of(config: &'a ModelConfig) -> Self {
        let max_batch_size = match config.kind {
            ModelKind::Tensor | ModelKind::Lm => config.max_batch_size,
            ModelKind::CausalLm | ModelKind::Embedding => 0,
        };
        let dims = |specs: &'a [TensorSpec]| {
            specs
                .iter()
                .map(|s| {
                    let skip = usize::from(max_batch_size > 0).min(s.shape.len());
                    (s, &s.shape[skip..])
                })
                .collect()
        };
        TritonConfig {
            max_batch_size,
            inputs: dims(&config.inputs),
            outputs: dims(&config.outputs),
        }
    }

    /// Triton's JSON form (`GET /v2/models/{m}/config`).
    pub fn to_json(&self, config: &ModelConfig) -> Value {
        let tensors = |list: &[(&TensorSpec, &[i64])]| -> Vec<Value> {
            list.iter()
                .map(|(s, dims)| {
                    json!({ "name": s.name, "data_type": s.datatype.triton_name(), "dims": dims })
                })
                .collect()
        };
        json!({
            "name": config.name,
            "platform": PLATFORM,
            "backend": BACKEND,
            "max_batch_size": self.max_batch_size,
            "input": tensors(&self.inputs),
            "output": tensors(&self.outputs),
            "parameters": { "kind": { "string_value": config.kind.as_str() } },
        })
    }
}

/// The platform models report in metadata and configuration.
pub const PLATFORM: &str = "onnxruntime_onnx";
/// The backend models report in their configuration.
pub const BACKEND: &str = "onnxruntime";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn unknown_parameters_are_named_and_protocol_ones_ignored() {
        let p = |v: Value| v.as_object().unwrap().clone();
        let ok = p(json!({"max_tokens": 4, "priority": 1, "triton_x": true}));
        assert!(refuse_parameters(&ok, GENERATION_PARAMETERS).is_ok());
        let err = refuse_parameters(&p(json!({"beam_width": 2})), GENERATION_PARAMETERS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'beam_width'") && err.contains("max_tokens"),
            "{err}"
        );
        let err = refuse_parameters(&p(json!({"max_tokens": 2})), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("takes no parameters"), "{err}");
    }

    #[test]
    fn triton_dims_leave_out_the_batch_dimension() {
        let mlp = ModelConfig::parse(
            "name = \"m\"\nversion = \"1\"\nkind = \"tensor\"\nmax_batch_size = 8\n\
             [[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [-1, 16]\n\
             [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\nshape = [-1, 4]\n",
            "m",
            "1",
        )
        .unwrap();
        let json = TritonConfig::of(&mlp).to_json(&mlp);
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["dims"], json!([16]));
        assert_eq!(json["output"][0]["data_type"], "TYPE_FP32");
    }
}
