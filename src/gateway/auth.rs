//! Who is calling `/mcp`: API keys from configuration (compared by SHA-256 digest in
//! constant time) and, when a database is configured, keys issued by the control plane
//! ([`crate::identity::key_auth`]).

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable identifier for logs, audit and session binding, e.g. `key:default`.
    pub id: String,
    /// The tenant the caller acts for; `None` for configuration keys (embedded mode).
    pub tenant_id: Option<String>,
    /// The policies that bound the caller; `None` (configuration keys) means unbounded.
    pub access: Option<std::sync::Arc<crate::policy::Access>>,
}

impl Principal {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            tenant_id: None,
            access: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    /// The credential store could not be asked; the caller may retry.
    #[error("authentication is temporarily unavailable")]
    Unavailable,
}

#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError>;
}

/// Accepts every caller: only for `gantry bridge --no-auth` on a private network.
pub struct Anonymous;

#[async_trait::async_trait]
impl Authenticator for Anonymous {
    async fn authenticate(&self, _headers: &HeaderMap) -> Result<Principal, AuthError> {
        Ok(Principal::new("anonymous"))
    }
}

pub struct ConfigKeys {
    keys: Vec<(String, [u8; 32])>,
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ConfigKeys {
    pub fn from_config(config: &AuthConfig) -> Self {
        let keys = config
            .api_keys
            .iter()
            .filter_map(|k| {
                let bytes: Vec<u8> = (0..k.sha256.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&k.sha256[i..i + 2], 16))
                    .collect::<Result<_, _>>()
                    .ok()?;
                Some((k.name.clone(), bytes.try_into().ok()?))
            })
            .collect();
        Self { keys }
    }

    pub fn add(&mut self, name: &str, token: &str) {
        self.keys.push((name.to_string(), sha256(token)));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The bearer token of an `Authorization` header, if well formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[async_trait::async_trait]
impl Authenticator for ConfigKeys {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        self.check(token)
    }
}

impl ConfigKeys {
    /// The configured key matching `token`, if any.
    pub fn check(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = sha256(token);
        // Every key is compared so timing reveals neither which key matched nor how much.
        let mut found = None;
        for (name, key) in &self.keys {
            if bool::from(key.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        found
            .map(|name| Principal::new(format!("key:{name}")))
            .ok_or(AuthError::Invalid)
    }
}

/// `prefix` and 256 random bits, URL-safe: API keys, refresh tokens.
pub fn random_token(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh API key: `gty_` and 256 random bits.
pub fn generate_key() -> String {
    random_token("gty_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn accepts_configured_key_by_digest_only() {
        let key = generate_key();
        let config = AuthConfig {
            api_keys: vec![ApiKeyConfig {
                name: "ci".into(),
                sha256: hex(&sha256(&key)),
            }],
            ..AuthConfig::default()
        };
        let auth = ConfigKeys::from_config(&config);
        assert_eq!(
            auth.authenticate(&headers(&format!("Bearer {key}")))
                .await
                .unwrap()
                .id,
            "key:ci"
        );
        assert_eq!(
            auth.authenticate(&headers("Bearer gty_wrong")).await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.authenticate(&headers(&format!("Basic {key}"))).await,
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, b) = (generate_key(), generate_key());
        assert!(a.starts_with("gty_") && a.len() == 47);
        assert_ne!(a, b);
    }
}
