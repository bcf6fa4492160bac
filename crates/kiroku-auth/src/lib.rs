//! Credential checks shared by every service: access-token verification ([`tokens`]),
//! principals, roles, access tables and Redis revocations ([`auth`]), the cached
//! checker a service puts in front of its RPCs ([`checker`]) and the trusted-proxy rule
//! for client addresses ([`proxy`]). The account service issues what this crate
//! verifies; the gateway, storage and audit services link only this crate, not the
//! account service (its database, password hashing and TOTP).

pub mod auth;
pub mod checker;
pub mod proxy;
pub mod tokens;

use std::time::Duration;

use kiroku_core::nats::Layout;

/// Where the services find Redis when `KIROKU_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// How long an access token lives (the account service issues them for this long; a
/// revocation is kept as long, after which the token has expired anyway).
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The Redis key prefix of a cluster: every key a Kiroku cluster writes starts with it.
pub fn redis_prefix(layout: &Layout) -> String {
    format!("kiroku:{}", layout.root())
}

/// Runs one RPC of a service whose `caller(&request, method)` admits the caller through
/// its access table: the caller and the request's body are handed to `$call`, the work,
/// whose error (the service's error enum) becomes the status through its one
/// `From<…> for tonic::Status`.
///
/// ```ignore
/// authorized!(self, request, "GetMeeting", |caller, body| self.get_meeting(caller, body))
/// ```
#[macro_export]
macro_rules! authorized {
    ($service:expr, $request:ident, $method:literal, |$caller:ident, $body:ident| $call:expr) => {{
        let $caller = $service.caller(&$request, $method).await?;
        let $body = $request.into_inner();
        let _ = &$body;
        $call
            .await
            .map(::tonic::Response::new)
            .map_err(::tonic::Status::from)
    }};
}
