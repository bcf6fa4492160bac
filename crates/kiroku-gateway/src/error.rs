//! The gateway's errors and their gRPC statuses: the stream and file paths return
//! [`GatewayError`], and [`From<GatewayError> for Status`](GatewayError) is the one place
//! a failure becomes what the client sees. Internal failures (a stored message that
//! does not decode, a failed worker) are logged once with a reference that the client's
//! message carries ([`kiroku_core::status::internal`]); their causes never reach the
//! client. The credential checks and quotas ([`crate::access`], [`crate::admission`])
//! answer with statuses of their own (with `RetryInfo` where a retry helps), carried
//! through unchanged.

use tonic::{Code, Status};

/// What `kiroku stream` and client libraries see first in the message of a session
/// whose worker failed (`INTERNAL`): not worth a resume.
pub const WORKER_FAILED: &str = "the worker failed";

#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// The request or its audio breaks a documented rule (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// An unknown or expired session; another tenant's sessions are unknown too.
    #[error("{0}")]
    NotFound(String),
    /// Valid, but not now (audio after the end of the stream).
    #[error("{0}")]
    Precondition(String),
    /// A documented per-stream limit was passed (audio length, time open).
    #[error("{0}")]
    OutOfRange(String),
    /// A per-stream count ran out (bookmarks); retrying the same stream does not help.
    #[error("{0}")]
    Exhausted(String),
    /// The client (idle) or the workers (after the end) took too long.
    #[error("{0}")]
    Timeout(String),
    /// NATS did not store or deliver; the client may resume and re-send.
    #[error("{0}")]
    Unavailable(String),
    /// The client closed its side; nobody reads the answer.
    #[error("client went away")]
    ClientGone,
    /// The caller's credentials were revoked while the stream ran.
    #[error("credentials revoked: the stream was ended")]
    Revoked,
    /// The tenant erased its minutes while this ran (`ABORTED`).
    #[error(
        "the tenant's minutes were erased while this ran: nothing more of it is kept; start again"
    )]
    Erased,
    /// The worker running the session closed it with an error: logged, never shown.
    #[error("{WORKER_FAILED}: {0}")]
    WorkerFailed(String),
    /// A local failure: logged, never shown.
    #[error(transparent)]
    Internal(#[from] kiroku_core::status::Internal),
    /// Already a status: credential checks, quotas, the client stream's own errors.
    #[error("{}", .0.message())]
    Status(#[from] Status),
}

pub(crate) type Result<T, E = GatewayError> = std::result::Result<T, E>;

impl GatewayError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }

    pub(crate) fn internal(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Internal(kiroku_core::status::Internal::new(what, cause))
    }

    /// How a worker's `session_closed` reason ends the client's call: `Ok(())` for a
    /// normal close, else the error the worker reported.
    pub(crate) fn from_close_reason(reason: &str) -> Result<()> {
        if let Some(why) = reason.strip_prefix("invalid: ") {
            return Err(Self::invalid(why));
        }
        if reason == kiroku_core::nats::CLOSED_ERASED {
            return Err(Self::Erased);
        }
        if let Some(error) = reason.strip_prefix("error: ") {
            return Err(Self::WorkerFailed(error.to_string()));
        }
        Ok(())
    }
}

impl From<kiroku_core::validate::FieldError> for GatewayError {
    fn from(error: kiroku_core::validate::FieldError) -> Self {
        Self::Status(error.into())
    }
}

impl GatewayError {
    /// The status code the client gets.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Precondition(_) => Code::FailedPrecondition,
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Exhausted(_) => Code::ResourceExhausted,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ClientGone => Code::Cancelled,
            Self::Revoked => Code::Unauthenticated,
            Self::Erased => Code::Aborted,
            Self::WorkerFailed(_) | Self::Internal(_) => Code::Internal,
            Self::Status(status) => status.code(),
        }
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        match error {
            GatewayError::WorkerFailed(cause) => {
                kiroku_core::status::internal_as(WORKER_FAILED, "the worker failed", &cause)
            }
            GatewayError::Internal(internal) => internal.into(),
            GatewayError::Status(status) => status,
            error => Status::new(error.code(), error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_causes_never_reach_the_client() {
        let status = Status::from(GatewayError::internal(
            "a stored result does not decode",
            "invalid wire type at byte 7",
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (ref "));
        assert!(!status.message().contains("wire type"));

        let status = Status::from(
            GatewayError::from_close_reason("error: whisper_full returned -7 at /srv/models")
                .expect_err("an error"),
        );
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with(WORKER_FAILED));
        assert!(status.message().contains("(ref "));
        assert!(!status.message().contains("/srv/models"));
    }

    #[test]
    fn a_close_reason_becomes_the_status_it_names() {
        assert!(GatewayError::from_close_reason("end of stream").is_ok());
        let code = |reason: &str| {
            Status::from(GatewayError::from_close_reason(reason).expect_err("an error")).code()
        };
        assert_eq!(
            code("invalid: language xx is not supported"),
            Code::InvalidArgument
        );
        assert_eq!(code(kiroku_core::nats::CLOSED_ERASED), Code::Aborted);
        let status = Status::from(
            GatewayError::from_close_reason("invalid: language xx").expect_err("an error"),
        );
        assert_eq!(status.message(), "language xx");
    }

    #[test]
    fn every_variant_has_its_own_code() {
        let cases = [
            (GatewayError::invalid("x"), Code::InvalidArgument),
            (GatewayError::NotFound("x".into()), Code::NotFound),
            (
                GatewayError::Precondition("x".into()),
                Code::FailedPrecondition,
            ),
            (GatewayError::OutOfRange("x".into()), Code::OutOfRange),
            (GatewayError::Exhausted("x".into()), Code::ResourceExhausted),
            (GatewayError::Timeout("x".into()), Code::DeadlineExceeded),
            (GatewayError::unavailable("x"), Code::Unavailable),
            (GatewayError::ClientGone, Code::Cancelled),
            (GatewayError::Revoked, Code::Unauthenticated),
            (GatewayError::Erased, Code::Aborted),
            (
                GatewayError::Status(Status::permission_denied("x")),
                Code::PermissionDenied,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }
}
