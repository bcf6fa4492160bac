//! The account service's errors and their gRPC statuses.

use std::time::Duration;

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    Invalid(String),
    /// Also what another tenant's ids get: they do not exist for the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after: Duration,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis unreachable: authentication, revocation and throttling fail closed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = AccountError> = std::result::Result<T, E>;

impl AccountError {
    /// Whether a database error is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Self::Database(error)
            if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("23505"))
    }
}

impl From<AccountError> for Status {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::Invalid(message) => Status::invalid_argument(message),
            AccountError::NotFound(what) => Status::not_found(format!("{what} not found")),
            AccountError::Exists(message) => Status::already_exists(message),
            AccountError::Unauthenticated(message) => Status::unauthenticated(message),
            AccountError::Denied(message) => Status::permission_denied(message),
            AccountError::Precondition(message) => Status::failed_precondition(message),
            AccountError::Throttled {
                message,
                retry_after,
            } => kiroku_core::status::resource_exhausted(message, retry_after),
            AccountError::Redis(error) => {
                tracing::warn!(%error, "redis unavailable; failing closed");
                Status::unavailable("authentication temporarily unavailable; retry shortly")
            }
            AccountError::Database(error) => kiroku_core::status::database_error(&error),
            AccountError::Internal(message) => {
                tracing::error!(%message, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
