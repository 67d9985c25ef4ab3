//! Black-box tests: the real `weir-engine` binary on OS-chosen ports, real
//! ONNX Runtime, the shipped models.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;
mod grpc;
mod hot_swap;
mod lifecycle;
mod openai;
mod python_clients;
mod queue;
mod real_models;
mod registration;
mod sandbox;
mod v2_http;
