//! Access control in the config: tenants with API keys and limits, JWT
//! issuers, and their validation.
//!
//! ```toml
//! [[tenants]]
//! name = "acme"
//! # SHA-256 of each key, hex (`printf %s "$KEY" | sha256sum`); never the key.
//! api_keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
//! requests_per_second = 50      # optional, with `burst` (default = the rate)
//! requests_per_minute = 2000    # optional
//! tokens_per_minute = 100000    # optional: prompt + completion tokens
//! max_concurrent = 64           # optional: requests in flight at once
//!
//! [[auth.jwt]]
//! name = "idp"
//! algorithm = "RS256"           # HS256, RS256 or ES256: the only one accepted
//! public_key_file = "idp.pem"   # RS256/ES256 PEM; or jwks_file; HS256: secret_file
//! issuer = "https://idp.example"
//! audience = ["weir"]
//! tenant_claim = "tenant"       # the claim naming a [[tenants]] entry
//!
//! [[routes]]
//! auth = "required"             # default "none"
//! tenants = ["acme"]            # optional allow-list (403 for others)
//! ```
//!
//! Key files are read when the snapshot is built, so a rotated key is
//! picked up by the next reload, and a key that does not parse rejects the
//! config like any other bad value.
//!
//! - `types`: the file types (serde, unknown fields rejected).
//! - `check`: tenants, limits and route access, validated into [`Access`]
//!   (feature `validate`).
//! - `jwt`: JWT issuers, validated into [`JwtIssuer`] (feature `validate`).
//! - `keys`: JWT key material ([`JwtKeys`]) and the one decoder of it into
//!   verification keys, [`JwtKeys::decode`] (feature `validate`).

pub(crate) mod types;

#[cfg(feature = "validate")]
pub(crate) mod check;
#[cfg(feature = "validate")]
pub(crate) mod jwt;
#[cfg(feature = "validate")]
pub(crate) mod keys;

#[cfg(feature = "validate")]
pub use check::{
    Access, Limits, RedisLimits, Tenant, check_access, check_limits, check_route_access,
    parse_digest,
};
#[cfg(feature = "validate")]
pub use jwt::JwtIssuer;
#[cfg(feature = "validate")]
pub use keys::{JwtKeys, KeyError, VerificationKey};
pub use types::{AuthConfig, AuthMode, JwtConfig, LimitsConfig, TenantConfig};
