//! Layered configuration: defaults < `gantry.toml` < `GANTRY_*` environment.
//!
//! Every struct denies unknown fields so a typo is an error at start-up rather than a
//! setting silently ignored. Errors name the key and the file it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A configuration value that must never appear in logs or error messages.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub gateway: GatewayConfig,
    pub database: DatabaseConfig,
    pub audit: AuditConfig,
    pub cache: CacheConfig,
    pub api: ApiConfig,
    pub registry: RegistryConfig,
    pub vault: VaultConfig,
    pub log: LogConfig,
    /// Upstream MCP servers by name. A BTreeMap keeps aggregation order deterministic.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Host header values accepted besides loopback names (DNS-rebinding protection).
    /// `["*"]` accepts any host. Empty means: loopback only when bound to loopback, any
    /// host otherwise.
    pub allowed_hosts: Vec<String>,
    /// Origins accepted from browsers, e.g. `https://app.example.com`. Loopback origins are
    /// accepted when the gateway is bound to loopback.
    pub allowed_origins: Vec<String>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// How long a connection may wait on its client: for each request, head and body, the
    /// wait for the next one on a kept-alive connection included. Then it is closed
    /// (checked four times per period, so at most a quarter later). Bounds what a slow or
    /// silent client holds (slowloris). An answer being awaited or written is not timed by
    /// it. Longer than a proxy's idle keep-alive to gantry (nginx's upstream
    /// `keepalive_timeout`, 60 s by default): a connection the proxy still counts as open
    /// must not be closed under its next request. 0 turns it off.
    pub request_read_timeout_secs: u64,
    /// How long a client may take none of an answer's bytes before its connection is
    /// closed (nginx's `send_timeout`, 60 s): bounds what a client that stops reading, or
    /// vanishes without closing, holds. A client that keeps taking bytes, however slowly,
    /// and an answer still awaited from upstream are not timed. 0 turns it off.
    pub response_write_timeout_secs: u64,
    /// How long a session's event stream waits for a client that lost its connection to
    /// resume it (a GET with `Last-Event-ID`); meanwhile its call goes on. Nginx sends a
    /// session's requests to one replica, which holds its streams. 0: streams carry no
    /// event ids, and a client's disconnect cancels its call at once.
    pub stream_resume_secs: u64,
    /// Threads serving requests. 1 (the default) runs everything on one thread: no
    /// cross-thread wake-ups, the lowest CPU per request, about 20k requests/s per
    /// process on a small machine. Raise it on large machines, or run more replicas.
    pub worker_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            shutdown_grace_secs: 10,
            request_read_timeout_secs: 75,
            response_write_timeout_secs: 60,
            stream_resume_secs: 60,
            worker_threads: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API keys accepted on `/mcp`, stored as SHA-256 hex digests (`gantry hash-key` makes one).
    pub api_keys: Vec<ApiKeyConfig>,
    /// Base64 of 32 random bytes sealing session ids. Every replica behind one load
    /// balancer needs the same key; without one, a random key is made per process.
    pub session_key: Option<Secret>,
    /// How long a 2025-era session id stays valid; after that the client gets 404 and
    /// initializes again, as the protocol prescribes.
    pub session_ttl_secs: u64,
    /// Signs the control plane's access tokens (HS256); at least 32 bytes. Every API
    /// replica needs the same one; without it, a random one is made per process and
    /// tokens die with it.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of an access token: short, since it cannot be revoked.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token; each use rotates it.
    pub refresh_token_ttl_secs: u64,
    /// Failed logins for one e-mail address within `login_window_secs` before further
    /// attempts are refused with 429 until the window passes.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// How long a verified API key is trusted before the database is asked again (a
    /// revoked key stops working within this time).
    pub api_key_cache_secs: u64,
    /// An external OpenID Connect provider whose tokens the API accepts. An empty
    /// `issuer` means none.
    pub oidc: Option<OidcConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer, exactly as in its tokens' `iss`, e.g. `https://example.eu.auth0.com/`.
    pub issuer: String,
    /// The audience tokens must name (`aud`), e.g. the API identifier in Auth0.
    pub audience: String,
    /// Where the keys are; default: discovered from `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_oidc_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding the user's e-mail address.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// The tenant (slug) that users signing in for the first time join.
    #[serde(default = "default_oidc_tenant")]
    pub tenant: String,
    /// Their role in it: owner, admin, member or viewer.
    #[serde(default = "default_oidc_role")]
    pub role: String,
}

fn default_oidc_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_email_claim() -> String {
    "email".into()
}
fn default_oidc_tenant() -> String {
    "default".into()
}
fn default_oidc_role() -> String {
    "member".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            session_key: None,
            session_ttl_secs: 24 * 3600,
            jwt_secret: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            login_max_failures: 5,
            login_window_secs: 15 * 60,
            api_key_cache_secs: 5,
            oidc: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://path`. `gantry serve` and `gantry api` default to
    /// `sqlite://gantry.db` in the working directory; `gantry gateway` uses the database
    /// only when one is set (for API keys issued by the control plane).
    pub url: Option<Secret>,
    /// Connection used by `gantry migrate` when the services' own role may not change the
    /// schema (PostgreSQL: the owner of the database). Defaults to `url`.
    pub migrate_url: Option<Secret>,
    /// The password for `url`, kept apart so it can come from Vault or a Docker secret
    /// (`vault:secret/data/database#app_password`, `GANTRY_DATABASE__PASSWORD_FILE`)
    /// while the URL itself stays in plain configuration. Replaces any password in `url`.
    pub password: Option<Secret>,
    /// The password for `migrate_url`, likewise.
    pub migrate_password: Option<Secret>,
    /// Apply pending migrations at start-up. On by default for the embedded SQLite
    /// database; in production run `gantry migrate` once per release instead.
    pub migrate_on_start: Option<bool>,
    /// Connections per process; two of them are kept open even when idle.
    pub max_connections: u32,
    /// How long opening a connection, or waiting for a free one, may take.
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            migrate_url: None,
            password: None,
            migrate_password: None,
            migrate_on_start: None,
            max_connections: 10,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub enabled: bool,
    /// `sql` (the role's database) or a `mongodb://…` URL.
    pub store: Secret,
    /// Events waiting to be written; beyond it new events are dropped and counted.
    pub queue_capacity: usize,
    pub batch_size: usize,
    /// How long the writer gathers events into one batch before writing it (a full
    /// batch is written at once). Longer batches cost less per event; events wait in
    /// memory that long.
    pub flush_interval_ms: u64,
    /// Where events wait while the store is down (survives restarts).
    pub spill_dir: PathBuf,
    pub spill_max_bytes: u64,
    pub retention_days: u32,
    /// Argument keys containing any of these (case-insensitive) are recorded as [REDACTED].
    pub redact_keys: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store: Secret::new("sql"),
            queue_capacity: 10_000,
            batch_size: 500,
            flush_interval_ms: 1000,
            spill_dir: PathBuf::from("audit-spill"),
            spill_max_bytes: 256 * 1024 * 1024,
            retention_days: 90,
            redact_keys: crate::audit::redact::default_fragments(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `memory://` (per process) or `redis://[:password@]host:6379[/db]` (shared by
    /// replicas: rate limits).
    pub url: Secret,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("memory://"),
            key_prefix: "gantry:".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Browser origins allowed to call `/api` cross-origin (CORS), e.g.
    /// `["https://admin.example.com"]`. Empty: no cross-origin access.
    pub cors_allowed_origins: Vec<String>,
    /// Gateways whose upstream health `gantry api` reports in `/api/v1/status`, e.g.
    /// `["http://mcp_gateway:8080"]` (`gantry serve` reports its own).
    pub gateway_urls: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Hosts that servers registered through the API may use even though they are
    /// loopback or link-local (refused otherwise, against SSRF), e.g. `["127.0.0.1"]`.
    pub allowed_hosts: Vec<String>,
    /// How often gateways re-read the registry besides change notifications (the only
    /// signal between processes sharing a SQLite file).
    pub poll_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            poll_secs: 30,
        }
    }
}

/// Where `vault:` references are read. Any string value in the configuration may be
/// `vault:<mount>/data/<path>#<field>` (KV v2), e.g. `database.url =
/// "vault:secret/data/gantry/database#url"`. `VAULT_ADDR` and `VAULT_TOKEN` are honoured
/// when `addr` and `token` are not set.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    pub addr: Option<String>,
    pub token: Option<Secret>,
    /// AppRole login, instead of a token.
    pub role_id: Option<Secret>,
    pub secret_id: Option<Secret>,
    pub approle_mount: String,
}

impl VaultConfig {
    /// This configuration with `VAULT_ADDR` / `VAULT_TOKEN` filling what it leaves unset.
    pub fn effective(&self) -> Self {
        let mut config = self.clone();
        if config.addr.is_none() {
            config.addr = std::env::var("VAULT_ADDR").ok();
        }
        if config.token.is_none() && config.role_id.is_none() {
            config.token = std::env::var("VAULT_TOKEN").ok().map(Secret::new);
        }
        config
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            addr: None,
            token: None,
            role_id: None,
            secret_id: None,
            approle_mount: "approle".into(),
        }
    }
}

pub const EMBEDDED_DATABASE: &str = "sqlite://gantry.db";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub sha256: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixMode {
    /// Every name becomes `{server}{separator}{name}`.
    #[default]
    Always,
    /// Names stay as they are unless two servers share one.
    OnConflict,
    /// Names stay as they are; a real conflict is a start-up error.
    Never,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub prefix_mode: PrefixMode,
    pub separator: String,
    /// Run the built-in demo upstream when no upstream is configured.
    pub demo_upstream: bool,
    /// How long one upstream may take to answer a list request during aggregation before
    /// it is left out of the result.
    pub list_timeout_ms: u64,
    /// How long upstream catalogues (tools, prompts, resources) are cached.
    pub catalog_ttl_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            prefix_mode: PrefixMode::Always,
            separator: "__".into(),
            demo_upstream: true,
            list_timeout_ms: 5_000,
            catalog_ttl_secs: 300,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
    /// Lines waiting for stderr to take them; beyond this they are dropped and counted.
    pub buffer_lines: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            buffer_lines: 16_384,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// A child process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio,
    /// A remote server speaking Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// A remote server speaking the deprecated HTTP+SSE transport (2024-11-05).
    Sse,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub transport: TransportKind,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment for a stdio child. Values may be `env:NAME` or `file:/path` references,
    /// resolved when the child is launched, so keys stay out of the config file.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    /// Extra HTTP headers for remote upstreams; values accept the same references as `env`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Seconds between health pings; three unanswered pings restart the upstream (a
    /// child that hangs without exiting is otherwise never noticed). 0 disables them.
    #[serde(default = "default_ping_interval_secs")]
    pub ping_interval_secs: u64,
    /// Consecutive failed calls (unavailable or timed out) that open the circuit: calls
    /// then fail at once for `circuit_breaker_cooldown_secs`. 0 disables the breaker.
    #[serde(default = "default_breaker_failures")]
    pub circuit_breaker_failures: u32,
    #[serde(default = "default_breaker_cooldown_secs")]
    pub circuit_breaker_cooldown_secs: u64,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The only tools of this server anyone may use (names, or prefixes ending in `*`);
    /// absent means all. Hidden tools are absent from lists and refused on call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_allow: Option<Vec<String>>,
    /// Tools of this server nobody may use (same patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools_deny: Vec<String>,
    /// Requests per minute to this server, all callers together (shared through Redis
    /// when `cache.url` is Redis); absent means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// Tools whose results may be served from the gateway's cache (names or prefixes
    /// ending in *): only for tools whose answer depends on their arguments alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_tools: Vec<String>,
    /// How long a cached tool result is served.
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// The largest message accepted from this server: a JSON answer, one event of an
    /// event stream, or one line of a stdio child. A larger one fails the call it answers
    /// (a stdio child's, which cannot be told apart from the next, restarts the child), so
    /// a broken or hostile server cannot take the memory the other calls need.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// For a remote Streamable HTTP server that requires OAuth: the gateway's client
    /// credentials, exchanged for access tokens at the authorization server the server
    /// names (discovered on its first 401).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClient>,
}

/// Shown by the API in place of a secret given as itself; sent back, it keeps that secret.
pub const REDACTED: &str = "***";

/// Whether a configured value points at a secret rather than holding it.
pub fn is_reference(value: &str) -> bool {
    ["env:", "file:", "vault:"]
        .iter()
        .any(|p| value.starts_with(p))
}

/// A confidential OAuth client of an upstream's authorization server (client credentials
/// grant, SEP-1046).
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub client_id: String,
    /// For `client_secret_basic` and `client_secret_post`: the secret, or an `env:`,
    /// `file:` or `vault:` reference to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_secret: String,
    /// For `private_key_jwt`: the PEM private key that signs the client's assertions
    /// (PKCS#8; RSA, EC or Ed25519 as `signing_alg` says), or a reference to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub private_key: String,
    /// For `private_key_jwt`: how assertions are signed.
    #[serde(default)]
    pub signing_alg: AssertionAlg,
    /// For `private_key_jwt`: the assertions' `aud`. Absent: the authorization server's
    /// issuer identifier (RFC 7523bis, the MCP conformance suite); some servers want
    /// their token endpoint's URL instead (Microsoft Entra, Okta).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assertion_audience: Option<String>,
    /// Space-separated scopes to ask for; absent asks for the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth: TokenEndpointAuth,
}

/// The secret stays out of any debug output, even when it is given as itself.
impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("private_key", &REDACTED)
            .field("signing_alg", &self.signing_alg)
            .field("assertion_audience", &self.assertion_audience)
            .field("scope", &self.scope)
            .field("token_endpoint_auth", &self.token_endpoint_auth)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 §2.3.1), the default.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed with the client's private key (RFC 7523 §2.2): no shared secret.
    PrivateKeyJwt,
}

/// Signature algorithms for `private_key_jwt` assertions (asymmetric only: the
/// authorization server holds the public key).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum AssertionAlg {
    #[default]
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Limits of `max_message_bytes`: a message must fit an MCP handshake, and a gigabyte
/// held per message is already far beyond any tool result a client can use.
pub const MIN_MESSAGE_BYTES: usize = 1024;
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024 * 1024;

fn default_max_message_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_cache_ttl_secs() -> u64 {
    60
}

fn default_timeout_secs() -> u64 {
    60
}
fn default_max_concurrency() -> usize {
    64
}
fn default_ping_interval_secs() -> u64 {
    30
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_secs() -> u64 {
    10
}
fn default_true() -> bool {
    true
}

impl UpstreamConfig {
    pub fn stdio(command: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            transport: TransportKind::Stdio,
            command: Some(command.into()),
            args,
            env: BTreeMap::new(),
            cwd: None,
            url: None,
            headers: BTreeMap::new(),
            timeout_secs: default_timeout_secs(),
            max_concurrency: default_max_concurrency(),
            ping_interval_secs: default_ping_interval_secs(),
            circuit_breaker_failures: default_breaker_failures(),
            circuit_breaker_cooldown_secs: default_breaker_cooldown_secs(),
            enabled: true,
            tools_allow: None,
            tools_deny: Vec::new(),
            rate_limit_per_minute: None,
            cache_tools: Vec::new(),
            cache_ttl_secs: default_cache_ttl_secs(),
            max_message_bytes: default_max_message_bytes(),
            oauth: None,
        }
    }

    /// Every value that may hold a secret or a reference to one (`env:`, `file:`,
    /// `vault:`), as (kind, key, value): the child's environment, the HTTP headers and the
    /// OAuth client secret or private key (the one given).
    pub fn secret_values(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        let env = self
            .env
            .iter()
            .map(|(k, v)| ("env", k.as_str(), v.as_str()));
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| ("header", k.as_str(), v.as_str()));
        let oauth = self.oauth.iter().flat_map(|o| {
            [
                ("oauth", "client_secret", o.client_secret.as_str()),
                ("oauth", "private_key", o.private_key.as_str()),
            ]
        });
        env.chain(headers)
            .chain(oauth.filter(|(_, _, value)| !value.is_empty()))
    }

    /// The settings as the API shows them: a secret given as itself is masked as
    /// [`REDACTED`], a reference to one (`env:`, `file:`, `vault:`) stays, since it
    /// only says where the secret is.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.for_each_secret(|_, _, value| {
            if !is_reference(value) {
                *value = REDACTED.to_string();
            }
        });
        shown
    }

    /// Puts `stored`'s secret back wherever these settings hold [`REDACTED`], so that
    /// settings read from the API can be sent back with a change. Err names a masked
    /// value with nothing stored to keep.
    pub fn keep_secrets(&mut self, stored: Option<&UpstreamConfig>) -> Result<(), String> {
        let mut missing = None;
        self.for_each_secret(|kind, key, value| {
            if value == REDACTED {
                let kept = stored.and_then(|s| {
                    s.secret_values()
                        .find(|(k, n, _)| *k == kind && *n == key)
                        .map(|(_, _, v)| v.to_string())
                });
                match kept {
                    Some(kept) => *value = kept,
                    None => {
                        missing.get_or_insert(format!("{kind} '{key}'"));
                    }
                }
            }
        });
        missing.map_or(Ok(()), Err)
    }

    fn for_each_secret(&mut self, mut f: impl FnMut(&'static str, &str, &mut String)) {
        for (key, value) in &mut self.env {
            f("env", key, value);
        }
        for (key, value) in &mut self.headers {
            f("header", key, value);
        }
        if let Some(oauth) = &mut self.oauth {
            for (key, value) in [
                ("client_secret", &mut oauth.client_secret),
                ("private_key", &mut oauth.private_key),
            ] {
                if !value.is_empty() {
                    f("oauth", key, value);
                }
            }
        }
    }

    pub fn caches_tool(&self, tool: &str) -> bool {
        self.cache_tools
            .iter()
            .any(|p| crate::policy::glob(p, tool))
    }

    /// Whether the server's own allow/deny lists let anyone use `tool`.
    pub fn allows_tool(&self, tool: &str) -> bool {
        let matches = |p: &String| crate::policy::glob(p, tool);
        !self.tools_deny.iter().any(matches)
            && self
                .tools_allow
                .as_ref()
                .is_none_or(|a| a.iter().any(matches))
    }

    pub fn restricts_tools(&self) -> bool {
        self.tools_allow.is_some() || !self.tools_deny.is_empty()
    }
}

/// Why configuration could not be loaded. Displayed once, then the process exits 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration: {key}: {message}{}", source_suffix(.file))]
    Invalid {
        key: String,
        message: String,
        file: Option<PathBuf>,
    },
}

fn source_suffix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|p| format!(" (in {})", p.display()))
        .unwrap_or_default()
}

/// Where configuration comes from: an explicit file, or `gantry.toml` in the working
/// directory when present.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let (mut config, file) = parsed(explicit)?;
    // An empty issuer turns OIDC off, so a deployment template can pass the provider's
    // settings through unconditionally (GANTRY_AUTH__OIDC__ISSUER="" when none is used).
    if config
        .auth
        .oidc
        .as_ref()
        .is_some_and(|o| o.issuer.is_empty())
    {
        config.auth.oidc = None;
    }
    let invalid = |(key, message)| ConfigError::Invalid {
        key,
        message,
        file: file.clone(),
    };
    resolve_vault_references(&mut config).map_err(invalid)?;
    apply_database_passwords(&mut config.database).map_err(invalid)?;
    validate(&config).map_err(invalid)?;
    Ok(config)
}

/// `server.listen`, from a configuration that parses (unknown keys are still errors) but
/// without reading secrets from Vault or checking the rest: what `gantry healthcheck`
/// needs, every few seconds, in every container.
pub fn listen_address(explicit: Option<&Path>) -> Result<String, ConfigError> {
    Ok(parsed(explicit)?.0.server.listen)
}

/// The configuration as its sources give it — defaults, the file, `GANTRY_*` variables,
/// `GANTRY_*_FILE` files — parsed but not yet checked or completed from Vault; and the
/// file it came from, for messages.
fn parsed(explicit: Option<&Path>) -> Result<(Config, Option<PathBuf>), ConfigError> {
    let file = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_path_buf())),
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from("gantry.toml")).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // GANTRY_CONFIG names the file itself; it is not a setting. GANTRY_…_FILE variables
    // name files holding a setting's value (Docker secrets) and are read below.
    figment = figment.merge(
        Env::prefixed("GANTRY_")
            .split("__")
            .ignore(&["config"])
            .filter(|key| !key.as_str().to_ascii_lowercase().ends_with("_file")),
    );
    for (var, path) in std::env::vars() {
        let Some(name) = var
            .strip_prefix("GANTRY_")
            .and_then(|v| v.strip_suffix("_FILE"))
        else {
            continue;
        };
        let key = name.to_ascii_lowercase().replace("__", ".");
        let value = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
            key: key.clone(),
            message: format!("cannot read {path} (from {var}): {e}"),
            file: None,
        })?;
        figment = figment.merge((key, value.trim_end_matches(['\r', '\n']).to_string()));
    }
    let config = figment
        .extract()
        .map_err(|e| ConfigError::Parse(Box::new(e)))?;
    Ok((config, file))
}

/// Replaces every `vault:` reference in the configuration with the secret it names.
fn resolve_vault_references(config: &mut Config) -> Result<(), (String, String)> {
    fn collect(value: &serde_json::Value, path: String, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if s.starts_with("vault:") => out.push(path),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if child != "vault" {
                        collect(v, child, out);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    collect(v, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    fn slot<'a>(root: &'a mut serde_json::Value, path: &str) -> &'a mut serde_json::Value {
        let mut at = root;
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            at = &mut at[name];
            if let Some(i) = index {
                at = &mut at[i];
            }
        }
        at
    }
    let mut tree = serde_json::to_value(&*config).expect("configuration serializes");
    let mut paths = Vec::new();
    collect(&tree, String::new(), &mut paths);
    if paths.is_empty() {
        return Ok(());
    }
    let vault_config = config.vault.effective();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    runtime.block_on(async {
        let mut vault = crate::vault::Vault::login(&vault_config)
            .await
            .map_err(|e| ("vault".to_string(), e.to_string()))?;
        for path in &paths {
            let target = slot(&mut tree, path);
            let reference = target.as_str().unwrap_or_default().to_string();
            let secret = vault
                .resolve(&reference)
                .await
                .map_err(|e| (path.clone(), e.to_string()))?;
            *target = serde_json::Value::String(secret);
        }
        Ok::<_, (String, String)>(())
    })?;
    // serde's message would quote the offending value, which is a secret: not shown.
    *config = serde_json::from_value(tree).map_err(|_| {
        (
            "vault".to_string(),
            "a secret read from Vault does not fit its setting's type (e.g. text where a number is expected)".to_string(),
        )
    })?;
    tracing::debug!(count = paths.len(), "configuration secrets read from Vault");
    Ok(())
}

/// Puts `database.password` and `database.migrate_password` into their URLs, so every
/// consumer sees one complete URL. The messages never quote a URL: it holds a password.
fn apply_database_passwords(db: &mut DatabaseConfig) -> Result<(), (String, String)> {
    fn merge(url: &Secret, password: &Secret, key: &str) -> Result<Secret, (String, String)> {
        let mut parsed = url::Url::parse(url.expose()).map_err(|e| {
            (
                key.to_string(),
                format!("not a valid URL ({e}), so its password cannot be set"),
            )
        })?;
        if parsed.scheme() != "postgres" && parsed.scheme() != "postgresql" {
            return Err((
                key.to_string(),
                "a separate password applies to postgres:// URLs only".into(),
            ));
        }
        parsed
            .set_password(Some(password.expose()))
            .map_err(|()| (key.to_string(), "this URL cannot carry a password".into()))?;
        Ok(Secret::new(String::from(parsed)))
    }
    let pairs = [
        (
            &mut db.url,
            db.password.take(),
            "database.url",
            "database.password",
        ),
        (
            &mut db.migrate_url,
            db.migrate_password.take(),
            "database.migrate_url",
            "database.migrate_password",
        ),
    ];
    for (url, password, url_key, password_key) in pairs {
        let Some(password) = password else { continue };
        let current = url.as_ref().ok_or_else(|| {
            (
                password_key.to_string(),
                format!("is set but {url_key} is not"),
            )
        })?;
        *url = Some(merge(current, &password, url_key)?);
    }
    Ok(())
}

/// The longest a client timeout may be: a connection's watchdog keeps deadlines in
/// `Instant`s, and "for ever" is said with 0.
const MAX_CLIENT_TIMEOUT_SECS: u64 = 86_400;

/// Checks that serde cannot express: cross-field rules and value formats.
pub fn validate(config: &Config) -> Result<(), (String, String)> {
    config.server.listen.parse::<SocketAddr>().map_err(|e| {
        (
            "server.listen".into(),
            format!("{e} (expected e.g. 127.0.0.1:8080)"),
        )
    })?;
    if config.server.worker_threads == 0 || config.server.worker_threads > 1024 {
        return Err((
            "server.worker_threads".into(),
            "must be between 1 and 1024".into(),
        ));
    }
    for (key, secs) in [
        (
            "server.request_read_timeout_secs",
            config.server.request_read_timeout_secs,
        ),
        (
            "server.response_write_timeout_secs",
            config.server.response_write_timeout_secs,
        ),
        (
            "server.stream_resume_secs",
            config.server.stream_resume_secs,
        ),
    ] {
        if secs > MAX_CLIENT_TIMEOUT_SECS {
            return Err((
                key.into(),
                format!("must be at most {MAX_CLIENT_TIMEOUT_SECS} (a day); 0 turns it off"),
            ));
        }
    }
    if config.log.buffer_lines == 0 || config.log.buffer_lines > 1_000_000 {
        return Err((
            "log.buffer_lines".into(),
            "must be between 1 and 1000000".into(),
        ));
    }
    if config.server.max_body_bytes < 1024 {
        return Err((
            "server.max_body_bytes".into(),
            "must be at least 1024".into(),
        ));
    }
    if config.auth.session_ttl_secs == 0 {
        return Err(("auth.session_ttl_secs".into(), "must be at least 1".into()));
    }
    for (key, url) in [
        ("database.url", &config.database.url),
        ("database.migrate_url", &config.database.migrate_url),
    ] {
        if let Some(url) = url
            && crate::store::Dialect::of(url.expose()).is_none()
        {
            return Err((
                key.into(),
                "must start with postgres:// or sqlite: (e.g. sqlite://gantry.db)".into(),
            ));
        }
    }
    let audit_store = config.audit.store.expose();
    if audit_store != "sql"
        && !audit_store.starts_with("mongodb://")
        && !audit_store.starts_with("mongodb+srv://")
    {
        return Err((
            "audit.store".into(),
            "must be \"sql\" or a mongodb:// URL".into(),
        ));
    }
    let cache = config.cache.url.expose();
    if cache != "memory://" && !cache.starts_with("redis://") && !cache.starts_with("rediss://") {
        return Err((
            "cache.url".into(),
            "must be memory:// or a redis:// URL".into(),
        ));
    }
    for (i, origin) in config.api.cors_allowed_origins.iter().enumerate() {
        let parsed = reqwest::Url::parse(origin).ok();
        let ok = parsed.as_ref().is_some_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.path() == "/" && !origin.ends_with('/')
        }) && http::HeaderValue::from_str(origin).is_ok();
        if !ok {
            return Err((
                format!("api.cors_allowed_origins[{i}]"),
                "must be an origin such as https://admin.example.com (scheme and host, no path)"
                    .into(),
            ));
        }
    }
    for (i, url) in config.api.gateway_urls.iter().enumerate() {
        let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            return Err((
                format!("api.gateway_urls[{i}]"),
                "must be an http:// or https:// URL such as http://mcp_gateway:8080".into(),
            ));
        }
    }
    if config.audit.queue_capacity == 0 || config.audit.batch_size == 0 {
        return Err((
            "audit.queue_capacity".into(),
            "queue_capacity and batch_size must be at least 1".into(),
        ));
    }
    // A batch gathers inside the queue, so one larger than the queue never fills: events
    // would be dropped while the writer waits out the interval.
    if config.audit.batch_size > config.audit.queue_capacity {
        return Err((
            "audit.batch_size".into(),
            format!(
                "must not exceed audit.queue_capacity ({})",
                config.audit.queue_capacity
            ),
        ));
    }
    if !(1..=60_000).contains(&config.audit.flush_interval_ms) {
        return Err((
            "audit.flush_interval_ms".into(),
            "must be between 1 and 60000".into(),
        ));
    }
    if config.audit.retention_days == 0 {
        return Err(("audit.retention_days".into(), "must be at least 1".into()));
    }
    if config.database.max_connections == 0 {
        return Err((
            "database.max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    if let Some(secret) = &config.auth.jwt_secret
        && secret.expose().len() < 32
    {
        return Err((
            "auth.jwt_secret".into(),
            "must be at least 32 characters (`openssl rand -base64 48` makes one)".into(),
        ));
    }
    if let Some(oidc) = &config.auth.oidc {
        let issuer = reqwest::Url::parse(&oidc.issuer)
            .map_err(|e| ("auth.oidc.issuer".to_string(), e.to_string()))?;
        let loopback = matches!(issuer.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if issuer.scheme() != "https" && !loopback {
            return Err(("auth.oidc.issuer".into(), "must be an https:// URL".into()));
        }
        if oidc.audience.is_empty() {
            return Err(("auth.oidc.audience".into(), "must not be empty".into()));
        }
        if let Some(bad) = oidc
            .algorithms
            .iter()
            .find(|a| !crate::identity::oidc::ALLOWED.contains(&a.as_str()))
        {
            return Err((
                "auth.oidc.algorithms".into(),
                format!(
                    "'{bad}' is not allowed (use asymmetric ones: {})",
                    crate::identity::oidc::ALLOWED.join(", ")
                ),
            ));
        }
        if crate::store::identity::Role::parse(&oidc.role).is_none() {
            return Err((
                "auth.oidc.role".into(),
                "must be owner, admin, member or viewer".into(),
            ));
        }
    }
    if config.auth.access_token_ttl_secs == 0 || config.auth.refresh_token_ttl_secs == 0 {
        return Err((
            "auth.access_token_ttl_secs".into(),
            "token lifetimes must be at least 1 second".into(),
        ));
    }
    if config.gateway.separator.is_empty() {
        return Err(("gateway.separator".into(), "must not be empty".into()));
    }
    for (i, key) in config.auth.api_keys.iter().enumerate() {
        let valid = key.sha256.len() == 64 && key.sha256.chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            return Err((
                format!("auth.api_keys[{i}].sha256"),
                "must be 64 hex characters (the SHA-256 of the key; `gantry hash-key` prints it)"
                    .into(),
            ));
        }
    }
    if let Some(key) = &config.auth.session_key {
        crate::gateway::session::decode_key(key.expose())
            .map_err(|m| ("auth.session_key".to_string(), m.to_string()))?;
    }
    for (name, upstream) in &config.upstreams {
        validate_upstream(name, upstream)?;
    }
    Ok(())
}

pub fn validate_upstream(name: &str, u: &UpstreamConfig) -> Result<(), (String, String)> {
    let key = |field: &str| format!("upstreams.{name}.{field}");
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err((
            format!("upstreams.{name}"),
            "server names are 1-64 characters of [A-Za-z0-9_-]".into(),
        ));
    }
    match u.transport {
        TransportKind::Stdio => {
            if u.command.as_deref().is_none_or(str::is_empty) {
                return Err((key("command"), "required when transport = \"stdio\"".into()));
            }
            if u.url.is_some() {
                return Err((key("url"), "not used when transport = \"stdio\"".into()));
            }
        }
        TransportKind::StreamableHttp | TransportKind::Sse => {
            let Some(url) = &u.url else {
                return Err((key("url"), "required for remote transports".into()));
            };
            let parsed = reqwest::Url::parse(url).map_err(|e| (key("url"), e.to_string()))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err((key("url"), "must be an http:// or https:// URL".into()));
            }
            if u.command.is_some() {
                return Err((
                    key("command"),
                    "only used when transport = \"stdio\"".into(),
                ));
            }
        }
    }
    if let Some(oauth) = &u.oauth {
        if u.transport != TransportKind::StreamableHttp {
            return Err((
                key("oauth"),
                "only for transport = \"streamable-http\"".into(),
            ));
        }
        if oauth.client_id.is_empty() {
            return Err((key("oauth.client_id"), "must not be empty".into()));
        }
        let secret = ("client_secret", &oauth.client_secret);
        let private_key = ("private_key", &oauth.private_key);
        let (auth, (needed, value), (unused, other)) = match oauth.token_endpoint_auth {
            TokenEndpointAuth::ClientSecretBasic => ("client_secret_basic", secret, private_key),
            TokenEndpointAuth::ClientSecretPost => ("client_secret_post", secret, private_key),
            TokenEndpointAuth::PrivateKeyJwt => ("private_key_jwt", private_key, secret),
        };
        if value.is_empty() {
            return Err((
                key(&format!("oauth.{needed}")),
                format!("required with token_endpoint_auth = \"{auth}\""),
            ));
        }
        if !other.is_empty() {
            return Err((
                key(&format!("oauth.{unused}")),
                format!("not used with token_endpoint_auth = \"{auth}\""),
            ));
        }
    }
    if u.timeout_secs == 0 {
        return Err((key("timeout_secs"), "must be at least 1".into()));
    }
    if u.max_concurrency == 0 {
        return Err((key("max_concurrency"), "must be at least 1".into()));
    }
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&u.max_message_bytes) {
        return Err((
            key("max_message_bytes"),
            format!("must be from {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES} (1 GiB)"),
        ));
    }
    if u.rate_limit_per_minute == Some(0) {
        return Err((
            key("rate_limit_per_minute"),
            "must be at least 1 (omit it for no limit)".into(),
        ));
    }
    for (field, list) in [
        ("tools_allow", u.tools_allow.clone().unwrap_or_default()),
        ("tools_deny", u.tools_deny.clone()),
    ] {
        if let Some(bad) = list.iter().find(|p| !crate::policy::valid_pattern(p)) {
            return Err((
                key(field),
                format!("'{bad}' is not a tool name or a prefix ending in *"),
            ));
        }
    }
    Ok(())
}

/// Resolves `env:NAME` and `file:/path` references in upstream environment and header
/// values. Plain values are used as they are.
pub fn resolve_reference(value: &str) -> Result<String, String> {
    if let Some(var) = value.strip_prefix("env:") {
        std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
    } else if let Some(path) = value.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("cannot read {path}: {e}"))
    } else {
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_in_file_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gantry.toml");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("gantry.toml"), "{err}");
    }

    #[test]
    fn stdio_upstream_without_command_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "[upstreams.time]\ntransport = \"stdio\"\n").unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("upstreams.time.command"), "{err}");
        assert!(err.contains("g.toml"), "{err}");
    }

    #[test]
    fn oauth_is_for_streamable_http_servers_and_its_secret_stays_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        let oauth = "[upstreams.s.oauth]\nclient_id = \"gantry\"\nclient_secret = \"hunter2\"\n";
        std::fs::write(
            &path,
            format!("[upstreams.s]\ntransport = \"sse\"\nurl = \"https://a.example/sse\"\n{oauth}"),
        )
        .unwrap();
        let err = load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("upstreams.s.oauth"), "{err}");
        std::fs::write(
            &path,
            format!("[upstreams.s]\ntransport = \"streamable-http\"\nurl = \"https://a.example/mcp\"\n{oauth}token_endpoint_auth = \"client_secret_post\"\n"),
        )
        .unwrap();
        let config = load(Some(&path)).unwrap();
        let upstream = &config.upstreams["s"];
        let oauth = upstream.oauth.as_ref().unwrap();
        assert_eq!(
            oauth.token_endpoint_auth,
            TokenEndpointAuth::ClientSecretPost
        );
        assert!(!format!("{upstream:?}").contains("hunter2"));
    }

    #[test]
    fn each_way_of_authenticating_to_the_token_endpoint_takes_its_own_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        let check = |oauth: &str| {
            std::fs::write(
                &path,
                format!("[upstreams.s]\ntransport = \"streamable-http\"\nurl = \"https://a.example/mcp\"\n[upstreams.s.oauth]\nclient_id = \"gantry\"\n{oauth}"),
            )
            .unwrap();
            load(Some(&path))
                .map(|c| c.upstreams["s"].clone())
                .map_err(|e| e.to_string())
        };
        let jwt = "token_endpoint_auth = \"private_key_jwt\"\n";
        let err = check(jwt).unwrap_err();
        assert!(err.contains("upstreams.s.oauth.private_key: required with token_endpoint_auth = \"private_key_jwt\""), "{err}");
        let err = check(&format!(
            "{jwt}private_key = \"file:/k.pem\"\nclient_secret = \"s\"\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("upstreams.s.oauth.client_secret: not used"),
            "{err}"
        );
        let err = check("private_key = \"file:/k.pem\"\n").unwrap_err();
        assert!(err.contains("upstreams.s.oauth.client_secret: required with token_endpoint_auth = \"client_secret_basic\""), "{err}");
        let upstream = check(&format!(
            "{jwt}private_key = \"-----BEGIN PRIVATE KEY-----\"\nsigning_alg = \"ES256\"\n"
        ))
        .unwrap();
        let oauth = upstream.oauth.as_ref().unwrap();
        assert_eq!(oauth.signing_alg, AssertionAlg::ES256);
        assert!(
            !format!("{upstream:?}").contains("BEGIN"),
            "the key stays out of debug output"
        );
        let shown = upstream.redacted();
        assert_eq!(shown.oauth.as_ref().unwrap().private_key, REDACTED);
        assert!(
            shown.oauth.as_ref().unwrap().client_secret.is_empty(),
            "nothing given, nothing masked"
        );
        let err = check("signing_alg = \"HS256\"\nclient_secret = \"s\"\n").unwrap_err();
        assert!(
            err.contains("HS256"),
            "a shared-secret algorithm is no private key's: {err}"
        );
    }

    #[test]
    fn secrets_are_masked_for_display_and_kept_when_the_mask_comes_back() {
        let mut stored = UpstreamConfig::stdio("srv", vec![]);
        stored.env.insert("TOKEN".into(), "t0ps3cret".into());
        stored.env.insert("FROM".into(), "env:GITHUB_TOKEN".into());
        stored.oauth = Some(OAuthClient {
            client_id: "gantry".into(),
            client_secret: "hunter2".into(),
            private_key: String::new(),
            signing_alg: AssertionAlg::default(),
            assertion_audience: None,
            scope: None,
            token_endpoint_auth: TokenEndpointAuth::default(),
        });
        let mut shown = stored.redacted();
        assert_eq!(shown.env["TOKEN"], REDACTED);
        assert_eq!(
            shown.env["FROM"], "env:GITHUB_TOKEN",
            "a reference is shown"
        );
        assert_eq!(shown.oauth.as_ref().unwrap().client_secret, REDACTED);
        assert!(!serde_json::to_string(&shown).unwrap().contains("s3cret"));

        shown.env.insert("NEW".into(), "plain".into());
        shown.keep_secrets(Some(&stored)).unwrap();
        assert_eq!(shown.env["TOKEN"], "t0ps3cret");
        assert_eq!(shown.oauth.as_ref().unwrap().client_secret, "hunter2");
        assert_eq!(shown.env["NEW"], "plain");

        let mut masked = stored.redacted();
        masked
            .headers
            .insert("Authorization".into(), REDACTED.into());
        assert_eq!(
            masked.keep_secrets(Some(&stored)).unwrap_err(),
            "header 'Authorization'"
        );
    }

    #[test]
    fn bad_hash_is_rejected() {
        let mut config = Config::default();
        config.auth.api_keys.push(ApiKeyConfig {
            name: "k".into(),
            sha256: "abc".into(),
        });
        let (key, _) = validate(&config).unwrap_err();
        assert_eq!(key, "auth.api_keys[0].sha256");
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn references_resolve_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        assert_eq!(
            resolve_reference(&format!("file:{}", path.display())).unwrap(),
            "from-file"
        );
        assert_eq!(resolve_reference("plain").unwrap(), "plain");
        assert!(
            resolve_reference("env:GANTRY_TEST_SURELY_UNSET_VAR")
                .unwrap_err()
                .contains("GANTRY_TEST_SURELY_UNSET_VAR")
        );
    }

    #[test]
    fn database_password_goes_into_the_url_encoded() {
        let mut db = DatabaseConfig {
            url: Some(Secret::new("postgres://gantry_app@database:5432/appdb")),
            password: Some(Secret::new("p@ss/w:rd")),
            ..DatabaseConfig::default()
        };
        apply_database_passwords(&mut db).unwrap();
        let url = db.url.unwrap();
        assert_eq!(
            url.expose(),
            "postgres://gantry_app:p%40ss%2Fw%3Ard@database:5432/appdb"
        );
        assert!(db.password.is_none());
    }

    #[test]
    fn database_password_without_url_names_the_key_and_hides_the_value() {
        let mut db = DatabaseConfig {
            migrate_password: Some(Secret::new("hunter2")),
            ..DatabaseConfig::default()
        };
        let (key, message) = apply_database_passwords(&mut db).unwrap_err();
        assert_eq!(key, "database.migrate_password");
        assert!(!message.contains("hunter2"));
        let mut db = DatabaseConfig {
            url: Some(Secret::new("sqlite://gantry.db")),
            password: Some(Secret::new("hunter2")),
            ..DatabaseConfig::default()
        };
        let (key, message) = apply_database_passwords(&mut db).unwrap_err();
        assert_eq!(key, "database.url");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
