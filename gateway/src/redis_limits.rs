//! Cluster-wide tenant limits in Redis (`[limits] redis = "redis://…"`): the
//! request rates run GCRA in a Lua script on Redis's own clock, and the
//! tokens per minute are six 10-second counters, so every replica draws on
//! the same allowance.
//!
//! Redis is never in the way of a request for long: each decision waits at
//! most `redis_timeout_ms`; a failure or timeout marks Redis down for a
//! second, during which (and for that decision) the replica's local limits
//! decide instead. `weir_ratelimit_redis_up` shows which is in force and
//! `weir_ratelimit_local_fallbacks_total` counts the decisions made locally.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use weir_conf::access::RedisLimits as Settings;

use crate::metrics::Metrics;
use crate::window::now_ms;

/// How long Redis is left alone after a failure.
const DOWN_FOR_MS: u64 = 1_000;

/// GCRA on Redis time (µs). KEYS[1] = the tenant's limiter; ARGV = emission
/// interval (µs), burst. Returns {1, remaining} or {0, retry after µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local cap = interval * burst
if tat + interval - now > cap then
  return {0, tat + interval - now - cap}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((cap - (new_tat - now)) / interval)}
";

/// Tokens over the last minute: KEYS[1] = the tenant's counter prefix;
/// ARGV[1] = tokens to add (0 = only read). Returns the sum of the current
/// 10-second bucket and the five before it.
const TOKENS: &str = r"
local t = redis.call('TIME')
local bucket = math.floor(tonumber(t[1]) / 10)
local add = tonumber(ARGV[1])
if add > 0 then
  local k = KEYS[1] .. ':' .. bucket
  redis.call('INCRBY', k, add)
  redis.call('EXPIRE', k, 70)
end
local sum = 0
for i = 0, 5 do
  sum = sum + tonumber(redis.call('GET', KEYS[1] .. ':' .. (bucket - i)) or '0')
end
return sum
";

/// A request-rate decision.
pub enum Decision {
    /// Admitted; this many more may go at once.
    Admit(u32),
    /// Refused; retry after this long.
    Refuse(Duration),
}

/// The Redis side of the limits.
pub struct RedisLimits {
    settings: Settings,
    conn: ConnectionManager,
    gcra: redis::Script,
    tokens: redis::Script,
    down_until: AtomicU64,
    metrics: Metrics,
}

impl RedisLimits {
    /// A client for `settings` (connected lazily, on the first decision).
    pub fn new(settings: &Settings, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| format!("limits.redis: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("limits.redis: {e}"))?;
        metrics.redis_up.set(0);
        Ok(Arc::new(Self {
            settings: settings.clone(),
            conn,
            gcra: redis::Script::new(GCRA),
            tokens: redis::Script::new(TOKENS),
            down_until: AtomicU64::new(0),
            metrics: metrics.clone(),
        }))
    }

    /// The settings it was made for.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs `f` against Redis unless Redis is marked down; `None` (and a
    /// local fallback counted) when it is down, fails or is too slow.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = now_ms();
        if now < self.down_until.load(Ordering::Acquire) {
            self.metrics.redis_fallbacks.inc();
            return None;
        }
        match tokio::time::timeout(self.settings.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => {
                self.metrics.redis_up.set(1);
                Some(v)
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.settings.timeout),
                };
                if self.down_until.swap(now + DOWN_FOR_MS, Ordering::AcqRel) <= now {
                    tracing::warn!(error = %why, "Redis limits unavailable: limiting locally");
                }
                self.metrics.redis_up.set(0);
                self.metrics.redis_fallbacks.inc();
                None
            }
        }
    }

    /// One request against `tenant`'s `which` limit (`rps`, `rpm`) of one
    /// request per `interval` with `burst`.
    pub async fn request(
        &self,
        tenant: &str,
        which: &str,
        interval: Duration,
        burst: u32,
    ) -> Option<Decision> {
        let key = format!("{}:rl:{tenant}:{which}", self.settings.prefix);
        let interval_us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let (ok, n): (i64, i64) = self
            .call(|mut c| async move {
                self.gcra
                    .key(key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let n = n.max(0).unsigned_abs();
        Some(if ok == 1 {
            Decision::Admit(u32::try_from(n).unwrap_or(u32::MAX))
        } else {
            Decision::Refuse(Duration::from_micros(n))
        })
    }

    /// Adds `n` tokens of `tenant` (0 = only read) and returns its last minute.
    pub async fn tokens(&self, tenant: &str, n: u64) -> Option<u64> {
        let key = format!("{}:tok:{tenant}", self.settings.prefix);
        let used: i64 = self
            .call(|mut c| async move { self.tokens.key(key).arg(n).invoke_async(&mut c).await })
            .await?;
        Some(used.max(0).unsigned_abs())
    }
}
