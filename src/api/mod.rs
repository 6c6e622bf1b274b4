//! The control plane under `/api`: health, status, identity, tenants, members and API
//! keys. Handlers are thin: they check the caller's rights, call the store, and map
//! errors through [`error::ApiError`] — the one place errors become responses.

pub mod auth;
pub mod caller;
pub mod error;
pub mod health;
pub mod input;
pub mod keys;
pub mod openapi;
pub mod pagination;
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
    pub role: &'static str,
}

pub fn router<S: Clone + Send + Sync + 'static>(state: ApiState) -> Router<S> {
    let v1 = Router::new()
        .route("/status", get(health::status))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/me", get(auth::me))
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{id}", get(tenants::get))
        .route("/users", get(users::list).post(users::add))
        .route("/users/{id}", axum::routing::delete(users::remove))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{id}", get(keys::get).delete(keys::revoke));
    let api = Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi::document))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    Router::new().nest("/api", api)
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("route")
}
