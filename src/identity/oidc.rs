//! Bearer tokens from an external OpenID Connect provider (Auth0, Keycloak, Entra …),
//! validated against the provider's published keys (JWKS): issuer, audience, expiry and
//! an allow-list of asymmetric algorithms. Keys are cached and fetched again when a
//! token names a key id the cache does not know (the provider rotated its keys). A kid
//! that the latest fetch did not have is refused without asking again, and unknown kids
//! cause at most `REFETCH_BUDGET` fetches a minute, so garbage key ids cannot make gantry
//! hammer the provider.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::config::OidcConfig;

const REFETCH_BUDGET: usize = 10;
const KEYS_TTL: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Algorithms a provider may sign with. Symmetric ones (HS*) are never accepted from a
/// provider: with them, anyone holding the public key could forge tokens.
pub const ALLOWED: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the identity provider's keys cannot be fetched: {0}")]
    Unavailable(String),
}

/// Who a valid provider token says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: String,
    pub name: String,
    /// The provider vouched for the address (`email_verified: true`), rather than just
    /// not denying it.
    pub email_verified: bool,
}

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    /// Keys published without a `kid`; usable only when they are the only key.
    anonymous: Vec<DecodingKey>,
    fetched: Option<Instant>,
    /// Kids asked for that the latest fetch did not publish.
    missing: HashSet<String>,
    /// When recent fetches happened, for the budget.
    recent: VecDeque<Instant>,
}

pub struct OidcVerifier {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> Self {
        let algorithms = config
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .collect();
        Self {
            config,
            algorithms,
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .expect("HTTP client builds"),
            keys: Mutex::new(Keys {
                by_kid: HashMap::new(),
                anonymous: Vec::new(),
                fetched: None,
                missing: HashSet::new(),
                recent: VecDeque::new(),
            }),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, OidcError> {
        let unavailable =
            |e: reqwest::Error| OidcError::Unavailable(format!("{what}: {}", e.without_url()));
        self.http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)
    }

    async fn jwks_url(&self) -> Result<String, OidcError> {
        if let Some(url) = &self.config.jwks_url {
            return Ok(url.clone());
        }
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let doc: Discovery = self.get_json(&discovery, "discovery document").await?;
        Ok(doc.jwks_uri)
    }

    async fn fetch(&self, keys: &mut Keys) -> Result<(), OidcError> {
        let url = self.jwks_url().await?;
        let set: JwkSet = self.get_json(&url, "JWKS").await?;
        keys.by_kid.clear();
        keys.anonymous.clear();
        for jwk in &set.keys {
            // Symmetric keys in a JWKS would turn "public" into "secret": never used.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.anonymous.push(key),
            }
        }
        keys.fetched = Some(Instant::now());
        keys.missing.clear();
        keys.recent.push_back(Instant::now());
        tracing::info!(keys = set.keys.len(), "identity provider keys fetched");
        Ok(())
    }

    /// The key for `kid`, fetching the provider's keys when they are stale or the kid
    /// is new to us.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, OidcError> {
        let mut keys = self.keys.lock().await;
        let age = keys.fetched.map(|t| t.elapsed());
        let lookup = |keys: &Keys| match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.by_kid.is_empty() && keys.anonymous.len() == 1 => {
                keys.anonymous.first().cloned()
            }
            None => None,
        };
        let fresh = age.is_some_and(|a| a < KEYS_TTL);
        if fresh && let Some(key) = lookup(&keys) {
            return Ok(key);
        }
        let unknown = || {
            OidcError::Invalid("signed with a key the identity provider does not publish".into())
        };
        if fresh && kid.is_some_and(|k| keys.missing.contains(k)) {
            return Err(unknown());
        }
        while keys
            .recent
            .front()
            .is_some_and(|t| t.elapsed() > Duration::from_secs(60))
        {
            keys.recent.pop_front();
        }
        if fresh && keys.recent.len() >= REFETCH_BUDGET {
            return Err(unknown());
        }
        self.fetch(&mut keys).await?;
        let found = lookup(&keys);
        if found.is_none()
            && let Some(kid) = kid
        {
            keys.missing.insert(kid.to_string());
        }
        found.ok_or_else(unknown)
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| OidcError::Invalid(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(OidcError::Invalid(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if claims.get("email_verified").and_then(Value::as_bool) == Some(false) {
            return Err(OidcError::Invalid(
                "the e-mail address is not verified".into(),
            ));
        }
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
        Ok(Identity {
            subject: text("sub").unwrap_or_default(),
            email: text(&self.config.email_claim).ok_or_else(|| {
                OidcError::Invalid(format!(
                    "the token has no '{}' claim",
                    self.config.email_claim
                ))
            })?,
            name: text("name").unwrap_or_default(),
            email_verified: claims.get("email_verified").and_then(Value::as_bool) == Some(true),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }
}
