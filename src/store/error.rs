//! What can go wrong below the API, in terms the API can map to a status.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint refused the write; the string names what already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(
        "database schema is not up to date ({applied} of {expected} migrations applied): run `gantry migrate`"
    )]
    NotMigrated { applied: usize, expected: usize },
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict("record"),
            // Driver messages may quote the connection string's user but never its password.
            other => Self::Database(other.to_string()),
        }
    }
}

impl StoreError {
    /// Names the conflicting thing for the caller (`email`, `slug`, …).
    pub fn conflict_on(self, what: &'static str) -> Self {
        match self {
            Self::Conflict(_) => Self::Conflict(what),
            other => other,
        }
    }
}
