//! The storage service's errors and their gRPC statuses: every RPC returns
//! [`StorageError`], and [`From<StorageError> for Status`](StorageError) is the one place
//! a failure becomes what the client sees. Internal failures are logged once with a
//! reference the client's message carries ([`kiroku_core::status::internal`]).

use tonic::Status;

use crate::bundle::BundleError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Invalid(String),
    /// Also what another tenant's ids get: they do not exist for the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Precondition(String),
    /// A dependency (NATS, the audit log) is down; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// The client stopped sending within the allowed time.
    #[error("{0}")]
    Timeout(String),
    /// Stored or uploaded data is damaged.
    #[error("{0}")]
    DataLoss(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local failure (a spool file, a renderer): logged, never shown.
    #[error(transparent)]
    Internal(#[from] kiroku_core::status::Internal),
    /// Already a status: the credential checker's refusals and the client stream's errors.
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
    pub fn internal(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Internal(kiroku_core::status::Internal::new(what, cause))
    }
}

impl From<BundleError> for StorageError {
    fn from(error: BundleError) -> Self {
        match error {
            BundleError::Invalid(problem) => Self::Invalid(problem),
            BundleError::Corrupt(problem) => Self::DataLoss(problem),
        }
    }
}

impl From<kiroku_core::validate::FieldError> for StorageError {
    fn from(error: kiroku_core::validate::FieldError) -> Self {
        Self::Status(error.into())
    }
}

impl From<StorageError> for Status {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Invalid(message) => Status::invalid_argument(message),
            StorageError::NotFound(what) => Status::not_found(format!("{what} not found")),
            StorageError::Exists(message) => Status::already_exists(message),
            StorageError::Denied(message) => Status::permission_denied(message),
            StorageError::Precondition(message) => Status::failed_precondition(message),
            StorageError::Unavailable(message) => Status::unavailable(message),
            StorageError::Timeout(message) => Status::deadline_exceeded(message),
            StorageError::DataLoss(message) => Status::data_loss(message),
            StorageError::Store(error) => match error {
                StoreError::Crypto(_) => {
                    tracing::error!(%error, "stored data does not decrypt");
                    Status::data_loss("stored data does not decrypt")
                }
                StoreError::Exists(_) => Status::already_exists(error.to_string()),
                StoreError::Invalid(message) => Status::invalid_argument(message),
                StoreError::Database(_) | StoreError::Decode(_) => {
                    kiroku_core::status::database_error(&error)
                }
            },
            StorageError::Internal(error) => error.into(),
            StorageError::Status(status) => status,
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_status_and_internal_causes_stay_inside() {
        let cases = [
            (
                StorageError::invalid("page_size is at most 200"),
                Code::InvalidArgument,
            ),
            (StorageError::NotFound("meeting"), Code::NotFound),
            (StorageError::Exists("x".into()), Code::AlreadyExists),
            (StorageError::Denied("x".into()), Code::PermissionDenied),
            (
                StorageError::Precondition("x".into()),
                Code::FailedPrecondition,
            ),
            (StorageError::unavailable("retry"), Code::Unavailable),
            (StorageError::Timeout("x".into()), Code::DeadlineExceeded),
            (StorageError::DataLoss("x".into()), Code::DataLoss),
            (StoreError::Exists("m1".into()).into(), Code::AlreadyExists),
            (
                StorageError::Status(Status::unauthenticated("sign in")),
                Code::Unauthenticated,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            assert_eq!(Status::from(error).code(), code, "{text}");
        }
        assert_eq!(
            Status::from(StorageError::NotFound("meeting")).message(),
            "meeting not found"
        );
        let status = Status::from(StorageError::internal("docx", "/tmp/spool-7 is full"));
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with("internal error (ref "),
            "{}",
            status.message()
        );
        let status = Status::from(StorageError::Store(StoreError::Database(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("pool"), "{}", status.message());
    }
}
