//! What every HTTP handler shares: the response headers the engine adds and
//! JSON body parsing. A leaf module, so that the handlers and the router
//! (`mod.rs`) can both use it without depending on each other.

use axum::http::HeaderName;

use crate::error::{Error, Result};

/// Response header with the engine's outstanding request count.
pub const QUEUE_DEPTH_HEADER: HeaderName = HeaderName::from_static("x-weir-queue-depth");
/// Response header naming the model version that answered.
pub const MODEL_VERSION_HEADER: HeaderName = HeaderName::from_static("x-weir-model-version");

/// Parses a JSON body with a clear message (line and column) on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.is_empty() {
        return Err(Error::InvalidRequest(
            "request body is empty; expected JSON".to_string(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::InvalidRequest(format!("malformed JSON body: {e}")))
}
