//! Plumbing shared by Kiroku's services and CLI: transcript types and caption formats,
//! telemetry set-up, trace propagation, metrics and the admin HTTP port. Domain logic
//! lives in the service crates.

pub mod admin;
pub mod audit;
pub mod db;
pub mod docx;
pub mod grpc_metrics;
mod logfmt;
pub mod metrics;
pub mod nats;
mod process;
pub mod ready;
pub mod region;
pub mod secret;
pub mod settings;
pub mod status;
pub mod supervise;
pub mod telemetry;
pub mod trace;
pub mod transcript;
pub mod validate;

/// Where the password of `scheme://user:password@host/…` is in `url` (as written, so
/// percent-encoded), if it has one.
pub fn url_password(url: &str) -> Option<std::ops::Range<usize>> {
    let scheme = url.find("://")?;
    let at = url.rfind('@').filter(|at| *at > scheme)?;
    let colon = url[scheme + 3..at].find(':')? + scheme + 3;
    Some(colon + 1..at)
}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(password) => format!("{}***{}", &url[..password.start], &url[password.end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            super::redact_url("postgres://svc:s3cret@db:5432/kiroku"),
            "postgres://svc:***@db:5432/kiroku"
        );
        assert_eq!(
            super::redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            super::redact_url("postgres://svc@db/kiroku"),
            "postgres://svc@db/kiroku"
        );
    }
}
