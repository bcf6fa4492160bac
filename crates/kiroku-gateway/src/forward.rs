//! The gateway is the one public address: besides transcription it forwards the public
//! gRPC services of the account service (`kiroku.account.v1.AccountService`) and of the
//! audit service (`kiroku.audit.v1.AuditService`, `NoticeService`) unchanged — method,
//! metadata, messages and status pass through; each service authenticates the caller
//! itself. The caller's address travels as `x-forwarded-for`, set here (never passed on
//! from the client), so per-address sign-in throttles and audit entries see the client,
//! not the gateway (the services trust it from the addresses in
//! `KIROKU_TRUSTED_PROXIES`). Behind an ingress or load balancer the connection's
//! address is the ingress: the gateway then believes the ingress's `x-forwarded-for`
//! only when the connection comes from `KIROKU_GATEWAY_TRUSTED_PROXIES` (empty by
//! default: a public gateway trusts nobody).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kiroku_auth::proxy::TrustedProxies;
use kiroku_core::grpc_metrics::MeteredChannel as Channel;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;

/// The header carrying the client's address to the services behind the gateway.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The operator's methods of the forwarded services (`Access::Operator` in their access
/// tables): never reachable through the public gateway, whatever credential is sent;
/// operators call the services on the internal network. A test keeps this list equal to
/// the services' tables.
pub const OPERATOR_METHODS: &[&str] = &[
    "/kiroku.account.v1.AccountService/ListNoticeRecipients",
    "/kiroku.audit.v1.NoticeService/PublishNotice",
    "/kiroku.storage.v1.Storage/RotateMasterKey",
];

/// Forwards every method of one gRPC service to `channel`.
#[derive(Clone, Debug)]
pub struct Forward {
    service: &'static str,
    channel: Channel,
    /// Proxies in front of the gateway whose `x-forwarded-for` is believed.
    trusted: std::sync::Arc<TrustedProxies>,
}

impl Forward {
    pub fn new(
        service: &'static str,
        channel: Channel,
        trusted: std::sync::Arc<TrustedProxies>,
    ) -> Self {
        Self {
            service,
            channel,
            trusted,
        }
    }

    /// The route pattern this forwarder answers.
    pub fn route(&self) -> String {
        format!("/{}/{{*method}}", self.service)
    }
}

impl tower::Service<http::Request<axum::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let (service, channel) = (self.service, self.channel.clone());
        if OPERATOR_METHODS.contains(&request.uri().path()) {
            let status = tonic::Status::permission_denied(
                "operator methods are not served by the public gateway: call the service on the internal network",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map(|addr| addr.ip());
        let (mut parts, body) = request.into_parts();
        // Only the gateway says who the client is: the connection's address, or what a
        // trusted proxy in front of it saw.
        let client = peer.map(|peer| {
            let forwarded = parts
                .headers
                .get(FORWARDED_FOR)
                .and_then(|value| value.to_str().ok());
            self.trusted.client_address(peer, forwarded)
        });
        parts.headers.remove(FORWARDED_FOR);
        // Operator calls never come through the public port: the token is dropped, so
        // a request carrying it is answered as the tenant call it otherwise is.
        parts
            .headers
            .remove(kiroku_auth::auth::OperatorToken::METADATA);
        if let Some(value) = client.and_then(|ip| http::HeaderValue::try_from(ip.to_string()).ok())
        {
            parts.headers.insert(FORWARDED_FOR, value);
        }
        let request = http::Request::from_parts(parts, tonic::body::Body::new(body));
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response.map(tonic::body::Body::new)),
                Err(error) => {
                    tracing::warn!(%error, service, "forwarding failed");
                    Ok(tonic::Status::unavailable(format!(
                        "{service} is unreachable through this gateway; retry shortly"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// Adds forwarders to `routes`.
pub fn add(routes: tonic::service::Routes, forwards: &[Forward]) -> tonic::service::Routes {
    let mut router = routes.into_axum_router();
    for forward in forwards {
        router = router.route_service(&forward.route(), forward.clone());
    }
    tonic::service::Routes::from(router)
}
