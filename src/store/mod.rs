//! Relational persistence: one schema, two backends chosen by URL (`postgres://` or
//! `sqlite://`), reached through sqlx's runtime-generic `Any` driver so each query is
//! written once.
//!
//! The backends differ in one place that matters: PostgreSQL enforces tenant isolation
//! itself (row-level security keyed on `app.tenant_id`, set per transaction by
//! [`Store::scoped`]), while on SQLite the repository's own `WHERE tenant_id = …` is the
//! only guard. Every tenant-owned query therefore goes through `scoped` *and* filters by
//! tenant, so both backends answer the same black-box tests.

mod error;
pub mod identity;
pub mod registry;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Transaction};

pub use error::StoreError;

use crate::config::DatabaseConfig;

static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }

    fn migrator(self) -> &'static Migrator {
        match self {
            Self::Postgres => &POSTGRES,
            Self::Sqlite => &SQLITE,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

/// SQLite files are created on first use; a URL without `mode` gets `rwc`.
fn normalise(url: &str, dialect: Dialect) -> String {
    if dialect == Dialect::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    } else {
        url.to_string()
    }
}

/// SQLite's defaults (rollback journal, `synchronous = FULL`) cost several fsyncs per
/// commit, and a reader waits for the writer: with the audit written into the same file
/// on every request, that was most of the embedded mode's CPU per call. In WAL mode with
/// `synchronous = NORMAL` a commit survives the process crashing (only an OS crash or
/// power loss can take the newest commits, never the file's consistency), and readers
/// (the API) no longer block on the audit writer.
async fn sqlite_pragmas(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Opens a pool on `url`. Connection errors never echo the URL: it may hold a password.
    pub async fn connect(url: &str, config: &DatabaseConfig) -> Result<Self, StoreError> {
        install_default_drivers();
        let dialect = Dialect::of(url).ok_or_else(|| {
            StoreError::Unavailable("database URL must start with postgres:// or sqlite:".into())
        })?;
        // Two connections are kept open even when idle: a request that finds none free
        // would otherwise pay for opening one (name lookup, TCP, SCRAM) itself. Under
        // Podman, name lookups just after containers start sometimes stall for seconds,
        // and a sign-in that had to open a connection then was answered 503 when the
        // acquire timeout ran out.
        let mut options = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.max_connections.min(2))
            .acquire_timeout(Duration::from_secs(config.connect_timeout_secs));
        if dialect == Dialect::Sqlite {
            options = options.after_connect(|conn, _| Box::pin(sqlite_pragmas(conn)));
        }
        let pool = options
            .connect(&normalise(url, dialect))
            .await
            .map_err(StoreError::from)?;
        Ok(Self { pool, dialect })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies pending migrations and returns how many this call applied. Safe to run
    /// from several processes at once: on PostgreSQL an advisory lock serialises the
    /// runs (the later ones find nothing to do), SQLite locks the file.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let migrator = self.dialect.migrator();
        let mut conn = self.pool.acquire().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let outcome = async {
            let before = applied_versions(&mut conn).await.unwrap_or_default();
            migrator
                .run(&mut *conn)
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            let after = applied_versions(&mut conn).await?;
            Ok(after.len().saturating_sub(before.len()))
        }
        .await;
        if self.dialect == Dialect::Postgres {
            // Session-level lock: released explicitly, since the connection returns to the pool.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
        }
        outcome
    }

    /// Fails with a clear message when the schema is older than this binary (someone
    /// forgot `gantry migrate`), instead of failing later on a missing column.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        let applied = applied_versions(&mut conn).await.unwrap_or_default();
        let expected = self
            .dialect
            .migrator()
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .count();
        let missing: Vec<i64> = self
            .dialect
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::NotMigrated {
                applied: applied.len(),
                expected,
            })
        }
    }

    /// One round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A transaction in which PostgreSQL's row-level security admits only `tenant_id`'s
    /// rows. The setting is transaction-local, so a pooled connection never carries it
    /// into someone else's request.
    pub async fn scoped(&self, tenant_id: &str) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                .bind(tenant_id)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Runs one writing statement in `tenant_id`'s scope and commits; returns the number
    /// of rows it changed.
    pub async fn execute_scoped(
        &self,
        tenant_id: &str,
        query: sqlx::query::Query<'_, Any, sqlx::any::AnyArguments>,
    ) -> Result<u64, StoreError> {
        if self.dialect == Dialect::Sqlite {
            // No tenant setting to scope on SQLite, and one statement commits atomically
            // by itself: BEGIN and COMMIT would be two more round trips to its thread.
            return Ok(query.execute(&self.pool).await?.rows_affected());
        }
        let mut tx = self.scoped(tenant_id).await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// The row of a tenant-owned table with this id (`sql` selects by `tenant_id = $1 AND
    /// id = $2`), read in the tenant's scope; `NotFound` when there is none.
    pub async fn fetch_scoped<T>(
        &self,
        tenant_id: &str,
        sql: String,
        id: &str,
    ) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let mut tx = self.scoped(tenant_id).await?;
        let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(row)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// An arbitrary constant naming Gantry's migration lock among the cluster's advisory locks.
const MIGRATION_LOCK: i64 = 0x6761_6e74_7279; // "gantry"

async fn applied_versions(conn: &mut sqlx::AnyConnection) -> Result<Vec<i64>, StoreError> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

/// Milliseconds since the Unix epoch: the one time representation both backends store.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
