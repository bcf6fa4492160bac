//! The audit service's errors and their gRPC statuses: every RPC's work returns
//! [`AuditError`], and [`From<AuditError> for Status`](AuditError) is the one place a
//! failure becomes what the client sees. Internal failures are logged once with a
//! reference the client's message carries ([`kiroku_core::status::internal`]).

use tonic::{Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A request whose answer would be too large (`ExportEvents` over its limit).
    #[error("{0}")]
    OutOfRange(String),
    /// A dependency (the anchor store, the account service) is down; retry.
    #[error("{0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A local failure (a renderer): logged, never shown.
    #[error(transparent)]
    Internal(#[from] kiroku_core::status::Internal),
    /// Already a status: the credential checks' refusals.
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

pub type Result<T, E = AuditError> = std::result::Result<T, E>;

impl AuditError {
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

impl From<AuditError> for Status {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Invalid(message) => Status::invalid_argument(message),
            AuditError::NotFound(message) => Status::not_found(message),
            AuditError::OutOfRange(message) => Status::out_of_range(message),
            AuditError::Unavailable(message) => Status::unavailable(message),
            AuditError::Database(error) => kiroku_core::status::database_error(&error),
            AuditError::Internal(error) => error.into(),
            AuditError::Status(status) => status,
        }
    }
}

/// An RPC's answer: its work's result as a response, or the error's status.
pub async fn respond<T>(
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    work.await.map(Response::new).map_err(Status::from)
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn each_error_has_its_status_and_internal_causes_stay_inside() {
        let cases = [
            (
                AuditError::invalid("page_size is at most 1000"),
                Code::InvalidArgument,
            ),
            (
                AuditError::NotFound("no such tenant".into()),
                Code::NotFound,
            ),
            (AuditError::OutOfRange("too many".into()), Code::OutOfRange),
            (AuditError::unavailable("retry"), Code::Unavailable),
            (
                AuditError::Status(Status::permission_denied("admins only")),
                Code::PermissionDenied,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            assert_eq!(Status::from(error).code(), code, "{text}");
        }
        for error in [
            AuditError::internal("csv", "writer on /var/tmp failed"),
            AuditError::Database(sqlx::Error::PoolTimedOut),
        ] {
            let status = Status::from(error);
            assert_eq!(status.code(), Code::Internal);
            assert!(
                status.message().starts_with("internal error (ref "),
                "{}",
                status.message()
            );
        }
    }
}
