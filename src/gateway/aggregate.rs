//! `/mcp`: the gateway as one MCP server made of every upstream the caller may use.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::Gateway;
use super::audited::Audited;
use super::catalog::{self, Merged};
use super::era;
use super::http::{Ctx, json_response};
use super::jsonrpc;
use super::log_levels;
use super::relay::{self, finish};
use super::{task_extension, tasks};
use crate::config::PrefixMode;
use crate::policy::Access;
use crate::upstream::{ListKind, Upstream};

fn capabilities() -> Value {
    json!({
        "tools": { "listChanged": true },
        "prompts": { "listChanged": true },
        "resources": { "subscribe": true, "listChanged": true },
        "logging": {},
        "completions": {},
    })
}

fn instructions(gw: &Gateway, access: Option<&Access>) -> String {
    let names: Vec<String> = gw
        .visible(access)
        .into_iter()
        .map(|u| u.name.clone())
        .collect();
    let naming = match gw.config.gateway.prefix_mode {
        PrefixMode::Always => format!(
            "Names are prefixed with their server: {{server}}{}{{name}}.",
            gw.config.gateway.separator
        ),
        PrefixMode::OnConflict => {
            "Names shared by several servers are prefixed with their server.".into()
        }
        PrefixMode::Never => "Names are the servers' own.".into(),
    };
    format!(
        "Gantry gateway in front of {} MCP server(s): {}. {naming}",
        names.len(),
        names.join(", ")
    )
}

fn server_info_object() -> Value {
    json!({ "name": "gantry", "title": "Gantry MCP gateway", "version": env!("CARGO_PKG_VERSION") })
}

/// The aggregate's capabilities for the servers the caller may use.
fn capabilities_for(gw: &Gateway, access: Option<&Access>) -> Value {
    let mut capabilities = capabilities();
    tasks::offered_by_any(&mut capabilities, &gw.visible(access));
    capabilities
}

pub fn server_info(gw: &Gateway, version: &str, access: Option<&Access>) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": capabilities_for(gw, access),
        "serverInfo": server_info_object(),
        "instructions": instructions(gw, access),
    })
}

pub fn discover(gw: &Gateway, access: Option<&Access>) -> Value {
    // As one server's: the tasks capability becomes the extension.
    let mut capabilities = capabilities_for(gw, access);
    task_extension::offered(Some(&mut capabilities));
    json!({
        "supportedVersions": era::all_versions(),
        "capabilities": capabilities,
        "serverInfo": server_info_object(),
        "instructions": instructions(gw, access),
    })
}

/// Every up upstream's list the caller may see, in name order; one that fails or is slow
/// is left out and logged — it never fails the whole list.
pub async fn lists(
    gw: &Gateway,
    kind: ListKind,
    access: Option<&Access>,
) -> Vec<(String, Arc<Vec<Value>>)> {
    let wait = Duration::from_millis(gw.config.gateway.list_timeout_ms);
    let fetches = gw.visible(access).into_iter().map(|u| async move {
        let outcome = tokio::time::timeout(wait, u.list(kind, wait)).await;
        match outcome {
            Ok(Ok(items)) => Some((u.name.clone(), permitted(kind, &u, items, access))),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %u.name, tenant = u.tenant.as_deref(), error = %e, list = kind.method(), "left out of the aggregated list");
                None
            }
            Err(_) => {
                tracing::warn!(upstream = %u.name, tenant = u.tenant.as_deref(), list = kind.method(), "left out of the aggregated list: too slow");
                None
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A tool list without the tools the caller may not use — hidden by the server's own
/// allow/deny lists or by the caller's policy (the cached list itself when nothing is).
pub fn permitted(
    kind: ListKind,
    upstream: &Upstream,
    items: Arc<Vec<Value>>,
    access: Option<&Access>,
) -> Arc<Vec<Value>> {
    let by_policy = access.is_some_and(|a| a.restricts_tools());
    if kind != ListKind::Tools || !(by_policy || upstream.config.restricts_tools()) {
        return items;
    }
    Arc::new(
        items
            .iter()
            .filter(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| usable(upstream, n, access))
            })
            .cloned()
            .collect(),
    )
}

/// Whether the caller may use `tool` of `upstream`.
pub fn usable(upstream: &Upstream, tool: &str, access: Option<&Access>) -> bool {
    upstream.config.allows_tool(tool) && access.is_none_or(|a| a.allows_tool(&upstream.name, tool))
}

pub async fn merged(gw: &Gateway, kind: ListKind, access: Option<&Access>) -> Merged {
    let lists = lists(gw, kind, access).await;
    let merged = catalog::merge(
        kind,
        &lists,
        gw.config.gateway.prefix_mode,
        &gw.config.gateway.separator,
    );
    for (name, kept, dropped) in &merged.conflicts {
        tracing::warn!(
            name,
            kept,
            dropped,
            "name conflict under prefix_mode = \"never\": the second server's entry is hidden"
        );
    }
    merged
}

/// The server and original name behind an exposed tool or prompt name.
async fn resolve(
    gw: &Gateway,
    kind: ListKind,
    exposed: &str,
    access: Option<&Access>,
) -> Option<(Arc<Upstream>, String)> {
    if gw.config.gateway.prefix_mode == PrefixMode::Always {
        let visible = gw.visible(access);
        let (server, name) = catalog::split_prefixed(
            exposed,
            &gw.config.gateway.separator,
            visible.iter().map(|u| u.name.as_str()),
        )?;
        let upstream = gw.find(access, server)?;
        if kind == ListKind::Tools && !usable(&upstream, name, access) {
            return None;
        }
        // The cached catalogue makes an unknown name the gateway's own clear error; an
        // upstream that cannot list right now still gets the call (and reports itself).
        let wait = Duration::from_millis(gw.config.gateway.list_timeout_ms);
        if let Ok(items) = upstream.list(kind, wait).await {
            if !items
                .iter()
                .any(|i| i.get("name").and_then(Value::as_str) == Some(name))
            {
                return None;
            }
        }
        return Some((upstream, name.to_string()));
    }
    let merged = merged(gw, kind, access).await;
    let (server, name) = merged.names.get(exposed)?;
    Some((gw.find(access, server)?, name.clone()))
}

async fn resolve_uri(gw: &Gateway, uri: &str, access: Option<&Access>) -> Option<Arc<Upstream>> {
    let (resources, templates) = tokio::join!(
        lists(gw, ListKind::Resources, access),
        lists(gw, ListKind::ResourceTemplates, access)
    );
    let server = catalog::server_for_uri(uri, &resources, &templates)?;
    gw.find(access, &server)
}

fn set_param(body: &mut Map<String, Value>, key: &str, value: Value) {
    if let Some(Value::Object(params)) = body.get_mut("params") {
        params.insert(key.into(), value);
    }
}

fn param_str<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    jsonrpc::params(body)
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
}

/// What the aggregate makes of a request: answered by itself, or one upstream's to
/// answer (the caller relays it).
pub enum Handled {
    Answered(Response),
    Relay(Arc<Upstream>, Map<String, Value>),
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Handled::Answered(response)
    }
}

pub async fn handle(
    gw: &Gateway,
    ctx: &Ctx,
    id: &Value,
    method: String,
    mut body: Map<String, Value>,
) -> Handled {
    let access = ctx.principal.access.as_deref();
    if let Some(kind) = ListKind::from_method(&method) {
        let started = std::time::Instant::now();
        let merged = merged(gw, kind, access).await;
        if let Some(audited) = Audited::new(gw, ctx, &body) {
            audited.record("*", &method, "ok", started);
        }
        let mut result = Map::new();
        result.insert(kind.result_key().into(), Value::Array(merged.items));
        return finish(ctx, jsonrpc::result_response(id, Value::Object(result))).into();
    }
    let answer = match method.as_str() {
        "ping" => finish(ctx, jsonrpc::result_response(id, json!({}))),
        "tools/call" | "prompts/get" => {
            let kind = if method == "tools/call" {
                ListKind::Tools
            } else {
                ListKind::Prompts
            };
            let Some(exposed) = param_str(&body, "name").map(String::from) else {
                return invalid_params(id, "params.name is required").into();
            };
            let Some((upstream, name)) = resolve(gw, kind, &exposed, access).await else {
                if let Some(audited) = Audited::new(gw, ctx, &body) {
                    audited.record("*", &method, "error", std::time::Instant::now());
                }
                let what = if kind == ListKind::Tools {
                    "tool"
                } else {
                    "prompt"
                };
                return invalid_params(
                    id,
                    &format!("Unknown {what}: {}", jsonrpc::quoted(&exposed)),
                )
                .into();
            };
            set_param(&mut body, "name", Value::String(name));
            return Handled::Relay(upstream, body);
        }
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            let Some(uri) = param_str(&body, "uri").map(String::from) else {
                return invalid_params(id, "params.uri is required").into();
            };
            match resolve_uri(gw, &uri, access).await {
                Some(upstream) => return Handled::Relay(upstream, body),
                None => finish(
                    ctx,
                    jsonrpc::error_response(
                        id,
                        jsonrpc::RESOURCE_NOT_FOUND,
                        "Resource not found",
                        Some(json!({ "uri": uri })),
                    ),
                ),
            }
        }
        "completion/complete" => {
            let reference = jsonrpc::params(&body)
                .and_then(|p| p.get("ref"))
                .cloned()
                .unwrap_or(Value::Null);
            let target = match reference.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    let exposed = reference
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    resolve(gw, ListKind::Prompts, exposed, access)
                        .await
                        .map(|(u, name)| {
                            let mut reference = reference.clone();
                            reference["name"] = Value::String(name);
                            (u, reference)
                        })
                }
                Some("ref/resource") => {
                    let uri = reference
                        .get("uri")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    resolve_uri(gw, uri, access)
                        .await
                        .map(|u| (u, reference.clone()))
                }
                _ => {
                    return invalid_params(id, "params.ref must be a ref/prompt or ref/resource")
                        .into();
                }
            };
            match target {
                Some((upstream, reference)) => {
                    set_param(&mut body, "ref", reference);
                    return Handled::Relay(upstream, body);
                }
                None => invalid_params(id, "Unknown prompt or resource in params.ref"),
            }
        }
        "logging/setLevel" => {
            let severity = match log_levels::requested(&body) {
                Ok(severity) => severity,
                Err(message) => return invalid_params(id, &message).into(),
            };
            log_levels::record(gw, ctx, severity);
            let sends = gw.visible(access).into_iter().map(|u| async move {
                if let Ok(conn) = u.connection(Duration::ZERO).await
                    && log_levels::must_ask(&u, &conn, severity)
                {
                    log_levels::tell(&u, &conn, severity).await;
                }
            });
            futures::future::join_all(sends).await;
            finish(ctx, jsonrpc::result_response(id, json!({})))
        }
        _ => finish(
            ctx,
            jsonrpc::error_response(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                &format!(
                    "Method not found: {} (use /mcp/{{server}} to reach one server directly)",
                    jsonrpc::quoted(&method)
                ),
                None,
            ),
        ),
    };
    answer.into()
}

/// Answers a request on the aggregate, relaying it when one upstream is to answer.
pub async fn respond(
    gw: Arc<Gateway>,
    ctx: Ctx,
    id: Value,
    method: String,
    body: Map<String, Value>,
) -> Response {
    match handle(&gw, &ctx, &id, method, body).await {
        Handled::Answered(response) => response,
        Handled::Relay(upstream, body) => relay::relay(gw, ctx, upstream, id, body).await,
    }
}

fn invalid_params(id: &Value, message: &str) -> Response {
    json_response(
        StatusCode::OK,
        &jsonrpc::error_response(id, jsonrpc::INVALID_PARAMS, message, None),
    )
}
