//! Command-line flags, parsed completely and checked before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::error::{Error, Result};
use crate::runtime::DeviceRequest;

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` text.
    Text,
    /// One JSON object per line.
    Json,
}

/// weir-engine: serves ONNX models from a signed model repository over the
/// OpenAI API and the Open Inference Protocol (HTTP and gRPC).
#[derive(Debug, Clone, Parser)]
#[command(name = "weir-engine", version, about)]
pub struct Args {
    /// Model repository: <DIR>/<model>/<version>/{model.onnx,model.toml,manifest.json}.
    #[arg(long, env = "WEIR_ENGINE_MODELS", value_name = "DIR")]
    pub models: PathBuf,

    /// Serve this model (repeatable): NAME serves its highest version,
    /// NAME:VERSION that version. Default: every model, highest version.
    #[arg(long = "model", value_name = "NAME[:VERSION]")]
    pub model: Vec<String>,

    /// Log lines as `text` (key=value) or `json` (one object per line).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        env = "WEIR_ENGINE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// HTTP listen address (OpenAI API, Open Inference Protocol, /metrics).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    pub http: SocketAddr,

    /// gRPC listen address (inference.GRPCInferenceService, grpc.health.v1).
    #[arg(long, default_value = "127.0.0.1:8001", value_name = "ADDR")]
    pub grpc: SocketAddr,

    /// Execution device: cpu, cuda, cuda:N, or auto (CUDA if it works, else CPU).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceRequest,

    /// ONNX Runtime intra-op threads per session.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub intra_threads: usize,

    /// ONNX Runtime shared library (libonnxruntime.so.1.31.1).
    #[arg(long, env = "ORT_DYLIB_PATH", value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// Outstanding requests admitted per model version before 429 / RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_capacity: usize,

    /// How long finished async tasks (/v1/tasks) are kept, in seconds.
    #[arg(long, default_value_t = 600, value_name = "N")]
    pub task_ttl_secs: u64,

    /// Ed25519 public key (64 hex digits) that manifests must be signed with.
    /// Default: <DIR>/../keys/models.pub (the shipped repository's layout).
    #[arg(long, env = "WEIR_ENGINE_PUBLIC_KEY", value_name = "PATH")]
    pub public_key: Option<PathBuf>,

    /// Watch the repository and reload a model when its files change.
    #[arg(long)]
    pub watch: bool,

    /// Largest max_tokens a generation request may ask for.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_tokens_limit: usize,

    /// Run every tensor request on its own instead of batching (for comparisons).
    #[arg(long)]
    pub no_batching: bool,

    /// Longest context (prompt + generated tokens) of a causal-lm sequence;
    /// a model.toml `context` below it wins.
    #[arg(long, default_value_t = 2048, value_name = "TOKENS")]
    pub max_context: usize,

    /// Most prompt tokens a causal-lm prefill runs at once: a longer prompt
    /// is prefilled in chunks of this size, each followed by a decode step
    /// of the sequences already running, so that it does not stall them.
    #[arg(long, default_value_t = 256, value_name = "TOKENS")]
    pub prefill_chunk: usize,

    /// KV-cache budget per causal-lm version in MiB (overrides model.toml's
    /// `kv_cache_mb`; default 512 when neither is set).
    #[arg(long, value_name = "MB")]
    pub kv_cache_mb: Option<usize>,

    /// Put the process in a sandbox (no_new_privs, Landlock, seccomp) once
    /// the listeners are bound and ONNX Runtime is loaded, before any
    /// model file is read: `auto` wherever the kernel supports it, `on`
    /// (an error where it cannot), `off` (docs/security.md).
    #[arg(
        long,
        default_value = "auto",
        env = "WEIR_ENGINE_SANDBOX",
        value_name = "on|off|auto"
    )]
    pub sandbox: weir_conf::sandbox::Mode,

    /// OTLP/gRPC collector (e.g. `http://127.0.0.1:4317`) that receives a
    /// span for each API request, in the caller's trace when it sent a
    /// `traceparent` (the gateway sends one); absent = no spans.
    #[arg(long, env = "WEIR_ENGINE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans.
    #[arg(long, default_value = "weir-engine", value_name = "NAME")]
    pub otlp_service_name: String,

    /// Share of new traces recorded, 0.0-1.0; a caller's `traceparent`
    /// decides for the traces it started (its sampled flag).
    #[arg(long, default_value_t = 1.0, value_name = "RATIO")]
    pub otlp_sample_ratio: f64,

    /// Self-registration in a gateway pool through etcd (`--register-etcd`,
    /// `--pool`, `--advertise`, ...). The HTTP address is registered unless
    /// `--advertise` names another (for an h2c/gRPC pool, the gRPC address).
    #[command(flatten)]
    pub register: crate::register_args::RegisterArgs,
}

/// One `--model` selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSelection {
    /// Model name.
    pub name: String,
    /// A specific version, or None for the highest.
    pub version: Option<u64>,
}

impl std::str::FromStr for ModelSelection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, version) = match s.split_once(':') {
            Some((n, v)) => (
                n,
                Some(v.parse::<u64>().map_err(|_| {
                    Error::Config(format!(
                        "--model {s}: version '{v}' is not a non-negative integer"
                    ))
                })?),
            ),
            None => (s, None),
        };
        if name.is_empty() {
            return Err(Error::Config(format!("--model {s}: empty model name")));
        }
        Ok(ModelSelection {
            name: name.to_string(),
            version,
        })
    }
}

impl Args {
    /// Checks every flag; reports all problems at once.
    pub fn validate(&self) -> Result<Vec<ModelSelection>> {
        let mut problems = Vec::new();
        let mut selections = Vec::new();
        for m in &self.model {
            match m.parse::<ModelSelection>() {
                Ok(s) => selections.push(s),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if !self.models.is_dir() {
            problems.push(format!("--models {}: not a folder", self.models.display()));
        }
        if self.queue_capacity == 0 {
            problems.push("--queue-capacity: must be at least 1".to_string());
        }
        if self.intra_threads == 0 {
            problems.push("--intra-threads: must be at least 1".to_string());
        }
        if self.prefill_chunk == 0 {
            problems.push("--prefill-chunk: must be at least 1".to_string());
        }
        if self.max_tokens_limit == 0 {
            problems.push("--max-tokens-limit: must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.otlp_sample_ratio) {
            problems.push("--otlp-sample-ratio: must be between 0.0 and 1.0".to_string());
        }
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(format!(
                "--otlp-endpoint {url:?}: must be an http:// or https:// URL"
            ));
        }
        if problems.is_empty() {
            Ok(selections)
        } else {
            Err(Error::Config(problems.join("; ")))
        }
    }

    /// The public key file: the flag, else `<models>/../keys/models.pub`.
    pub fn public_key_path(&self) -> PathBuf {
        self.public_key.clone().unwrap_or_else(|| {
            self.models
                .parent()
                .map_or_else(|| PathBuf::from("keys"), |p| p.join("keys"))
                .join("models.pub")
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn model_selection_parses() {
        assert_eq!(
            "tiny-lm:2".parse::<ModelSelection>().unwrap(),
            ModelSelection {
                name: "tiny-lm".into(),
                version: Some(2)
            }
        );
        assert_eq!("mlp".parse::<ModelSelection>().unwrap().version, None);
        assert!("mlp:x".parse::<ModelSelection>().is_err());
    }

    #[test]
    fn all_problems_reported() {
        let args = Args::parse_from([
            "weir-engine",
            "--models",
            "/nonexistent",
            "--model",
            "a:b",
            "--queue-capacity",
            "0",
        ]);
        let err = args.validate().unwrap_err().to_string();
        for part in ["--model a:b", "--models /nonexistent", "--queue-capacity"] {
            assert!(err.contains(part), "{err} lacks {part}");
        }
    }

    #[test]
    fn default_key_sits_beside_the_repository() {
        let args = Args::parse_from(["weir-engine", "--models", "/srv/models/repo"]);
        assert_eq!(
            args.public_key_path(),
            PathBuf::from("/srv/models/keys/models.pub")
        );
    }
}
