//! Rate limits and concurrency caps of `/mcp`, per tenant and per key, from the caller's
//! policy. Refusals are HTTP 429 with `Retry-After` and a JSON-RPC error body, so both
//! HTTP-aware and JSON-RPC-only clients understand them.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::auth::Principal;
use super::jsonrpc;
use crate::policy::concurrency::{ConcurrencyCaps, Slot};
use crate::policy::limiter::{Rate, RateLimiter};
use crate::telemetry::metrics as m;

pub struct Limits {
    pub limiter: RateLimiter,
    caps: ConcurrencyCaps,
}

/// The caller's slots of its concurrency caps, held while its request is handled.
#[must_use = "dropped, the slots are given back at once"]
pub struct Slots(Vec<Slot>);

impl Slots {
    /// Holds the slots while `handling` runs, and gives them back before its answer goes
    /// out: the caller may send its next request as soon as it has the answer. (Dropped
    /// instead, the request cancelled, they are given back in the background.)
    pub async fn held_while<T>(self, handling: impl Future<Output = T>) -> T {
        let answer = handling.await;
        self.release().await;
        answer
    }

    /// Gives the slots back (see `held_while`).
    pub async fn release(self) {
        for slot in self.0 {
            slot.release().await;
        }
    }
}

pub struct Refusal {
    pub retry_after: Duration,
    scope: &'static str,
    kind: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let secs = self.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let what = if self.kind == "rate" {
            "rate limit"
        } else {
            "concurrency limit"
        };
        let body = jsonrpc::error_response(
            &Value::Null,
            jsonrpc::RATE_LIMITED,
            &format!(
                "Too many requests: the {} {what} is reached; retry in {secs} s",
                self.scope
            ),
            Some(
                json!({ "retryAfterMs": self.retry_after.as_millis() as u64, "scope": self.scope }),
            ),
        );
        let mut response = super::http::json_response(StatusCode::TOO_MANY_REQUESTS, &body);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        response
    }
}

impl Limits {
    /// Limits shared by every replica through `redis` when there is one, else per process.
    pub fn new(redis: Option<redis::aio::ConnectionManager>, prefix: &str) -> Self {
        Self {
            limiter: RateLimiter::new(redis.clone(), prefix),
            caps: ConcurrencyCaps::new(redis, prefix),
        }
    }

    /// Checks the caller's rate limits and takes its concurrency slots. Callers without a
    /// policy (configuration keys) pass.
    pub async fn admit(&self, principal: &Principal) -> Result<Slots, Refusal> {
        let Some(access) = &principal.access else {
            return Ok(Slots(Vec::new()));
        };
        let buckets = [
            (
                "tenant",
                format!("tenant:{}", access.tenant_id),
                &access.tenant,
            ),
            ("key", format!("key:{}", access.key_id), &access.key),
        ];
        for (scope, bucket, policy) in &buckets {
            if let Some(per_minute) = policy.rate_limit_per_minute {
                if let Err(wait) = self
                    .limiter
                    .check(bucket, Rate::per_minute(per_minute))
                    .await
                {
                    metrics::counter!(m::RATE_LIMITED, "scope" => *scope, "kind" => "rate")
                        .increment(1);
                    return Err(Refusal {
                        retry_after: wait,
                        scope,
                        kind: "rate",
                    });
                }
            }
        }
        let mut slots = Slots(Vec::new());
        for (scope, bucket, policy) in &buckets {
            if let Some(max) = policy.max_concurrency {
                match self.caps.acquire(bucket, max).await {
                    Some(slot) => slots.0.push(slot),
                    None => {
                        slots.release().await;
                        metrics::counter!(m::RATE_LIMITED, "scope" => *scope, "kind" => "concurrency").increment(1);
                        return Err(Refusal {
                            retry_after: Duration::from_secs(1),
                            scope,
                            kind: "concurrency",
                        });
                    }
                }
            }
        }
        Ok(slots)
    }

    /// The server's own limit (`rate_limit_per_minute` of its settings), all callers together.
    pub async fn admit_server(&self, upstream: &crate::upstream::Upstream) -> Result<(), Refusal> {
        let Some(per_minute) = upstream.config.rate_limit_per_minute else {
            return Ok(());
        };
        let bucket = match &upstream.tenant {
            Some(tenant) => format!("server:{tenant}/{}", upstream.name),
            None => format!("server:{}", upstream.name),
        };
        self.limiter
            .check(&bucket, Rate::per_minute(per_minute))
            .await
            .map_err(|wait| {
                metrics::counter!(m::RATE_LIMITED, "scope" => "server", "kind" => "rate")
                    .increment(1);
                Refusal {
                    retry_after: wait,
                    scope: "server",
                    kind: "rate",
                }
            })
    }
}
