//! Validation of tenants, limits and route access into the runtime
//! [`Access`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::jwt::{JwtIssuer, check_jwt};
use super::types::{AuthConfig, AuthMode, LimitsConfig, TenantConfig};
use crate::error::Problems;
use crate::names::{check_name, entry_path};

/// Largest request, token or concurrency limit.
const MAX_LIMIT: i64 = 1_000_000_000;

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
        let at = entry_path("tenants", i, &t.name);
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
        let at = entry_path("auth.jwt", i, &j.name);
        if let Some(issuer) = check_jwt(j, &at, problems) {
            out.jwt.push(issuer);
        }
    }
    out
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
    use crate::access::types::JwtConfig;

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
