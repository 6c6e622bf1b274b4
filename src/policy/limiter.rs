//! Rate limits with GCRA (the generic cell rate algorithm): one timestamp per bucket, the
//! "theoretical arrival time". In Redis the check-and-update is one Lua script, so every
//! replica shares the buckets atomically; when Redis cannot answer within a few
//! milliseconds the same algorithm runs in-process (per replica, so looser), the switch
//! is logged and counted, and Redis is tried again a second later.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::redis_fallback::{REDIS_TIMEOUT, RedisFallback};

/// Returns `{allowed, retry_after_ms}`. Redis's own clock is used so replicas agree.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - tolerance > now then
  return {0, new_tat - tolerance - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return {1, 0}
"#;

/// A limit: `per_minute` requests on average, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// Bursts of a tenth of the minute's allowance (at least one request).
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            per_minute,
            burst: (per_minute / 10).max(1),
        }
    }

    fn interval_ms(self) -> i64 {
        (60_000 / i64::from(self.per_minute.max(1))).max(1)
    }

    fn tolerance_ms(self) -> i64 {
        self.interval_ms() * i64::from(self.burst)
    }
}

pub struct RateLimiter {
    redis: Option<ConnectionManager>,
    script: redis::Script,
    prefix: String,
    local: Mutex<HashMap<String, i64>>,
    fallback: RedisFallback,
}

impl RateLimiter {
    pub fn new(redis: Option<ConnectionManager>, prefix: &str) -> Self {
        Self {
            redis,
            script: redis::Script::new(GCRA),
            prefix: prefix.to_string(),
            local: Mutex::new(HashMap::new()),
            fallback: RedisFallback::new("rate"),
        }
    }

    pub fn backend(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// `Err(wait)` when `bucket` is over `rate`.
    pub async fn check(&self, bucket: &str, rate: Rate) -> Result<(), Duration> {
        let now = crate::store::now_ms();
        if let Some(redis) = &self.redis
            && self.fallback.ask_redis(now)
        {
            let mut conn = redis.clone();
            let mut invocation = self.script.key(format!("{}rl:{bucket}", self.prefix));
            invocation.arg(rate.interval_ms()).arg(rate.tolerance_ms());
            // Boxed: the Redis exchange is a large future, and every request's future
            // would otherwise carry its space (copied, and allocated, per request) even
            // where no rate limit applies.
            let call = Box::pin(async move {
                tokio::time::timeout(
                    REDIS_TIMEOUT,
                    invocation.invoke_async::<(i64, i64)>(&mut conn),
                )
                .await
            });
            match call.await {
                Ok(Ok((1, _))) => return Ok(()),
                Ok(Ok((_, wait))) => return Err(Duration::from_millis(wait.max(1) as u64)),
                Ok(Err(e)) => self.fallback.failed(&format!("{:?}", e.kind()), now),
                Err(_) => self.fallback.failed("no answer within 50 ms", now),
            }
        }
        self.check_local(bucket, rate, now)
    }

    fn check_local(&self, bucket: &str, rate: Rate, now: i64) -> Result<(), Duration> {
        let mut buckets = self.local.lock().expect("limiter lock");
        if buckets.len() > 100_000 {
            buckets.retain(|_, tat| *tat > now);
        }
        let tat = buckets.get(bucket).copied().unwrap_or(now).max(now);
        let new_tat = tat + rate.interval_ms();
        let allow_at = new_tat - rate.tolerance_ms();
        if allow_at > now {
            return Err(Duration::from_millis((allow_at - now) as u64));
        }
        buckets.insert(bucket.to_string(), new_tat);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_gcra_allows_the_burst_then_paces() {
        let limiter = RateLimiter::new(None, "t:");
        let rate = Rate {
            per_minute: 60,
            burst: 3,
        };
        for _ in 0..3 {
            assert!(limiter.check("k", rate).await.is_ok());
        }
        let wait = limiter.check("k", rate).await.unwrap_err();
        assert!(
            wait <= Duration::from_millis(1000) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(
            limiter.check("other", rate).await.is_ok(),
            "buckets are independent"
        );
    }
}
