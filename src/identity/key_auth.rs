//! API-key authentication for `/mcp`: configuration keys first (embedded mode), then
//! keys issued by the control plane, looked up by SHA-256 in the database.
//!
//! Verified answers — positive and negative — are kept for `auth.api_key_cache_secs`,
//! so a busy client costs one database query per key per period rather than one per
//! call; a revoked key therefore stops working within that period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::gateway::auth::{AuthError, Authenticator, ConfigKeys, Principal, bearer, sha256};
use crate::store::Store;

const MAX_CACHED: usize = 10_000;
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// A verified answer for one key digest, and when it was verified.
type Verdict = (Result<Principal, AuthError>, Instant);

pub struct KeyAuthenticator {
    config_keys: ConfigKeys,
    store: Option<Store>,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Verdict>>,
    /// When each key's last use was last written.
    touched: Mutex<HashMap<String, Instant>>,
}

impl KeyAuthenticator {
    pub fn new(config_keys: ConfigKeys, store: Option<Store>, ttl: Duration) -> Self {
        Self {
            config_keys,
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashMap::new()),
        }
    }

    async fn lookup(&self, store: &Store, token: &str) -> Result<Principal, AuthError> {
        let digest = hex::encode(sha256(token));
        let found = store.find_api_key(&digest).await.map_err(|e| {
            tracing::warn!(error = %e, "API key lookup failed");
            AuthError::Unavailable
        })?;
        let Some(key) = found else {
            return Err(AuthError::Invalid);
        };
        let now = crate::store::now_ms();
        if !key.usable_for("mcp", now) {
            return Err(AuthError::Invalid);
        }
        // Recording the last use must never slow the call down, and a minute's precision
        // is plenty: at most one write per key per minute, whatever the cache says.
        let due = {
            let mut touched = self.touched.lock().expect("touch lock");
            if touched.len() > MAX_CACHED {
                touched.retain(|_, at| at.elapsed() < TOUCH_EVERY);
            }
            match touched.get(&key.id) {
                Some(at) if at.elapsed() < TOUCH_EVERY => false,
                _ => {
                    touched.insert(key.id.clone(), Instant::now());
                    true
                }
            }
        };
        if due {
            let (store, tenant, id) = (store.clone(), key.tenant_id.clone(), key.id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(&tenant, &id, now).await {
                    tracing::debug!(error = %e, "could not record API key use");
                }
            });
        }
        Ok(Principal {
            id: format!("key:{}", key.id),
            access: Some(std::sync::Arc::new(crate::policy::Access {
                key_id: key.id.clone(),
                tenant_id: key.tenant_id.clone(),
                key: key.policy,
                tenant: key.tenant_policy,
            })),
            tenant_id: Some(key.tenant_id),
        })
    }
}

#[async_trait::async_trait]
impl Authenticator for KeyAuthenticator {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        let configured = self.config_keys.check(token);
        let Some(store) = &self.store else {
            return configured;
        };
        if configured.is_ok() {
            return configured;
        }
        let digest = sha256(token);
        if let Some((answer, at)) = self.cache.lock().expect("cache lock").get(&digest)
            && at.elapsed() < self.ttl
        {
            return answer.clone();
        }
        let answer = self.lookup(store, token).await;
        if answer != Err(AuthError::Unavailable) {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(digest, (answer.clone(), Instant::now()));
        }
        answer
    }
}
