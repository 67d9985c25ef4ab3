//! Errors the gateway answers itself, mapped once to a status and an
//! OpenAI-shaped JSON body `{"error":{"message","type","code"}}`.

use pingora_error::{Error, ErrorSource, ErrorType};

/// An error answered by the gateway rather than by an upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No config snapshot is live yet.
    #[error("the gateway has no configuration loaded yet")]
    NotReady,
    /// No route matches the request.
    #[error("no route matches {path}")]
    NoRoute {
        /// The request path.
        path: String,
    },
    /// No route serves the requested model.
    #[error("{}", no_model_route(model, path))]
    NoModelRoute {
        /// The model the request names (empty when it names none).
        model: String,
        /// The request path.
        path: String,
    },
    /// A task poll names a backend that is no longer in the route's pools.
    #[error("task {id} ran on a backend that is no longer in this route's pools")]
    TaskNotFound {
        /// The task id as the client sent it.
        id: String,
    },
    /// The route has no arm that can take traffic without an A/B header.
    #[error("route {route} has no arm with weight > 0")]
    NoArm {
        /// Route name.
        route: String,
    },
    /// Every backend of the chosen arm (and of the fallback) is unhealthy or already tried.
    #[error("no healthy backend for route {route} arm {arm}")]
    NoHealthyBackend {
        /// Route name.
        route: String,
        /// Arm name.
        arm: String,
    },
    /// Connecting to the upstream failed.
    #[error("could not connect to the upstream: {0}")]
    UpstreamConnect(String),
    /// The upstream did not answer in time.
    #[error("the upstream timed out: {0}")]
    UpstreamTimeout(String),
    /// The upstream connection failed after connecting.
    #[error("the upstream failed: {0}")]
    Upstream(String),
    /// The client sent something the gateway cannot proxy.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client went away before its answer was complete (counted as
    /// status 499, like nginx; nothing can be written to it).
    #[error("the client closed the connection: {0}")]
    ClientClosed(String),
    /// A content filter blocked the request (the word is never echoed).
    #[error("blocked by the content filter (category: {category})")]
    ContentBlocked {
        /// The matched word's category.
        category: String,
    },
    /// A content filter failed and its policy is `fail_closed`.
    #[error("the content filter {filter} is unavailable")]
    FilterUnavailable {
        /// The filter.
        filter: String,
    },
    /// The body is larger than the route's filter buffer.
    #[error("the request body exceeds {limit} bytes, the most this route takes or buffers")]
    BodyTooLarge {
        /// `max_body_bytes`.
        limit: usize,
    },
    /// The body is not the JSON the route's filters need.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// The route needs credentials and the request has none.
    #[error("this route needs an API key (Authorization: Bearer <key>, or x-api-key) or a JWT")]
    MissingCredentials,
    /// The credentials are not valid (the key or token is never echoed).
    #[error("{0}")]
    InvalidCredentials(String),
    /// A valid JWT names a tenant the gateway does not know.
    #[error("tenant {0:?} is not known to this gateway")]
    UnknownTenant(String),
    /// The tenant may not use this route.
    #[error("tenant {tenant:?} may not use route {route}")]
    TenantNotAllowed {
        /// The tenant.
        tenant: String,
        /// The route.
        route: String,
    },
    /// A tenant limit refused the request.
    #[error("{}", limit.message())]
    RateLimited {
        /// Which limit.
        limit: LimitKind,
        /// Seconds until a retry may succeed.
        retry_after: u64,
        /// The `x-ratelimit-*` values.
        headers: RateHeaders,
    },
    /// Anything else.
    #[error("internal gateway error: {0}")]
    Internal(String),
}

fn no_model_route(model: &str, path: &str) -> String {
    if model.is_empty() {
        format!("the request names no model, and every route at {path} serves named models")
    } else {
        format!("no route serves model {model:?} at {path}")
    }
}

/// The tenant limit behind a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per second or minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Requests in flight.
    Concurrency,
}

impl LimitKind {
    /// `requests`, `tokens` or `concurrency` (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
        }
    }

    fn message(self) -> &'static str {
        match self {
            LimitKind::Requests => "rate limit reached for requests",
            LimitKind::Tokens => "rate limit reached for tokens per minute",
            LimitKind::Concurrency => "too many requests in flight for this tenant",
        }
    }
}

impl GatewayError {
    /// HTTP status of the error response.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::NoRoute { .. }
            | GatewayError::NoModelRoute { .. }
            | GatewayError::TaskNotFound { .. } => 404,
            GatewayError::BadRequest(_)
            | GatewayError::ContentBlocked { .. }
            | GatewayError::InvalidBody(_) => 400,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::MissingCredentials | GatewayError::InvalidCredentials(_) => 401,
            GatewayError::UnknownTenant(_) | GatewayError::TenantNotAllowed { .. } => 403,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::FilterUnavailable { .. } => 503,
            GatewayError::UpstreamConnect(_) | GatewayError::Upstream(_) => 502,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::NotReady
            | GatewayError::NoArm { .. }
            | GatewayError::NoHealthyBackend { .. } => 503,
            GatewayError::Internal(_) => 500,
            GatewayError::ClientClosed(_) => 499,
        }
    }

    /// The gRPC status code of the error, for gRPC callers (answered in
    /// trailers-only form: HTTP 200 with `grpc-status` and `grpc-message`).
    pub fn grpc_status(&self) -> u8 {
        const CANCELLED: u8 = 1;
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const NOT_FOUND: u8 = 5;
        const PERMISSION_DENIED: u8 = 7;
        const RESOURCE_EXHAUSTED: u8 = 8;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        const UNAUTHENTICATED: u8 = 16;
        match self {
            GatewayError::NoRoute { .. } | GatewayError::NoModelRoute { .. } => UNIMPLEMENTED,
            GatewayError::TaskNotFound { .. } => NOT_FOUND,
            GatewayError::BadRequest(_)
            | GatewayError::ContentBlocked { .. }
            | GatewayError::InvalidBody(_) => INVALID_ARGUMENT,
            GatewayError::BodyTooLarge { .. } | GatewayError::RateLimited { .. } => {
                RESOURCE_EXHAUSTED
            }
            GatewayError::MissingCredentials | GatewayError::InvalidCredentials(_) => {
                UNAUTHENTICATED
            }
            GatewayError::UnknownTenant(_) | GatewayError::TenantNotAllowed { .. } => {
                PERMISSION_DENIED
            }
            GatewayError::UpstreamTimeout(_) => DEADLINE_EXCEEDED,
            GatewayError::NotReady
            | GatewayError::NoArm { .. }
            | GatewayError::NoHealthyBackend { .. }
            | GatewayError::FilterUnavailable { .. }
            | GatewayError::UpstreamConnect(_)
            | GatewayError::Upstream(_) => UNAVAILABLE,
            GatewayError::Internal(_) => INTERNAL,
            GatewayError::ClientClosed(_) => CANCELLED,
        }
    }

    /// OpenAI error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::NoRoute { .. }
            | GatewayError::NoModelRoute { .. }
            | GatewayError::TaskNotFound { .. }
            | GatewayError::BadRequest(_)
            | GatewayError::ClientClosed(_)
            | GatewayError::ContentBlocked { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::InvalidBody(_) => "invalid_request_error",
            GatewayError::Internal(_) | GatewayError::FilterUnavailable { .. } => "server_error",
            GatewayError::MissingCredentials | GatewayError::InvalidCredentials(_) => {
                "authentication_error"
            }
            GatewayError::UnknownTenant(_) | GatewayError::TenantNotAllowed { .. } => {
                "permission_error"
            }
            GatewayError::RateLimited { .. } => "rate_limit_error",
            _ => "upstream_error",
        }
    }

    /// Machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::NotReady => "not_ready",
            GatewayError::NoRoute { .. } => "route_not_found",
            GatewayError::NoModelRoute { .. } => "model_not_found",
            GatewayError::TaskNotFound { .. } => "task_not_found",
            GatewayError::NoArm { .. } => "no_arm_available",
            GatewayError::NoHealthyBackend { .. } => "no_healthy_backend",
            GatewayError::UpstreamConnect(_) => "upstream_connect_failed",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Upstream(_) => "upstream_failed",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::ClientClosed(_) => "client_closed",
            GatewayError::ContentBlocked { .. } => "content_blocked",
            GatewayError::FilterUnavailable { .. } => "filter_unavailable",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::InvalidBody(_) => "invalid_body",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::MissingCredentials => "missing_credentials",
            GatewayError::InvalidCredentials(_) => "invalid_credentials",
            GatewayError::UnknownTenant(_) => "unknown_tenant",
            GatewayError::TenantNotAllowed { .. } => "tenant_not_allowed",
            GatewayError::RateLimited {
                limit: LimitKind::Concurrency,
                ..
            } => "too_many_concurrent_requests",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
        }
    }

    /// Headers the error response carries besides the body's.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            GatewayError::MissingCredentials | GatewayError::InvalidCredentials(_) => {
                vec![("www-authenticate", "Bearer realm=\"weir\"".to_owned())]
            }
            GatewayError::RateLimited {
                retry_after,
                headers,
                ..
            } => std::iter::once(("retry-after", retry_after.to_string()))
                .chain(headers.pairs().map(|(k, v)| (k, v.to_string())))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.code(),
            }
        })
        .to_string()
    }

    /// Classifies an error raised while proxying. The client is told the
    /// kind of failure only (`ConnectRefused`, `InvalidChunk`, ...): Pingora's
    /// context and cause name backend addresses and internals, which stay in
    /// the log.
    pub fn from_proxy_error(e: &Error) -> Self {
        let detail = e.etype().as_str().to_owned();
        match e.etype() {
            ErrorType::ConnectTimedout => GatewayError::UpstreamTimeout(detail),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                GatewayError::UpstreamTimeout(detail)
            }
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::HandshakeError
            | ErrorType::SocketError => GatewayError::UpstreamConnect(detail),
            ErrorType::HTTPStatus(400) | ErrorType::InvalidHTTPHeader => {
                GatewayError::BadRequest(detail)
            }
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                if *e.esource() == ErrorSource::Downstream =>
            {
                GatewayError::ClientClosed(detail)
            }
            _ => match e.esource() {
                ErrorSource::Upstream => GatewayError::Upstream(detail),
                ErrorSource::Downstream => GatewayError::BadRequest(detail),
                ErrorSource::Internal | ErrorSource::Unset => GatewayError::Internal(detail),
            },
        }
    }
}

/// `(limit, remaining)` of the request and token limits, for the
/// `x-ratelimit-{limit,remaining}-{requests,tokens}` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    /// Request limit and what is left of it.
    pub requests: Option<(u32, u32)>,
    /// Token limit and what is left of it.
    pub tokens: Option<(u64, u64)>,
}

impl RateHeaders {
    /// The header pairs to add to a response.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let r = self.requests.map(|(l, rem)| {
            [
                ("x-ratelimit-limit-requests", u64::from(l)),
                ("x-ratelimit-remaining-requests", u64::from(rem)),
            ]
        });
        let t = self.tokens.map(|(l, rem)| {
            [
                ("x-ratelimit-limit-tokens", l),
                ("x-ratelimit-remaining-tokens", rem),
            ]
        });
        r.into_iter().flatten().chain(t.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn errors_map_to_status_and_openai_shape() {
        let e = GatewayError::NoRoute { path: "/x".into() };
        assert_eq!(e.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "no route matches /x");

        let refused = Error::new(ErrorType::ConnectRefused);
        assert_eq!(GatewayError::from_proxy_error(&refused).status(), 502);
        let timeout = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(GatewayError::from_proxy_error(&timeout).status(), 504);
        let read = Error::new(ErrorType::ReadTimedout);
        assert_eq!(
            GatewayError::from_proxy_error(&read).code(),
            "upstream_timeout"
        );
    }
}
