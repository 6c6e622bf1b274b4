//! Access tokens for a remote server that requires OAuth, obtained with the client
//! credentials grant (the MCP extension for machine-to-machine clients, SEP-1046): no user
//! is there to log in, the gateway is the client. Discovery follows the MCP authorization
//! spec: the server's 401 names its protected resource metadata (RFC 9728), which names the
//! authorization server, whose metadata (RFC 8414, or OpenID discovery) names the token
//! endpoint. Tokens are asked for with the server's URL as `resource` (RFC 8707), kept
//! until they expire or the server refuses them, and never logged. The client proves who
//! it is with its secret, or with an assertion signed by its private key (RFC 7523).
//! No authorization-code flow: a gateway has no user at hand to log in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};
use serde_json::Value;

use super::egress::Egress;
use super::http_client::{self, Endpoint, HttpClient};
use super::streamable_http::display_url;
use crate::config::{AssertionAlg, OAuthClient, TokenEndpointAuth, resolve_reference};

/// Metadata documents and token answers are small; a larger one is refused unread.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Each discovery or token request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A token is renewed this long before it expires (at half its life when that is shorter),
/// so it does not expire in flight.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// A token and when it stops being used.
struct Token {
    bearer: HeaderValue,
    renew_at: Option<Instant>,
}

pub struct OAuth {
    config: OAuthClient,
    /// The server's URL: the `resource` tokens are asked for, and what its metadata must name.
    resource: url::Url,
    egress: Option<Egress>,
    token: std::sync::Mutex<Option<Token>>,
    /// Counts the tokens obtained, so a caller refused knows whether one came since.
    generation: AtomicU64,
    /// Found once, on the first 401: where tokens come from.
    server: tokio::sync::Mutex<Option<AuthServer>>,
}

/// The authorization server, as its metadata names it.
#[derive(Clone)]
struct AuthServer {
    token_endpoint: url::Url,
    /// Its issuer identifier: the audience of the client's assertions (`private_key_jwt`).
    issuer: String,
}

/// How long a `private_key_jwt` assertion is valid: it is used at once, and once.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

impl OAuth {
    pub fn new(config: OAuthClient, resource: url::Url, egress: Option<&Egress>) -> Self {
        Self {
            config,
            resource,
            egress: egress.cloned(),
            token: std::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            server: tokio::sync::Mutex::new(None),
        }
    }

    /// The `Authorization` value to send, while the token is fresh.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let token = self.token.lock().unwrap();
        let token = token.as_ref()?;
        let fresh = token.renew_at.is_none_or(|at| Instant::now() < at);
        fresh.then(|| token.bearer.clone())
    }

    /// Which token is current: read before a request, it tells [`renew`](Self::renew)
    /// whether the token that request carried is still the latest.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes a new token current, after the server answered 401 to a request sent while
    /// `sent_with` was the [`generation`](Self::generation), with `challenge`, its
    /// `WWW-Authenticate`. One renewal at a time: a caller that waited for another's
    /// takes that token.
    pub async fn renew(
        &self,
        sent_with: u64,
        challenge: Option<&HeaderValue>,
    ) -> Result<(), String> {
        let mut known = self.server.lock().await;
        if self.generation() != sent_with && self.bearer().is_some() {
            return Ok(());
        }
        let server = match known.as_ref() {
            Some(server) => server.clone(),
            None => {
                let server = self.discover(challenge).await?;
                *known = Some(server.clone());
                server
            }
        };
        let token = self.request_token(&server).await?;
        *self.token.lock().unwrap() = Some(token);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The authorization server: from the protected resource metadata the challenge names
    /// (or that sits at its well-known places), through the authorization server's metadata.
    async fn discover(&self, challenge: Option<&HeaderValue>) -> Result<AuthServer, String> {
        let named = challenge
            .and_then(|c| c.to_str().ok())
            .and_then(resource_metadata_url)
            .and_then(|u| self.resource.join(&u).ok());
        let candidates = named
            .into_iter()
            .chain(protected_resource_metadata_urls(&self.resource));
        let metadata = self
            .first_document(candidates)
            .await
            .map_err(|tried| format!("no protected resource metadata found ({tried})"))?;
        if let Some(named) = metadata.get("resource").and_then(Value::as_str)
            && !names_resource(named, &self.resource)
        {
            return Err(format!(
                "its protected resource metadata is for '{named}', not this server"
            ));
        }
        let issuer = metadata
            .get("authorization_servers")
            .and_then(Value::as_array)
            .and_then(|servers| servers.first())
            .and_then(Value::as_str)
            .ok_or("its protected resource metadata names no authorization server")?;
        let issuer = url::Url::parse(issuer).map_err(|e| format!("authorization server: {e}"))?;
        let metadata = self
            .first_document(authorization_server_metadata_urls(&issuer))
            .await
            .map_err(|tried| format!("no authorization server metadata found ({tried})"))?;
        let token = metadata
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or("the authorization server's metadata has no token_endpoint")?;
        Ok(AuthServer {
            token_endpoint: url::Url::parse(token).map_err(|e| format!("token_endpoint: {e}"))?,
            issuer: metadata
                .get("issuer")
                .and_then(Value::as_str)
                .map_or_else(|| issuer.to_string(), str::to_string),
        })
    }

    /// The first of `urls` that serves a JSON document; Err says how each failed.
    async fn first_document(
        &self,
        urls: impl IntoIterator<Item = url::Url>,
    ) -> Result<Value, String> {
        let mut tried = Vec::new();
        for url in urls {
            match self.get_json(&url).await {
                Ok(doc) => return Ok(doc),
                Err(e) => tried.push(format!("{}: {e}", display_url(&url))),
            }
        }
        Err(tried.join("; "))
    }

    async fn request_token(&self, server: &AuthServer) -> Result<Token, String> {
        let token_url = &server.token_endpoint;
        let (headers, form) = self.token_request(server)?;
        let asked = Instant::now();
        let (status, body) = self
            .send(Method::POST, token_url, headers, Bytes::from(form))
            .await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // The error code and description are the server's words about our request,
            // never the secret: safe to show.
            let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
            let why = answer
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(
                format!("the token endpoint answered HTTP {status} {error} {why}")
                    .trim_end()
                    .to_string(),
            );
        }
        let access = answer
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("the token endpoint's answer has no access_token")?;
        let mut bearer = HeaderValue::try_from(format!("Bearer {access}"))
            .map_err(|_| "the access token is not a valid header value")?;
        bearer.set_sensitive(true);
        let expires_in = answer.get("expires_in").and_then(Value::as_u64);
        // A short-lived token is renewed halfway through its life rather than at once.
        let renew_at = expires_in.map(|secs| {
            let life = Duration::from_secs(secs);
            asked + life.saturating_sub(EXPIRY_MARGIN.min(life / 2))
        });
        let lifetime = expires_in.map_or_else(|| "not given".into(), |s| format!("{s} s"));
        tracing::info!(token_endpoint = %display_url(token_url), lifetime, "OAuth access token obtained");
        Ok(Token { bearer, renew_at })
    }

    /// The token request's headers and form, authenticated as configured.
    fn token_request(&self, server: &AuthServer) -> Result<(http::HeaderMap, String), String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        form.append_pair("resource", self.resource.as_str());
        if let Some(scope) = &self.config.scope {
            form.append_pair("scope", scope);
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let secret = || {
            resolve_reference(&self.config.client_secret).map_err(|e| format!("client_secret: {e}"))
        };
        match self.config.token_endpoint_auth {
            TokenEndpointAuth::ClientSecretBasic => {
                let secret = secret()?;
                // RFC 6749 §2.3.1: each part form-encoded before joining.
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(&self.config.client_id), encode(&secret));
                let mut value = HeaderValue::try_from(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
                .expect("base64 is a valid header value");
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            TokenEndpointAuth::ClientSecretPost => {
                form.append_pair("client_id", &self.config.client_id);
                form.append_pair("client_secret", &secret()?);
            }
            TokenEndpointAuth::PrivateKeyJwt => {
                let audience = self.config.assertion_audience.as_deref();
                let assertion = client_assertion(&self.config, audience.unwrap_or(&server.issuer))?;
                form.append_pair("client_id", &self.config.client_id);
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                );
                form.append_pair("client_assertion", &assertion);
            }
        }
        Ok((headers, form.finish()))
    }

    async fn get_json(&self, url: &url::Url) -> Result<Value, String> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let (status, body) = self.send(Method::GET, url, headers, Bytes::new()).await?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        doc.is_object()
            .then_some(doc)
            .ok_or_else(|| "not a JSON object".into())
    }

    /// One request on a connection of its own: the gateway's pooled client serves the
    /// MCP server's origin only, and these go elsewhere. A registered server's egress rule
    /// applies to them too: its metadata could name any address.
    async fn send(
        &self,
        method: Method,
        url: &url::Url,
        mut headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        if let Some(refusal) = self.egress.as_ref().and_then(|e| e.address_refusal(url)) {
            return Err(refusal);
        }
        let endpoint = Endpoint::parse(url.clone())?;
        endpoint.add_defaults(&mut headers);
        let client = HttpClient::new(self.egress.as_ref());
        let exchange = async {
            let response = client
                .send(http_client::request(method, &endpoint, headers, body))
                .await?;
            let status = response.status();
            let body = http_client::read_body(response.into_body(), MAX_DOCUMENT_BYTES)
                .await
                .map_err(|e| http_client::error_chain(&e))?;
            Ok::<_, String>((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))?
    }
}

/// The `resource_metadata` parameter of a `WWW-Authenticate: Bearer …` challenge.
/// A client assertion (RFC 7523 §2.2): the client, as issuer and subject, tells `audience`
/// who it is, signed with its private key. Errors name the key's problem, never the key.
fn client_assertion(config: &OAuthClient, audience: &str) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = resolve_reference(&config.private_key).map_err(|e| format!("private_key: {e}"))?;
    let algorithm = match config.signing_alg {
        AssertionAlg::RS256 => Algorithm::RS256,
        AssertionAlg::RS384 => Algorithm::RS384,
        AssertionAlg::RS512 => Algorithm::RS512,
        AssertionAlg::PS256 => Algorithm::PS256,
        AssertionAlg::PS384 => Algorithm::PS384,
        AssertionAlg::PS512 => Algorithm::PS512,
        AssertionAlg::ES256 => Algorithm::ES256,
        AssertionAlg::ES384 => Algorithm::ES384,
        AssertionAlg::EdDSA => Algorithm::EdDSA,
    };
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    };
    let key = key.map_err(|e| format!("private_key: not a PEM key for {algorithm:?}: {e}"))?;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": config.client_id,
        "sub": config.client_id,
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME.as_secs(),
        // Unique per assertion, so the server can refuse a replayed one.
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key)
        .map_err(|e| format!("private_key: cannot sign with {algorithm:?}: {e}"))
}

fn resource_metadata_url(challenge: &str) -> Option<String> {
    let at = challenge.find("resource_metadata=")? + "resource_metadata=".len();
    let rest = &challenge[at..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"')?],
        None => rest.split([',', ' ']).next()?,
    };
    (!value.is_empty()).then(|| value.to_string())
}

/// Where protected resource metadata may be (RFC 9728 §3.1): the well-known path with the
/// resource's path inserted, then at the origin's root.
fn protected_resource_metadata_urls(resource: &url::Url) -> Vec<url::Url> {
    let path = resource.path().trim_end_matches('/');
    let mut urls = Vec::new();
    for suffix in [path, ""] {
        let mut candidate = resource.clone();
        candidate.set_path(&format!("/.well-known/oauth-protected-resource{suffix}"));
        candidate.set_query(None);
        candidate.set_fragment(None);
        if !urls.contains(&candidate) {
            urls.push(candidate);
        }
    }
    urls
}

/// Where an authorization server's metadata may be, in the order the MCP spec gives: RFC
/// 8414 then OpenID Connect Discovery, with an issuer's path inserted after the well-known
/// prefix, then (OpenID only) appended to it. Never the root for an issuer with a path:
/// that is another issuer's.
fn authorization_server_metadata_urls(issuer: &url::Url) -> Vec<url::Url> {
    let path = issuer.path().trim_end_matches('/');
    let at = |p: String| {
        let mut url = issuer.clone();
        url.set_path(&p);
        url.set_query(None);
        url.set_fragment(None);
        url
    };
    let mut urls = vec![
        at(format!("/.well-known/oauth-authorization-server{path}")),
        at(format!("/.well-known/openid-configuration{path}")),
    ];
    if !path.is_empty() {
        urls.push(at(format!("{path}/.well-known/openid-configuration")));
    }
    urls
}

/// Whether metadata's `resource` names this server: its URL, or its origin.
fn names_resource(named: &str, server: &url::Url) -> bool {
    let Ok(named) = url::Url::parse(named) else {
        return false;
    };
    let trimmed = |u: &url::Url| u.as_str().trim_end_matches('/').to_string();
    trimmed(&named) == trimmed(server)
        || (named.origin() == server.origin() && named.path().trim_end_matches('/').is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key made for this test alone (`openssl genpkey -algorithm EC`).
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkxK41INbvhtsAPud
eA7O8i51DnmlBBgmvYcuCcbvQs+hRANCAAThXCGBiS41fAyPgSERmqEcuWOw5UdD
aU9RrkgeilKEIbMwC7/+paFWB3iz9N1xVrDXkf7NT83Y9QGuUgxmBRh2
-----END PRIVATE KEY-----";
    const TEST_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4VwhgYkuNXwMj4EhEZqhHLljsOVH
Q2lPUa5IHopShCGzMAu//qWhVgd4s/TdcVaw15H+zU/N2PUBrlIMZgUYdg==
-----END PUBLIC KEY-----";

    fn jwt_client(alg: AssertionAlg) -> OAuthClient {
        OAuthClient {
            client_id: "gantry".into(),
            client_secret: String::new(),
            private_key: TEST_KEY.into(),
            signing_alg: alg,
            assertion_audience: None,
            scope: None,
            token_endpoint_auth: TokenEndpointAuth::PrivateKeyJwt,
        }
    }

    #[test]
    fn a_client_assertion_is_signed_by_the_client_for_the_authorization_server() {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let assertion =
            client_assertion(&jwt_client(AssertionAlg::ES256), "https://as.example").unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://as.example"]);
        validation.set_issuer(&["gantry"]);
        let key = DecodingKey::from_ec_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
        let claims = jsonwebtoken::decode::<Value>(&assertion, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "gantry");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, ASSERTION_LIFETIME.as_secs());
        let again =
            client_assertion(&jwt_client(AssertionAlg::ES256), "https://as.example").unwrap();
        let jti = |a: &str| {
            jsonwebtoken::decode::<Value>(a, &key, &validation)
                .unwrap()
                .claims["jti"]
                .clone()
        };
        assert_ne!(jti(&assertion), jti(&again), "each assertion is new");
    }

    #[test]
    fn a_key_that_does_not_fit_its_algorithm_is_named_never_shown() {
        let err =
            client_assertion(&jwt_client(AssertionAlg::RS256), "https://as.example").unwrap_err();
        assert!(
            err.starts_with("private_key: not a PEM key for RS256"),
            "{err}"
        );
        assert!(!err.contains("MIGHAgEA"), "{err}");
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn the_challenge_names_the_metadata() {
        let c = r#"Bearer error="invalid_token", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#;
        assert_eq!(
            resource_metadata_url(c).as_deref(),
            Some("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            resource_metadata_url("Bearer resource_metadata=https://a/m, scope=x").as_deref(),
            Some("https://a/m")
        );
        assert_eq!(resource_metadata_url(r#"Bearer realm="mcp""#), None);
        assert_eq!(resource_metadata_url(r#"Bearer resource_metadata=""#), None);
    }

    #[test]
    fn well_known_places_insert_the_path_first() {
        let prm = protected_resource_metadata_urls(&url("https://mcp.example.com/v1/mcp?x=1"));
        let prm: Vec<_> = prm.iter().map(url::Url::as_str).collect();
        assert_eq!(
            prm,
            [
                "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource"
            ]
        );
        let at = authorization_server_metadata_urls(&url("https://auth.example.com/tenant1"));
        let at: Vec<_> = at.iter().map(url::Url::as_str).collect();
        assert_eq!(
            at,
            [
                "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
                "https://auth.example.com/.well-known/openid-configuration/tenant1",
                "https://auth.example.com/tenant1/.well-known/openid-configuration"
            ]
        );
        let root = authorization_server_metadata_urls(&url("https://auth.example.com"));
        assert_eq!(root.len(), 2);
    }

    #[test]
    fn metadata_must_name_this_server_or_its_origin() {
        let server = url("https://mcp.example.com/mcp");
        assert!(names_resource("https://mcp.example.com/mcp", &server));
        assert!(names_resource("https://mcp.example.com/mcp/", &server));
        assert!(names_resource("https://mcp.example.com", &server));
        assert!(!names_resource("https://mcp.example.com/other", &server));
        assert!(!names_resource("https://evil.example.com/mcp", &server));
        assert!(!names_resource("not a url", &server));
    }
}
