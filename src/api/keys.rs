//! API keys of the caller's tenant. The key is shown once, in the creation response;
//! only its SHA-256 is kept.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::{ApiJson, ApiQuery};
use super::pagination::{Page, PageQuery, cursor};
use crate::identity::api_keys;
use crate::policy::Policy;
use crate::store::StoreError;
use crate::store::identity::{ApiKey, NewApiKey, Role};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    /// `mcp` (the MCP endpoint) and/or `api`; default `["mcp"]`.
    pub scopes: Option<Vec<String>>,
    /// Days until the key stops working (1–3650); default: never.
    pub expires_in_days: Option<u32>,
    /// Narrows what the key may do within its tenant's policy.
    pub policy: Option<Policy>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    /// The key itself. Shown this once: store it now.
    pub key: String,
    pub api_key: ApiKey,
}

fn not_found(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::NotFound("API key"),
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<ApiKey>)))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    caller.require(Role::Member)?;
    let limit = page.limit()?;
    // One extra row tells whether another page follows.
    let mut items = state
        .store
        .api_keys(&caller.tenant_id, page.after()?, i64::from(limit) + 1)
        .await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|k| cursor(k.created_at, &k.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])), request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 422)))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require(Role::Member)?;
    super::tenants::check_name("name", &body.name)?;
    let scopes = body.scopes.unwrap_or_else(|| vec!["mcp".into()]);
    if scopes.is_empty() {
        return Err(ApiError::validation("scopes", "at least one scope"));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| !api_keys::SCOPES.contains(&s.as_str()))
    {
        return Err(ApiError::validation(
            "scopes",
            format!(
                "unknown scope '{bad}' (known: {})",
                api_keys::SCOPES.join(", ")
            ),
        ));
    }
    let lifetime_ms = match body.expires_in_days {
        None => None,
        Some(days @ 1..=3650) => Some(i64::from(days) * 86_400_000),
        Some(_) => {
            return Err(ApiError::validation(
                "expires_in_days",
                "must be between 1 and 3650",
            ));
        }
    };
    let policy = body.policy.unwrap_or_default();
    policy
        .validate()
        .map_err(|(field, message)| ApiError::validation(field, message))?;
    let key = api_keys::generate();
    let record = state
        .store
        .create_api_key(
            &caller.tenant_id,
            NewApiKey {
                name: body.name.trim(),
                prefix: &api_keys::prefix(&key),
                key_hash: &api_keys::digest(&key),
                scopes: &scopes,
                created_by: Some(&caller.user_id),
                lifetime_ms,
                policy,
            },
        )
        .await?;
    tracing::info!(target: "gantry::audit", event = "api_key_created", tenant_id = %caller.tenant_id, key_id = %record.id, by = %caller.user_id);
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key,
            api_key: record,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ApiKey), (status = 404)))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApiKey>, ApiError> {
    caller.require(Role::Member)?;
    state
        .store
        .api_key(&caller.tenant_id, &id)
        .await
        .map(Json)
        .map_err(not_found)
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204, description = "Revoked"), (status = 403), (status = 404)))]
pub async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Member)?;
    let key = state
        .store
        .api_key(&caller.tenant_id, &id)
        .await
        .map_err(not_found)?;
    if key.created_by.as_deref() != Some(caller.user_id.as_str()) {
        caller.require(Role::Admin)?;
    }
    state
        .store
        .revoke_api_key(&caller.tenant_id, &id)
        .await
        .map_err(not_found)?;
    tracing::info!(target: "gantry::audit", event = "api_key_revoked", tenant_id = %caller.tenant_id, key_id = %id, by = %caller.user_id);
    Ok(StatusCode::NO_CONTENT)
}
