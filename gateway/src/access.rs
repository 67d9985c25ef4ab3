//! Access control on the request path: who is calling (API key or JWT →
//! tenant) and whether the tenant may make this request now (request rate,
//! concurrency, tokens per minute).
//!
//! - API keys are looked up by their SHA-256 digest; the config holds only
//!   digests, never keys.
//! - JWTs are verified with `jsonwebtoken`: each issuer accepts exactly one
//!   algorithm (so `alg: none` and algorithm confusion, e.g. an HS256 token
//!   "signed" with an RS256 public key, are refused), with `exp`, `nbf`,
//!   `iss` and `aud` checked. The tenant comes from a configured claim and
//!   must be a configured tenant.
//! - Request rates use GCRA (`governor`); concurrency is an atomic count
//!   released when the request ends; tokens per minute is a sliding window of
//!   the `usage` the engine reported (see [`crate::usage`]).
//!
//! A tenant's limiter state lives in its [`TenantRt`], which a rebuilt
//! runtime takes over (by name, while its limits are unchanged), so a
//! reload never hands a tenant a fresh allowance.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use weir_conf::access::{Access, JwtIssuer, Limits};

use crate::errors::{GatewayError, LimitKind, RateHeaders};
use crate::redis_limits::{Decision, RedisLimits};
use crate::window::{Window, now_ms};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The window tokens per minute are counted over.
const TOKEN_WINDOW: Duration = Duration::from_secs(60);

/// One tenant at run time.
pub struct TenantRt {
    /// Its name.
    pub name: String,
    /// The name as a ready-made `x-weir-tenant` header value.
    pub header: HeaderValue,
    limits: Limits,
    per_second: Option<Limiter>,
    per_minute: Option<Limiter>,
    /// `a` = tokens used.
    tokens: Window,
    in_flight: AtomicU32,
}

fn limiter(quota: Option<Quota>) -> Option<Limiter> {
    quota.map(|q| RateLimiter::direct(q).with_middleware::<StateInformationMiddleware>())
}

impl TenantRt {
    fn new(t: &weir_conf::access::Tenant) -> Self {
        let nz = |n: u32| std::num::NonZeroU32::new(n.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let per_second = t
            .limits
            .per_second
            .map(|(rate, burst)| Quota::per_second(nz(rate)).allow_burst(nz(burst)));
        let per_minute = t.limits.per_minute.map(|n| Quota::per_minute(nz(n)));
        Self {
            name: t.name.clone(),
            header: HeaderValue::from_str(&t.name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            limits: t.limits,
            per_second: limiter(per_second),
            per_minute: limiter(per_minute),
            tokens: Window::new(TOKEN_WINDOW),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Whether token usage is limited (and so must be counted).
    pub fn counts_tokens(&self) -> bool {
        self.limits.tokens_per_minute.is_some()
    }

    /// Adds `n` tokens of usage (here, and in Redis when the limits are
    /// cluster-wide; that write happens in a task).
    pub fn record_tokens(&self, n: u64, redis: Option<&Arc<RedisLimits>>) {
        if !self.counts_tokens() || n == 0 {
            return;
        }
        self.tokens
            .add(now_ms(), u32::try_from(n).unwrap_or(u32::MAX), 0);
        if let Some(redis) = redis {
            let (redis, name) = (Arc::clone(redis), self.name.clone());
            tokio::spawn(async move {
                redis.tokens(&name, n).await;
            });
        }
    }

    fn tokens_used(&self) -> u64 {
        self.tokens.sum(now_ms(), 0).0
    }

    /// Admits one request of this tenant, or says which limit refused it.
    /// The permit holds a concurrency slot until it is dropped. With
    /// `redis`, request and token limits are decided there (cluster-wide),
    /// and here only while Redis cannot answer.
    pub async fn admit(
        self: &Arc<Self>,
        redis: Option<&RedisLimits>,
    ) -> Result<Admission, GatewayError> {
        let mut headers = RateHeaders::default();
        if let Some(max) = self.limits.max_concurrent {
            let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            if now > max {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Err(GatewayError::RateLimited {
                    limit: LimitKind::Concurrency,
                    retry_after: 1,
                    headers,
                });
            }
        }
        let permit = Permit {
            tenant: self.limits.max_concurrent.map(|_| Arc::clone(self)),
        };
        // The per-minute limit is the one reported when both are set.
        let per_second = self
            .limits
            .per_second
            .map(|(rate, burst)| (rate, burst, Duration::from_secs(1) / rate.max(1), "rps"));
        let per_minute = self
            .limits
            .per_minute
            .map(|n| (n, n, Duration::from_secs(60) / n.max(1), "rpm"));
        for (limiter, quota) in [
            (&self.per_second, per_second),
            (&self.per_minute, per_minute),
        ] {
            let (Some(limiter), Some((limit, burst, interval, which))) = (limiter, quota) else {
                continue;
            };
            let shared = match redis {
                Some(r) => r.request(&self.name, which, interval, burst).await,
                None => None,
            };
            let decision = shared.unwrap_or_else(|| match limiter.check() {
                Ok(state) => Decision::Admit(state.remaining_burst_capacity()),
                Err(not_until) => {
                    Decision::Refuse(not_until.wait_time_from(DefaultClock::default().now()))
                }
            });
            match decision {
                Decision::Admit(remaining) => headers.requests = Some((limit, remaining)),
                Decision::Refuse(wait) => {
                    headers.requests = Some((limit, 0));
                    return Err(GatewayError::RateLimited {
                        limit: LimitKind::Requests,
                        retry_after: wait.as_secs() + 1,
                        headers,
                    });
                }
            }
        }
        if let Some(limit) = self.limits.tokens_per_minute {
            let shared = match redis {
                Some(r) => r.tokens(&self.name, 0).await,
                None => None,
            };
            let used = shared.unwrap_or_else(|| self.tokens_used());
            headers.tokens = Some((limit, limit.saturating_sub(used)));
            if used >= limit {
                return Err(GatewayError::RateLimited {
                    limit: LimitKind::Tokens,
                    // The window slides by a tenth of a minute.
                    retry_after: TOKEN_WINDOW.as_secs() / 10,
                    headers,
                });
            }
        }
        Ok(Admission { permit, headers })
    }
}

/// A concurrency slot, given back when dropped (at the end of the request).
pub struct Permit {
    tenant: Option<Arc<TenantRt>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(t) = &self.tenant {
            t.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An authenticated, admitted request.
pub struct Authorized {
    /// Who is calling.
    pub tenant: Arc<TenantRt>,
    /// The tenant's concurrency slot, held to the end of the request.
    pub permit: Permit,
    /// `x-ratelimit-*` values.
    pub headers: RateHeaders,
}

/// An admitted request: its concurrency slot and the limit headers to send.
pub struct Admission {
    /// Released at the end of the request.
    pub permit: Permit,
    /// `x-ratelimit-*` values.
    pub headers: RateHeaders,
}

/// The credential of an `Authorization: Bearer <credential>` value (scheme
/// case-insensitive, surrounding spaces trimmed); `None` for another scheme.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => Some(value[7..].trim_ascii()),
        _ => None,
    }
}

/// One JWT issuer, ready to verify.
struct Verifier {
    issuer: JwtIssuer,
    /// `(kid, key)`; a PEM key has no kid.
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
}

impl Verifier {
    fn new(issuer: &JwtIssuer) -> Result<Self, String> {
        let keys = issuer
            .keys
            .decode(issuer.algorithm)
            .map_err(|e| format!("auth.jwt[{}]: {e}", issuer.name))?;
        let mut validation = Validation::new(issuer.algorithm);
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        if let Some(iss) = &issuer.issuer {
            validation.set_issuer(&[iss]);
        }
        if issuer.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&issuer.audience);
        }
        Ok(Self {
            issuer: issuer.clone(),
            keys,
            validation,
        })
    }
}

/// The access settings of one runtime.
pub struct AccessRt {
    /// Tenants, indexed like the snapshot's.
    pub tenants: Vec<Arc<TenantRt>>,
    by_name: HashMap<String, usize>,
    api_keys: HashMap<[u8; 32], usize>,
    verifiers: Vec<Verifier>,
    /// Cluster-wide limits, when `[limits] redis` is set.
    pub redis: Option<Arc<RedisLimits>>,
}

impl AccessRt {
    /// Builds the runtime form, taking over the limiter state of tenants of
    /// `previous` with the same name and limits.
    pub fn build(
        access: &Access,
        previous: Option<&AccessRt>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, String> {
        let tenants: Vec<Arc<TenantRt>> = access
            .tenants
            .iter()
            .map(|t| {
                previous
                    .and_then(|p| p.by_name.get(&t.name).map(|&i| &p.tenants[i]))
                    .filter(|old| old.limits == t.limits)
                    .map(Arc::clone)
                    .unwrap_or_else(|| Arc::new(TenantRt::new(t)))
            })
            .collect();
        let by_name = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let verifiers = access
            .jwt
            .iter()
            .map(Verifier::new)
            .collect::<Result<_, _>>()?;
        let redis = match &access.redis {
            None => None,
            Some(settings) => match previous.and_then(|p| p.redis.as_ref()) {
                Some(r) if r.settings() == settings => Some(Arc::clone(r)),
                _ => Some(RedisLimits::new(settings, metrics)?),
            },
        };
        Ok(Self {
            tenants,
            by_name,
            api_keys: access.api_keys.clone(),
            verifiers,
            redis,
        })
    }

    /// Authenticates the caller of a route with `auth = "required"`, checks
    /// the route's allow-list and admits the request under the tenant's
    /// limits. Failures are counted (`weir_auth_failures_total`,
    /// `weir_rate_limited_total`).
    pub async fn authorize(
        &self,
        req: &RequestHeader,
        route: &weir_conf::Route,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Authorized, GatewayError> {
        let counted = |e: GatewayError| {
            metrics
                .auth_failures
                .with_label_values(&[route.name.as_str(), e.code()])
                .inc();
            e
        };
        let idx = self.authenticate(req).map_err(counted)?;
        let tenant = &self.tenants[idx];
        if !route.tenants.is_empty() && !route.tenants.contains(&idx) {
            return Err(counted(GatewayError::TenantNotAllowed {
                tenant: tenant.name.clone(),
                route: route.name.clone(),
            }));
        }
        match tenant.admit(self.redis.as_deref()).await {
            Ok(admission) => Ok(Authorized {
                tenant: Arc::clone(tenant),
                permit: admission.permit,
                headers: admission.headers,
            }),
            Err(e) => {
                if let GatewayError::RateLimited { limit, .. } = &e {
                    metrics
                        .rate_limited
                        .with_label_values(&[tenant.name.as_str(), limit.as_str()])
                        .inc();
                }
                Err(e)
            }
        }
    }

    /// The tenant that `req` authenticates as.
    pub fn authenticate(&self, req: &RequestHeader) -> Result<usize, GatewayError> {
        let api_key = req.headers.get("x-api-key").map(|v| v.as_bytes());
        let bearer = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .map(|v| match bearer_token(v) {
                Some(token) => Ok(token),
                None => Err(GatewayError::InvalidCredentials(
                    "the Authorization header must be \"Bearer <key or token>\"".into(),
                )),
            })
            .transpose()?;
        let credential = match (api_key, bearer) {
            (Some(k), _) if !k.is_empty() => k,
            (_, Some(b)) if !b.is_empty() => b,
            _ => return Err(GatewayError::MissingCredentials),
        };
        let looks_like_jwt = credential.iter().filter(|&&b| b == b'.').count() == 2;
        if looks_like_jwt && !self.verifiers.is_empty() && api_key.is_none() {
            return self.verify_jwt(credential);
        }
        let digest: [u8; 32] = Sha256::digest(credential).into();
        self.api_keys
            .get(&digest)
            .copied()
            .ok_or_else(|| GatewayError::InvalidCredentials("unknown API key".into()))
    }

    fn verify_jwt(&self, token: &[u8]) -> Result<usize, GatewayError> {
        let invalid = |why: &str| GatewayError::InvalidCredentials(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("malformed, or an algorithm that is never accepted"))?;
        let mut last = invalid("its algorithm is not accepted");
        for v in self
            .verifiers
            .iter()
            .filter(|v| v.issuer.algorithm == header.alg)
        {
            let keys = v.keys.iter().filter(|(kid, _)| match (&header.kid, kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            });
            for (_, key) in keys {
                match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    token,
                    key,
                    &v.validation,
                ) {
                    Ok(data) => {
                        let Some(name) = data
                            .claims
                            .get(&v.issuer.tenant_claim)
                            .and_then(|c| c.as_str())
                        else {
                            return Err(invalid(&format!(
                                "no string claim {:?} naming the tenant",
                                v.issuer.tenant_claim
                            )));
                        };
                        return self
                            .by_name
                            .get(name)
                            .copied()
                            .ok_or_else(|| GatewayError::UnknownTenant(name.to_owned()));
                    }
                    Err(e) => {
                        last = invalid(match e.kind() {
                            ErrorKind::ExpiredSignature => "expired",
                            ErrorKind::ImmatureSignature => "not valid yet",
                            ErrorKind::InvalidAudience => "wrong audience",
                            ErrorKind::InvalidIssuer => "wrong issuer",
                            ErrorKind::InvalidSignature => "bad signature",
                            ErrorKind::InvalidAlgorithm => "its algorithm is not accepted",
                            ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                            _ => "malformed",
                        })
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use weir_conf::access::{AuthConfig, TenantConfig, check_access};

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn tenant(rps: Option<i64>, concurrent: Option<i64>, tokens: Option<i64>) -> Arc<TenantRt> {
        let mut p = weir_conf::Problems::default();
        let access = check_access(
            &[TenantConfig {
                name: "t".into(),
                api_keys: vec![],
                requests_per_second: rps,
                burst: None,
                requests_per_minute: None,
                tokens_per_minute: tokens,
                max_concurrent: concurrent,
            }],
            &AuthConfig::default(),
            &mut p,
        );
        assert!(p.is_empty(), "{p}");
        Arc::new(TenantRt::new(&access.tenants[0]))
    }

    #[test]
    fn concurrency_slots_come_back_when_permits_drop() {
        let t = tenant(None, Some(2), None);
        let a = block(t.admit(None)).unwrap();
        let _b = block(t.admit(None)).unwrap();
        assert!(matches!(
            block(t.admit(None)),
            Err(GatewayError::RateLimited {
                limit: LimitKind::Concurrency,
                ..
            })
        ));
        drop(a);
        assert!(block(t.admit(None)).is_ok());
    }

    #[test]
    fn request_rate_refuses_beyond_the_burst_and_reports_remaining() {
        let t = tenant(Some(5), None, None);
        for left in (0..5).rev() {
            let adm = block(t.admit(None)).unwrap();
            assert_eq!(adm.headers.requests, Some((5, left)));
        }
        match block(t.admit(None)) {
            Err(GatewayError::RateLimited {
                limit: LimitKind::Requests,
                retry_after,
                headers,
            }) => {
                assert_eq!(retry_after, 1);
                assert_eq!(headers.requests, Some((5, 0)));
            }
            other => assert!(other.is_err(), "admitted beyond the burst"),
        }
    }

    #[test]
    fn token_budget_stops_a_tenant_once_spent() {
        let t = tenant(None, None, Some(100));
        assert_eq!(
            block(t.admit(None)).unwrap().headers.tokens,
            Some((100, 100))
        );
        t.record_tokens(60, None);
        assert_eq!(
            block(t.admit(None)).unwrap().headers.tokens,
            Some((100, 40))
        );
        t.record_tokens(45, None);
        assert!(matches!(
            block(t.admit(None)),
            Err(GatewayError::RateLimited {
                limit: LimitKind::Tokens,
                ..
            })
        ));
    }
}
