//! Tool results an operator opted in to caching (`cache_tools` of a server): the same
//! call with the same arguments is answered from memory for `cache_ttl_secs`, without
//! reaching the server. Entries never cross tenants; a result the server marks
//! `cacheScope: "private"` is kept for the caller who got it alone. Errors and results
//! with `isError` are never kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::auth::Principal;
use super::jsonrpc;
use crate::telemetry::metrics as m;
use crate::upstream::Upstream;

const CAPACITY: u64 = 10_000;

pub struct ResultCache {
    entries: moka::sync::Cache<[u8; 32], Arc<(Value, Instant)>>,
}

/// Where a call's result is looked up and stored.
#[derive(Clone)]
pub struct CacheKeys {
    /// Shared by the tenant's callers.
    shared: [u8; 32],
    /// This caller's own, for private results.
    private: [u8; 32],
    ttl: Duration,
    /// The server's metric labels (`server`, `tenant`).
    labels: Vec<metrics::Label>,
}

impl CacheKeys {
    fn count(&self, result: &'static str) {
        let mut labels = self.labels.clone();
        labels.push(metrics::Label::new("result", result));
        metrics::counter!(m::TOOL_CACHE, labels).increment(1);
    }
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        // Length-prefixed, so no two different part lists hash the same bytes.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

impl Default for ResultCache {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder().max_capacity(CAPACITY).build(),
        }
    }
}

impl ResultCache {
    /// The keys of a `tools/call` whose tool the server opted in; `None` otherwise.
    pub fn keys(
        upstream: &Upstream,
        principal: &Principal,
        body: &Map<String, Value>,
    ) -> Option<CacheKeys> {
        let params = jsonrpc::params(body)?;
        let tool = params.get("name")?.as_str()?;
        if !upstream.config.caches_tool(tool) {
            return None;
        }
        // serde_json's maps are ordered, so equal arguments serialize equally.
        let arguments = params
            .get("arguments")
            .map(Value::to_string)
            .unwrap_or_default();
        let scope = upstream.tenant.clone().unwrap_or_default();
        let tenant = principal.tenant_id.clone().unwrap_or_default();
        let server = format!("{scope}/{}", upstream.name);
        Some(CacheKeys {
            shared: digest(&[&server, &tenant, tool, &arguments]),
            private: digest(&[&server, &tenant, &principal.id, tool, &arguments]),
            ttl: Duration::from_secs(upstream.config.cache_ttl_secs),
            labels: crate::telemetry::mcp_metrics::server_labels(
                &upstream.name,
                upstream.tenant.as_deref(),
            ),
        })
    }

    /// A fresh cached result for these keys.
    pub fn get(&self, keys: &CacheKeys) -> Option<Value> {
        for key in [&keys.shared, &keys.private] {
            if let Some(entry) = self.entries.get(key) {
                if entry.1.elapsed() < keys.ttl {
                    keys.count("hit");
                    return Some(entry.0.clone());
                }
                self.entries.invalidate(key);
            }
        }
        keys.count("miss");
        None
    }

    /// Keeps a successful result (the whole JSON-RPC `result`).
    pub fn put(&self, keys: &CacheKeys, response: &Value) {
        let Some(result) = response.get("result") else {
            return;
        };
        if result.get("isError").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let private = result.get("cacheScope").and_then(Value::as_str) == Some("private");
        let key = if private { keys.private } else { keys.shared };
        self.entries
            .insert(key, Arc::new((result.clone(), Instant::now())));
    }
}
