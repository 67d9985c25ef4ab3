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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::snapshot::check_name;

/// Largest request, token or concurrency limit.
const MAX_LIMIT: i64 = 1_000_000_000;

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

/// Validated Redis settings of the limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisLimits {
    /// The URL.
    pub url: String,
    /// Per-decision timeout.
    pub timeout: Duration,
    /// Key prefix.
    pub prefix: String,
}

/// Validates `[limits]`.
pub fn check_limits(l: &LimitsConfig, problems: &mut Problems) -> Option<RedisLimits> {
    if !(1..=10_000).contains(&l.redis_timeout_ms) {
        problems.push(
            "limits.redis_timeout_ms",
            format!("{} must be between 1 and 10000", l.redis_timeout_ms),
        );
    }
    if l.redis_prefix.is_empty() || l.redis_prefix.contains(char::is_whitespace) {
        problems.push("limits.redis_prefix", "must be non-empty, without spaces");
    }
    let url = l.redis.as_ref()?;
    if !["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        problems.push(
            "limits.redis",
            format!("{url:?} must be a redis://, rediss:// or redis+unix:// URL"),
        );
        return None;
    }
    Some(RedisLimits {
        url: url.clone(),
        timeout: Duration::from_millis(l.redis_timeout_ms.clamp(1, 10_000).unsigned_abs()),
        prefix: l.redis_prefix.clone(),
    })
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

/// A validated tenant's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests per second and burst.
    pub per_second: Option<(u32, u32)>,
    /// Requests per minute.
    pub per_minute: Option<u32>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight.
    pub max_concurrent: Option<u32>,
}

/// A validated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its limits.
    pub limits: Limits,
}

/// Key material of a JWT issuer, as read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// HS256 secret.
    Secret(Vec<u8>),
    /// One PEM public key.
    Pem(Vec<u8>),
    /// A JWKS document.
    Jwks(String),
}

/// A validated JWT issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// Name.
    pub name: String,
    /// The one accepted algorithm.
    pub algorithm: Algorithm,
    /// Verification key(s).
    pub keys: JwtKeys,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Accepted audiences.
    pub audience: Vec<String>,
    /// Tenant claim.
    pub tenant_claim: String,
    /// Allowed skew.
    pub leeway: Duration,
}

/// The validated access settings of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Tenants, in config order.
    pub tenants: Vec<Tenant>,
    /// SHA-256 of an API key → index into `tenants`.
    pub api_keys: HashMap<[u8; 32], usize>,
    /// JWT issuers.
    pub jwt: Vec<JwtIssuer>,
    /// Cluster-wide limits in Redis, if configured.
    pub redis: Option<RedisLimits>,
}

impl Access {
    /// Index of the tenant called `name`.
    pub fn tenant_index(&self, name: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t.name == name)
    }
}

/// Parses `sha256:<hex>` or `<hex>` into a digest.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

fn limit(value: Option<i64>, path: String, problems: &mut Problems) -> Option<u32> {
    let v = value?;
    if !(1..=MAX_LIMIT).contains(&v) {
        problems.push(path, format!("{v} must be between 1 and {MAX_LIMIT}"));
        return None;
    }
    u32::try_from(v).ok()
}

/// Validates `[[tenants]]` and `[auth]`.
pub fn check_access(
    tenants: &[TenantConfig],
    auth: &AuthConfig,
    problems: &mut Problems,
) -> Access {
    let mut out = Access::default();
    let mut names = HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let at = if t.name.is_empty() {
            format!("tenants[{i}]")
        } else {
            format!("tenants[{}]", t.name)
        };
        check_name(&t.name, &format!("{at}.name"), problems);
        if !names.insert(t.name.as_str()) {
            problems.push(format!("{at}.name"), "duplicate tenant name");
        }
        for (j, k) in t.api_keys.iter().enumerate() {
            match parse_digest(k) {
                None => problems.push(
                    format!("{at}.api_keys[{j}]"),
                    "must be the key's SHA-256 as 64 hex digits (optionally \"sha256:\"-prefixed), never the key itself",
                ),
                Some(d) => {
                    if out.api_keys.insert(d, out.tenants.len()).is_some() {
                        problems.push(
                            format!("{at}.api_keys[{j}]"),
                            "this key is listed twice (for this or another tenant)",
                        );
                    }
                }
            }
        }
        let rate = limit(
            t.requests_per_second,
            format!("{at}.requests_per_second"),
            problems,
        );
        let burst = limit(t.burst, format!("{at}.burst"), problems);
        if burst.is_some() && rate.is_none() {
            problems.push(format!("{at}.burst"), "needs requests_per_second");
        }
        let limits = Limits {
            per_second: rate.map(|r| (r, burst.unwrap_or(r))),
            per_minute: limit(
                t.requests_per_minute,
                format!("{at}.requests_per_minute"),
                problems,
            ),
            tokens_per_minute: limit(
                t.tokens_per_minute,
                format!("{at}.tokens_per_minute"),
                problems,
            )
            .map(u64::from),
            max_concurrent: limit(t.max_concurrent, format!("{at}.max_concurrent"), problems),
        };
        out.tenants.push(Tenant {
            name: t.name.clone(),
            limits,
        });
    }
    for (i, j) in auth.jwt.iter().enumerate() {
        let at = if j.name.is_empty() {
            format!("auth.jwt[{i}]")
        } else {
            format!("auth.jwt[{}]", j.name)
        };
        if let Some(issuer) = check_jwt(j, &at, problems) {
            out.jwt.push(issuer);
        }
    }
    out
}

fn read_file(path: &str, at: String, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(at, format!("cannot read {path}: {e}"));
            None
        }
    }
}

fn check_jwt(j: &JwtConfig, at: &str, problems: &mut Problems) -> Option<JwtIssuer> {
    check_name(&j.name, &format!("{at}.name"), problems);
    let algorithm = match j.algorithm.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => {
            problems.push(
                format!("{at}.algorithm"),
                format!("{other:?} must be \"HS256\", \"RS256\" or \"ES256\""),
            );
            return None;
        }
    };
    if !(0..=3600).contains(&j.leeway_seconds) {
        problems.push(
            format!("{at}.leeway_seconds"),
            format!("{} must be between 0 and 3600", j.leeway_seconds),
        );
    }
    if j.tenant_claim.is_empty() {
        problems.push(format!("{at}.tenant_claim"), "must not be empty");
    }
    let given = [
        ("secret_file", j.secret_file.as_ref()),
        ("public_key_file", j.public_key_file.as_ref()),
        ("jwks_file", j.jwks_file.as_ref()),
    ];
    let named: Vec<&str> = given
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
    let wanted = if algorithm == Algorithm::HS256 {
        "secret_file"
    } else {
        "public_key_file or jwks_file"
    };
    let keys = match (algorithm, &j.secret_file, &j.public_key_file, &j.jwks_file) {
        _ if named.len() != 1 => {
            problems.push(
                at.to_owned(),
                format!("needs exactly one of {wanted} for {}", j.algorithm),
            );
            return None;
        }
        (Algorithm::HS256, Some(f), _, _) => {
            let mut secret = read_file(f, format!("{at}.secret_file"), problems)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                problems.push(
                    format!("{at}.secret_file"),
                    "an HS256 secret needs at least 32 bytes",
                );
                return None;
            }
            JwtKeys::Secret(secret)
        }
        (Algorithm::RS256 | Algorithm::ES256, _, Some(f), _) => {
            let pem = read_file(f, format!("{at}.public_key_file"), problems)?;
            let parsed = if algorithm == Algorithm::RS256 {
                DecodingKey::from_rsa_pem(&pem)
            } else {
                DecodingKey::from_ec_pem(&pem)
            };
            if let Err(e) = parsed {
                problems.push(
                    format!("{at}.public_key_file"),
                    format!("not a {} public key in PEM: {e}", j.algorithm),
                );
                return None;
            }
            JwtKeys::Pem(pem)
        }
        (Algorithm::RS256 | Algorithm::ES256, _, _, Some(f)) => {
            let raw = read_file(f, format!("{at}.jwks_file"), problems)?;
            let text = String::from_utf8(raw).unwrap_or_default();
            match serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text) {
                Ok(set) if !set.keys.is_empty() => {
                    for (k, jwk) in set.keys.iter().enumerate() {
                        if let Err(e) = DecodingKey::from_jwk(jwk) {
                            problems.push(
                                format!("{at}.jwks_file"),
                                format!("key {k} is unusable: {e}"),
                            );
                        }
                    }
                    JwtKeys::Jwks(text)
                }
                Ok(_) => {
                    problems.push(format!("{at}.jwks_file"), "holds no keys");
                    return None;
                }
                Err(e) => {
                    problems.push(
                        format!("{at}.jwks_file"),
                        format!("not a JWKS document: {e}"),
                    );
                    return None;
                }
            }
        }
        _ => {
            problems.push(
                at.to_owned(),
                format!("{} takes {wanted}, not {}", j.algorithm, named.join(", ")),
            );
            return None;
        }
    };
    Some(JwtIssuer {
        name: j.name.clone(),
        algorithm,
        keys,
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        tenant_claim: j.tenant_claim.clone(),
        leeway: Duration::from_secs(j.leeway_seconds.clamp(0, 3600).unsigned_abs()),
    })
}

/// Checks a route's `auth` and `tenants` against the tenants.
pub fn check_route_access(
    mode: AuthMode,
    allowed: &[String],
    at: &str,
    access: &Access,
    problems: &mut Problems,
) -> Vec<usize> {
    if !allowed.is_empty() && mode == AuthMode::None {
        problems.push(
            format!("{at}.tenants"),
            "an allow-list needs auth = \"required\"",
        );
    }
    let mut out = Vec::with_capacity(allowed.len());
    for (i, name) in allowed.iter().enumerate() {
        match access.tenant_index(name) {
            Some(t) => out.push(t),
            None => problems.push(
                format!("{at}.tenants[{i}]"),
                format!("no tenant named {name:?}"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tenant(name: &str, key: &str) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            api_keys: vec![key.into()],
            requests_per_second: None,
            burst: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
        }
    }

    const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn keys_are_digests_and_limits_are_checked() {
        let mut a = tenant("a", DIGEST);
        a.requests_per_second = Some(10);
        a.tokens_per_minute = Some(1000);
        let mut p = Problems::default();
        let access = check_access(&[a], &AuthConfig::default(), &mut p);
        assert!(p.is_empty(), "{p}");
        let d = parse_digest(DIGEST).unwrap();
        assert_eq!(access.api_keys[&d], 0);
        assert_eq!(access.tenants[0].limits.per_second, Some((10, 10)));

        let mut b = tenant("b", "test");
        b.burst = Some(5);
        b.max_concurrent = Some(0);
        let c = tenant("c", DIGEST);
        let mut p = Problems::default();
        check_access(&[tenant("a", DIGEST), b, c], &AuthConfig::default(), &mut p);
        let text = p.to_string();
        for want in [
            "tenants[b].api_keys[0]: must be the key's SHA-256",
            "tenants[b].burst: needs requests_per_second",
            "tenants[b].max_concurrent: 0 must be between 1",
            "tenants[c].api_keys[0]: this key is listed twice",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn jwt_issuers_need_the_key_of_their_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let jwt = |name: &str,
                   alg: &str,
                   secret: Option<&std::path::Path>,
                   pem: Option<&std::path::Path>| JwtConfig {
            name: name.into(),
            algorithm: alg.into(),
            secret_file: secret.map(|p| p.display().to_string()),
            public_key_file: pem.map(|p| p.display().to_string()),
            jwks_file: None,
            issuer: None,
            audience: vec![],
            tenant_claim: "tenant".into(),
            leeway_seconds: 30,
        };
        let auth = AuthConfig {
            jwt: vec![
                jwt("none", "none", None, None),
                jwt("short", "HS256", Some(&short), None),
                jwt("garbage", "RS256", None, Some(&garbage)),
                jwt("mixed", "HS256", None, Some(&garbage)),
                jwt("both", "RS256", Some(&short), Some(&garbage)),
                jwt("missing", "ES256", None, Some(&dir.path().join("nope.pem"))),
            ],
        };
        let mut p = Problems::default();
        let access = check_access(&[], &auth, &mut p);
        assert!(access.jwt.is_empty());
        let text = p.to_string();
        for want in [
            "auth.jwt[none].algorithm: \"none\" must be",
            "auth.jwt[short].secret_file: an HS256 secret needs at least 32 bytes",
            "auth.jwt[garbage].public_key_file: not a RS256 public key in PEM",
            "auth.jwt[mixed]: HS256 takes secret_file, not public_key_file",
            "auth.jwt[both]: needs exactly one of public_key_file or jwks_file",
            "auth.jwt[missing].public_key_file: cannot read",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
