//! Tenants (organisations). Platform administrators create them; members see their own.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::ApiJson;
use crate::policy::Policy;
use crate::store::identity::{Role, Tenant};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// URL-safe handle: 2–63 of `a-z`, `0-9` and `-`, starting with a letter or digit.
    pub slug: String,
    pub name: String,
    /// An existing user who becomes the tenant's owner.
    pub owner_email: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantList {
    pub items: Vec<Tenant>,
}

pub fn check_slug(slug: &str) -> Result<(), ApiError> {
    let ok = (2..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            "slug",
            "2-63 characters of a-z, 0-9 and '-', not starting with '-'",
        ))
    }
}

pub fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation(field, "must be 1-200 characters"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", security(("bearer" = [])),
    responses((status = 200, body = TenantList)))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<TenantList>, ApiError> {
    let items = if caller.platform_admin {
        state.store.all_tenants().await?
    } else {
        let mut items = Vec::new();
        for m in state.store.memberships(&caller.user_id).await? {
            items.push(state.store.tenant(&m.tenant_id).await?);
        }
        items
    };
    Ok(Json(TenantList { items }))
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", security(("bearer" = [])), request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 403), (status = 409, description = "The slug is taken"), (status = 422)))]
pub async fn create(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    caller.require_platform_admin()?;
    check_slug(&body.slug)?;
    check_name("name", &body.name)?;
    let owner = match &body.owner_email {
        Some(email) => Some(state.store.user_by_email(email).await?.ok_or_else(|| {
            ApiError::validation("owner_email", "no user has this e-mail address")
        })?),
        None => None,
    };
    let tenant = state
        .store
        .create_tenant(&body.slug, body.name.trim())
        .await?;
    if let Some(owner) = owner {
        state
            .store
            .put_member(&tenant.id, &owner.id, Role::Owner)
            .await?;
    }
    tracing::info!(target: "gantry::audit", event = "tenant_created", tenant_id = %tenant.id, by = %caller.user_id);
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}", tag = "tenants", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Tenant), (status = 404)))]
pub async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    // Another tenant's existence is not disclosed: 404, as for one that does not exist.
    if id != caller.tenant_id && !caller.platform_admin {
        return Err(ApiError::NotFound("tenant"));
    }
    state
        .store
        .tenant(&id)
        .await
        .map(Json)
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("tenant"),
            other => other.into(),
        })
}

fn tenant_not_found(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::NotFound => ApiError::NotFound("tenant"),
        other => other.into(),
    }
}

#[utoipa::path(get, path = "/api/v1/tenants/{id}/policy", tag = "tenants", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 200, body = Policy), (status = 404)))]
pub async fn get_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Policy>, ApiError> {
    if id != caller.tenant_id && !caller.platform_admin {
        return Err(ApiError::NotFound("tenant"));
    }
    state
        .store
        .tenant_policy(&id)
        .await
        .map(Json)
        .map_err(tenant_not_found)
}

/// The tenant's policy bounds every key in it; only platform administrators set it.
#[utoipa::path(put, path = "/api/v1/tenants/{id}/policy", tag = "tenants", security(("bearer" = [])),
    params(("id" = String, Path)), request_body = Policy,
    responses((status = 200, body = Policy), (status = 403), (status = 404), (status = 422)))]
pub async fn put_policy(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(policy): ApiJson<Policy>,
) -> Result<Json<Policy>, ApiError> {
    caller.require_platform_admin()?;
    policy
        .validate()
        .map_err(|(field, message)| ApiError::validation(field, message))?;
    state
        .store
        .set_tenant_policy(&id, &policy)
        .await
        .map_err(tenant_not_found)?;
    tracing::info!(target: "gantry::audit", event = "tenant_policy_set", tenant_id = %id, by = %caller.user_id);
    Ok(Json(policy))
}
