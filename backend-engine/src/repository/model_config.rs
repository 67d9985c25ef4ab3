//! `model.toml`: what a model version takes and gives, and how to batch it.
//!
//! The file type ([`ModelToml`]) is parsed strictly and validated as a whole
//! (every problem reported at once) into the runtime [`ModelConfig`].

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tensor::DataType;

/// The `model.toml` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelToml {
    /// Model name; must equal the model folder's name.
    pub name: String,
    /// Model version; must equal the version folder's name.
    pub version: String,
    /// `"tensor"` (Open Inference Protocol only) or `"lm"` (also text generation).
    pub kind: ModelKind,
    /// Largest batch (first dimension) one ONNX run may take; 0 disables batching.
    pub max_batch_size: usize,
    /// How long the batcher may hold the first request of a batch waiting for more.
    #[serde(default)]
    pub max_queue_delay_ms: u64,
    /// The graph's inputs.
    pub inputs: Vec<TensorSpecToml>,
    /// The graph's outputs.
    pub outputs: Vec<TensorSpecToml>,
    /// Language-model settings; required when `kind = "lm"`.
    #[serde(default)]
    pub lm: Option<LmToml>,
}

/// What kind of model a version holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A plain tensor model.
    Tensor,
    /// A byte-level language model: token ids in, next-token logits out.
    Lm,
}

/// One input or output in `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpecToml {
    /// Tensor name in the ONNX graph.
    pub name: String,
    /// Open Inference Protocol datatype (`"FP32"`, `"INT64"`, `"BYTES"`, ...).
    pub datatype: String,
    /// Dimensions; -1 marks a variable one (the batch dimension comes first).
    pub shape: Vec<i64>,
}

/// The `[lm]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmToml {
    /// Context window in tokens (the second dimension of the input).
    pub context: usize,
    /// Number of logits per position (256 for byte-level models).
    pub vocab_size: usize,
    /// Token id used for left padding.
    pub pad_id: i64,
}

/// A validated tensor description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Datatype.
    pub datatype: DataType,
    /// Dimensions, -1 for variable.
    pub shape: Vec<i64>,
}

/// Validated language-model settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmConfig {
    /// Context window in tokens.
    pub context: usize,
    /// Logits per position.
    pub vocab_size: usize,
    /// Padding token id.
    pub pad_id: i64,
    /// Name of the token-id input.
    pub input: String,
    /// Name of the logits output.
    pub output: String,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Tensor or language model.
    pub kind: ModelKind,
    /// Largest batch per ONNX run; 0 = the model takes no batch dimension.
    pub max_batch_size: usize,
    /// Longest wait for a batch to fill.
    pub max_queue_delay: std::time::Duration,
    /// Inputs, in declaration order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in declaration order.
    pub outputs: Vec<TensorSpec>,
    /// Present for language models.
    pub lm: Option<LmConfig>,
}

impl ModelConfig {
    /// Parses and validates `model.toml` for the version folder `model/version`.
    pub fn parse(text: &str, model: &str, version: &str) -> Result<Self> {
        let invalid = |reason: String| Error::ModelConfig {
            model: model.to_string(),
            version: version.to_string(),
            reason,
        };
        let file: ModelToml =
            toml::from_str(text).map_err(|e| invalid(format!("model.toml: {e}")))?;
        file.validate(model, version)
            .map_err(|problems| invalid(problems.join("; ")))
    }
}

impl ModelToml {
    /// Checks everything and converts; returns every problem found.
    pub fn validate(
        self,
        model: &str,
        version: &str,
    ) -> std::result::Result<ModelConfig, Vec<String>> {
        let mut problems = Vec::new();
        if self.name != model {
            problems.push(format!(
                "name: '{}' does not match the folder '{model}'",
                self.name
            ));
        }
        if self.version != version {
            problems.push(format!(
                "version: '{}' does not match the folder '{version}'",
                self.version
            ));
        }
        if self.inputs.is_empty() {
            problems.push("inputs: at least one input is required".to_string());
        }
        if self.outputs.is_empty() {
            problems.push("outputs: at least one output is required".to_string());
        }
        let inputs = specs("inputs", &self.inputs, self.max_batch_size, &mut problems);
        let outputs = specs("outputs", &self.outputs, self.max_batch_size, &mut problems);
        let lm = match (self.kind, self.lm) {
            (ModelKind::Lm, None) => {
                problems.push("lm: kind = \"lm\" needs an [lm] table".to_string());
                None
            }
            (ModelKind::Tensor, Some(_)) => {
                problems.push("lm: only kind = \"lm\" takes an [lm] table".to_string());
                None
            }
            (ModelKind::Tensor, None) => None,
            (ModelKind::Lm, Some(lm)) => lm_config(&lm, &inputs, &outputs, &mut problems),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(ModelConfig {
            name: self.name,
            version: self.version,
            kind: self.kind,
            max_batch_size: self.max_batch_size,
            max_queue_delay: std::time::Duration::from_millis(self.max_queue_delay_ms),
            inputs,
            outputs,
            lm,
        })
    }
}

fn specs(
    section: &str,
    items: &[TensorSpecToml],
    max_batch_size: usize,
    problems: &mut Vec<String>,
) -> Vec<TensorSpec> {
    let mut out: Vec<TensorSpec> = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let at = format!("{section}[{i}] ({})", t.name);
        if t.name.is_empty() {
            problems.push(format!("{at}: name must not be empty"));
        }
        if out.iter().any(|o| o.name == t.name) {
            problems.push(format!("{at}: duplicate name"));
        }
        if t.shape.iter().any(|d| *d < -1) {
            problems.push(format!("{at}: dimensions must be >= -1"));
        }
        if max_batch_size > 0 && t.shape.first() != Some(&-1) {
            problems.push(format!(
                "{at}: with max_batch_size > 0 the first dimension must be -1 (the batch)"
            ));
        }
        match t.datatype.parse::<DataType>() {
            Ok(datatype) => out.push(TensorSpec {
                name: t.name.clone(),
                datatype,
                shape: t.shape.clone(),
            }),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    out
}

fn lm_config(
    lm: &LmToml,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    problems: &mut Vec<String>,
) -> Option<LmConfig> {
    let before = problems.len();
    if lm.context == 0 {
        problems.push("lm.context: must be > 0".to_string());
    }
    if lm.vocab_size == 0 || lm.vocab_size > 256 {
        problems.push("lm.vocab_size: byte-level models have 1..=256 logits".to_string());
    }
    let [input] = inputs else {
        problems.push("inputs: a language model has exactly one input (token ids)".to_string());
        return None;
    };
    let [output] = outputs else {
        problems.push("outputs: a language model has exactly one output (logits)".to_string());
        return None;
    };
    if input.datatype != DataType::Int64 || input.shape.len() != 2 {
        problems.push(format!(
            "inputs[0] ({}): must be INT64 [-1, context]",
            input.name
        ));
    } else if input.shape[1] != -1 && usize::try_from(input.shape[1]).ok() != Some(lm.context) {
        problems.push(format!(
            "inputs[0] ({}): second dimension {} differs from lm.context {}",
            input.name, input.shape[1], lm.context
        ));
    }
    if output.datatype != DataType::Fp32 || output.shape.len() != 2 {
        problems.push(format!(
            "outputs[0] ({}): must be FP32 [-1, vocab_size]",
            output.name
        ));
    } else if output.shape[1] != -1 && usize::try_from(output.shape[1]).ok() != Some(lm.vocab_size)
    {
        problems.push(format!(
            "outputs[0] ({}): second dimension {} differs from lm.vocab_size {}",
            output.name, output.shape[1], lm.vocab_size
        ));
    }
    (problems.len() == before).then(|| LmConfig {
        context: lm.context,
        vocab_size: lm.vocab_size,
        pad_id: lm.pad_id,
        input: input.name.clone(),
        output: output.name.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const LM: &str = r#"
name = "tiny-lm"
version = "1"
kind = "lm"
max_batch_size = 32
max_queue_delay_ms = 2
[[inputs]]
name = "input_ids"
datatype = "INT64"
shape = [-1, 32]
[[outputs]]
name = "logits"
datatype = "FP32"
shape = [-1, 256]
[lm]
context = 32
vocab_size = 256
pad_id = 256
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = ModelConfig::parse(LM, "tiny-lm", "1").unwrap();
        let lm = c.lm.unwrap();
        assert_eq!(
            (lm.context, lm.pad_id, lm.input.as_str()),
            (32, 256, "input_ids")
        );
        assert_eq!(c.max_queue_delay, std::time::Duration::from_millis(2));
    }

    #[test]
    fn reports_every_problem() {
        let bad = LM
            .replace("name = \"tiny-lm\"", "name = \"other\"")
            .replace("shape = [-1, 32]", "shape = [4, 31]")
            .replace("\"FP32\"", "\"FP16\"");
        let err = ModelConfig::parse(&bad, "tiny-lm", "1")
            .unwrap_err()
            .to_string();
        for part in ["name: 'other'", "first dimension must be -1", "FP16"] {
            assert!(err.contains(part), "missing {part:?} in {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = ModelConfig::parse(&format!("{LM}\nsurprise = 1\n"), "tiny-lm", "1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
