//! Audit: one document per MCP request through the gateway — who, tenant, server,
//! method, tool, redacted arguments, outcome, latency, request id.
//!
//! Events go through a bounded queue ([`queue`]) to a store chosen by URL: `sql` (the
//! role's PostgreSQL or SQLite database, [`sql`]) or `mongodb://…` ([`mongo`]). Writing
//! never happens on the call's path; when the store is down, events spill to a local
//! file and are replayed when it returns; what cannot be kept is counted, never silent.

pub mod mongo;
pub mod queue;
pub mod redact;
pub mod sql;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use queue::AuditQueue;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AuditEvent {
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    /// Empty for callers authenticated by a configuration key (embedded mode).
    pub tenant_id: String,
    pub principal: String,
    /// The upstream server, or `*` for requests the aggregate answered itself.
    pub server: String,
    pub method: String,
    /// Tool or prompt name, or resource URI.
    pub tool: Option<String>,
    /// Arguments with secret-looking values replaced and long values cut.
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
    pub outcome: String,
    pub latency_ms: f64,
    pub request_id: Option<String>,
}

/// What `GET /api/v1/audit` may ask for; always within one tenant.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub principal: Option<String>,
    pub outcome: Option<String>,
    /// Newest first; the page starts after this (time, id).
    pub after: Option<(i64, String)>,
    pub limit: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
}

/// A place audit events are kept. Writes must be idempotent by event id: a batch that
/// failed half-way is replayed whole.
#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    fn name(&self) -> &'static str;
    async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError>;
    async fn query(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditEvent>, AuditError>;
    async fn ping(&self) -> Result<(), AuditError>;
    /// Deletes events older than `before` (ms); stores with native expiry do nothing.
    async fn purge(&self, before: i64) -> Result<u64, AuditError>;
}
