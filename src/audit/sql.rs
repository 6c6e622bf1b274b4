//! Audit events in the relational database (`audit.store = "sql"`): PostgreSQL under
//! row-level security, or the embedded SQLite file.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{AuditError, AuditEvent, AuditFilter, AuditStore};
use crate::store::{Dialect, Store, StoreError};

const COLUMNS: usize = 11;
/// Rows per statement, largest first; 11 parameters a row stays well under SQLite's
/// (32 766) and PostgreSQL's (65 535) limits. Fewer than 10 rows left go in one
/// statement of their exact size: at most 9 more statement texts to prepare, and a
/// batch of 49 takes 5 round trips rather than 13.
const CHUNK_SIZES: [usize; 3] = [250, 50, 10];

/// The insert statement for `rows` events, written once per size and dialect (at most
/// the chunk sizes and 1 to 9 rows, for each dialect).
fn insert_statement(rows: usize, dialect: Dialect) -> &'static str {
    static TEXTS: std::sync::Mutex<Vec<(usize, bool, &'static str)>> =
        std::sync::Mutex::new(Vec::new());
    let postgres = dialect == Dialect::Postgres;
    let mut texts = TEXTS.lock().unwrap();
    if let Some((_, _, text)) = texts.iter().find(|(r, p, _)| *r == rows && *p == postgres) {
        return text;
    }
    let text: &'static str = Box::leak(insert_statement_text(rows, dialect).into_boxed_str());
    texts.push((rows, postgres, text));
    text
}

/// `INSERT … VALUES ($1 … $11), ($12 … $22), …` for `rows` events; idempotent by id.
/// SQLite gets anonymous `?` placeholders: binding a numbered one makes sqlx look its
/// name up, a linear scan in SQLite, so a 2 750-parameter statement cost quadratic time.
fn insert_statement_text(rows: usize, dialect: Dialect) -> String {
    let mut sql = String::from(
        "INSERT INTO audit_events (id, tenant_id, time, principal, server, method, tool, arguments, outcome, latency_ms, request_id) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            match dialect {
                Dialect::Postgres => sql.push_str(&format!("${}", row * COLUMNS + col + 1)),
                Dialect::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING");
    sql
}

/// One statement per chunk rather than per event: a busy gateway writes thousands of
/// events a second, and round trips would be the bottleneck. A few fixed sizes, so the
/// prepared statements are reused.
fn chunked<'a>(events: &'a [&'a AuditEvent]) -> Vec<&'a [&'a AuditEvent]> {
    let mut chunks = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let size = CHUNK_SIZES
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

fn insert_query<'q>(
    chunk: &[&'q AuditEvent],
    dialect: Dialect,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query(insert_statement(chunk.len(), dialect));
    for e in chunk {
        query = query
            .bind(&e.id)
            .bind(&e.tenant_id)
            .bind(e.time)
            .bind(&e.principal)
            .bind(&e.server)
            .bind(&e.method)
            .bind(&e.tool)
            .bind(e.arguments.as_ref().map(|a| a.to_string()))
            .bind(&e.outcome)
            .bind(e.latency_ms)
            .bind(&e.request_id);
    }
    query
}

pub struct SqlAudit {
    store: Store,
}

impl SqlAudit {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn unavailable(e: impl Into<StoreError>) -> AuditError {
    AuditError::Unavailable(e.into().to_string())
}

#[async_trait::async_trait]
impl AuditStore for SqlAudit {
    fn name(&self) -> &'static str {
        "sql"
    }

    async fn write(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        // Row-level security admits one tenant per transaction.
        let mut by_tenant: BTreeMap<&str, Vec<&AuditEvent>> = BTreeMap::new();
        for e in events {
            by_tenant.entry(e.tenant_id.as_str()).or_default().push(e);
        }
        let dialect = self.store.dialect();
        for (tenant, events) in by_tenant {
            let chunks = chunked(&events);
            // One statement is atomic by itself: no transaction round trips around it.
            if let [only] = chunks.as_slice() {
                self.store
                    .execute_scoped(tenant, insert_query(only, dialect))
                    .await
                    .map_err(unavailable)?;
                continue;
            }
            let mut tx = self.store.scoped(tenant).await.map_err(unavailable)?;
            for chunk in chunks {
                insert_query(chunk, dialect)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn query(&self, tenant_id: &str, f: &AuditFilter) -> Result<Vec<AuditEvent>, AuditError> {
        let (before_time, before_id) = f.after.clone().unwrap_or((i64::MAX, String::new()));
        let mut tx = self.store.scoped(tenant_id).await.map_err(unavailable)?;
        // Optional filters are written as `($n IS NULL OR col = $n)` so the statement is
        // one fixed text whatever the caller asks for.
        let sql = "SELECT id, tenant_id, time, principal, server, method, tool, arguments, outcome, latency_ms, request_id \
                   FROM audit_events WHERE tenant_id = $1 \
                   AND (time < $2 OR (time = $2 AND id > $3)) \
                   AND time >= $4 AND time <= $5 \
                   AND ($6 IS NULL OR server = $6) AND ($7 IS NULL OR tool = $7) \
                   AND ($8 IS NULL OR principal = $8) AND ($9 IS NULL OR outcome = $9) \
                   ORDER BY time DESC, id ASC LIMIT $10";
        let sql = match self.store.dialect() {
            // PostgreSQL must know the type of a parameter that is only compared to NULL.
            Dialect::Postgres => sql
                .replace("$6 IS NULL", "$6::text IS NULL")
                .replace("$7 IS NULL", "$7::text IS NULL")
                .replace("$8 IS NULL", "$8::text IS NULL")
                .replace("$9 IS NULL", "$9::text IS NULL"),
            Dialect::Sqlite => sql.to_string(),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(before_time)
            .bind(before_id)
            .bind(f.from.unwrap_or(0))
            .bind(f.to.unwrap_or(i64::MAX))
            .bind(&f.server)
            .bind(&f.tool)
            .bind(&f.principal)
            .bind(&f.outcome)
            .bind(i64::from(f.limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                let arguments: Option<String> = row.try_get("arguments")?;
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    tenant_id: row.try_get("tenant_id")?,
                    time: row.try_get("time")?,
                    principal: row.try_get("principal")?,
                    server: row.try_get("server")?,
                    method: row.try_get("method")?,
                    tool: row.try_get("tool")?,
                    arguments: arguments.and_then(|a| serde_json::from_str(&a).ok()),
                    outcome: row.try_get("outcome")?,
                    latency_ms: row.try_get("latency_ms")?,
                    request_id: row.try_get("request_id")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), AuditError> {
        self.store.ping().await.map_err(unavailable)
    }

    async fn purge(&self, before: i64) -> Result<u64, AuditError> {
        let sql = match self.store.dialect() {
            Dialect::Postgres => "SELECT gantry_purge_audit($1) AS n",
            Dialect::Sqlite => "DELETE FROM audit_events WHERE time < $1 RETURNING 1 AS n",
        };
        let rows = sqlx::query(sql)
            .bind(before)
            .fetch_all(self.store.pool())
            .await
            .map_err(unavailable)?;
        Ok(match self.store.dialect() {
            Dialect::Postgres => rows
                .first()
                .and_then(|r| r.try_get::<i64, _>("n").ok())
                .unwrap_or(0) as u64,
            Dialect::Sqlite => rows.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_statement_numbers_every_parameter_once() {
        let sql = insert_statement(3, Dialect::Postgres);
        assert!(sql.contains("($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11), ($12,"));
        assert!(sql.contains("$33)") && !sql.contains("$34"));
        assert!(sql.ends_with("ON CONFLICT (id) DO NOTHING"));
        let sql = insert_statement(2, Dialect::Sqlite);
        assert_eq!(sql.matches('?').count(), 22);
        assert!(!sql.contains('$'));
    }

    fn event(n: usize, tenant: &str) -> AuditEvent {
        AuditEvent {
            id: format!("{tenant}-{n}"),
            time: 1_700_000_000_000 + n as i64,
            tenant_id: tenant.into(),
            principal: "key:test".into(),
            server: "demo".into(),
            method: "tools/call".into(),
            tool: Some("echo".into()),
            arguments: Some(serde_json::json!({ "n": n })),
            outcome: "ok".into(),
            latency_ms: 1.5,
            request_id: None,
        }
    }

    /// Batches of every shape (one statement, several in a transaction, two tenants)
    /// arrive whole, and writing a batch again (a replayed spill) adds nothing.
    #[tokio::test]
    async fn batches_of_any_size_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/audit.db", dir.path().display());
        let store = Store::connect(&url, &Default::default()).await.unwrap();
        store.migrate().await.unwrap();
        let audit = SqlAudit::new(store.clone());
        let all = AuditFilter {
            limit: 1000,
            ..Default::default()
        };
        for (round, size) in [1usize, 9, 10, 63, 313].into_iter().enumerate() {
            let tenant = format!("t{round}");
            let mut batch: Vec<AuditEvent> = (0..size).map(|n| event(n, &tenant)).collect();
            batch.push(event(0, "other"));
            audit.write(&batch).await.unwrap();
            audit.write(&batch).await.unwrap();
            let kept = audit.query(&tenant, &all).await.unwrap();
            assert_eq!(kept.len(), size, "a batch of {size}");
            assert_eq!(
                kept[size - 1].arguments,
                Some(serde_json::json!({ "n": 0 }))
            );
            assert_eq!(audit.query("other", &all).await.unwrap().len(), 1);
        }
    }
}
