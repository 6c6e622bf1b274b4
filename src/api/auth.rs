//! Local sign-in: e-mail and password for a short-lived access token and a refresh
//! token that rotates on every use. Presenting a refresh token a second time means it
//! was copied: the whole family (every token descended from that login) is revoked.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::ApiJson;
use crate::identity::{passwords, tokens};
use crate::store::identity::{Membership, RefreshRecord, Role, User};
use crate::store::{new_id, now_ms};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// Tenant slug or id to act in; needed only when the user belongs to several.
    pub tenant: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub tenant: Membership,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user: User,
    pub tenant_id: String,
    pub role: Role,
    pub memberships: Vec<Membership>,
}

pub(crate) fn pick_tenant(
    memberships: Vec<Membership>,
    wanted: Option<&str>,
) -> Result<Membership, ApiError> {
    match wanted {
        Some(w) => memberships
            .into_iter()
            .find(|m| m.slug == w || m.tenant_id == w)
            .ok_or_else(|| ApiError::Forbidden(format!("you are not a member of tenant '{w}'"))),
        None => {
            let mut all = memberships;
            match all.len() {
                0 => Err(ApiError::Forbidden(
                    "this user belongs to no tenant yet".into(),
                )),
                1 => Ok(all.remove(0)),
                _ => Err(ApiError::validation(
                    "tenant",
                    format!(
                        "you belong to several tenants; choose one of: {}",
                        all.iter()
                            .map(|m| m.slug.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
    }
}

/// Issues an access token and a refresh token in `family`.
async fn issue(
    state: &ApiState,
    user: &User,
    membership: Membership,
    family: String,
) -> Result<TokenResponse, ApiError> {
    let refresh = tokens::refresh_token();
    let record = RefreshRecord {
        id: new_id(),
        family_id: family,
        user_id: user.id.clone(),
        tenant_id: membership.tenant_id.clone(),
        expires_at: now_ms() + state.config.auth.refresh_token_ttl_secs as i64 * 1000,
        used_at: None,
        revoked_at: None,
    };
    state
        .store
        .insert_refresh_token(&record, &crate::identity::api_keys::digest(&refresh))
        .await?;
    Ok(TokenResponse {
        access_token: state.tokens.issue(
            &user.id,
            &membership.tenant_id,
            membership.role,
            user.platform_admin,
        ),
        token_type: "Bearer",
        expires_in: state.tokens.ttl_secs(),
        refresh_token: refresh,
        tenant: membership,
    })
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, description = "Wrong e-mail or password"),
              (status = 429, description = "Too many failed attempts for this account")))]
pub async fn login(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let account = body.email.trim().to_lowercase();
    if account.is_empty() {
        return Err(ApiError::validation("email", "must not be empty"));
    }
    if body.password.len() > passwords::MAX_LENGTH {
        return Err(ApiError::validation("password", "too long"));
    }
    state
        .throttle
        .check(&account)
        .map_err(ApiError::TooManyRequests)?;
    let user = state.store.user_by_email(&account).await?;
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let verified = passwords::verify(body.password, stored).await;
    let user = match user {
        Some(user) if verified && !user.disabled => user,
        _ => {
            state.throttle.failed(&account);
            tracing::info!(target: "gantry::audit", event = "login_failed", account = %account);
            return Err(ApiError::Unauthenticated("wrong e-mail or password".into()));
        }
    };
    state.throttle.succeeded(&account);
    let membership = pick_tenant(
        state.store.memberships(&user.id).await?,
        body.tenant.as_deref(),
    )?;
    tracing::info!(target: "gantry::audit", event = "login", user_id = %user.id, tenant_id = %membership.tenant_id);
    Ok(Json(issue(&state, &user, membership, new_id()).await?))
}

#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, description = "Unknown, expired, revoked or reused token")))]
pub async fn refresh(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let invalid = || {
        ApiError::Unauthenticated(
            "the refresh token is invalid, expired or revoked; sign in again".into(),
        )
    };
    let hash = crate::identity::api_keys::digest(&body.refresh_token);
    let record = state
        .store
        .refresh_token(&hash)
        .await?
        .ok_or_else(invalid)?;
    if record.revoked_at.is_some() || record.expires_at <= now_ms() {
        return Err(invalid());
    }
    if record.used_at.is_some() || !state.store.use_refresh_token(&record.id).await? {
        let revoked = state.store.revoke_refresh_family(&record.family_id).await?;
        tracing::warn!(target: "gantry::audit", event = "refresh_token_reuse", user_id = %record.user_id, revoked,
            "a refresh token was presented twice: every token of that sign-in is revoked");
        return Err(invalid());
    }
    // Roles and memberships are read afresh, so changes apply at the next refresh.
    let user = state.store.user(&record.user_id).await?;
    if user.disabled {
        return Err(invalid());
    }
    let membership = pick_tenant(
        state.store.memberships(&user.id).await?,
        Some(&record.tenant_id),
    )?;
    Ok(Json(
        issue(&state, &user, membership, record.family_id).await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204, description = "Every token of this sign-in is revoked")))]
pub async fn logout(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let hash = crate::identity::api_keys::digest(&body.refresh_token);
    // Unknown tokens get 204 as well: logging out is idempotent and reveals nothing.
    if let Some(record) = state.store.refresh_token(&hash).await? {
        state.store.revoke_refresh_family(&record.family_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401)))]
pub async fn me(State(state): State<ApiState>, caller: Caller) -> Result<Json<Me>, ApiError> {
    let user = state.store.user(&caller.user_id).await?;
    let memberships = state.store.memberships(&caller.user_id).await?;
    Ok(Json(Me {
        user,
        tenant_id: caller.tenant_id,
        role: caller.role,
        memberships,
    }))
}
