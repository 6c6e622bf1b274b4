//! Concurrency caps: how many of a bucket's requests (a tenant's, a key's) are handled at
//! once. With Redis the count is every replica's together, as a tenant's policy means it:
//! each request holds a lease, a member of the bucket's sorted set scored by when it
//! expires, taken by one Lua script (on Redis's clock) only while fewer than the cap are
//! live. A process renews the leases it holds every few seconds, so those of a replica
//! that died lapse within `LEASE_TTL_MS` instead of holding the tenant's slots for ever.
//! When Redis does not answer the cap is held in-process, per replica, as rate limits are.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::redis_fallback::{REDIS_TIMEOUT, RedisFallback};

/// A lease not renewed lapses after this long.
const LEASE_TTL_MS: i64 = 15_000;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// `KEYS[1]` the bucket, `ARGV` the cap, the lease's lifetime (ms) and its id; 1 when taken.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// `KEYS[1]` the bucket, `ARGV` the lifetime (ms) then the ids to renew. `XX`: a lease
/// given back (or lapsed) meanwhile is not brought back.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
"#;

pub struct ConcurrencyCaps {
    leases: Option<Arc<Leases>>,
    /// In-process caps (no Redis, or Redis not answering), with the size each was made
    /// for: a changed policy gets a new semaphore.
    local: Mutex<HashMap<String, (u32, Arc<Semaphore>)>>,
    fallback: RedisFallback,
}

/// A slot of a cap, held while the request is handled.
pub enum Slot {
    /// Held, never read: dropping it gives the slot back.
    Local(OwnedSemaphorePermit),
    Leased(Lease),
}

impl Slot {
    /// Gives the slot back now. A lease is removed from Redis before this returns: the
    /// caller's next request, which may follow the answer at once and reach another
    /// replica, must find the slot free.
    pub async fn release(self) {
        if let Slot::Leased(lease) = self {
            // Boxed: the request's future would otherwise carry the Redis exchange's space.
            Box::pin(lease.give_back()).await;
        }
    }
}

impl ConcurrencyCaps {
    /// Shared through `redis` when there is one (then call from within the runtime: the
    /// renewing task is spawned here).
    pub fn new(redis: Option<ConnectionManager>, prefix: &str) -> Self {
        let leases = redis.map(|conn| {
            let leases = Arc::new(Leases {
                conn,
                acquire: redis::Script::new(ACQUIRE),
                renew: redis::Script::new(RENEW),
                prefix: format!("{prefix}cc:"),
                held: Mutex::new(HashMap::new()),
            });
            tokio::spawn(renew_while_alive(Arc::downgrade(&leases), RENEW_EVERY));
            leases
        });
        Self {
            leases,
            local: Mutex::new(HashMap::new()),
            fallback: RedisFallback::new("concurrency"),
        }
    }

    /// A slot of `bucket`'s cap of `max`, or `None` when all are taken.
    pub async fn acquire(&self, bucket: &str, max: u32) -> Option<Slot> {
        let now = crate::store::now_ms();
        if let Some(leases) = &self.leases
            && self.fallback.ask_redis(now)
        {
            // Boxed: the Redis exchange is a large future, which every request's future
            // would otherwise carry.
            match Box::pin(Arc::clone(leases).take(bucket, max)).await {
                Ok(lease) => return lease.map(Slot::Leased),
                Err(reason) => self.fallback.failed(&reason, now),
            }
        }
        self.semaphore(bucket, max)
            .try_acquire_owned()
            .ok()
            .map(Slot::Local)
    }

    fn semaphore(&self, bucket: &str, size: u32) -> Arc<Semaphore> {
        let mut slots = self.local.lock().expect("caps lock");
        match slots.get(bucket) {
            Some((n, s)) if *n == size => Arc::clone(s),
            _ => {
                let s = Arc::new(Semaphore::new(size as usize));
                slots.insert(bucket.to_string(), (size, Arc::clone(&s)));
                s
            }
        }
    }
}

struct Leases {
    conn: ConnectionManager,
    acquire: redis::Script,
    renew: redis::Script,
    prefix: String,
    /// The leases this process holds, by bucket key: what the renewing task renews.
    held: Mutex<HashMap<String, HashSet<String>>>,
}

impl Leases {
    async fn take(self: Arc<Self>, bucket: &str, max: u32) -> Result<Option<Lease>, String> {
        let key = format!("{}{bucket}", self.prefix);
        let id = format!("{:032x}", rand::random::<u128>());
        let mut invocation = self.acquire.key(&key);
        invocation.arg(max).arg(LEASE_TTL_MS).arg(&id);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(1)) => {
                self.held
                    .lock()
                    .expect("leases lock")
                    .entry(key.clone())
                    .or_default()
                    .insert(id.clone());
                Ok(Some(Lease {
                    leases: self,
                    key,
                    id,
                    given_back: false,
                }))
            }
            Ok(Ok(_)) => Ok(None),
            Ok(Err(e)) => Err(format!("{:?}", e.kind())),
            Err(_) => {
                // The script may have run after all: take back a lease nobody will hold.
                tokio::spawn(remove(self.conn.clone(), key, id));
                Err(format!("no answer within {} ms", REDIS_TIMEOUT.as_millis()))
            }
        }
    }

    fn forget(&self, key: &str, id: &str) {
        let mut held = self.held.lock().expect("leases lock");
        if let Some(ids) = held.get_mut(key) {
            ids.remove(id);
            if ids.is_empty() {
                held.remove(key);
            }
        }
    }

    async fn renew_all(&self) {
        let held: Vec<(String, Vec<String>)> = self
            .held
            .lock()
            .expect("leases lock")
            .iter()
            .map(|(key, ids)| (key.clone(), ids.iter().cloned().collect()))
            .collect();
        for (key, ids) in held {
            let mut invocation = self.renew.key(&key);
            invocation.arg(LEASE_TTL_MS).arg(&ids);
            let mut conn = self.conn.clone();
            let renewed =
                tokio::time::timeout(RENEW_EVERY, invocation.invoke_async::<i64>(&mut conn)).await;
            if !matches!(renewed, Ok(Ok(_))) {
                tracing::debug!(%key, "concurrency leases not renewed: Redis did not answer");
            }
        }
    }
}

async fn renew_while_alive(leases: Weak<Leases>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        leases.renew_all().await;
    }
}

async fn remove(mut conn: ConnectionManager, key: String, id: String) {
    let command = redis::cmd("ZREM").arg(&key).arg(&id).to_owned();
    let _ = tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<i64>(&mut conn)).await;
}

/// A slot held in Redis. Dropped without `give_back` (the request was cancelled), it is
/// given back in the background.
pub struct Lease {
    leases: Arc<Leases>,
    key: String,
    id: String,
    given_back: bool,
}

impl Lease {
    async fn give_back(mut self) {
        self.detach().await;
    }

    /// Stops renewing the lease; what removes it from Redis. Should Redis not take that,
    /// the lease lapses.
    fn detach(&mut self) -> impl Future<Output = ()> + use<> {
        self.given_back = true;
        self.leases.forget(&self.key, &self.id);
        remove(
            self.leases.conn.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.id),
        )
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.given_back {
            return;
        }
        let removal = self.detach();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(removal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_process_cap_admits_up_to_its_size_and_frees_on_release() {
        let caps = ConcurrencyCaps::new(None, "t:");
        let first = caps.acquire("k", 2).await.expect("first slot");
        let second = caps.acquire("k", 2).await.expect("second slot");
        assert!(caps.acquire("k", 2).await.is_none(), "the cap is full");
        assert!(
            caps.acquire("other", 2).await.is_some(),
            "buckets are independent"
        );
        first.release().await;
        assert!(
            caps.acquire("k", 2).await.is_some(),
            "a released slot is free"
        );
        drop(second);
        // A changed policy takes effect at once: a cap of 3 is a new one.
        assert!(caps.acquire("k", 3).await.is_some());
    }
}
