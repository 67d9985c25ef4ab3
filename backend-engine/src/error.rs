//! The engine's one error type, and the one place where an error becomes an
//! HTTP status and body (OpenAI shape or Open Inference Protocol shape) or a
//! gRPC status.

use std::path::PathBuf;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

/// Everything that can go wrong in the engine, from a bad request to a model
/// that does not verify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a model that is not loaded.
    #[error("model '{0}' is not loaded")]
    ModelNotFound(String),
    /// The model is loaded, but not at the version asked for.
    #[error("model '{model}' has no loaded version '{version}'")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// The request is malformed or does not fit the model.
    #[error("{0}")]
    InvalidRequest(String),
    /// A text-generation API was called on a model that is not a language model.
    #[error(
        "model '{0}' does not generate text; use /v2/models/{0}/infer (tensor) or /v1/embeddings (embedding)"
    )]
    NotLanguageModel(String),
    /// The model version's bounded queue is full.
    #[error(
        "queue for model '{model}' version {version} is full ({capacity} requests outstanding); retry later"
    )]
    QueueFull {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The model version's KV-cache budget cannot hold the request now.
    #[error(
        "model '{model}' has no room in its KV cache for this request now ({needed_mb} MiB needed, {free_mb} MiB free); retry later"
    )]
    KvCacheFull {
        /// Model name.
        model: String,
        /// What the request needs.
        needed_mb: usize,
        /// What is free.
        free_mb: usize,
    },
    /// No async task with this id (never created, or expired).
    #[error("task '{0}' not found (unknown or expired)")]
    TaskNotFound(String),
    /// No route matches the request.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// A file of the model repository could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A model failed verification (digest, signature, manifest) and was refused.
    #[error("model {model}/{version} refused: {reason}")]
    Verification {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// What did not verify, naming the file.
        reason: String,
    },
    /// A model's `model.toml` is invalid or does not match its ONNX graph.
    #[error("model {model}/{version}: invalid configuration: {reason}")]
    ModelConfig {
        /// Model name.
        model: String,
        /// Model version.
        version: String,
        /// Every problem found, one per line.
        reason: String,
    },
    /// The engine's own configuration (flags, key file) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The ONNX Runtime library could not be found or loaded.
    #[error("ONNX Runtime library: {0}")]
    OrtLibrary(String),
    /// The execution device asked for is unavailable.
    #[error("device: {0}")]
    Device(String),
    /// ONNX Runtime failed to build a session or run the model.
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// The model version is shutting down (swapped out and drained).
    #[error("model '{0}' is unavailable (being replaced); retry")]
    Unavailable(String),
    /// The request declares a body larger than the engine accepts.
    #[error("the request body ({declared} bytes) is larger than the {limit} bytes accepted")]
    BodyTooLarge {
        /// The declared `Content-Length`.
        declared: u64,
        /// The largest body accepted.
        limit: usize,
    },
}

/// Result with the engine's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which wire shape an HTTP error body takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `{"error":{"message","type","code"}}` (OpenAI API, admin and task endpoints).
    OpenAi,
    /// `{"error":"message"}` (Open Inference Protocol v2).
    V2,
}

/// How long a client told "queue full" should wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps anything printable from ONNX Runtime.
    pub fn runtime(e: impl std::fmt::Display) -> Self {
        Error::Runtime(e.to_string())
    }

    /// The HTTP status this error answers with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::ModelNotFound(_)
            | Error::VersionNotFound { .. }
            | Error::TaskNotFound(_)
            | Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::InvalidRequest(_) | Error::NotLanguageModel(_) => StatusCode::BAD_REQUEST,
            Error::QueueFull { .. } | Error::KvCacheFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Verification { .. } | Error::ModelConfig { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Error::Io { .. }
            | Error::Config(_)
            | Error::OrtLibrary(_)
            | Error::Device(_)
            | Error::Runtime(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code this error answers with.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Error::ModelNotFound(_)
            | Error::VersionNotFound { .. }
            | Error::TaskNotFound(_)
            | Error::RouteNotFound(_) => tonic::Code::NotFound,
            Error::InvalidRequest(_) | Error::NotLanguageModel(_) => tonic::Code::InvalidArgument,
            Error::QueueFull { .. } | Error::KvCacheFull { .. } | Error::BodyTooLarge { .. } => {
                tonic::Code::ResourceExhausted
            }
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::Verification { .. } | Error::ModelConfig { .. } => {
                tonic::Code::FailedPrecondition
            }
            Error::Io { .. }
            | Error::Config(_)
            | Error::OrtLibrary(_)
            | Error::Device(_)
            | Error::Runtime(_) => tonic::Code::Internal,
        }
    }

    /// OpenAI's `error.type` and `error.code` for this error.
    fn openai_type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Error::ModelNotFound(_) | Error::VersionNotFound { .. } => {
                ("invalid_request_error", "model_not_found")
            }
            Error::TaskNotFound(_) => ("invalid_request_error", "task_not_found"),
            Error::RouteNotFound(_) => ("invalid_request_error", "not_found"),
            Error::InvalidRequest(_) => ("invalid_request_error", "invalid_request"),
            Error::NotLanguageModel(_) => ("invalid_request_error", "model_not_supported"),
            Error::QueueFull { .. } => ("rate_limit_error", "queue_full"),
            Error::KvCacheFull { .. } => ("rate_limit_error", "kv_cache_full"),
            Error::BodyTooLarge { .. } => ("invalid_request_error", "body_too_large"),
            Error::Unavailable(_) => ("server_error", "unavailable"),
            Error::Verification { .. } => ("invalid_request_error", "model_verification_failed"),
            Error::ModelConfig { .. } => ("invalid_request_error", "model_config_invalid"),
            Error::Io { .. }
            | Error::Config(_)
            | Error::OrtLibrary(_)
            | Error::Device(_)
            | Error::Runtime(_) => ("server_error", "internal_error"),
        }
    }

    /// The JSON body for this error in the given protocol's shape.
    pub fn body(&self, protocol: Protocol) -> serde_json::Value {
        let message = self.to_string();
        match protocol {
            Protocol::V2 => serde_json::json!({ "error": message }),
            Protocol::OpenAi => {
                let (kind, code) = self.openai_type_and_code();
                serde_json::json!({ "error": { "message": message, "type": kind, "code": code } })
            }
        }
    }

    /// The full HTTP response for this error.
    pub fn into_http(self, protocol: Protocol) -> Response {
        if self.http_status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request rejected");
        }
        let mut response = (self.http_status(), axum::Json(self.body(protocol))).into_response();
        if matches!(self, Error::QueueFull { .. } | Error::KvCacheFull { .. }) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        response
    }

    /// The gRPC status for this error.
    pub fn into_grpc(self) -> tonic::Status {
        if matches!(self.grpc_code(), tonic::Code::Internal) {
            tracing::error!(error = %self, "gRPC request failed");
        }
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        if matches!(self, Error::QueueFull { .. } | Error::KvCacheFull { .. })
            && let Ok(v) = RETRY_AFTER.as_secs().to_string().parse()
        {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}

/// An error answered in the OpenAI shape (the default for non-v2 routes).
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.into_http(Protocol::OpenAi)
    }
}

/// An error answered in the Open Inference Protocol's shape.
#[derive(Debug)]
pub struct V2Error(pub Error);

impl From<Error> for V2Error {
    fn from(e: Error) -> Self {
        V2Error(e)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        self.0.into_http(Protocol::V2)
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        e.into_grpc()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn queue_full_maps_to_429_and_resource_exhausted() {
        let e = || Error::QueueFull {
            model: "m".into(),
            version: "1".into(),
            capacity: 4,
        };
        assert_eq!(e().http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e().grpc_code(), tonic::Code::ResourceExhausted);
        let r = e().into_http(Protocol::OpenAi);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(
            e().body(Protocol::OpenAi)["error"]["type"],
            "rate_limit_error"
        );
    }

    #[test]
    fn v2_shape_is_a_string() {
        let body = Error::ModelNotFound("x".into()).body(Protocol::V2);
        assert_eq!(body["error"], "model 'x' is not loaded");
    }
}
