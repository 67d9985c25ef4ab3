//! gRPC callers: errors the gateway makes itself are answered the way a
//! gRPC server answers them, in *trailers-only* form (HTTP 200, one
//! `HEADERS` frame with `grpc-status` and `grpc-message` and the end of the
//! stream), so a gRPC client sees `UNAVAILABLE`, `UNAUTHENTICATED`... rather
//! than an HTTP error page it cannot read. Upstream answers (their trailers
//! included) pass through untouched.

use http::HeaderValue;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use pingora_http::ResponseHeader;

use crate::errors::GatewayError;
use crate::request_head::RequestHead;

/// `grpc-message` is percent-encoded: controls, `%` and every non-ASCII
/// byte (the last is implied by the encoder).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// The canonical name of a gRPC status code (`UNKNOWN` for codes outside 0-16).
pub fn status_name(code: u16) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// Parsed once: looked up in every upstream answer.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` in a header map (response headers of a trailers-only
/// answer, or trailers), if valid.
pub fn status_in(headers: &http::HeaderMap) -> Option<u16> {
    status_of(headers.get(&GRPC_STATUS)?.as_bytes())
}

/// A `grpc-status` value's code.
pub fn status_of(value: &[u8]) -> Option<u16> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Whether the request is a gRPC call (by its `content-type`).
pub fn is_grpc(req: &dyn RequestHead) -> bool {
    req.field(&http::header::CONTENT_TYPE)
        .is_some_and(weir_conf::matching::is_grpc_content_type)
}

/// The trailers-only response header for `err`; `h1` adds the
/// `content-length: 0` an HTTP/1.1 client needs to see the end.
pub fn error_response(err: &GatewayError, h1: bool) -> pingora_error::Result<ResponseHeader> {
    let extra = err.headers();
    let mut resp = ResponseHeader::build(200, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header(
        "grpc-status",
        HeaderValue::from(u16::from(err.grpc_status())),
    )?;
    let message = utf8_percent_encode(&err.to_string(), GRPC_MESSAGE).to_string();
    resp.insert_header("grpc-message", message)?;
    if h1 {
        resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    }
    for (name, value) in extra {
        resp.insert_header(name, value)?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn errors_map_to_grpc_statuses_in_trailers_only_form() {
        let cases = [
            (
                GatewayError::NoRoute {
                    path: "/x.Y/Z".into(),
                },
                12,
            ),
            (
                GatewayError::NoHealthyBackend {
                    route: "r".into(),
                    arm: "a".into(),
                },
                14,
            ),
            (GatewayError::MissingCredentials, 16),
            (
                GatewayError::TenantNotAllowed {
                    tenant: "t".into(),
                    route: "r".into(),
                },
                7,
            ),
            (
                GatewayError::RateLimited {
                    limit: crate::errors::LimitKind::Requests,
                    retry_after: 1,
                    headers: Default::default(),
                },
                8,
            ),
            (GatewayError::UpstreamTimeout("slow".into()), 4),
        ];
        for (err, code) in cases {
            let resp = error_response(&err, false).unwrap();
            assert_eq!(resp.status.as_u16(), 200);
            assert_eq!(
                resp.headers["grpc-status"],
                code.to_string().as_str(),
                "{err:?}"
            );
            assert_eq!(resp.headers["content-type"], "application/grpc");
            assert!(resp.headers.get("content-length").is_none());
        }
        let resp = error_response(&GatewayError::MissingCredentials, true).unwrap();
        assert_eq!(resp.headers["content-length"], "0");
        assert!(resp.headers.get("www-authenticate").is_some());
    }

    #[test]
    fn status_names_and_parsing() {
        assert_eq!(status_name(0), "OK");
        assert_eq!(status_name(5), "NOT_FOUND");
        assert_eq!(status_name(16), "UNAUTHENTICATED");
        assert_eq!(status_name(99), "UNKNOWN");
        let mut h = http::HeaderMap::new();
        assert_eq!(status_in(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status_in(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        assert_eq!(status_in(&h), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        let err = GatewayError::NoRoute {
            path: "/模型 100%\n".into(),
        };
        let resp = error_response(&err, false).unwrap();
        let msg = resp.headers["grpc-message"].to_str().unwrap();
        assert_eq!(msg, "no route matches /%E6%A8%A1%E5%9E%8B 100%25%0A");
    }
}
