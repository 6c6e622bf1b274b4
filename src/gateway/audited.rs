//! The audit record of one MCP request: what is known when the request arrives (who,
//! which tool, the redacted arguments), completed with the outcome when it settles.

use std::time::Instant;

use serde_json::{Map, Value};

use super::Gateway;
use super::http::Ctx;
use super::jsonrpc;
use crate::audit::{AuditEvent, AuditQueue};

#[derive(Clone)]
pub struct Audited {
    queue: AuditQueue,
    principal: String,
    tenant_id: String,
    request_id: Option<String>,
    tool: Option<String>,
    arguments: Option<Value>,
}

impl Audited {
    /// `None` when auditing is off for this process.
    pub fn new(gw: &Gateway, ctx: &Ctx, body: &Map<String, Value>) -> Option<Self> {
        let queue = gw.audit.clone()?;
        let params = jsonrpc::params(body);
        let tool = params
            .and_then(|p| p.get("name").or_else(|| p.get("uri")))
            .and_then(Value::as_str)
            .map(String::from);
        let arguments = params
            .and_then(|p| p.get("arguments"))
            .map(|a| queue.redactor().redact(a));
        Some(Self {
            principal: ctx.principal.id.clone(),
            tenant_id: ctx.principal.tenant_id.clone().unwrap_or_default(),
            request_id: ctx.request_id.clone(),
            tool,
            arguments,
            queue,
        })
    }

    /// Records the request's outcome, moving what it holds into the event.
    pub fn record(self, server: &str, method: &str, outcome: &str, started: Instant) {
        self.queue.record(AuditEvent {
            // Time-ordered ids: the stores' indexes grow at the end instead of everywhere.
            id: uuid::Uuid::now_v7().to_string(),
            time: crate::store::now_ms(),
            tenant_id: self.tenant_id,
            principal: self.principal,
            server: server.to_string(),
            method: method.to_string(),
            tool: self.tool,
            arguments: self.arguments,
            outcome: outcome.to_string(),
            // Microsecond precision is plenty, and keeps the documents readable.
            latency_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            request_id: self.request_id,
        });
    }
}
