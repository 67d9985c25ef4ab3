//! A tenant at run time: its request-rate (GCRA, `governor`), concurrency
//! and tokens-per-minute limits, decided here or cluster-wide in Redis
//! ([`crate::redis_limits`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::HeaderValue;
use weir_conf::access::Limits;

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
    pub(super) limits: Limits,
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
    pub(super) fn new(t: &weir_conf::access::Tenant) -> Self {
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

/// An admitted request: its concurrency slot and the limit headers to send.
pub struct Admission {
    /// Released at the end of the request.
    pub permit: Permit,
    /// `x-ratelimit-*` values.
    pub headers: RateHeaders,
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
