//! What a limit kept in Redis does while Redis does not answer: it is enforced in-process
//! on each replica (looser, but enforced), Redis is not asked again for a second, so every
//! request does not wait out the timeout, and the switch is logged once and counted.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::telemetry::metrics as m;

/// How long a limit waits for Redis before deciding in-process.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(50);
const RETRY_REDIS_AFTER_MS: i64 = 1_000;

pub struct RedisFallback {
    /// `rate` or `concurrency`: the `kind` of `rate_limit_fallback_total`.
    kind: &'static str,
    /// While Redis is failing: the time (ms) before which it is not asked.
    down_until: AtomicI64,
}

impl RedisFallback {
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            down_until: AtomicI64::new(0),
        }
    }

    /// Whether Redis is worth asking at `now` (ms).
    pub fn ask_redis(&self, now: i64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now
    }

    /// Redis failed at `now`: decide in-process for a while.
    pub fn failed(&self, reason: &str, now: i64) {
        let previous = self
            .down_until
            .swap(now + RETRY_REDIS_AFTER_MS, Ordering::Relaxed);
        metrics::counter!(m::RATE_LIMIT_FALLBACK, "kind" => self.kind).increment(1);
        if previous == 0 || previous + 5 * RETRY_REDIS_AFTER_MS < now {
            let limits = if self.kind == "rate" {
                "rate limits"
            } else {
                "concurrency caps"
            };
            tracing::warn!(%reason, "Redis unavailable for {limits}: enforcing them in-process on this replica");
        }
    }
}
