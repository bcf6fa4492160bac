//! gRPC statuses that carry machine-readable details, shared by every service.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// An internal failure as the caller sees it: `INTERNAL` with a short reference and
/// nothing of the cause. The cause is logged once, with the same reference
/// (`error_ref`), so an operator finds the log line from what a client reports. Every
/// service answers internal errors through this (or [`database_error`]).
pub fn internal(what: &str, error: &dyn std::fmt::Display) -> Status {
    internal_as("internal error", what, error)
}

/// [`internal`] with the public part of the message chosen by the caller (a fixed
/// phrase clients may recognise, such as "the worker failed"), still followed by the
/// reference only, never the cause.
pub fn internal_as(public: &str, what: &str, error: &dyn std::fmt::Display) -> Status {
    let reference = error_reference();
    tracing::error!(error_ref = %reference, %error, "{what}");
    Status::internal(format!("{public} (ref {reference})"))
}

/// A local failure (a spool file, a renderer) whose cause is logged, never shown: the
/// services' error enums carry it, and it becomes [`internal`]'s status.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct Internal {
    pub what: &'static str,
    pub cause: String,
}

impl Internal {
    pub fn new(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self {
            what,
            cause: cause.to_string(),
        }
    }
}

impl From<Internal> for Status {
    fn from(error: Internal) -> Self {
        internal(error.what, &error.cause)
    }
}

/// A failed database operation as the caller sees it: [`internal`], counted in
/// `kiroku_db_errors_total`. Every service maps database errors through this.
pub fn database_error(error: &dyn std::fmt::Display) -> Status {
    crate::metrics::metrics().db_errors.inc();
    internal("database error", error)
}

/// Eight hex digits: enough to find one log line, short enough to read out.
fn error_reference() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..8].to_string()
}

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail, so clients know when to
/// try again (`kiroku` prints it; gRPC libraries expose it as structured detail).
pub fn resource_exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    let retry_after = retry_after.max(Duration::from_secs(1));
    let message = format!(
        "{}; retry in {} s",
        message.into(),
        retry_after.as_secs_f64().ceil()
    );
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// The retry delay a status carries, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_carry_a_reference_and_not_the_cause() {
        let status = internal("export", &"disk /var/secret full");
        assert_eq!(status.code(), Code::Internal);
        let message = status.message();
        assert!(!message.contains("secret"), "{message}");
        let reference = message
            .strip_prefix("internal error (ref ")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no reference in {message:?}"));
        assert_eq!(reference.len(), 8, "{message}");
        assert!(
            reference.chars().all(|c| c.is_ascii_hexdigit()),
            "{message}"
        );
        assert_ne!(
            internal("export", &"x").message(),
            message,
            "one reference per error"
        );
    }

    #[test]
    fn retry_info_survives_the_status() {
        let status = resource_exhausted("stream quota of 2 reached", Duration::from_secs(5));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(Duration::from_secs(5)));
        assert!(
            status.message().contains("retry in 5 s"),
            "{}",
            status.message()
        );
    }
}
