//! Builds and runs the HTTP application: routes, middleware, start-up checks, and the
//! orderly shutdown (stop accepting, drain, end every upstream).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use http::{HeaderName, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::LatencyUnit;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::api::ApiState;
use crate::audit::AuditStore;
use crate::audit::mongo::MongoAudit;
use crate::audit::queue::AuditWriter;
use crate::audit::sql::SqlAudit;
use crate::config::{Config, EMBEDDED_DATABASE, PrefixMode, UpstreamConfig};
use crate::gateway::auth::{self, ConfigKeys};
use crate::gateway::host_policy::HostPolicy;
use crate::gateway::session::{SessionCodec, decode_key};
use crate::gateway::session_feed::SessionFeed;
use crate::gateway::{self, Gateway, aggregate};
use crate::identity::key_auth::KeyAuthenticator;
use crate::identity::throttle::LoginThrottle;
use crate::identity::tokens::TokenIssuer;
use crate::store::{Dialect, Store};
use crate::telemetry::http_metrics::HttpMetricsLayer;
use crate::telemetry::metrics as m;
use crate::upstream::{ListKind, State as UpState, Upstreams};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which role is running; `serve` adds the embedded defaults a first run needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Serve,
    /// The control plane alone.
    Api,
    Gateway,
    /// One stdio server served over Streamable HTTP; `open` accepts unauthenticated
    /// callers (an explicit choice for private networks).
    Bridge {
        open: bool,
    },
}

/// Start-up failures that are the operator's to fix: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// A dependency (the database) could not be used: exit code 1, it may come back.
    #[error("{0}")]
    Dependency(String),
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Api => "api",
            Role::Gateway => "gateway",
            Role::Bridge { .. } => "bridge",
        }
    }

    fn serves_api(self) -> bool {
        matches!(self, Role::Serve | Role::Api)
    }

    fn serves_mcp(self) -> bool {
        !matches!(self, Role::Api)
    }
}

/// Opens the database a role needs, migrating it first when configured to (the default
/// for the embedded SQLite file). `gantry gateway` uses one only when `database.url` is
/// set; the bridge never does.
pub async fn open_store(config: &Config, role: Role) -> Result<Option<Store>, StartupError> {
    let url = match (&config.database.url, role) {
        (Some(url), Role::Serve | Role::Api | Role::Gateway) => url.expose().to_string(),
        (None, Role::Serve | Role::Api) => EMBEDDED_DATABASE.to_string(),
        _ => return Ok(None),
    };
    let dialect = Dialect::of(&url).expect("validated");
    let store = Store::connect(&url, &config.database).await.map_err(|e| {
        StartupError::Dependency(format!("cannot open the {} database: {e}", dialect.name()))
    })?;
    let migrate = config
        .database
        .migrate_on_start
        .unwrap_or(dialect == Dialect::Sqlite);
    if migrate {
        // The services' own role may not change the schema: migrations run through
        // migrate_url (the owner) when one is set, on a connection of their own.
        let applied = match &config.database.migrate_url {
            Some(owner_url) => {
                let owner = Store::connect(owner_url.expose(), &config.database)
                    .await
                    .map_err(|e| {
                        StartupError::Dependency(format!(
                            "cannot open the {} database through database.migrate_url: {e}",
                            dialect.name()
                        ))
                    })?;
                let applied = owner.migrate().await;
                owner.close().await;
                applied
            }
            None => store.migrate().await,
        }
        .map_err(|e| StartupError::Dependency(e.to_string()))?;
        if applied > 0 {
            tracing::info!(
                applied,
                backend = dialect.name(),
                "database migrations applied"
            );
        }
    }
    store
        .check_migrated()
        .await
        .map_err(|e| StartupError::Dependency(e.to_string()))?;
    Ok(Some(store))
}

/// The audit store the configuration names, if auditing is on and the role has one.
async fn open_audit(
    config: &Config,
    role: Role,
    store: Option<&Store>,
) -> Result<Option<Arc<dyn AuditStore>>, StartupError> {
    if !config.audit.enabled || matches!(role, Role::Bridge { .. }) {
        return Ok(None);
    }
    let url = config.audit.store.expose();
    if url == "sql" {
        return Ok(match store {
            Some(store) => Some(Arc::new(SqlAudit::new(store.clone()))),
            None => {
                tracing::warn!(
                    "audit is off: audit.store = \"sql\" needs database.url (or set audit.store to a mongodb:// URL)"
                );
                None
            }
        });
    }
    let mongo = MongoAudit::connect(url, config.audit.retention_days)
        .await
        .map_err(|e| StartupError::Config(format!("invalid configuration: audit.store: {e}")))?;
    Ok(Some(Arc::new(mongo)))
}

/// The Redis the configuration names (`cache.url`): its client and a connection
/// connected lazily, so a Redis that is down at start-up degrades rate limits to
/// in-process (and ended sessions to this replica) instead of stopping the service.
fn open_redis(
    config: &Config,
) -> Result<Option<(redis::Client, redis::aio::ConnectionManager)>, StartupError> {
    let url = config.cache.url.expose();
    if url == "memory://" {
        return Ok(None);
    }
    let client = redis::Client::open(url).map_err(|e| {
        StartupError::Config(format!("invalid configuration: cache.url: {:?}", e.kind()))
    })?;
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), settings)
        .map(|conn| Some((client, conn)))
        .map_err(|e| {
            StartupError::Config(format!("invalid configuration: cache.url: {:?}", e.kind()))
        })
}

/// The secret signing access tokens; a random one (with a warning) when none is set.
fn token_issuer(config: &Config) -> TokenIssuer {
    let secret = match &config.auth.jwt_secret {
        Some(secret) => secret.expose().as_bytes().to_vec(),
        None => {
            tracing::warn!(
                "auth.jwt_secret is not set: access tokens will not survive a restart or work across replicas"
            );
            let mut bytes = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
            bytes
        }
    };
    TokenIssuer::new(&secret, config.auth.access_token_ttl_secs)
}

#[derive(Clone)]
struct AppState {
    gateway: Arc<Gateway>,
    metrics: PrometheusHandle,
}

pub struct Application {
    listener: tokio::net::TcpListener,
    role: Role,
    gateway: Arc<Gateway>,
    store: Option<Store>,
    audit_writer: Option<AuditWriter>,
    api: Option<ApiState>,
    metrics: PrometheusHandle,
    grace: Duration,
    /// The key generated for this run when none is configured (printed in the banner).
    pub generated_key: Option<String>,
}

impl Application {
    pub async fn build(mut config: Config, role: Role) -> Result<Self, StartupError> {
        if role == Role::Api {
            // The control plane alone runs no MCP servers.
            config.upstreams.clear();
        }
        let store = open_store(&config, role).await?;
        let audit_store = open_audit(&config, role, store.as_ref()).await?;
        if role == Role::Serve && config.upstreams.is_empty() && config.gateway.demo_upstream {
            let exe = std::env::current_exe().map_err(|e| {
                StartupError::Config(format!("cannot locate the gantry binary: {e}"))
            })?;
            config.upstreams.insert(
                "demo".into(),
                UpstreamConfig::stdio(exe.to_string_lossy(), vec!["demo-upstream".into()]),
            );
        }
        let mut keys = ConfigKeys::from_config(&config.auth);
        let generated_key = match (keys.is_empty(), role) {
            (true, Role::Serve) => {
                let key = auth::generate_key();
                keys.add("generated", &key);
                Some(key)
            }
            (true, Role::Gateway) if store.is_none() => {
                return Err(StartupError::Config(
                    "invalid configuration: auth.api_keys: the gateway role needs database.url (for keys issued by the control plane) or at least one configured API key (`gantry keygen` makes one)".into(),
                ));
            }
            (true, Role::Bridge { open: false }) => {
                return Err(StartupError::Config(
                    "invalid configuration: auth.api_keys: the bridge needs at least one API key, or --no-auth on a private network".into(),
                ));
            }
            _ => None,
        };
        let authenticator: Arc<dyn auth::Authenticator> = match role {
            Role::Bridge { open: true } => {
                tracing::warn!(
                    "bridge started with --no-auth: any caller that can reach it may use the server"
                );
                Arc::new(auth::Anonymous)
            }
            _ => Arc::new(KeyAuthenticator::new(
                keys,
                store.clone(),
                Duration::from_secs(config.auth.api_key_cache_secs),
            )),
        };
        let pinned = match role {
            Role::Bridge { .. } => config.upstreams.keys().next().cloned(),
            _ => None,
        };
        let sessions = match &config.auth.session_key {
            Some(key) => SessionCodec::new(
                decode_key(key.expose())
                    .map_err(|e| StartupError::Config(format!("auth.session_key: {e}")))?,
            ),
            None => {
                tracing::warn!(
                    "auth.session_key is not set: sessions will not survive a restart or move between replicas"
                );
                SessionCodec::random()
            }
        };
        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .map_err(|e| StartupError::Bind(config.server.listen.clone(), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(config.server.listen.clone(), e))?;
        let metrics = m::install();
        let config = Arc::new(config);
        let hosts = HostPolicy::new(&config.server, bound);
        let upstreams = Upstreams::start(&config);
        let mut gateway = Gateway::new(
            Arc::clone(&config),
            upstreams,
            sessions,
            authenticator,
            hosts,
        );
        gateway.pinned = pinned;
        let redis_client = open_redis(&config)?;
        if let Some((client, conn)) = &redis_client {
            gateway.session_feed = Arc::new(SessionFeed::shared(
                client.clone(),
                conn.clone(),
                &config.cache.key_prefix,
            ));
        }
        let redis = redis_client.map(|(_, conn)| conn);
        gateway.limits =
            crate::gateway::limits::Limits::new(redis.clone(), &config.cache.key_prefix);
        let audit_writer = match (&audit_store, role.serves_mcp()) {
            (Some(audit), true) => {
                let (queue, writer) = crate::audit::queue::start(Arc::clone(audit), &config.audit);
                gateway.audit = Some(queue);
                Some(writer)
            }
            _ => None,
        };
        let gateway = Arc::new(gateway);
        if role.serves_mcp() {
            // Weak: the subscription must not keep the gateway alive.
            let weak = Arc::downgrade(&gateway);
            gateway
                .session_feed
                .follow(gateway.shutdown.clone(), move |heard| {
                    if let Some(gateway) = weak.upgrade() {
                        gateway.heard(heard);
                    }
                });
        }
        if let (Some(store), true) = (
            &store,
            role.serves_mcp() && !matches!(role, Role::Bridge { .. }),
        ) {
            let listen_url = config
                .database
                .url
                .as_ref()
                .map(|u| u.expose().to_string())
                .filter(|u| Dialect::of(u) == Some(Dialect::Postgres));
            crate::gateway::registry::start(Arc::clone(&gateway), store.clone(), listen_url).await;
        }
        let api = match (&store, role.serves_api()) {
            (Some(store), true) => Some(ApiState {
                store: store.clone(),
                tokens: Arc::new(token_issuer(&config)),
                throttle: Arc::new(LoginThrottle::new(
                    config.auth.login_max_failures,
                    Duration::from_secs(config.auth.login_window_secs),
                )),
                config: Arc::clone(&config),
                started: Instant::now(),
                started_at: chrono::Utc::now(),
                gateway: role.serves_mcp().then(|| Arc::clone(&gateway)),
                audit: audit_store.clone(),
                redis: redis.clone(),
                oidc: config
                    .auth
                    .oidc
                    .clone()
                    .map(|c| Arc::new(crate::identity::oidc::OidcVerifier::new(c))),
                role: role.name(),
            }),
            _ => None,
        };
        Ok(Self {
            listener,
            role,
            store,
            audit_writer,
            api,
            grace: Duration::from_secs(config.server.shutdown_grace_secs),
            gateway,
            metrics,
            generated_key,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Waits for every upstream's first connection attempt, then enforces start-up rules
    /// that need the upstreams' answers.
    pub async fn wait_ready(&self) -> Result<(), StartupError> {
        let wait = self
            .gateway
            .upstreams
            .all()
            .iter()
            .map(|u| u.timeout())
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        self.gateway.upstreams.wait_attempted(wait).await;
        if self.gateway.config.gateway.prefix_mode == PrefixMode::Never {
            for kind in [ListKind::Tools, ListKind::Prompts] {
                let merged = aggregate::merged(&self.gateway, kind, None).await;
                if let Some((name, a, b)) = merged.conflicts.first() {
                    return Err(StartupError::Config(format!(
                        "invalid configuration: gateway.prefix_mode: \"never\", but {} '{name}' is offered by both '{a}' and '{b}' (use \"on-conflict\" or \"always\")",
                        if kind == ListKind::Tools {
                            "tool"
                        } else {
                            "prompt"
                        }
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn router(&self) -> Router {
        let state = AppState {
            gateway: Arc::clone(&self.gateway),
            metrics: self.metrics.clone(),
        };
        let mcp = Router::new()
            .route(
                "/mcp",
                axum::routing::post(gateway::http::post_aggregate)
                    .get(gateway::http::get_aggregate)
                    .delete(gateway::http::delete_aggregate),
            )
            .route("/api/v1/tools", get(gateway::rest::list))
            .route(
                "/api/v1/tools/{name}/call",
                axum::routing::post(gateway::rest::call),
            )
            .route(
                "/mcp/{server}",
                axum::routing::post(gateway::http::post_server)
                    .get(gateway::http::get_server)
                    .delete(gateway::http::delete_server),
            )
            .with_state(Arc::clone(&self.gateway));
        let mut routes: Router<AppState> = Router::new();
        if self.role.serves_mcp() {
            routes = routes.merge(mcp);
        }
        if let Some(api) = &self.api {
            routes = routes.merge(crate::api::router(api.clone()));
        }
        routes
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(state)
            .route_layer(HttpMetricsLayer::default())
    }

    /// Serves until SIGTERM/SIGINT (or `stop`), then drains for at most the grace
    /// period and ends every upstream.
    pub async fn run(
        self,
        ready_file: Option<PathBuf>,
        stop: Option<tokio_util::sync::CancellationToken>,
    ) -> anyhow::Result<()> {
        // Layers every request passes once go around the router: given to `Router::layer`
        // they would wrap, and box, every route again.
        let app = tower::ServiceBuilder::new()
            // axum serves responses with its own body type.
            .map_response(|response: http::Response<_>| response.map(axum::body::Body::new))
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                        tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
                    })
                    // One access-log line per request, carrying the request id via its span.
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO).latency_unit(LatencyUnit::Micros)),
            )
            .layer(DefaultBodyLimit::max(self.gateway.config.server.max_body_bytes))
            .service(self.router());
        let addr = self.local_addr();
        if let Some(path) = ready_file {
            std::fs::write(&path, addr.to_string())?;
        }
        let gateway = Arc::clone(&self.gateway);
        let shutdown = gateway.shutdown.clone();
        let signal_token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal(stop).await;
            tracing::info!("shutdown requested: no new connections, draining in-flight requests");
            signal_token.cancel();
        });
        let seconds = |secs| (secs > 0).then(|| Duration::from_secs(secs));
        let timeouts = crate::http_server::Timeouts {
            read: seconds(self.gateway.config.server.request_read_timeout_secs),
            write: seconds(self.gateway.config.server.response_write_timeout_secs),
        };
        // Without TCP_NODELAY every small SSE event waits on the peer's delayed ACK (~40 ms).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(crate::http_server::serve(
            listener,
            app,
            timeouts,
            shutdown.clone(),
        ));
        shutdown.cancelled().await;
        let started = Instant::now();
        match tokio::time::timeout(self.grace, server).await {
            Ok(_) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "in-flight requests drained"
            ),
            Err(_) => tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "grace period over: abandoning remaining requests"
            ),
        }
        gateway.upstreams.shutdown().await;
        if let Some(writer) = self.audit_writer {
            writer.shutdown(self.grace).await;
        }
        if let Some(store) = &self.store {
            store.close().await;
        }
        tracing::info!("all upstreams stopped; bye");
        Ok(())
    }
}

async fn wait_for_signal(stop: Option<tokio_util::sync::CancellationToken>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let external = async {
        match stop {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = external => {}
    }
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// Ready once every upstream had its first connection attempt and while not shutting
/// down. A down upstream does not make the gateway unready: it degrades, and says so.
async fn ready(State(state): State<AppState>) -> Response {
    let gw = &state.gateway;
    // Servers of the configuration file by name; tenants' registered servers only as
    // counts, since this endpoint answers anyone.
    let all = gw.upstreams.all();
    let (configured, registered): (Vec<_>, Vec<_>) = all.iter().partition(|u| u.tenant.is_none());
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for u in &registered {
        *counts.entry(u.state().label()).or_default() += 1;
    }
    let upstreams: serde_json::Map<String, serde_json::Value> = configured
        .iter()
        .map(|u| {
            let status = match u.state() {
                UpState::Up(_) => json!({ "status": "up", "restarts": u.restarts() }),
                UpState::Starting => json!({ "status": "starting", "restarts": u.restarts() }),
                UpState::Down(down) => {
                    json!({ "status": "down", "reason": down.reason, "restarts": u.restarts() })
                }
            };
            (u.name.clone(), status)
        })
        .collect();
    let attempted = gw.upstreams.all_attempted();
    // A gateway is ready once it tried every upstream: one broken server must not take
    // the others out of service. A bridge serves one server and nothing else, so it is
    // ready only while that server is up; otherwise its container reports unhealthy.
    let serving = match &gw.pinned {
        Some(name) => configured
            .iter()
            .any(|u| u.name == *name && matches!(u.state(), UpState::Up(_))),
        None => attempted,
    };
    let is_ready = serving && !gw.shutdown.is_cancelled();
    let status = if is_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if gw.shutdown.is_cancelled() {
        "stopping"
    } else if is_ready {
        "ready"
    } else if attempted {
        "unavailable"
    } else {
        "starting"
    };
    let body = json!({ "status": word, "upstreams": upstreams, "registered": counts });
    (status, axum::Json(body)).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let upstreams = state.gateway.upstreams.all();
    let upstreams: Vec<_> = upstreams.iter().map(|u| u.metrics_state()).collect();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics::render(&state.metrics, &upstreams),
    )
}
