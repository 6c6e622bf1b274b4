//! The authenticated caller of a control-plane route, from an access token.

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::ApiState;
use super::auth::pick_tenant;
use super::error::ApiError;
use crate::gateway::auth::bearer;
use crate::identity::oidc::{Identity, OidcError};
use crate::store::StoreError;
use crate::store::identity::Role;

#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub tenant_id: String,
    pub role: Role,
    pub platform_admin: bool,
}

impl Caller {
    /// At least `role` in the caller's tenant (platform administrators always are).
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.platform_admin || self.role.at_least(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role or higher in the tenant",
                role.as_str()
            )))
        }
    }

    pub fn require_platform_admin(&self) -> Result<(), ApiError> {
        if self.platform_admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only platform administrators may do this".into(),
            ))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthenticated("send an access token: Authorization: Bearer <token>".into())
        })?;
        let invalid = || ApiError::Unauthenticated("the access token is invalid or expired".into());
        if crate::identity::api_keys::looks_like_key(token) {
            return key_caller(state, token).await;
        }
        if let Ok(claims) = state.tokens.verify(token) {
            return Ok(Caller {
                user_id: claims.sub,
                tenant_id: claims.tid,
                role: claims.role,
                platform_admin: claims.pa,
            });
        }
        let Some(oidc) = &state.oidc else {
            return Err(invalid());
        };
        let identity = oidc.verify(token).await.map_err(|e| match e {
            OidcError::Invalid(reason) => {
                tracing::info!(%reason, "identity provider token refused");
                invalid()
            }
            OidcError::Unavailable(reason) => {
                ApiError::Unavailable(format!("cannot check the token: {reason}"))
            }
        })?;
        let wanted = parts
            .headers
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        provision(state, identity, wanted.as_deref()).await
    }
}

/// An API key with the `api` scope acts for the user who created it, with that user's
/// current role in the key's tenant, and never with platform-administrator rights.
async fn key_caller(state: &ApiState, token: &str) -> Result<Caller, ApiError> {
    let invalid = || {
        ApiError::Unauthenticated(
            "the API key is invalid, expired, revoked or lacks the api scope".into(),
        )
    };
    let key = state
        .store
        .find_api_key(&crate::identity::api_keys::digest(token))
        .await?
        .ok_or_else(invalid)?;
    let usable = key.usable_for("api", crate::store::now_ms());
    let creator = key
        .created_by
        .clone()
        .filter(|_| usable)
        .ok_or_else(invalid)?;
    let membership = state
        .store
        .memberships(&creator)
        .await?
        .into_iter()
        .find(|m| m.tenant_id == key.tenant_id)
        .ok_or_else(invalid)?;
    Ok(Caller {
        user_id: creator,
        tenant_id: key.tenant_id,
        role: membership.role,
        platform_admin: false,
    })
}

/// Which tenant an identity-provider user acts in, when they belong to several.
pub const TENANT_HEADER: &str = "x-gantry-tenant";

/// The local user behind a provider identity: created at first sign-in and made a
/// member of the configured tenant with the configured role.
async fn provision(
    state: &ApiState,
    identity: Identity,
    wanted: Option<&str>,
) -> Result<Caller, ApiError> {
    let oidc = state
        .oidc
        .as_ref()
        .expect("provisioning needs OIDC")
        .config();
    let email = identity.email.trim().to_lowercase();
    let user = match state.store.user_by_email(&email).await? {
        // An existing account (perhaps a local administrator) is taken over only on the
        // provider's word that the address is verified, not merely on a claimed address.
        Some(_) if !identity.email_verified => {
            return Err(ApiError::Unauthenticated(
                "this e-mail address belongs to an existing account, and the token does not say it is verified (email_verified)".into(),
            ));
        }
        Some(user) => user,
        None => match state
            .store
            .create_user(&email, &identity.name, None, false)
            .await
        {
            Ok(user) => {
                tracing::info!(target: "gantry::audit", event = "user_provisioned", user_id = %user.id, subject = %identity.subject);
                user
            }
            // Two first requests raced; the other one created the user.
            Err(StoreError::Conflict(_)) => state
                .store
                .user_by_email(&email)
                .await?
                .ok_or(ApiError::NotFound("user"))?,
            Err(e) => return Err(e.into()),
        },
    };
    if user.disabled {
        return Err(ApiError::Unauthenticated("this user is disabled".into()));
    }
    let mut memberships = state.store.memberships(&user.id).await?;
    if memberships.is_empty() {
        let tenant = state
            .store
            .tenant_by_slug(&oidc.tenant)
            .await?
            .ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "the sign-up tenant '{}' does not exist",
                    oidc.tenant
                ))
            })?;
        let role = Role::parse(&oidc.role).expect("validated");
        state.store.put_member(&tenant.id, &user.id, role).await?;
        memberships = state.store.memberships(&user.id).await?;
    }
    let membership = pick_tenant(memberships, wanted)?;
    Ok(Caller {
        user_id: user.id,
        tenant_id: membership.tenant_id,
        role: membership.role,
        platform_admin: user.platform_admin,
    })
}
