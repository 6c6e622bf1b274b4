//! Members of the caller's tenant. Admins add and remove members; only owners touch
//! owners, and the last owner cannot be removed.

use axum::Json;
use axum::extract::{Path, State};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::ApiJson;
use crate::identity::passwords;
use crate::store::identity::{Member, Role};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub email: String,
    /// Needed only when no user has this e-mail address yet (at least 12 characters).
    pub password: Option<String>,
    #[serde(default)]
    pub display_name: String,
    pub role: Role,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberList {
    pub items: Vec<Member>,
}

pub fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(ApiError::validation("email", "not an e-mail address"))
    }
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = MemberList)))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<MemberList>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(MemberList {
        items: state.store.members(&caller.tenant_id).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("bearer" = [])), request_body = NewMember,
    responses((status = 201, body = Member), (status = 403), (status = 422)))]
pub async fn add(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewMember>,
) -> Result<(StatusCode, Json<Member>), ApiError> {
    caller.require(Role::Admin)?;
    if body.role == Role::Owner {
        caller.require(Role::Owner)?;
    }
    let email = check_email(&body.email)?;
    let user = match state.store.user_by_email(&email).await? {
        Some(user) => {
            let members = state.store.members(&caller.tenant_id).await?;
            if members
                .iter()
                .any(|m| m.user_id == user.id && m.role == Role::Owner)
            {
                caller.require(Role::Owner)?;
            }
            user
        }
        None => {
            let password = body
                .password
                .ok_or_else(|| ApiError::validation("password", "required for a new user"))?;
            passwords::check_policy(&password).map_err(|m| ApiError::validation("password", m))?;
            let hash = passwords::hash(password)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            state
                .store
                .create_user(&email, body.display_name.trim(), Some(&hash), false)
                .await?
        }
    };
    state
        .store
        .put_member(&caller.tenant_id, &user.id, body.role)
        .await?;
    tracing::info!(target: "gantry::audit", event = "member_put", tenant_id = %caller.tenant_id, user_id = %user.id, role = body.role.as_str(), by = %caller.user_id);
    let member = state
        .store
        .members(&caller.tenant_id)
        .await?
        .into_iter()
        .find(|m| m.user_id == user.id)
        .ok_or(ApiError::NotFound("member"))?;
    Ok((StatusCode::CREATED, Json(member)))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 204), (status = 403), (status = 404), (status = 409, description = "The last owner cannot be removed")))]
pub async fn remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let members = state.store.members(&caller.tenant_id).await?;
    let target = members
        .iter()
        .find(|m| m.user_id == id)
        .ok_or(ApiError::NotFound("member"))?;
    if target.role == Role::Owner {
        caller.require(Role::Owner)?;
        if members.iter().filter(|m| m.role == Role::Owner).count() == 1 {
            return Err(ApiError::Conflict(
                "the last owner of a tenant cannot be removed".into(),
            ));
        }
    }
    state.store.remove_member(&caller.tenant_id, &id).await?;
    tracing::info!(target: "gantry::audit", event = "member_removed", tenant_id = %caller.tenant_id, user_id = %id, by = %caller.user_id);
    Ok(StatusCode::NO_CONTENT)
}
