//! `weir-engine`: Weir's inference backend.
//!
//! It serves ONNX models through ONNX Runtime (loaded at run time from the
//! `onnxruntime` wheel's shared library; CPU or CUDA) over:
//! - the OpenAI API (`/v1/models`, `/v1/completions`, `/v1/chat/completions`,
//!   streaming as server-sent events) for byte-level language models,
//!   plus async tasks (`/v1/tasks`);
//! - the Open Inference Protocol (KServe v2) over HTTP (`/v2/...`) and gRPC
//!   (`inference.GRPCInferenceService`, Triton-client compatible), with
//!   `grpc.health.v1`;
//! - Prometheus metrics at `/metrics`, and a span per request exported over
//!   OTLP in the caller's trace ([`otel`]).
//!
//! Models come from a repository whose every file is covered by a
//! SHA-256 manifest signed with ed25519 ([`repository`]); nothing that fails
//! to verify is loaded. Tensor requests are batched dynamically
//! ([`batcher`]); generation is batched per decoding step ([`lm::scheduler`]).
//! Each model version has a bounded queue ([`queue`]). Models are hot-swapped
//! by *prepare, then swap* ([`engine`]).
//!
//! The binary is a thin wrapper over [`server::run`].

pub mod batcher;
pub mod causal;
pub mod config;
pub mod embed;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod hf;
pub mod http;
pub mod lm;
pub mod metrics;
pub mod model;
pub mod otel;
pub mod queue;
pub mod register_args;
pub mod repository;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod tasks;
pub mod tensor;
pub mod validate;
pub mod watch;

pub use config::{Args, LogFormat};
pub use error::{Error, Result};
