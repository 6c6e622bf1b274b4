//! The OpenAPI 3.1 description of every `/api` route, generated from the handlers'
//! annotations so it cannot drift from the code.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, auth, health, keys, pagination, servers, tenants, users};
use crate::store::identity;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Gantry control plane", description = "Tenants, identity and API keys for the Gantry MCP gateway. \
        Errors are RFC 9457 problem documents (`application/problem+json`) whose `type` is \
        `urn:gantry:problem:{unauthenticated|forbidden|not-found|conflict|bad-request|too-large|method-not-allowed|validation|rate-limited|unavailable|upstream-error|internal}`."),
    paths(
        health::health, health::ready, health::status,
        auth::login, auth::refresh, auth::logout, auth::me,
        tenants::list, tenants::create, tenants::get, tenants::get_policy, tenants::put_policy,
        users::list, users::add, users::remove,
        keys::list, keys::create, keys::get, keys::revoke,
        audit::list,
        servers::list, servers::create, servers::get, servers::update, servers::delete,
        servers::restart, servers::health, servers::tools,
        crate::gateway::rest::list, crate::gateway::rest::call,
        document,
    ),
    components(schemas(crate::store::registry::Server, servers::ServerInput, crate::policy::Policy, crate::gateway::rest::CallRequest, identity::Tenant, identity::User, identity::Role, identity::Membership, identity::Member,
        identity::ApiKey, pagination::Page<identity::ApiKey>, crate::audit::AuditEvent,
        pagination::Page<crate::audit::AuditEvent>)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/openapi.json", tag = "meta", responses((status = 200, description = "This document")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
