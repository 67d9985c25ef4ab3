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
    /// The graph's inputs (tensor and lm kinds; the others have fixed names).
    #[serde(default)]
    pub inputs: Vec<TensorSpecToml>,
    /// The graph's outputs (tensor and lm kinds).
    #[serde(default)]
    pub outputs: Vec<TensorSpecToml>,
    /// Language-model settings; required when `kind = "lm"`.
    #[serde(default)]
    pub lm: Option<LmToml>,
    /// Decoder settings; required when `kind = "causal-lm"`.
    #[serde(default)]
    pub causal_lm: Option<CausalLmToml>,
    /// Encoder settings; required when `kind = "embedding"`.
    #[serde(default)]
    pub embedding: Option<EmbeddingToml>,
}

/// The `[causal_lm]` table: an Optimum-style decoder with KV cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CausalLmToml {
    /// Hugging Face `tokenizer.json` in the version folder.
    pub tokenizer: String,
    /// Optional Jinja chat template file in the version folder.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Most positions (prompt + generated) a sequence may use.
    pub context: usize,
    /// Decoder layers (`past_key_values.0` .. `{L-1}`).
    pub num_layers: usize,
    /// Key/value heads of each past tensor.
    pub num_kv_heads: usize,
    /// Size of each head.
    pub head_dim: usize,
    /// Last dimension of `logits`.
    pub vocab_size: usize,
    /// Beginning-of-sequence token (handed to the chat template).
    #[serde(default)]
    pub bos_token: Option<String>,
    /// End-of-sequence token (handed to the chat template).
    #[serde(default)]
    pub eos_token: Option<String>,
    /// Generation stops after any of these tokens (not part of the text).
    #[serde(default)]
    pub stop_tokens: Vec<String>,
    /// Memory for cached keys/values across all sequences, in MiB.
    #[serde(default)]
    pub kv_cache_mb: Option<usize>,
}

/// The `[embedding]` table: an encoder with `last_hidden_state`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingToml {
    /// Hugging Face `tokenizer.json` in the version folder.
    pub tokenizer: String,
    /// `mean`, `cls` or `last`.
    pub pooling: Pooling,
    /// L2-normalise the pooled vector.
    #[serde(default)]
    pub normalize: bool,
    /// Length of the returned vector (the hidden size).
    pub dimensions: usize,
    /// Longest input in tokens, special tokens included.
    pub max_tokens: usize,
}

/// How token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average of the rows whose attention mask is 1.
    Mean,
    /// Row 0.
    Cls,
    /// The last row whose attention mask is 1.
    Last,
}

/// Validated `[causal_lm]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalLmConfig {
    /// Tokenizer file.
    pub tokenizer: String,
    /// Chat template file.
    pub chat_template: Option<String>,
    /// Context from the file (the engine may cap it lower).
    pub context: usize,
    /// Layers.
    pub num_layers: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// Logits per position.
    pub vocab_size: usize,
    /// BOS token text.
    pub bos_token: String,
    /// EOS token text.
    pub eos_token: String,
    /// Stop tokens (text).
    pub stop_tokens: Vec<String>,
    /// KV-cache budget in MiB, if the file sets one.
    pub kv_cache_mb: Option<usize>,
}

impl CausalLmConfig {
    /// Bytes of cached keys and values per token (FP32).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.num_layers * 2 * self.num_kv_heads * self.head_dim * 4
    }
}

/// Validated `[embedding]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingConfig {
    /// Tokenizer file.
    pub tokenizer: String,
    /// Pooling.
    pub pooling: Pooling,
    /// L2 normalisation.
    pub normalize: bool,
    /// Vector length.
    pub dimensions: usize,
    /// Longest input in tokens.
    pub max_tokens: usize,
}

/// The Open Inference Protocol input of a causal-lm model: BYTES `[N]`, one
/// prompt (UTF-8 text) per element, each generated as its own sequence.
pub const TEXT_INPUT: &str = "text_input";
/// The Open Inference Protocol output of a causal-lm model: BYTES `[N]`, the
/// generated text of each prompt (the prompt itself not included).
pub const TEXT_OUTPUT: &str = "text_output";
/// The Open Inference Protocol input of an embedding model: BYTES `[N]`, one
/// text per element.
pub const EMBEDDING_INPUT: &str = "text";
/// The Open Inference Protocol output of an embedding model: FP32
/// `[N, dimensions]`, one vector per text.
pub const EMBEDDING_OUTPUT: &str = "embedding";

/// What kind of model a version holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// A plain tensor model.
    Tensor,
    /// A byte-level language model: token ids in, next-token logits out.
    Lm,
    /// A decoder with KV cache (Optimum names) and a Hugging Face tokenizer.
    CausalLm,
    /// A sentence encoder (`last_hidden_state`) and a Hugging Face tokenizer.
    Embedding,
}

impl ModelKind {
    /// The name used in `model.toml` and `/v1/models`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Tensor => "tensor",
            ModelKind::Lm => "lm",
            ModelKind::CausalLm => "causal-lm",
            ModelKind::Embedding => "embedding",
        }
    }
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
    /// The tensors an Open Inference Protocol request gives, in declaration
    /// order: the graph's own for the tensor and lm kinds; for causal-lm and
    /// embedding models, whose graphs have fixed names, the text tensor
    /// ([`TEXT_INPUT`], [`EMBEDDING_INPUT`]).
    pub inputs: Vec<TensorSpec>,
    /// The tensors an Open Inference Protocol response may hold (as
    /// `inputs`: [`TEXT_OUTPUT`], [`EMBEDDING_OUTPUT`] for the text kinds).
    pub outputs: Vec<TensorSpec>,
    /// Present for language models.
    pub lm: Option<LmConfig>,
    /// Present for causal-lm models.
    pub causal_lm: Option<CausalLmConfig>,
    /// Present for embedding models.
    pub embedding: Option<EmbeddingConfig>,
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
        let fixed_names = matches!(self.kind, ModelKind::CausalLm | ModelKind::Embedding);
        if fixed_names && !(self.inputs.is_empty() && self.outputs.is_empty()) {
            problems.push(format!(
                "inputs/outputs: kind = \"{}\" has fixed tensor names; leave them out",
                self.kind.as_str()
            ));
        }
        if !fixed_names && self.inputs.is_empty() {
            problems.push("inputs: at least one input is required".to_string());
        }
        if !fixed_names && self.outputs.is_empty() {
            problems.push("outputs: at least one output is required".to_string());
        }
        let inputs = specs("inputs", &self.inputs, self.max_batch_size, &mut problems);
        let outputs = specs("outputs", &self.outputs, self.max_batch_size, &mut problems);
        let lm = match (self.kind, self.lm) {
            (ModelKind::Lm, None) => {
                problems.push("lm: kind = \"lm\" needs an [lm] table".to_string());
                None
            }
            (_, None) => None,
            (ModelKind::Lm, Some(lm)) => lm_config(&lm, &inputs, &outputs, &mut problems),
            (_, Some(_)) => {
                problems.push("lm: only kind = \"lm\" takes an [lm] table".to_string());
                None
            }
        };
        let causal_lm = match (self.kind, self.causal_lm) {
            (ModelKind::CausalLm, None) => {
                problems.push("causal_lm: kind = \"causal-lm\" needs a [causal_lm] table".into());
                None
            }
            (_, None) => None,
            (ModelKind::CausalLm, Some(c)) => causal_lm_config(c, &mut problems),
            (_, Some(_)) => {
                problems
                    .push("causal_lm: only kind = \"causal-lm\" takes a [causal_lm] table".into());
                None
            }
        };
        let embedding = match (self.kind, self.embedding) {
            (ModelKind::Embedding, None) => {
                problems.push("embedding: kind = \"embedding\" needs an [embedding] table".into());
                None
            }
            (_, None) => None,
            (ModelKind::Embedding, Some(e)) => embedding_config(e, &mut problems),
            (_, Some(_)) => {
                problems
                    .push("embedding: only kind = \"embedding\" takes an [embedding] table".into());
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let (inputs, outputs) = match (&causal_lm, &embedding) {
            (Some(_), _) => (
                vec![text_spec(TEXT_INPUT, DataType::Bytes, vec![-1])],
                vec![text_spec(TEXT_OUTPUT, DataType::Bytes, vec![-1])],
            ),
            (_, Some(e)) => (
                vec![text_spec(EMBEDDING_INPUT, DataType::Bytes, vec![-1])],
                vec![text_spec(
                    EMBEDDING_OUTPUT,
                    DataType::Fp32,
                    vec![-1, i64::try_from(e.dimensions).unwrap_or(-1)],
                )],
            ),
            (None, None) => (inputs, outputs),
        };
        Ok(ModelConfig {
            name: self.name,
            version: self.version,
            kind: self.kind,
            max_batch_size: self.max_batch_size,
            max_queue_delay: std::time::Duration::from_millis(self.max_queue_delay_ms),
            inputs,
            outputs,
            lm,
            causal_lm,
            embedding,
        })
    }
}

fn text_spec(name: &str, datatype: DataType, shape: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        datatype,
        shape,
    }
}

fn causal_lm_config(c: CausalLmToml, problems: &mut Vec<String>) -> Option<CausalLmConfig> {
    let before = problems.len();
    for (key, value) in [
        ("context", c.context),
        ("num_layers", c.num_layers),
        ("num_kv_heads", c.num_kv_heads),
        ("head_dim", c.head_dim),
        ("vocab_size", c.vocab_size),
    ] {
        if value == 0 {
            problems.push(format!("causal_lm.{key}: must be > 0"));
        }
    }
    if c.tokenizer.is_empty() {
        problems.push("causal_lm.tokenizer: must name a file".into());
    }
    if c.stop_tokens.is_empty() && c.eos_token.is_none() {
        problems.push("causal_lm.stop_tokens: give at least one (or eos_token)".into());
    }
    if c.kv_cache_mb == Some(0) {
        problems.push("causal_lm.kv_cache_mb: must be > 0".into());
    }
    let mut stop_tokens = c.stop_tokens;
    if let Some(eos) = &c.eos_token
        && !stop_tokens.contains(eos)
    {
        stop_tokens.push(eos.clone());
    }
    (problems.len() == before).then(|| CausalLmConfig {
        tokenizer: c.tokenizer,
        chat_template: c.chat_template,
        context: c.context,
        num_layers: c.num_layers,
        num_kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        bos_token: c.bos_token.unwrap_or_default(),
        eos_token: c.eos_token.unwrap_or_default(),
        stop_tokens,
        kv_cache_mb: c.kv_cache_mb,
    })
}

fn embedding_config(e: EmbeddingToml, problems: &mut Vec<String>) -> Option<EmbeddingConfig> {
    let before = problems.len();
    if e.dimensions == 0 {
        problems.push("embedding.dimensions: must be > 0".into());
    }
    if e.max_tokens == 0 {
        problems.push("embedding.max_tokens: must be > 0".into());
    }
    if e.tokenizer.is_empty() {
        problems.push("embedding.tokenizer: must name a file".into());
    }
    (problems.len() == before).then_some(EmbeddingConfig {
        tokenizer: e.tokenizer,
        pooling: e.pooling,
        normalize: e.normalize,
        dimensions: e.dimensions,
        max_tokens: e.max_tokens,
    })
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

    const CAUSAL: &str = r#"
name = "smol"
version = "1"
kind = "causal-lm"
max_batch_size = 16
[causal_lm]
tokenizer = "tokenizer.json"
chat_template = "chat_template.jinja"
context = 8192
num_layers = 30
num_kv_heads = 3
head_dim = 64
vocab_size = 49152
bos_token = "<|im_start|>"
eos_token = "<|im_end|>"
stop_tokens = ["<|im_end|>", "<|endoftext|>"]
kv_cache_mb = 512
"#;

    #[test]
    fn parses_causal_lm_and_embedding() {
        let c = ModelConfig::parse(CAUSAL, "smol", "1").unwrap();
        assert_eq!(c.kind, ModelKind::CausalLm);
        let cl = c.causal_lm.unwrap();
        assert_eq!(cl.kv_bytes_per_token(), 46_080);
        assert_eq!(cl.stop_tokens.len(), 2);
        let e = ModelConfig::parse(
            "name = \"e\"\nversion = \"1\"\nkind = \"embedding\"\nmax_batch_size = 32\n\
             [embedding]\ntokenizer = \"tokenizer.json\"\npooling = \"mean\"\n\
             normalize = true\ndimensions = 384\nmax_tokens = 256\n",
            "e",
            "1",
        )
        .unwrap();
        assert_eq!(e.embedding.unwrap().pooling, Pooling::Mean);
        // Both serve text over the Open Inference Protocol.
        assert_eq!(c.inputs[0].name, TEXT_INPUT);
        assert_eq!(c.outputs[0].datatype, DataType::Bytes);
        assert_eq!(e.inputs[0].name, EMBEDDING_INPUT);
        assert_eq!(e.outputs[0].shape, vec![-1, 384]);
    }

    #[test]
    fn causal_lm_problems_are_all_reported() {
        let bad = CAUSAL.replace("num_layers = 30", "num_layers = 0").replace(
            "[causal_lm]",
            "[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [-1]\n[causal_lm]",
        );
        let err = ModelConfig::parse(&bad, "smol", "1")
            .unwrap_err()
            .to_string();
        for part in ["num_layers: must be > 0", "fixed tensor names"] {
            assert!(err.contains(part), "missing {part:?} in {err}");
        }
        let err = ModelConfig::parse(
            &CAUSAL.replace("kind = \"causal-lm\"", "kind = \"embedding\""),
            "smol",
            "1",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs an [embedding] table"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = ModelConfig::parse(&format!("{LM}\nsurprise = 1\n"), "tiny-lm", "1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
