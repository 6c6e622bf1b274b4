//! The MCP server registry of the caller's tenant. Servers registered here run on every
//! gateway, for this tenant only, under the same name rules as configured ones. A stdio
//! server runs a command on the gateway host, so only platform administrators may
//! register one; remote URLs may not point at loopback, link-local or cloud metadata
//! addresses (SSRF) unless `registry.allowed_hosts` names the host.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::ApiJson;
use crate::config::{REDACTED, TransportKind, UpstreamConfig, is_reference, validate_upstream};
use crate::store::StoreError;
use crate::store::identity::Role;
use crate::store::registry::Server;
use crate::upstream::egress::Egress;
use crate::upstream::{ListKind, State as UpState, scoped_key};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerInput {
    /// 1–64 of `A-Za-z0-9_-`; tools appear as `{name}__{tool}` on `/mcp`.
    pub name: String,
    /// As an `[upstreams.NAME]` table of gantry.toml: `transport` (`stdio`,
    /// `streamable-http`, `sse`), `command`/`args`/`env`/`cwd` or `url`/`headers`,
    /// `timeout_secs`, `max_concurrency`, `enabled`, `oauth`, … Values of `env` and
    /// `headers`, and `oauth.client_secret` or `oauth.private_key`, may be `env:NAME` or
    /// `file:/path` references (platform administrators only). Secrets given as themselves
    /// are shown as `***`; `***` sent back keeps the stored secret.
    #[schema(value_type = Object)]
    pub settings: UpstreamConfig,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerList {
    pub items: Vec<Server>,
}

/// The caller's tenant's server `id`; another tenant's is 404 like a missing one.
async fn load(state: &ApiState, caller: &Caller, id: &str) -> Result<Server, ApiError> {
    state
        .store
        .server(&caller.tenant_id, id)
        .await
        .map_err(not_found)
}

/// A server as callers see it: secrets given as themselves masked (viewers may read it,
/// and an upstream's credentials are not theirs to see).
fn shown(server: Server) -> Server {
    Server {
        settings: server.settings.redacted(),
        ..server
    }
}

/// A masked secret sent back keeps the stored one; with none stored it is an error.
fn keep_secrets(
    settings: &mut UpstreamConfig,
    stored: Option<&UpstreamConfig>,
) -> Result<(), ApiError> {
    settings.keep_secrets(stored).map_err(|what| {
        ApiError::validation(
            "settings",
            format!("{what} is '{REDACTED}', which stands for a stored secret, and there is none: give the value"),
        )
    })
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("server"),
        other => other.into(),
    }
}

async fn check_target(state: &ApiState, settings: &UpstreamConfig) -> Result<(), ApiError> {
    let Some(url) = &settings.url else {
        return Ok(());
    };
    let invalid = |m: String| ApiError::validation("settings.url", m);
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    match Egress::new(&state.config.registry.allowed_hosts)
        .refusal(&parsed)
        .await
        .map_err(invalid)?
    {
        Some(refusal) => Err(invalid(refusal)),
        None => Ok(()),
    }
}

/// Everything a registration must satisfy; errors name the field.
async fn check(state: &ApiState, caller: &Caller, input: &ServerInput) -> Result<(), ApiError> {
    caller.require(Role::Admin)?;
    if input.settings.transport == TransportKind::Stdio {
        caller.require_platform_admin().map_err(|_| {
            ApiError::Forbidden("a stdio server runs a command on the gateway host: only platform administrators may register one".into())
        })?;
    }
    // `env:`, `file:` and `vault:` values are resolved on the gateway host: a server that
    // a tenant controls could have them send the gateway's own secrets to its URL.
    let reference = input
        .settings
        .secret_values()
        .find(|(_, _, v)| is_reference(v));
    if let Some((kind, key, _)) = reference
        && !caller.platform_admin
    {
        return Err(ApiError::Forbidden(format!(
            "{kind} '{key}' refers to a secret of the gateway host (env:, file:, vault:): only platform administrators may register such references; give the value itself"
        )));
    }
    validate_upstream(&input.name, &input.settings).map_err(|(key, message)| {
        let field = key
            .strip_prefix(&format!("upstreams.{}.", input.name))
            .map(|f| format!("settings.{f}"))
            .unwrap_or_else(|| "name".into());
        ApiError::validation(field, message)
    })?;
    if state.config.upstreams.contains_key(&input.name) {
        return Err(ApiError::Conflict(format!(
            "'{}' is the name of a server of the gateway's configuration",
            input.name
        )));
    }
    check_target(state, &input.settings).await
}

/// Tells every gateway: the one in this process directly, the others through the
/// database.
async fn announce(state: &ApiState) {
    if let Some(gw) = &state.gateway {
        gw.registry_changed.notify_one();
    }
    if let Err(e) = state.store.announce_registry_change().await {
        tracing::warn!(error = %e, "registry change not announced; gateways will notice when they poll");
    }
}

#[utoipa::path(get, path = "/api/v1/servers", tag = "servers", security(("bearer" = [])),
    responses((status = 200, body = ServerList)))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ServerList>, ApiError> {
    caller.require(Role::Viewer)?;
    let items = state.store.servers(&caller.tenant_id).await?;
    Ok(Json(ServerList {
        items: items.into_iter().map(shown).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/servers", tag = "servers", security(("bearer" = [])), request_body = ServerInput,
    responses((status = 201, body = Server), (status = 403), (status = 409), (status = 422)))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(mut input): ApiJson<ServerInput>,
) -> Result<(StatusCode, Json<Server>), ApiError> {
    keep_secrets(&mut input.settings, None)?;
    check(&state, &caller, &input).await?;
    let server = state
        .store
        .create_server(
            &caller.tenant_id,
            &input.name,
            &input.settings,
            Some(&caller.user_id),
        )
        .await?;
    tracing::info!(target: "gantry::audit", event = "server_registered", tenant_id = %caller.tenant_id, server = %server.name, by = %caller.user_id);
    announce(&state).await;
    Ok((StatusCode::CREATED, Json(shown(server))))
}

#[utoipa::path(get, path = "/api/v1/servers/{id}", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Server), (status = 404)))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Server>, ApiError> {
    caller.require(Role::Viewer)?;
    load(&state, &caller, &id).await.map(|s| Json(shown(s)))
}

#[utoipa::path(put, path = "/api/v1/servers/{id}", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = ServerInput,
    responses((status = 200, body = Server), (status = 403), (status = 404), (status = 422)))]
pub async fn update(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(mut input): ApiJson<ServerInput>,
) -> Result<Json<Server>, ApiError> {
    let current = load(&state, &caller, &id).await?;
    if current.name != input.name {
        return Err(ApiError::validation(
            "name",
            "a server cannot be renamed; register a new one",
        ));
    }
    if current.settings.transport == TransportKind::Stdio {
        caller.require_platform_admin()?;
    }
    keep_secrets(&mut input.settings, Some(&current.settings))?;
    check(&state, &caller, &input).await?;
    state
        .store
        .update_server(&caller.tenant_id, &id, Some(&input.settings))
        .await
        .map_err(not_found)?;
    tracing::info!(target: "gantry::audit", event = "server_updated", tenant_id = %caller.tenant_id, server = %input.name, by = %caller.user_id);
    announce(&state).await;
    load(&state, &caller, &id).await.map(|s| Json(shown(s)))
}

#[utoipa::path(delete, path = "/api/v1/servers/{id}", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let current = load(&state, &caller, &id).await?;
    if current.settings.transport == TransportKind::Stdio {
        caller.require_platform_admin()?;
    }
    state
        .store
        .delete_server(&caller.tenant_id, &id)
        .await
        .map_err(not_found)?;
    tracing::info!(target: "gantry::audit", event = "server_deleted", tenant_id = %caller.tenant_id, server = %current.name, by = %caller.user_id);
    announce(&state).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/servers/{id}/restart", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 202, description = "Every gateway restarts it"), (status = 404)))]
pub async fn restart(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    state
        .store
        .update_server(&caller.tenant_id, &id, None)
        .await
        .map_err(not_found)?;
    announce(&state).await;
    Ok(StatusCode::ACCEPTED)
}

/// The running upstream behind a registered server, in this process's gateway.
async fn running(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<std::sync::Arc<crate::upstream::Upstream>, ApiError> {
    let server = load(state, caller, id).await?;
    let gw = state.gateway.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "this process runs no gateway (gantry api): ask the gateway, e.g. GET /api/v1/tools"
                .into(),
        )
    })?;
    gw.upstreams
        .get(&scoped_key(&caller.tenant_id, &server.name))
        .ok_or_else(|| {
            ApiError::Unavailable(
                "the gateway has not started this server (disabled, or just registered)".into(),
            )
        })
}

#[utoipa::path(get, path = "/api/v1/servers/{id}/health", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, description = "`status` (up, starting, down), `reason`, `restarts`"), (status = 404), (status = 503)))]
pub async fn health(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let upstream = running(&state, &caller, &id).await?;
    let state_now = upstream.state();
    let reason = match &state_now {
        UpState::Down(d) => Some(d.reason.clone()),
        _ => None,
    };
    Ok(Json(
        json!({ "status": state_now.label(), "reason": reason, "restarts": upstream.restarts(), "version": upstream.version }),
    ))
}

#[utoipa::path(get, path = "/api/v1/servers/{id}/tools", tag = "servers", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, description = "`{\"tools\": [...]}` as the server lists them"), (status = 404), (status = 503)))]
pub async fn tools(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let upstream = running(&state, &caller, &id).await?;
    let items = upstream
        .list(ListKind::Tools, upstream.timeout())
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({ "tools": *items })))
}
