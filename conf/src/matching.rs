//! Which requests a route takes: host, path prefix, gRPC service or method,
//! and the requested model.
//!
//! A request is described by a [`Request`]; a route's [`Matcher`] holds what
//! it matches besides host and prefix. [`crate::Route::takes`] answers for
//! one route, and [`crate::Snapshot::route_for`] picks the first route (in
//! match order) that takes it. The model is only looked for when a candidate route
//! names models: the gateway reads it from the Open Inference Protocol path
//! (`/v2/models/NAME/...`, see [`path_model`]) or from the `model` field of an
//! OpenAI JSON body.

use crate::error::Problems;
use crate::model::RouteConfig;

/// Longest model name a route may list.
const MAX_MODEL_NAME: usize = 256;

/// What a route matches besides host and prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// Only gRPC requests (`content-type: application/grpc...`).
    pub grpc: bool,
    /// The path must equal the prefix (a gRPC method), not only start with it.
    pub exact: bool,
    /// Models the route serves (empty = any request, whatever its model).
    pub models: Vec<String>,
}

/// The parts of a request that choose its route.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `Host` without port.
    pub host: Option<&'a str>,
    /// The request path.
    pub path: &'a str,
    /// Whether it is a gRPC call.
    pub grpc: bool,
    /// The requested model, when known.
    pub model: Option<&'a str>,
}

/// The model an Open Inference Protocol HTTP path names
/// (`/v2/models/NAME[/versions/V]/...`), if any.
pub fn path_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next().unwrap_or(rest);
    (!name.is_empty()).then_some(name)
}

/// Checks one model name (a route's `models` entry or an arm's `model`).
pub(crate) fn check_model_name(m: &str, at: &str, problems: &mut Problems) {
    if m.is_empty()
        || m.len() > MAX_MODEL_NAME
        || m.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        problems.push(
            at,
            format!(
                "{} must be 1-{MAX_MODEL_NAME} characters without spaces",
                crate::error::quoted(m)
            ),
        );
    }
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `+proto`, `-web`...).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    value
        .get(..16)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
}

/// Checks a route's `grpc` and `models` and returns its matcher and
/// effective prefix (`/Service/` or `/Service/Method` for gRPC routes).
pub(crate) fn check_matcher(
    r: &RouteConfig,
    at: &str,
    problems: &mut Problems,
) -> (Matcher, String) {
    let mut matcher = Matcher::default();
    let mut prefix = r.prefix.clone();
    if let Some(target) = &r.grpc {
        matcher.grpc = true;
        if r.prefix != "/" {
            problems.push(
                format!("{at}.grpc"),
                "a gRPC route matches by service or method, not by prefix: drop `prefix`",
            );
        }
        let (service, method) = match target.split_once('/') {
            Some((s, m)) => (s, Some(m)),
            None => (target.as_str(), None),
        };
        let ident = |s: &str, dots: bool| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
        };
        if !ident(service, true) || method.is_some_and(|m| !ident(m, false)) {
            problems.push(
                format!("{at}.grpc"),
                format!(
                    "{} must be a gRPC service (`package.Service`) or method (`package.Service/Method`)",
                    crate::error::quoted(target)
                ),
            );
        }
        match method {
            Some(m) => {
                matcher.exact = true;
                prefix = format!("/{service}/{m}");
            }
            None => prefix = format!("/{service}/"),
        }
    }
    for (i, m) in r.models.iter().enumerate() {
        check_model_name(m, &format!("{at}.models[{i}]"), problems);
        if r.models[..i].contains(m) {
            problems.push(
                format!("{at}.models[{i}]"),
                format!("{m:?} is listed twice"),
            );
        }
    }
    if matcher.grpc && !r.models.is_empty() {
        problems.push(
            format!("{at}.models"),
            "gRPC routes cannot choose by model (it is inside the protobuf body)",
        );
    }
    matcher.models = r.models.clone();
    (matcher, prefix)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn oip_paths_name_their_model() {
        assert_eq!(path_model("/v2/models/mlp/infer"), Some("mlp"));
        assert_eq!(
            path_model("/v2/models/tiny-lm/versions/2/infer"),
            Some("tiny-lm")
        );
        assert_eq!(path_model("/v2/models/mlp"), Some("mlp"));
        assert_eq!(path_model("/v2/models/"), None);
        assert_eq!(path_model("/v2/health/ready"), None);
        assert_eq!(path_model("/v1/chat/completions"), None);
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"Application/GRPC-web"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert!(!is_grpc_content_type(b"application/grp"));
    }
}
