//! Audit events in MongoDB (`audit.store = "mongodb://…"`): one document per event, a TTL
//! index for retention and compound indexes for the query patterns of the audit API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};

use super::{AuditError, AuditEvent, AuditFilter, AuditStore};

const DUPLICATE_KEY: i32 = 11000;

pub struct MongoAudit {
    client: Client,
    events: Collection<Document>,
    retention_days: u32,
    /// Whether the indexes are known to exist; made on the first write that reaches
    /// the server when it was down at start-up.
    indexed: AtomicBool,
}

fn unavailable(e: mongodb::error::Error) -> AuditError {
    // Driver errors describe the failure, not the connection string.
    AuditError::Unavailable(e.kind.to_string())
}

impl MongoAudit {
    /// Connects lazily (the driver retries in the background) and ensures the indexes
    /// when the server answers; an unreachable server is not a start-up failure, since
    /// events spill until it comes.
    pub async fn connect(url: &str, retention_days: u32) -> Result<Self, AuditError> {
        let mut options = ClientOptions::parse(url)
            .await
            .map_err(|e| AuditError::Unavailable(format!("invalid audit.store URL: {}", e.kind)))?;
        options.app_name = Some("gantry".into());
        options.server_selection_timeout = Some(Duration::from_secs(2));
        options.connect_timeout = Some(Duration::from_secs(2));
        let client = Client::with_options(options).map_err(unavailable)?;
        let db = client
            .default_database()
            .unwrap_or_else(|| client.database("gantry"));
        let audit = Self {
            events: db.collection("audit_events"),
            client,
            retention_days,
            indexed: AtomicBool::new(false),
        };
        if let Err(e) = audit.ensure_indexes().await {
            tracing::warn!(error = %e, "audit indexes not created yet (the store is unreachable); retrying with the first write");
        }
        Ok(audit)
    }

    async fn ensure_indexes(&self) -> Result<(), AuditError> {
        if self.indexed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let retention_days = self.retention_days;
        let ttl = IndexModel::builder()
            .keys(doc! { "time": 1 })
            .options(
                IndexOptions::builder()
                    .name("retention".to_string())
                    .expire_after(Duration::from_secs(u64::from(retention_days) * 86_400))
                    .build(),
            )
            .build();
        let mut models = vec![ttl];
        for field in [
            None,
            Some("server"),
            Some("tool"),
            Some("principal"),
            Some("outcome"),
        ] {
            let mut keys = doc! { "tenant_id": 1 };
            if let Some(f) = field {
                keys.insert(f, 1);
            }
            keys.insert("time", -1);
            keys.insert("_id", 1);
            models.push(IndexModel::builder().keys(keys).build());
        }
        self.events
            .create_indexes(models)
            .await
            .map_err(unavailable)?;
        self.indexed.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn to_document(e: &AuditEvent) -> Document {
        doc! {
            "_id": &e.id,
            "tenant_id": &e.tenant_id,
            "time": DateTime::from_millis(e.time),
            "principal": &e.principal,
            "server": &e.server,
            "method": &e.method,
            "tool": e.tool.as_deref(),
            // A string, not a sub-document: argument keys are client input and may hold
            // `$` or `.`, which MongoDB field names must not.
            "arguments": e.arguments.as_ref().map(|a| a.to_string()),
            "outcome": &e.outcome,
            "latency_ms": e.latency_ms,
            "request_id": e.request_id.as_deref(),
        }
    }

    fn from_document(d: &Document) -> Option<AuditEvent> {
        let text = |k: &str| d.get_str(k).ok().map(str::to_string);
        Some(AuditEvent {
            id: text("_id")?,
            tenant_id: text("tenant_id")?,
            time: d.get_datetime("time").ok()?.timestamp_millis(),
            principal: text("principal")?,
            server: text("server")?,
            method: text("method")?,
            tool: text("tool"),
            arguments: text("arguments").and_then(|a| serde_json::from_str(&a).ok()),
            outcome: text("outcome")?,
            latency_ms: d.get_f64("latency_ms").ok()?,
            request_id: text("request_id"),
        })
    }
}

#[async_trait::async_trait]
impl AuditStore for MongoAudit {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        self.ensure_indexes().await?;
        let docs: Vec<Document> = events.iter().map(Self::to_document).collect();
        match self.events.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            // A replayed batch meets the events that did arrive: those are duplicates, fine.
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(failure)
                    if failure.write_concern_error.is_none()
                        && failure
                            .write_errors
                            .as_ref()
                            .is_some_and(|errs| errs.iter().all(|w| w.code == DUPLICATE_KEY)) =>
                {
                    Ok(())
                }
                _ => Err(unavailable(e)),
            },
        }
    }

    async fn query(&self, tenant_id: &str, f: &AuditFilter) -> Result<Vec<AuditEvent>, AuditError> {
        let mut filter = doc! { "tenant_id": tenant_id };
        let mut time = Document::new();
        if let Some(from) = f.from {
            time.insert("$gte", DateTime::from_millis(from));
        }
        if let Some(to) = f.to {
            time.insert("$lte", DateTime::from_millis(to));
        }
        if !time.is_empty() {
            filter.insert("time", time);
        }
        for (key, value) in [
            ("server", &f.server),
            ("tool", &f.tool),
            ("principal", &f.principal),
            ("outcome", &f.outcome),
        ] {
            if let Some(v) = value {
                filter.insert(key, v.as_str());
            }
        }
        if let Some((at, id)) = &f.after {
            let at = DateTime::from_millis(*at);
            filter.insert(
                "$or",
                vec![
                    doc! { "time": { "$lt": at } },
                    doc! { "time": at, "_id": { "$gt": id.as_str() } },
                ],
            );
        }
        let cursor = self
            .events
            .find(filter)
            .sort(doc! { "time": -1, "_id": 1 })
            .limit(i64::from(f.limit))
            .await
            .map_err(unavailable)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(unavailable)?;
        Ok(docs.iter().filter_map(Self::from_document).collect())
    }

    async fn ping(&self) -> Result<(), AuditError> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn purge(&self, _before: i64) -> Result<u64, AuditError> {
        Ok(0) // the TTL index expires documents by itself
    }
}
