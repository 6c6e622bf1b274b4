//! `GET /api/v1/audit`: the caller's tenant's audit events, newest first, filtered and
//! paginated by cursor.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::ApiState;
use super::caller::Caller;
use super::error::ApiError;
use super::input::ApiQuery;
use super::pagination::{Page, PageQuery, cursor};
use crate::audit::{AuditEvent, AuditFilter};
use crate::store::identity::Role;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Earliest time, RFC 3339 (e.g. `2026-11-25T10:00:00Z`) or milliseconds since the epoch.
    pub from: Option<String>,
    /// Latest time, same formats.
    pub to: Option<String>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub principal: Option<String>,
    /// ok, error, timeout, unavailable, overloaded, circuit_open, cancelled, input_required
    pub outcome: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

fn time(field: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::validation(field, "an RFC 3339 time or milliseconds since the epoch")
        })
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Page<AuditEvent>), (status = 403), (status = 503, description = "The audit store is unavailable")))]
pub async fn list(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Page<AuditEvent>>, ApiError> {
    caller.require(Role::Admin)?;
    let audit = state
        .audit
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("auditing is switched off on this server".into()))?;
    let page = PageQuery {
        cursor: q.cursor.clone(),
        limit: q.limit,
    };
    let limit = page.limit()?;
    let filter = AuditFilter {
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        server: q.server,
        tool: q.tool,
        principal: q.principal,
        outcome: q.outcome,
        after: page.after()?,
        limit: limit + 1,
    };
    let mut items = audit
        .query(&caller.tenant_id, &filter)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| cursor(e.time, &e.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}
