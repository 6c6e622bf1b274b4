//! Streamable HTTP front-end: checks (host, auth, body, era, session) in the order the
//! spec implies, then hands the message to the pass-through or the aggregate.
//!
//! Checks return `Result<_, Response>`: the error *is* the finished HTTP answer, which is
//! how axum handlers short-circuit; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value, json};

use super::era::{self, Era};
use super::jsonrpc::{self, Message};
use super::session::{ClientCaps, SessionClaims, new_session_id};
use super::tasks::{self, TaskIds};
use super::{
    Gateway, Route, aggregate, log_levels, param_headers, policy, relay, replica_forward, streams,
};
use super::{task_extension, task_notifications};
use crate::gateway::auth::{AuthError, Principal};
use crate::http_server::ServedAt;

const LAST_EVENT_ID: header::HeaderName = header::HeaderName::from_static("last-event-id");

/// Everything known about a request once it passed the checks.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub route: Route,
    pub principal: Principal,
    pub era: Era,
    pub session: Option<Arc<SessionClaims>>,
    pub caps: ClientCaps,
    pub accepts_sse: bool,
    /// The JSON-RPC method being served.
    pub method: String,
    /// The `x-request-id` of the HTTP request, for the audit record.
    pub request_id: Option<String>,
    /// The address the request reached this process at, sealed into what names things
    /// this replica holds (a parked call's `requestState`, task ids, event ids) so that
    /// other replicas can carry the requests that follow here.
    pub served_at: Option<SocketAddr>,
    /// What becomes of task ids in the answer; `None` for the requests that neither ask
    /// for a task nor name one (boxed: the request's future stays small).
    pub tasks: Option<Box<TaskIds>>,
    /// 2026-07-28: the level of the log messages the request asked for in its `_meta`
    /// (`None`: it gets none). A session's level is kept in `log_levels`.
    pub log_level: Option<u8>,
    /// 2026-07-28 over HTTP: the request's `Mcp-Param-*` headers (none, most often).
    /// `None` where there are no such headers to send: the session eras, the REST bridge.
    pub mirrored_params: Option<Box<HeaderMap>>,
}

impl Ctx {
    /// Whether this is a 2026-07-28 request that came over MCP's HTTP transport: its client
    /// can declare capabilities and send `Mcp-Param-*` headers, where the REST bridge's
    /// callers can do neither.
    pub fn over_mcp_http(&self) -> bool {
        self.mirrored_params.is_some()
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    json_bytes_response(
        status,
        serde_json::to_vec(body).expect("JSON values serialize"),
    )
}

/// A response of JSON text already written.
pub fn json_bytes_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn rpc_error(
    status: StatusCode,
    id: &Value,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Response {
    json_response(status, &jsonrpc::error_response(id, code, message, data))
}

fn unauthorized(error: AuthError) -> Response {
    let mut response = rpc_error(
        StatusCode::UNAUTHORIZED,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        &format!("Unauthorized: {error}"),
        None,
    );
    let challenge = match error {
        AuthError::Missing => r#"Bearer realm="gantry""#,
        AuthError::Invalid => r#"Bearer realm="gantry", error="invalid_token""#,
        AuthError::Unavailable => {
            let mut response = rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &Value::Null,
                jsonrpc::INTERNAL_ERROR,
                "authentication is temporarily unavailable; retry shortly",
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Host/Origin, then authentication: shared by every method on the MCP endpoint.
async fn admit(gw: &Gateway, headers: &HeaderMap) -> Result<Principal, Response> {
    gw.hosts.check(headers).map_err(|reason| {
        rpc_error(
            StatusCode::FORBIDDEN,
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            &format!("Forbidden: {reason}"),
            None,
        )
    })?;
    gw.auth.authenticate(headers).await.map_err(unauthorized)
}

/// The route of a request. A server the caller's policy denies is answered exactly like
/// one that does not exist.
fn route_for(
    gw: &Gateway,
    server: Option<String>,
    principal: &Principal,
) -> Result<Route, Response> {
    match server.or_else(|| gw.pinned.clone()) {
        None => Ok(Route::Aggregate),
        Some(name) if gw.find(principal.access.as_deref(), &name).is_some() => {
            Ok(Route::Server(name))
        }
        Some(name) => Err(rpc_error(
            StatusCode::NOT_FOUND,
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            &format!(
                "no MCP server named '{}' is configured",
                jsonrpc::quoted(&name)
            ),
            None,
        )),
    }
}

/// A server that was removed (registry change) between routing and use.
pub fn no_such_server(id: &Value, name: &str) -> Response {
    rpc_error(
        StatusCode::NOT_FOUND,
        id,
        jsonrpc::INVALID_REQUEST,
        &format!(
            "no MCP server named '{}' is configured",
            jsonrpc::quoted(name)
        ),
        None,
    )
}

fn accepts_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream") || v.contains("*/*"))
}

fn caps_from(capabilities: Option<&Value>) -> ClientCaps {
    let has = |k: &str| {
        capabilities
            .and_then(|c| c.get(k))
            .is_some_and(|v| !v.is_null())
    };
    ClientCaps {
        sampling: has("sampling"),
        elicitation: has("elicitation"),
        roots: has("roots"),
        tasks: capabilities
            .and_then(|c| c.get("extensions"))
            .and_then(|e| e.get(task_extension::EXTENSION))
            .is_some_and(|v| !v.is_null()),
    }
}

/// Opens and checks the session of a legacy request.
fn legacy_session(
    gw: &Gateway,
    headers: &HeaderMap,
    route: &Route,
    principal: &Principal,
    id: &Value,
) -> Result<Arc<SessionClaims>, Response> {
    let Some(raw) = era::header_str(headers, era::HEADER_SESSION_ID) else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            jsonrpc::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (send initialize first, or use protocol 2026-07-28 with per-request _meta)",
            None,
        ));
    };
    let not_found = || {
        rpc_error(
            StatusCode::NOT_FOUND,
            id,
            jsonrpc::INVALID_REQUEST,
            "Session not found",
            None,
        )
    };
    let claims = gw.sessions.open(raw).ok_or_else(not_found)?;
    let valid = claims.srv.as_deref() == route.server()
        && claims.sub == principal.id
        && gw.session_alive(&claims);
    if !valid {
        return Err(not_found());
    }
    // The spec asks clients to send the negotiated version (a SHOULD) and servers to
    // refuse an invalid or unsupported one (a MUST); another session-era version is
    // neither, and the reference SDKs serve it, as the official conformance suite
    // expects. The session goes on with the version it negotiated.
    if let Some(v) = era::header_str(headers, era::HEADER_PROTOCOL_VERSION) {
        if !era::LEGACY_VERSIONS.contains(&v) {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                id,
                jsonrpc::INVALID_REQUEST,
                &format!(
                    "Bad Request: MCP-Protocol-Version '{v}' is not a version a session can speak (this one negotiated '{}')",
                    claims.ver
                ),
                Some(json!({ "supported": era::LEGACY_VERSIONS })),
            ));
        }
    }
    Ok(claims)
}

pub async fn post_aggregate(State(gw): State<Arc<Gateway>>, http: Request) -> Response {
    post(gw, None, http).await
}

pub async fn post_server(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    http: Request,
) -> Response {
    post(gw, Some(server), http).await
}

/// The request's body, read only once the caller is admitted (a stranger cannot make
/// the gateway buffer `server.max_body_bytes`), up to that limit.
async fn read_body(gw: &Gateway, body: axum::body::Body) -> Result<Bytes, Response> {
    let limit = gw.config.server.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!("Payload Too Large: the request body exceeds {limit} bytes (server.max_body_bytes)"),
                None,
            )
        } else {
            rpc_error(
                StatusCode::BAD_REQUEST,
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                &format!("Bad Request: the request body could not be read: {e}"),
                None,
            )
        }
    })
}

async fn post(gw: Arc<Gateway>, server: Option<String>, http: Request) -> Response {
    // The request's parts, not a copy of its headers (the `HeaderMap` extractor clones).
    let (parts, body) = http.into_parts();
    let headers = parts.headers;
    let principal = match admit(&gw, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // Held until the answer is ready: the caller's share of its concurrency caps. Given
    // back below, before the answer goes out. The request is handled in a labelled block,
    // not a function of its own, which `Slots::held_while` would wrap: each future around
    // the request's large one is one more copy of it on every request.
    let slots = match gw.limits.admit(&principal).await {
        Ok(slots) => slots,
        Err(refusal) => return refusal.into_response(),
    };
    let response = 'handled: {
        let route = match route_for(&gw, server, &principal) {
            Ok(r) => r,
            Err(r) => break 'handled r,
        };
        let body = match read_body(&gw, body).await {
            Ok(b) => b,
            Err(r) => break 'handled r,
        };
        let message = match jsonrpc::parse(&body) {
            Ok(m) => m,
            Err(rejection) => {
                break 'handled rpc_error(
                    StatusCode::BAD_REQUEST,
                    &rejection.id,
                    rejection.code,
                    &rejection.message,
                    None,
                );
            }
        };
        let served_at = parts.extensions.get::<ServedAt>().map(|s| s.0);
        match message {
            Message::Request {
                id,
                method,
                body: fields,
            } => {
                if let Some(owner) = replica_forward::held_elsewhere(
                    &gw, &principal, &method, &fields, &headers, served_at,
                ) {
                    break 'handled Box::pin(replica_forward::forward(
                        owner, &parts.uri, headers, body, &id,
                    ))
                    .await;
                }
                let arrival = Arrival { headers, served_at };
                request(gw, route, principal, arrival, id, method, fields).await
            }
            Message::Notification { method, body } => {
                notification(&gw, &route, &principal, &headers, &method, body)
            }
            Message::Response { id, body: fields } => {
                let key = id.as_str().unwrap_or_default();
                let held = replica_forward::Held::ServerRequest;
                if let Some(owner) =
                    replica_forward::marked_elsewhere(&gw, key, held, &headers, served_at)
                {
                    let carried =
                        replica_forward::carry(owner, Method::POST, &parts.uri, headers, body);
                    break 'handled match Box::pin(carried).await {
                        Some(response) => response,
                        None => bad_answer(held.unreachable()),
                    };
                }
                client_response(&gw, &principal, &headers, &route, id, fields)
            }
        }
    };
    slots.release().await;
    response
}

/// How a request arrived: its headers, and the address it reached this process at.
struct Arrival {
    headers: HeaderMap,
    served_at: Option<SocketAddr>,
}

async fn request(
    gw: Arc<Gateway>,
    route: Route,
    principal: Principal,
    arrival: Arrival,
    id: Value,
    method: String,
    mut body: Map<String, Value>,
) -> Response {
    let Arrival { headers, served_at } = arrival;
    let sse = accepts_sse(&headers);
    let request_id = era::header_str(&headers, era::HEADER_REQUEST_ID).map(String::from);
    let ctx = match era::detect(&method, &body, &headers) {
        // Boxed, like every path a request seldom takes: an async fn's future is as large
        // as its largest path, and the common path's future is allocated and copied on
        // every request.
        Era::Legacy if method == "initialize" => {
            return Box::pin(initialize(&gw, route, principal, id, &body)).await;
        }
        Era::Legacy => {
            let claims = match legacy_session(&gw, &headers, &route, &principal, &id) {
                Ok(c) => c,
                Err(r) => return r,
            };
            Ctx {
                route,
                principal,
                era: Era::Legacy,
                caps: claims.caps,
                session: Some(claims),
                accepts_sse: sse,
                method: method.clone(),
                request_id,
                served_at,
                tasks: None,
                log_level: None,
                mirrored_params: None,
            }
        }
        Era::Modern => {
            if let Err(e) = era::validate_modern(&method, &body, &headers) {
                return rpc_error(StatusCode::BAD_REQUEST, &id, e.code, &e.message, e.data);
            }
            if let Some(replacement) = era::replaced_in_modern(&method) {
                // 2026-07-28: a method the server does not implement is a 404 with -32601.
                let message = format!(
                    "Method not found: {} is not part of protocol 2026-07-28; {replacement}",
                    jsonrpc::quoted(&method)
                );
                return rpc_error(
                    StatusCode::NOT_FOUND,
                    &id,
                    jsonrpc::METHOD_NOT_FOUND,
                    &message,
                    None,
                );
            }
            let log_level = match log_levels::of_request(&body) {
                Ok(level) => level,
                Err(message) => {
                    return rpc_error(
                        StatusCode::BAD_REQUEST,
                        &id,
                        jsonrpc::INVALID_PARAMS,
                        &message,
                        None,
                    );
                }
            };
            let caps = caps_from(
                body.get("params")
                    .and_then(|p| p.get("_meta"))
                    .and_then(|m| m.get(era::META_CLIENT_CAPABILITIES)),
            );
            era::strip_modern_meta(&mut body);
            Ctx {
                route,
                principal,
                era: Era::Modern,
                session: None,
                caps,
                accepts_sse: sse,
                method: method.clone(),
                request_id,
                served_at,
                tasks: None,
                log_level,
                mirrored_params: Some(param_headers::of_request(&headers)),
            }
        }
    };
    dispatch(gw, ctx, id, method, body, &headers).await
}

async fn initialize(
    gw: &Gateway,
    route: Route,
    principal: Principal,
    id: Value,
    body: &Map<String, Value>,
) -> Response {
    let params = jsonrpc::params(body);
    let requested = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str);
    let version = era::negotiate_legacy(requested);
    let caps = caps_from(params.and_then(|p| p.get("capabilities")));
    let result = match &route {
        Route::Aggregate => aggregate::server_info(gw, version, principal.access.as_deref()),
        Route::Server(name) => {
            let Some(upstream) = gw.find(principal.access.as_deref(), name) else {
                return no_such_server(&id, name);
            };
            match upstream.connection(upstream.timeout()).await {
                Ok(conn) => {
                    let init = conn.init().expect("connections are initialized before use");
                    let mut result = init.result.clone();
                    result.insert("protocolVersion".into(), json!(version));
                    tasks::offered(result.get_mut("capabilities"));
                    Value::Object(result)
                }
                Err(e) => return relay::upstream_error_response(&id, &e),
            }
        }
    };
    let claims = SessionClaims {
        sid: new_session_id(),
        ver: version.to_string(),
        srv: route.server().map(String::from),
        sub: principal.id.clone(),
        caps,
        iat: super::unix_now(),
    };
    tracing::info!(session = %claims.sid, principal = %principal.id, server = route.server().unwrap_or("*"), version, "session initialized");
    let mut response = json_response(StatusCode::OK, &jsonrpc::result_response(&id, result));
    let sealed = gw.sessions.seal(&claims);
    response.headers_mut().insert(
        era::HEADER_SESSION_ID,
        HeaderValue::from_str(&sealed).expect("base64url is a valid header value"),
    );
    response
}

async fn dispatch(
    gw: Arc<Gateway>,
    mut ctx: Ctx,
    id: Value,
    method: String,
    body: Map<String, Value>,
    headers: &HeaderMap,
) -> Response {
    if method.starts_with("tasks/") {
        return Box::pin(tasks::handle(gw, ctx, id, &method, body)).await;
    }
    if tasks::asks_for_task(&body) {
        ctx.tasks = Some(Box::new(TaskIds::Create));
    }
    match (method.as_str(), &ctx.era) {
        ("server/discover", Era::Modern) => {
            return match &ctx.route {
                Route::Aggregate => relay::finish(
                    &ctx,
                    jsonrpc::result_response(
                        &id,
                        aggregate::discover(&gw, ctx.principal.access.as_deref()),
                    ),
                ),
                Route::Server(name) => Box::pin(relay::discover_server(&gw, &ctx, name, &id)).await,
            };
        }
        ("subscriptions/listen", Era::Modern) => {
            // Its headers go with it: the tasks it watches on other replicas are asked
            // there with the listener's credentials.
            let listener = task_notifications::Listener {
                headers: headers.clone(),
            };
            return Box::pin(streams::listen(gw, ctx, id, body, listener)).await;
        }
        _ => {}
    }
    match &ctx.route {
        Route::Server(name) => {
            let Some(upstream) = gw.find(ctx.principal.access.as_deref(), name) else {
                return no_such_server(&id, name);
            };
            let access = ctx.principal.access.clone();
            if upstream.config.restricts_tools()
                || access.as_ref().is_some_and(|a| a.restricts_tools())
            {
                if let Some(response) =
                    policy::pass_through(&gw, &ctx, &upstream, access.as_deref(), &id, &body).await
                {
                    return response;
                }
            }
            relay::relay(gw, ctx, upstream, id, body).await
        }
        Route::Aggregate => aggregate::respond(gw, ctx, id, method, body).await,
    }
}

fn notification(
    gw: &Gateway,
    route: &Route,
    principal: &Principal,
    headers: &HeaderMap,
    method: &str,
    body: Map<String, Value>,
) -> Response {
    let session = match era::header_str(headers, era::HEADER_SESSION_ID) {
        Some(_) => match legacy_session(gw, headers, route, principal, &Value::Null) {
            Ok(claims) => Some(claims),
            Err(r) => return r,
        },
        None => None,
    };
    match method {
        "notifications/cancelled" => {
            let request_id = jsonrpc::params(&body)
                .and_then(|p| p.get("requestId"))
                .map(Value::to_string);
            // Only session-era calls can be cancelled this way; see relay::Cancellable.
            if let (Some(session), Some(request_id)) = (&session, request_id) {
                if !gw.cancel_call(&session.sid, &request_id) {
                    // Perhaps running on the replica the session was on before a rescale.
                    let feed = Arc::clone(&gw.session_feed);
                    let sid = session.sid.clone();
                    tokio::spawn(async move { feed.cancel(&sid, &request_id).await });
                }
            }
        }
        "notifications/roots/list_changed" => {
            for upstream in gw.upstreams_for(route, principal.access.as_deref()) {
                if let crate::upstream::State::Up(conn) = upstream.state() {
                    conn.notify(body.clone());
                }
            }
        }
        _ => {}
    }
    StatusCode::ACCEPTED.into_response()
}

/// A client answering a server-to-client request we relayed.
fn client_response(
    gw: &Gateway,
    principal: &Principal,
    headers: &HeaderMap,
    route: &Route,
    id: Value,
    body: Map<String, Value>,
) -> Response {
    let session = match era::header_str(headers, era::HEADER_SESSION_ID) {
        Some(_) => match legacy_session(gw, headers, route, principal, &Value::Null) {
            Ok(claims) => Some(claims),
            Err(r) => return r,
        },
        None => None,
    };
    let key = id.as_str().unwrap_or_default();
    match gw
        .server_requests
        .answer(key, principal, session.as_deref())
    {
        Some((conn, upstream_id)) => {
            conn.respond(upstream_id, body);
            StatusCode::ACCEPTED.into_response()
        }
        None => bad_answer("Bad Request: no pending server request has this id"),
    }
}

/// A client's answer that answers nothing.
fn bad_answer(message: &str) -> Response {
    rpc_error(
        StatusCode::BAD_REQUEST,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        message,
        None,
    )
}

pub async fn get_aggregate(State(gw): State<Arc<Gateway>>, http: Request) -> Response {
    get(gw, None, http).await
}

pub async fn get_server(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    http: Request,
) -> Response {
    get(gw, Some(server), http).await
}

/// The 2025-era standalone stream. Without a session (the 2026-07-28 era), 405.
async fn get(gw: Arc<Gateway>, server: Option<String>, http: Request) -> Response {
    let (parts, _) = http.into_parts();
    let headers = parts.headers;
    let principal = match admit(&gw, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let route = match route_for(&gw, server, &principal) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !headers.contains_key(era::HEADER_SESSION_ID) {
        return method_not_allowed();
    }
    let claims = match legacy_session(&gw, &headers, &route, &principal, &Value::Null) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if !accepts_sse(&headers) {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            &Value::Null,
            jsonrpc::INVALID_REQUEST,
            "Not Acceptable: the GET stream needs Accept: text/event-stream",
            None,
        );
    }
    let served_at = parts.extensions.get::<ServedAt>().map(|s| s.0);
    let admitted = streams::Admitted::new(headers.clone(), &principal);
    if let Some(last) = headers.get(LAST_EVENT_ID) {
        // Not text: no id of ours, refused as malformed.
        let last = last.to_str().unwrap_or_default().to_string();
        let held = replica_forward::Held::Stream;
        if let Some(owner) =
            replica_forward::marked_elsewhere(&gw, &last, held, &headers, served_at)
        {
            let carried =
                replica_forward::carry(owner, Method::GET, &parts.uri, headers, Bytes::new());
            if let Some(response) = Box::pin(carried).await {
                return response;
            }
            // Gone with what it held: answered here as any stream this replica lacks.
        }
        return streams::resume(gw, route, claims, admitted, &last, served_at);
    }
    streams::session_stream(gw, route, claims, admitted, served_at)
}

pub async fn delete_aggregate(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    delete(gw, None, headers).await
}

pub async fn delete_server(
    State(gw): State<Arc<Gateway>>,
    Path(server): Path<String>,
    headers: HeaderMap,
) -> Response {
    delete(gw, Some(server), headers).await
}

async fn delete(gw: Arc<Gateway>, server: Option<String>, headers: HeaderMap) -> Response {
    let principal = match admit(&gw, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let route = match route_for(&gw, server, &principal) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !headers.contains_key(era::HEADER_SESSION_ID) {
        return method_not_allowed();
    }
    match legacy_session(&gw, &headers, &route, &principal, &Value::Null) {
        Ok(claims) => {
            gw.end_session(&claims).await;
            tracing::info!(session = %claims.sid, "session terminated by client");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

fn method_not_allowed() -> Response {
    let mut response = rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &Value::Null,
        jsonrpc::INVALID_REQUEST,
        "Method Not Allowed: GET and DELETE need an Mcp-Session-Id (protocol 2025-11-25 and earlier)",
        None,
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
    response
}
