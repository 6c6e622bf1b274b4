//! The authenticated caller of a control-plane route, from an access token.

use axum::extract::FromRequestParts;
use http::request::Parts;

use super::ApiState;
use super::error::ApiError;
use crate::gateway::auth::bearer;
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
        let claims = state.tokens.verify(token).map_err(|_| {
            ApiError::Unauthenticated("the access token is invalid or expired".into())
        })?;
        Ok(Caller {
            user_id: claims.sub,
            tenant_id: claims.tid,
            role: claims.role,
            platform_admin: claims.pa,
        })
    }
}
