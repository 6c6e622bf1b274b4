//! Tenants, users, memberships, API keys and refresh tokens.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{FromRow, Row};

use super::{Dialect, Store, StoreError, new_id, now_ms};
use crate::policy::Policy;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl FromRow<'_, AnyRow> for Tenant {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            slug: row.try_get("slug")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub platform_admin: bool,
    pub disabled: bool,
    pub created_at: i64,
    #[serde(skip)]
    pub password_hash: Option<String>,
}

impl FromRow<'_, AnyRow> for User {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            display_name: row.try_get("display_name")?,
            platform_admin: flag(row, "platform_admin")?,
            disabled: flag(row, "disabled")?,
            created_at: row.try_get("created_at")?,
            password_hash: row.try_get("password_hash")?,
        })
    }
}

/// A boolean column: BOOLEAN on PostgreSQL, INTEGER on SQLite (which `Any` reads as i64).
fn flag(row: &AnyRow, column: &str) -> sqlx::Result<bool> {
    match row.try_get::<bool, _>(column) {
        Ok(value) => Ok(value),
        Err(_) => Ok(row.try_get::<i64, _>(column)? != 0),
    }
}

const USER_COLUMNS: &str =
    "id, email, display_name, password_hash, platform_admin, disabled, created_at";

/// A role within one tenant, from most to least powerful.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            "member" => Self::Member,
            "viewer" => Self::Viewer,
            _ => return None,
        })
    }

    /// Whether this role includes everything `other` may do.
    pub fn at_least(self, other: Role) -> bool {
        self <= other
    }
}

fn role_column(row: &AnyRow, column: &str) -> sqlx::Result<Role> {
    let raw: String = row.try_get(column)?;
    Role::parse(&raw).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unknown role {raw:?}").into(),
    })
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub tenant_id: String,
    pub slug: String,
    pub name: String,
    pub role: Role,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The first characters of the key, to recognise it; the key itself is never stored.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub policy: Policy,
}

impl FromRow<'_, AnyRow> for ApiKey {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            prefix: row.try_get("prefix")?,
            scopes: split_scopes(&row.try_get::<String, _>("scopes")?),
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            last_used_at: row.try_get("last_used_at")?,
            revoked_at: row.try_get("revoked_at")?,
            policy: Policy::from_column(row.try_get("policy")?),
        })
    }
}

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, scopes, created_by, created_at, expires_at, last_used_at, revoked_at, policy";

fn split_scopes(raw: &str) -> Vec<String> {
    raw.split_whitespace().map(str::to_string).collect()
}

/// What authentication needs to know about a presented key.
#[derive(Clone, Debug)]
pub struct KeyMatch {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub policy: Policy,
    pub tenant_policy: Policy,
    pub created_by: Option<String>,
}

impl KeyMatch {
    /// Not revoked, not expired, and carrying `scope`.
    pub fn usable_for(&self, scope: &str, now_ms: i64) -> bool {
        self.revoked_at.is_none()
            && self.expires_at.is_none_or(|at| at > now_ms)
            && self.scopes.iter().any(|s| s == scope)
    }
}

pub struct NewApiKey<'a> {
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a str,
    pub scopes: &'a [String],
    pub created_by: Option<&'a str>,
    /// How long the key works, counted from its creation; `None`: until revoked.
    pub lifetime_ms: Option<i64>,
    pub policy: Policy,
}

#[derive(Clone, Debug)]
pub struct RefreshRecord {
    pub id: String,
    pub family_id: String,
    pub user_id: String,
    pub tenant_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl FromRow<'_, AnyRow> for RefreshRecord {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            family_id: row.try_get("family_id")?,
            user_id: row.try_get("user_id")?,
            tenant_id: row.try_get("tenant_id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    }
}

/// `NotFound` when a write that names one row changed none.
fn found(changed: u64) -> Result<(), StoreError> {
    if changed == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

impl Store {
    pub async fn create_tenant(&self, slug: &str, name: &str) -> Result<Tenant, StoreError> {
        let tenant = Tenant {
            id: new_id(),
            slug: slug.to_string(),
            name: name.to_string(),
            created_at: now_ms(),
        };
        self.execute_scoped(
            &tenant.id,
            sqlx::query("INSERT INTO tenants (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
                .bind(&tenant.id)
                .bind(&tenant.slug)
                .bind(&tenant.name)
                .bind(tenant.created_at),
        )
        .await
        .map_err(|e| e.conflict_on("tenant slug"))?;
        Ok(tenant)
    }

    pub async fn tenant(&self, tenant_id: &str) -> Result<Tenant, StoreError> {
        let mut tx = self.scoped(tenant_id).await?;
        let tenant = sqlx::query_as("SELECT id, slug, name, created_at FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(tenant)
    }

    /// Every tenant: for platform administrators only (the caller checks).
    pub async fn all_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT id, slug, name, created_at FROM gantry_all_tenants()",
            Dialect::Sqlite => "SELECT id, slug, name, created_at FROM tenants ORDER BY slug",
        };
        Ok(sqlx::query_as(sql).fetch_all(&self.pool).await?)
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .all_tenants()
            .await?
            .into_iter()
            .find(|t| t.slug == slug))
    }

    pub async fn create_user(
        &self,
        email: &str,
        display_name: &str,
        password_hash: Option<&str>,
        platform_admin: bool,
    ) -> Result<User, StoreError> {
        let user = User {
            id: new_id(),
            email: email.to_lowercase(),
            display_name: display_name.to_string(),
            platform_admin,
            disabled: false,
            created_at: now_ms(),
            password_hash: password_hash.map(str::to_string),
        };
        sqlx::query(
            "INSERT INTO users (id, email, display_name, password_hash, platform_admin, disabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(&user.password_hash)
        .bind(user.platform_admin)
        .bind(user.disabled)
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from(e).conflict_on("user email"))?;
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(email.to_lowercase())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn user(&self, user_id: &str) -> Result<User, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn set_password(&self, user_id: &str, password_hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        found(done.rows_affected())
    }

    /// The tenants a user belongs to, with the role in each.
    pub async fn memberships(&self, user_id: &str) -> Result<Vec<Membership>, StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => "SELECT tenant_id, slug, name, role FROM gantry_user_tenants($1)",
            Dialect::Sqlite => {
                "SELECT t.id AS tenant_id, t.slug, t.name, m.role FROM memberships m \
                 JOIN tenants t ON t.id = m.tenant_id WHERE m.user_id = $1 ORDER BY t.slug"
            }
        };
        let rows = sqlx::query(sql).bind(user_id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(Membership {
                    tenant_id: row.try_get("tenant_id")?,
                    slug: row.try_get("slug")?,
                    name: row.try_get("name")?,
                    role: role_column(row, "role")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(StoreError::from)
    }

    /// Adds a member, or changes the role of an existing one.
    pub async fn put_member(
        &self,
        tenant_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), StoreError> {
        self.execute_scoped(tenant_id, sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(now_ms())).await?;
        Ok(())
    }

    pub async fn members(&self, tenant_id: &str) -> Result<Vec<Member>, StoreError> {
        let mut tx = self.scoped(tenant_id).await?;
        let rows = sqlx::query(
            "SELECT m.user_id, u.email, u.display_name, m.role, m.created_at FROM memberships m \
             JOIN users u ON u.id = m.user_id WHERE m.tenant_id = $1 ORDER BY u.email",
        )
        .bind(tenant_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(Member {
                    user_id: row.try_get("user_id")?,
                    email: row.try_get("email")?,
                    display_name: row.try_get("display_name")?,
                    role: role_column(row, "role")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(StoreError::from)
    }

    pub async fn remove_member(&self, tenant_id: &str, user_id: &str) -> Result<(), StoreError> {
        let changed = self
            .execute_scoped(
                tenant_id,
                sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
                    .bind(tenant_id)
                    .bind(user_id),
            )
            .await?;
        found(changed)
    }

    pub async fn create_api_key(
        &self,
        tenant_id: &str,
        key: NewApiKey<'_>,
    ) -> Result<ApiKey, StoreError> {
        let now = now_ms();
        let record = ApiKey {
            id: new_id(),
            tenant_id: tenant_id.to_string(),
            name: key.name.to_string(),
            prefix: key.prefix.to_string(),
            scopes: key.scopes.to_vec(),
            created_by: key.created_by.map(str::to_string),
            created_at: now,
            expires_at: key.lifetime_ms.map(|ms| now + ms),
            last_used_at: None,
            revoked_at: None,
            policy: key.policy,
        };
        self.execute_scoped(tenant_id, sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, scopes, created_by, created_at, expires_at, policy) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&record.id)
        .bind(&record.tenant_id)
        .bind(&record.name)
        .bind(&record.prefix)
        .bind(key.key_hash)
        .bind(record.scopes.join(" "))
        .bind(&record.created_by)
        .bind(record.created_at)
        .bind(record.expires_at)
        .bind(record.policy.to_column())).await?;
        Ok(record)
    }

    /// A page of a tenant's keys, newest first, starting after `before` (a key id).
    pub async fn api_keys(
        &self,
        tenant_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let mut tx = self.scoped(tenant_id).await?;
        let (created, id) = after.unwrap_or((i64::MAX, String::new()));
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 \
             AND (created_at < $2 OR (created_at = $2 AND id > $3)) \
             ORDER BY created_at DESC, id ASC LIMIT $4"
        );
        let keys = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(created)
            .bind(id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(keys)
    }

    pub async fn api_key(&self, tenant_id: &str, id: &str) -> Result<ApiKey, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2");
        self.fetch_scoped(tenant_id, sql, id).await
    }

    pub async fn revoke_api_key(&self, tenant_id: &str, id: &str) -> Result<(), StoreError> {
        let changed = self.execute_scoped(tenant_id, sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(tenant_id)
        .bind(id)).await?;
        found(changed)
    }

    /// The key whose SHA-256 is `hash`, in whatever tenant: authentication does not know
    /// the tenant until it has found the key.
    pub async fn find_api_key(&self, hash: &str) -> Result<Option<KeyMatch>, StoreError> {
        let sql = match self.dialect {
            Dialect::Postgres => {
                "SELECT id, tenant_id, name, scopes, expires_at, revoked_at, policy, tenant_policy, \
                 created_by FROM gantry_find_api_key($1)"
            }
            Dialect::Sqlite => {
                "SELECT k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.revoked_at, k.policy, \
                 t.policy AS tenant_policy, k.created_by FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
                 WHERE k.key_hash = $1"
            }
        };
        let row = sqlx::query(sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(KeyMatch {
                id: row.try_get("id")?,
                tenant_id: row.try_get("tenant_id")?,
                name: row.try_get("name")?,
                scopes: split_scopes(&row.try_get::<String, _>("scopes")?),
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                policy: Policy::from_column(row.try_get("policy")?),
                tenant_policy: Policy::from_column(row.try_get("tenant_policy")?),
                created_by: row.try_get("created_by")?,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| StoreError::from(e))
    }

    pub async fn tenant_policy(&self, tenant_id: &str) -> Result<Policy, StoreError> {
        let mut tx = self.scoped(tenant_id).await?;
        let row = sqlx::query("SELECT policy FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        Ok(Policy::from_column(row.try_get("policy")?))
    }

    pub async fn set_tenant_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
    ) -> Result<(), StoreError> {
        let changed = self
            .execute_scoped(
                tenant_id,
                sqlx::query("UPDATE tenants SET policy = $1 WHERE id = $2")
                    .bind(policy.to_column())
                    .bind(tenant_id),
            )
            .await?;
        found(changed)
    }

    pub async fn touch_api_key(
        &self,
        tenant_id: &str,
        id: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.execute_scoped(
            tenant_id,
            sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE tenant_id = $2 AND id = $3")
                .bind(at)
                .bind(tenant_id)
                .bind(id),
        )
        .await?;
        Ok(())
    }

    pub async fn insert_refresh_token(
        &self,
        record: &RefreshRecord,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, tenant_id, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&record.id)
        .bind(&record.family_id)
        .bind(&record.user_id)
        .bind(&record.tenant_id)
        .bind(token_hash)
        .bind(now_ms())
        .bind(record.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, family_id, user_id, tenant_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Marks a refresh token used. False when it already was: two requests raced with
    /// the same token, or it was stolen and replayed; the caller revokes the family.
    pub async fn use_refresh_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn revoke_refresh_family(&self, family_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(family_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
