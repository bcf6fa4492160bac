//! gRPC statuses that carry machine-readable details, shared by every service.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail, so clients know when to
/// try again (`kiroku` prints it; gRPC libraries expose it as structured detail).
/// A failed database operation as the caller sees it: logged with its cause, counted in
/// `kiroku_db_errors_total`, answered `INTERNAL` without details. Every service maps
/// database errors through this.
pub fn database_error(error: &dyn std::fmt::Display) -> tonic::Status {
    tracing::error!(%error, "database error");
    crate::metrics::metrics().db_errors.inc();
    tonic::Status::internal("internal error")
}

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
