//! Secrets from Vault's KV v2 engine (or OpenBao, which speaks the same API): log in
//! with a token or AppRole, then read `vault:<mount>/data/<path>#<field>` references.
//! Values never appear in errors or logs; paths do.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::VaultConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault.addr is not set, but the configuration refers to Vault")]
    NotConfigured,
    #[error("cannot log in to Vault: {0}")]
    Login(String),
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0} is not a Vault reference (expected vault:<mount>/data/<path>#<field>)")]
    Malformed(String),
}

pub struct Vault {
    http: reqwest::Client,
    addr: String,
    token: String,
    /// Secrets already read in this resolution, by path: one request per path.
    cache: HashMap<String, serde_json::Map<String, Value>>,
}

fn reason(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

impl Vault {
    pub async fn login(config: &VaultConfig) -> Result<Self, VaultError> {
        let addr = config.addr.clone().ok_or(VaultError::NotConfigured)?;
        let addr = addr.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("HTTP client builds");
        let token = match (&config.token, &config.role_id, &config.secret_id) {
            (Some(token), _, _) => token.expose().to_string(),
            (None, Some(role_id), Some(secret_id)) => {
                let url = format!("{addr}/v1/auth/{}/login", config.approle_mount);
                let answer: Value = http
                    .post(&url)
                    .json(&serde_json::json!({ "role_id": role_id.expose(), "secret_id": secret_id.expose() }))
                    .send()
                    .await
                    .map_err(|e| VaultError::Login(reason(e)))?
                    .error_for_status()
                    .map_err(|e| VaultError::Login(reason(e)))?
                    .json()
                    .await
                    .map_err(|e| VaultError::Login(reason(e)))?;
                answer
                    .pointer("/auth/client_token")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        VaultError::Login("the AppRole login answered without a token".into())
                    })?
                    .to_string()
            }
            _ => {
                return Err(VaultError::Login(
                    "set vault.token, or vault.role_id and vault.secret_id (AppRole)".into(),
                ));
            }
        };
        Ok(Self {
            http,
            addr,
            token,
            cache: HashMap::new(),
        })
    }

    /// The value a `vault:…` reference names.
    pub async fn resolve(&mut self, reference: &str) -> Result<String, VaultError> {
        let spec = reference
            .strip_prefix("vault:")
            .ok_or_else(|| VaultError::Malformed(reference.into()))?;
        let (path, field) = spec
            .split_once('#')
            .filter(|(p, f)| !p.is_empty() && !f.is_empty() && p.contains("/data/"))
            .ok_or_else(|| VaultError::Malformed(reference.into()))?;
        if !self.cache.contains_key(path) {
            let data = self.read(path).await?;
            self.cache.insert(path.to_string(), data);
        }
        let value = self.cache[path]
            .get(field)
            .ok_or_else(|| VaultError::Read {
                path: format!("{path}#{field}"),
                reason: "no such field".into(),
            })?;
        Ok(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    async fn read(&self, path: &str) -> Result<serde_json::Map<String, Value>, VaultError> {
        let failed = |reason: String| VaultError::Read {
            path: path.to_string(),
            reason,
        };
        let response = self
            .http
            .get(format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token)
            .send()
            .await
            .map_err(|e| failed(reason(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(match status.as_u16() {
                403 => "permission denied (check the policy of the token or AppRole)".into(),
                404 => "no such secret".into(),
                code => format!("Vault answered HTTP {code}"),
            }));
        }
        let body: Value = response.json().await.map_err(|e| failed(reason(e)))?;
        body.pointer("/data/data")
            .and_then(Value::as_object)
            .cloned()
            .ok_or_else(|| failed("not a KV v2 secret (no data.data)".into()))
    }
}
