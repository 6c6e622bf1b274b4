//! The MCP server registry: per-tenant servers, with the same settings document as an
//! `[upstreams.NAME]` table of the configuration file.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::{Dialect, Store, StoreError, new_id, now_ms};
use crate::config::UpstreamConfig;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Server {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// Transport and its settings, as in an `[upstreams.NAME]` table of gantry.toml.
    #[schema(value_type = Object)]
    pub settings: UpstreamConfig,
    /// Grows with every change or restart request; gateways restart the server when it does.
    pub version: i64,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl FromRow<'_, AnyRow> for Server {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        let raw: String = row.try_get("settings")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            settings: serde_json::from_str(&raw).map_err(|e| sqlx::Error::ColumnDecode {
                index: "settings".into(),
                source: Box::new(e),
            })?,
            version: row.try_get("version")?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, name, settings, version, created_by, created_at, updated_at";

fn settings_json(settings: &UpstreamConfig) -> String {
    serde_json::to_string(settings).expect("settings serialize")
}

impl Store {
    pub async fn create_server(
        &self,
        tenant_id: &str,
        name: &str,
        settings: &UpstreamConfig,
        created_by: Option<&str>,
    ) -> Result<Server, StoreError> {
        let now = now_ms();
        let server = Server {
            id: new_id(),
            tenant_id: tenant_id.to_string(),
            name: name.to_string(),
            settings: settings.clone(),
            version: 1,
            created_by: created_by.map(str::to_string),
            created_at: now,
            updated_at: now,
        };
        self.execute_scoped(
            tenant_id,
            sqlx::query(
                "INSERT INTO mcp_servers (id, tenant_id, name, settings, version, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&server.id)
            .bind(&server.tenant_id)
            .bind(&server.name)
            .bind(settings_json(settings))
            .bind(server.version)
            .bind(&server.created_by)
            .bind(now)
            .bind(now),
        )
        .await
        .map_err(|e| e.conflict_on("server name"))?;
        Ok(server)
    }

    pub async fn servers(&self, tenant_id: &str) -> Result<Vec<Server>, StoreError> {
        let mut tx = self.scoped(tenant_id).await?;
        let sql = format!("SELECT {COLUMNS} FROM mcp_servers WHERE tenant_id = $1 ORDER BY name");
        let servers = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(servers)
    }

    pub async fn server(&self, tenant_id: &str, id: &str) -> Result<Server, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM mcp_servers WHERE tenant_id = $1 AND id = $2");
        self.fetch_scoped(tenant_id, sql, id).await
    }

    /// Replaces the settings (or, with `None`, only bumps the version: a restart).
    pub async fn update_server(
        &self,
        tenant_id: &str,
        id: &str,
        settings: Option<&UpstreamConfig>,
    ) -> Result<(), StoreError> {
        let changed = match settings {
            Some(settings) => {
                self.execute_scoped(
                    tenant_id,
                    sqlx::query(
                        "UPDATE mcp_servers SET settings = $1, version = version + 1, updated_at = $2 \
                         WHERE tenant_id = $3 AND id = $4",
                    )
                    .bind(settings_json(settings))
                    .bind(now_ms())
                    .bind(tenant_id)
                    .bind(id),
                )
                .await?
            }
            None => {
                self.execute_scoped(
                    tenant_id,
                    sqlx::query(
                        "UPDATE mcp_servers SET version = version + 1, updated_at = $1 WHERE tenant_id = $2 AND id = $3",
                    )
                    .bind(now_ms())
                    .bind(tenant_id)
                    .bind(id),
                )
                .await?
            }
        };
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn delete_server(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        let changed = self
            .execute_scoped(
                tenant_id,
                sqlx::query("DELETE FROM mcp_servers WHERE tenant_id = $1 AND id = $2")
                    .bind(tenant_id)
                    .bind(id),
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every tenant's servers: what a gateway runs.
    pub async fn all_servers(&self) -> Result<Vec<Server>, StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => format!("SELECT {COLUMNS} FROM gantry_all_servers()"),
            Dialect::Sqlite => {
                format!("SELECT {COLUMNS} FROM mcp_servers ORDER BY tenant_id, name")
            }
        };
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Tells running gateways that the registry changed (PostgreSQL: NOTIFY on the
    /// `gantry_registry` channel; SQLite has one process, told in-process by the caller).
    pub async fn announce_registry_change(&self) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify('gantry_registry', '')")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}
