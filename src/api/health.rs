//! Liveness, readiness and status. Liveness depends on nothing; readiness on every store
//! the role uses; status tells operators what runs and how it is doing.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use super::ApiState;
use crate::upstream::State as UpState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/api/health", tag = "health",
    responses((status = 200, description = "The process is alive")))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn database_check(state: &ApiState) -> Value {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, state.store.ping()).await;
    let backend = state.store.dialect().name();
    match outcome {
        Ok(Ok(())) => {
            json!({ "status": "up", "backend": backend, "latency_ms": started.elapsed().as_secs_f64() * 1e3 })
        }
        Ok(Err(e)) => json!({ "status": "down", "backend": backend, "error": e.to_string() }),
        Err(_) => json!({ "status": "down", "backend": backend, "error": "no answer within 2 s" }),
    }
}

async fn cache_check(state: &ApiState) -> Value {
    let Some(redis) = &state.redis else {
        return json!({ "status": "up", "backend": "memory" });
    };
    let mut conn = redis.clone();
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut conn);
    match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
        Ok(Ok(_)) => json!({ "status": "up", "backend": "redis" }),
        Ok(Err(e)) => {
            json!({ "status": "down", "backend": "redis", "error": format!("{:?}", e.kind()) })
        }
        Err(_) => json!({ "status": "down", "backend": "redis", "error": "no answer within 2 s" }),
    }
}

async fn audit_check(audit: &dyn crate::audit::AuditStore) -> Value {
    match tokio::time::timeout(PROBE_TIMEOUT, audit.ping()).await {
        Ok(Ok(())) => json!({ "status": "up", "backend": audit.name() }),
        Ok(Err(e)) => json!({ "status": "down", "backend": audit.name(), "error": e.to_string() }),
        Err(_) => {
            json!({ "status": "down", "backend": audit.name(), "error": "no answer within 2 s" })
        }
    }
}

#[utoipa::path(get, path = "/api/ready", tag = "health",
    responses((status = 200, description = "Every dependency answers"),
              (status = 503, description = "A dependency is down; `checks` says which")))]
pub async fn ready(State(state): State<ApiState>) -> Response {
    let mut checks = json!({ "database": database_check(&state).await });
    checks["cache"] = cache_check(&state).await;
    if let Some(audit) = &state.audit {
        checks["audit"] = audit_check(audit.as_ref()).await;
    }
    let failed: Vec<&String> = checks
        .as_object()
        .expect("object")
        .iter()
        .filter(|(_, c)| c["status"] != "up")
        .map(|(name, _)| name)
        .collect();
    let (status, word) = if failed.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (
        status,
        Json(json!({ "status": word, "failed": failed, "checks": checks })),
    )
        .into_response()
}

/// Upstream health as the gateways report it (`gantry api` runs none itself): each
/// gateway's `/ready`, asked in parallel; one that does not answer is listed as such.
async fn remote_upstreams(gateways: &[String]) -> Vec<Value> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .expect("HTTP client builds");
    let asks = gateways.iter().map(|base| {
        let client = client.clone();
        async move {
            let url = format!("{}/ready", base.trim_end_matches('/'));
            let answer = async { client.get(&url).send().await?.json::<Value>().await }.await;
            match answer {
                Ok(ready) => ready["upstreams"]
                    .as_object()
                    .map(|ups| {
                        ups.iter()
                            .map(|(name, u)| {
                                json!({ "name": name, "status": u["status"], "reason": u.get("reason"),
                                        "restarts": u["restarts"], "gateway": base })
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
                Err(e) => vec![json!({ "gateway": base, "status": "unreachable", "reason": e.without_url().to_string() })],
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[utoipa::path(get, path = "/api/v1/status", tag = "health",
    responses((status = 200, description = "Components, versions, uptime and upstream health")))]
pub async fn status(State(state): State<ApiState>) -> Json<Value> {
    let upstreams: Vec<Value> = match &state.gateway {
        Some(gw) => gw
            .upstreams
            .all()
            .iter()
            .filter(|u| u.tenant.is_none())
            .map(|u| {
                let (status, reason) = match u.state() {
                    UpState::Up(_) => ("up", None),
                    UpState::Starting => ("starting", None),
                    UpState::Down(down) => ("down", Some(down.reason)),
                };
                json!({ "name": u.name, "status": status, "reason": reason, "restarts": u.restarts() })
            })
            .collect(),
        None => remote_upstreams(&state.config.api.gateway_urls).await,
    };
    Json(json!({
        "service": "gantry",
        "version": env!("CARGO_PKG_VERSION"),
        "role": state.role,
        "started_at": state.started_at.to_rfc3339(),
        "uptime_secs": state.started.elapsed().as_secs(),
        "mcp_protocol_versions": crate::gateway::era::all_versions(),
        "components": {
            "database": database_check(&state).await,
            "cache": cache_check(&state).await,
            "audit": match &state.audit {
                Some(audit) => audit_check(audit.as_ref()).await,
                None => json!({ "status": "disabled" }),
            },
        },
        "upstreams": upstreams,
    }))
}
