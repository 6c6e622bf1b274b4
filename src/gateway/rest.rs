//! The REST bridge for clients that do not speak MCP: `GET /api/v1/tools` lists the
//! caller's catalogue and `POST /api/v1/tools/{name}/call` calls one tool. Both go
//! through the aggregate exactly as an MCP `tools/list` / `tools/call` would — same API
//! keys, policy, limits, audit and metrics — and answer JSON, with errors as problems.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::AuthError;
use super::era::Era;
use super::http::Ctx;
use super::session::ClientCaps;
use super::{Gateway, Route, aggregate, jsonrpc};
use crate::api::error::ApiError;
use crate::api::input::parse;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// The tool's arguments, as its `inputSchema` describes.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub arguments: Map<String, Value>,
}

/// Authentication and limits, as on `/mcp`, with the answers as problems.
async fn caller(
    gw: &Gateway,
    headers: &HeaderMap,
) -> Result<(Ctx, super::limits::Slots), Response> {
    let principal = gw.auth.authenticate(headers).await.map_err(|e| {
        match e {
            AuthError::Unavailable => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Unauthenticated("send an API key: Authorization: Bearer gty_…".into()),
        }
        .into_response()
    })?;
    let slots = gw
        .limits
        .admit(&principal)
        .await
        .map_err(|refusal| ApiError::TooManyRequests(refusal.retry_after).into_response())?;
    let ctx = Ctx {
        route: Route::Aggregate,
        principal,
        era: Era::Modern,
        session: None,
        caps: ClientCaps::default(),
        accepts_sse: false,
        method: String::new(),
        request_id: super::era::header_str(headers, super::era::HEADER_REQUEST_ID)
            .map(String::from),
        // A REST call never parks: it declares no capability to answer input requests.
        served_at: None,
        tasks: None,
        log_level: None,
        mirrored_params: None,
    };
    Ok((ctx, slots))
}

/// Runs one JSON-RPC request through the aggregate and returns its `result`, or the
/// JSON-RPC error mapped to a problem.
async fn run(
    gw: Arc<Gateway>,
    mut ctx: Ctx,
    method: &str,
    params: Value,
) -> Result<Value, ApiError> {
    ctx.method = method.to_string();
    let id = json!(1);
    let mut body = Map::new();
    body.insert("jsonrpc".into(), json!("2.0"));
    body.insert("id".into(), id.clone());
    body.insert("method".into(), json!(method));
    body.insert("params".into(), params);
    let response = aggregate::respond(gw, ctx, id, method.to_string(), body).await;
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("reading the gateway's answer: {e}")))?;
    let mut answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Internal(format!("the gateway's answer is not JSON: {e}")))?;
    if let Some(result) = answer.get_mut("result") {
        let mut result = result.take();
        if let Some(obj) = result.as_object_mut() {
            obj.remove("resultType");
        }
        return Ok(result);
    }
    let code = answer
        .pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or_default();
    let message = answer
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("the tool call failed")
        .to_string();
    Err(match code {
        jsonrpc::INVALID_PARAMS if message.starts_with("Unknown tool") => {
            ApiError::NotFound("tool")
        }
        jsonrpc::INVALID_PARAMS => ApiError::validation("arguments", message),
        jsonrpc::UPSTREAM_UNAVAILABLE => ApiError::Unavailable(message),
        jsonrpc::REQUEST_TIMEOUT => ApiError::Unavailable(message),
        _ => ApiError::BadGateway(message),
    })
}

#[utoipa::path(get, path = "/api/v1/tools", tag = "tools", security(("api_key" = [])),
    responses((status = 200, description = "`{\"tools\": [...]}`, the caller's catalogue as MCP `tools/list` gives it"),
              (status = 401), (status = 429)))]
pub async fn list(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let (ctx, slots) = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match slots
        .held_while(run(gw, ctx, "tools/list", json!({})))
        .await
    {
        Ok(result) => Json(result).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(post, path = "/api/v1/tools/{name}/call", tag = "tools", security(("api_key" = [])),
    params(("name" = String, Path, description = "The tool's name as listed, e.g. `demo__echo`")),
    request_body = CallRequest,
    responses((status = 200, description = "The MCP `CallToolResult`: `content`, `isError`, optional `structuredContent`"),
              (status = 401), (status = 404, description = "No such tool (or not allowed)"), (status = 422),
              (status = 429), (status = 502), (status = 503)))]
pub async fn call(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (ctx, slots) = match caller(&gw, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    slots
        .held_while(async move {
            let request: CallRequest = if body.is_empty() {
                CallRequest {
                    arguments: Map::new(),
                }
            } else {
                match parse(&body) {
                    Ok(r) => r,
                    Err(e) => return e.into_response(),
                }
            };
            let params = json!({ "name": name, "arguments": request.arguments });
            match run(gw, ctx, "tools/call", params).await {
                Ok(result) => Json(result).into_response(),
                Err(e) => e.into_response(),
            }
        })
        .await
}
