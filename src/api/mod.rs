//! The control plane under `/api`: health, status, identity, tenants, members and API
//! keys. Handlers are thin: they check the caller's rights, call the store, and map
//! errors through [`error::ApiError`] — the one place errors become responses.

pub mod audit;
pub mod auth;
pub mod caller;
pub mod error;
pub mod health;
pub mod input;
pub mod keys;
pub mod openapi;
pub mod pagination;
pub mod servers;
pub mod tenants;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::throttle::LoginThrottle;
use crate::identity::tokens::TokenIssuer;
use crate::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub tokens: Arc<TokenIssuer>,
    pub throttle: Arc<LoginThrottle>,
    pub config: Arc<Config>,
    pub started: Instant,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The in-process gateway (`gantry serve`), for upstream health in the status.
    pub gateway: Option<Arc<Gateway>>,
    /// Where audit events are read from; `None` when auditing is off.
    pub audit: Option<Arc<dyn crate::audit::AuditStore>>,
    /// The external identity provider, when `auth.oidc` is configured.
    pub oidc: Option<Arc<crate::identity::oidc::OidcVerifier>>,
    /// The shared cache (`cache.url`), when it is Redis.
    pub redis: Option<redis::aio::ConnectionManager>,
    pub role: &'static str,
}

pub fn router<S: Clone + Send + Sync + 'static>(state: ApiState) -> Router<S> {
    let v1 = Router::new()
        .route("/status", get(health::status))
        .route("/audit", get(audit::list))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{id}", get(tenants::get))
        .route(
            "/tenants/{id}/policy",
            get(tenants::get_policy).put(tenants::put_policy),
        )
        .route("/users", get(users::list).post(users::add))
        .route("/users/{id}", axum::routing::delete(users::remove))
        .route("/servers", get(servers::list).post(servers::create))
        .route(
            "/servers/{id}",
            get(servers::get)
                .put(servers::update)
                .delete(servers::delete),
        )
        .route("/servers/{id}/restart", post(servers::restart))
        .route("/servers/{id}/health", get(servers::health))
        .route("/servers/{id}/tools", get(servers::tools))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}", get(keys::get).delete(keys::revoke));
    let cors = cors(&state.config.api.cors_allowed_origins);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/api/docs")
        .config(utoipa_swagger_ui::Config::from("/api/openapi.json"));
    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi::document))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    Router::new().merge(docs).nest("/api", api).layer(cors)
}

/// Cross-origin access for the listed browser origins only; credentials travel in the
/// Authorization header, never in cookies, so none are allowed.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use http::{HeaderName, HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("route")
}
