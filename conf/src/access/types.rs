//! The file types of access control: `[[tenants]]`, `[auth]`, `[limits]`
//! and a route's `auth` mode.

use serde::{Deserialize, Serialize};

/// The `[auth]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT issuers whose tokens are accepted.
    #[serde(default)]
    pub jwt: Vec<JwtConfig>,
}

impl AuthConfig {
    /// Whether nothing is configured (left out when serialized).
    pub fn is_empty(&self) -> bool {
        self.jwt.is_empty()
    }
}

/// `[[auth.jwt]]`: one issuer and its verification key(s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Name, for logs and error paths.
    pub name: String,
    /// `HS256`, `RS256` or `ES256`; tokens signed any other way are refused.
    pub algorithm: String,
    /// HS256 shared secret in a file (its bytes, trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// RS256/ES256 public key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<String>,
    /// RS256/ES256 keys as a JWKS document; a token's `kid` picks the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// Required `iss`, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (one must match), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// The claim that names the tenant (default `tenant`).
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: i64,
}

fn default_tenant_claim() -> String {
    "tenant".to_owned()
}
fn default_leeway() -> i64 {
    30
}

/// `[limits]`: where tenant limits are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Redis URL (`redis://HOST:PORT[/DB]`, `rediss://…`, `redis+unix:///PATH`)
    /// that makes request and token limits cluster-wide, shared by every
    /// replica; absent = each replica limits on its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Longest wait for Redis per decision, milliseconds (default 50); a
    /// slower or unreachable Redis means local limits meanwhile.
    pub redis_timeout_ms: i64,
    /// Prefix of the Redis keys (default `weir`).
    pub redis_prefix: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            redis: None,
            redis_timeout_ms: 50,
            redis_prefix: "weir".to_owned(),
        }
    }
}

impl LimitsConfig {
    /// Whether this is the default table (left out when serialized).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// `[[tenants]]`: a client of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique name (label `tenant`, `x-weir-tenant` upstream).
    pub name: String,
    /// SHA-256 of each API key, as 64 hex digits, optionally `sha256:`-prefixed.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Requests per second (GCRA), if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<i64>,
    /// Requests allowed at once above the per-second rate (default = the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// Requests per minute, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i64>,
    /// Prompt + completion tokens per minute (from the engine's `usage`), if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<i64>,
    /// Requests in flight at once, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<i64>,
}

/// Whether a route needs credentials.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone may call it (tenant limits do not apply).
    #[default]
    None,
    /// An API key or a JWT naming a tenant is required.
    Required,
}

impl AuthMode {
    /// Whether this is the default (left out when serialized).
    pub fn is_none(&self) -> bool {
        *self == AuthMode::None
    }
}
