//! Tool rules on the transparent path `/mcp/{server}`: when the server's allow/deny lists
//! or the caller's policy hide some tools, the caller gets the server's list without
//! them, and calling one is refused exactly like calling a tool that does not exist.
//! (The aggregate filters in [`super::aggregate`].)

use std::time::{Duration, Instant};

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::aggregate::{permitted, usable};
use super::audited::Audited;
use super::http::Ctx;
use super::relay::{finish, upstream_error_response};
use super::{Gateway, jsonrpc};
use crate::policy::Access;
use crate::upstream::{ListKind, Upstream};

/// `Some(answer)` when the policy decides the request here; `None` to relay it.
pub async fn pass_through(
    gw: &Gateway,
    ctx: &Ctx,
    upstream: &Upstream,
    access: Option<&Access>,
    id: &Value,
    body: &Map<String, Value>,
) -> Option<Response> {
    match ctx.method.as_str() {
        "tools/call" => {
            let name = jsonrpc::params(body)
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            if usable(upstream, name, access) {
                return None;
            }
            if let Some(audited) = Audited::new(gw, ctx, body) {
                audited.record(&upstream.name, "tools/call", "denied", Instant::now());
            }
            Some(finish(
                ctx,
                jsonrpc::error_response(
                    id,
                    jsonrpc::INVALID_PARAMS,
                    &format!("Unknown tool: {}", jsonrpc::quoted(name)),
                    None,
                ),
            ))
        }
        "tools/list" => {
            let wait = Duration::from_millis(gw.config.gateway.list_timeout_ms);
            Some(match upstream.list(ListKind::Tools, wait).await {
                Ok(items) => {
                    let tools = permitted(ListKind::Tools, upstream, items, access);
                    finish(
                        ctx,
                        jsonrpc::result_response(id, json!({ "tools": *tools })),
                    )
                }
                Err(e) => upstream_error_response(id, &e),
            })
        }
        _ => None,
    }
}
