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

mod jwt;
mod tenant;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use weir_conf::access::Access;

pub use tenant::{Admission, Permit, TenantRt};

use crate::errors::{GatewayError, RateHeaders};
use crate::redis_limits::RedisLimits;
use crate::request_head::RequestHead;
use jwt::Verifier;

/// An authenticated, admitted request.
pub struct Authorized {
    /// Who is calling.
    pub tenant: Arc<TenantRt>,
    /// The tenant's concurrency slot, held to the end of the request.
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
        req: &dyn RequestHead,
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
    pub fn authenticate(&self, req: &dyn RequestHead) -> Result<usize, GatewayError> {
        let api_key = req.field(crate::headers::X_API_KEY.name());
        let bearer = req
            .field(&http::header::AUTHORIZATION)
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
        let name = jwt::verify(&self.verifiers, token)?;
        self.by_name
            .get(&name)
            .copied()
            .ok_or(GatewayError::UnknownTenant(name))
    }
}
