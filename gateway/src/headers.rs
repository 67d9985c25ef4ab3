//! The header names the gateway writes on every request, parsed once:
//! inserting one neither parses nor allocates (Pingora patch 6,
//! `pingora_http::StaticHeaderName`).

use pingora_http::StaticHeaderName;

/// `x-request-id`, both ways.
pub static X_REQUEST_ID: StaticHeaderName = StaticHeaderName::new("x-request-id");
/// `x-weir-route` on answers.
pub static X_WEIR_ROUTE: StaticHeaderName = StaticHeaderName::new("x-weir-route");
/// `x-weir-arm` on answers.
pub static X_WEIR_ARM: StaticHeaderName = StaticHeaderName::new("x-weir-arm");
/// `x-weir-fallback` on answers.
pub static X_WEIR_FALLBACK: StaticHeaderName = StaticHeaderName::new("x-weir-fallback");
/// `x-api-key`: a tenant's key (never sent upstream).
pub static X_API_KEY: StaticHeaderName = StaticHeaderName::new("x-api-key");
/// `x-weir-tenant` towards the upstream.
pub static X_WEIR_TENANT: StaticHeaderName = StaticHeaderName::new("x-weir-tenant");
/// `x-forwarded-for` towards the upstream.
pub static X_FORWARDED_FOR: StaticHeaderName = StaticHeaderName::new("x-forwarded-for");
/// `x-forwarded-proto` towards the upstream.
pub static X_FORWARDED_PROTO: StaticHeaderName = StaticHeaderName::new("x-forwarded-proto");
/// W3C `traceparent` towards the upstream.
pub static TRACEPARENT: StaticHeaderName = StaticHeaderName::new("traceparent");
