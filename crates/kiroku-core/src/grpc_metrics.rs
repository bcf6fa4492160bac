//! RED metrics and spans of every gRPC call a process serves or makes: a tower layer that
//! counts each call by service, method and final status code
//! (`kiroku_grpc_{server,client}_requests_total`), times it
//! (`kiroku_grpc_{server,client}_request_duration_seconds`; for a stream, its whole life)
//! and traces it: a SERVER span continuing the caller's W3C trace context, or a CLIENT
//! span whose context goes out in the request's `traceparent`, with the `rpc.*`
//! attributes of the OpenTelemetry semantic conventions (`rpc.grpc.status_code` set
//! when the call ends).
//!
//! The status is read where gRPC puts it: the `grpc-status` header of a trailers-only
//! answer (most errors), else the trailers at the end of the body. A call whose body is
//! dropped before its trailers (the client went away) counts as `Cancelled`. Paths that
//! are not a method of a known service are counted under `unknown`, so a scanner cannot
//! create series.
//!
//! ```no_run
//! # async fn doc(routes: tonic::service::Routes) {
//! use kiroku_core::grpc_metrics::{GrpcMetricsLayer, Side};
//! let router = routes.into_axum_router().layer(GrpcMetricsLayer::new(Side::Server));
//! # }
//! ```

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};

/// A client channel whose calls are metered: what every service-to-service client uses.
pub type MeteredChannel = Metered<tonic::transport::Channel>;

/// Meters the calls made through `channel`.
pub fn metered(channel: tonic::transport::Channel) -> MeteredChannel {
    Metered {
        inner: channel,
        side: Side::Client,
    }
}

/// Which side of a call this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Meters every call through the wrapped service.
#[derive(Debug, Clone, Copy)]
pub struct GrpcMetricsLayer {
    side: Side,
}

impl GrpcMetricsLayer {
    pub fn new(side: Side) -> Self {
        Self { side }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metered {
            inner,
            side: self.side,
        }
    }
}

/// A service whose calls are metered ([`GrpcMetricsLayer`]).
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    side: Side,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Metered<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        use tracing::Instrument as _;
        let call = Call::start(self.side, request.uri().path());
        match self.side {
            Side::Server => {
                crate::trace::set_parent(&call.span, crate::trace::extract_http(request.headers()))
            }
            Side::Client => crate::trace::inject_http(&call.span, request.headers_mut()),
        }
        let span = call.span.clone();
        let future = span.in_scope(|| self.inner.call(request)).instrument(span);
        Box::pin(async move {
            match future.await {
                Ok(response) => {
                    let mut call = Some(call);
                    if let Some(code) = status_of(response.headers()) {
                        // Trailers-only: the call ended with its headers.
                        if let Some(call) = call.take() {
                            call.end(code);
                        }
                    } else if !response.status().is_success()
                        && let Some(call) = call.take()
                    {
                        call.end(http_code(response.status()));
                    }
                    Ok(response.map(|inner| MeteredBody { inner, call }))
                }
                Err(error) => {
                    call.end(tonic::Code::Unavailable);
                    Err(error)
                }
            }
        })
    }
}

/// A response body that records its call's status when the trailers pass.
#[derive(Debug)]
pub struct MeteredBody<B> {
    inner: B,
    /// The call, until its status is recorded.
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of)
                    && let Some(call) = self.call.take()
                {
                    call.end(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.end(tonic::Code::Unknown);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.end(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One call in progress.
#[derive(Debug)]
struct Call {
    side: Side,
    service: &'static str,
    method: &'static str,
    started: Instant,
    recorded: bool,
    /// Ends when the call has its status (the last handle is dropped).
    span: tracing::Span,
}

impl Call {
    fn start(side: Side, path: &str) -> Self {
        let (service, method) = known_method(path).unwrap_or(("unknown", "unknown"));
        // Probes (health, reflection) are counted but not traced: they would be most of
        // the spans and tell nothing.
        let span = if matches!(
            service,
            "grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection"
        ) {
            tracing::Span::none()
        } else {
            tracing::info_span!(
            "grpc",
            otel.name = %format!("{service}/{method}"),
            otel.kind = match side {
                Side::Server => "server",
                Side::Client => "client",
            },
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            )
        };
        Self {
            side,
            service,
            method,
            started: Instant::now(),
            recorded: false,
            span,
        }
    }

    fn end(mut self, code: tonic::Code) {
        self.record(code);
    }

    fn record(&mut self, code: tonic::Code) {
        if !self.recorded {
            self.recorded = true;
            self.span.record("rpc.grpc.status_code", code as i32);
            if server_fault(code) {
                self.span.record("otel.status_code", "error");
            }
            crate::metrics::metrics().grpc_call(
                self.side,
                self.service,
                self.method,
                code,
                self.started.elapsed().as_secs_f64(),
            );
        }
    }
}

impl Drop for Call {
    /// Dropped before its status: the client went away mid-call.
    fn drop(&mut self) {
        self.record(tonic::Code::Cancelled);
    }
}

/// Whether `code` says the service failed (not the caller): the span's error status.
fn server_fault(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(tonic::Code::from)
}

/// The gRPC code an HTTP error status stands for (gRPC's HTTP-to-status mapping).
fn http_code(status: http::StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502..=504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    }
}

/// `(service, method)` of a path `/pkg.Service/Method` when it names a method of a
/// Kiroku API, gRPC health or server reflection.
fn known_method(path: &str) -> Option<(&'static str, &'static str)> {
    // Path → labels; the label strings live as long as the process (a fixed set).
    static KNOWN: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known = HashMap::new();
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let mut add = |service: &'static str, method: &'static str| {
            known.insert(format!("/{service}/{method}"), (service, method));
        };
        for (service, methods) in kiroku_proto::services() {
            let service = leak(service);
            for method in methods {
                add(service, leak(method));
            }
        }
        for (service, method) in [
            ("grpc.health.v1.Health", "Check"),
            ("grpc.health.v1.Health", "Watch"),
            (
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
            ),
        ] {
            add(service, method);
        }
        known
    });
    known.get(path).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_get_their_own_labels() {
        assert_eq!(
            known_method("/kiroku.storage.v1.Storage/ListMeetings"),
            Some(("kiroku.storage.v1.Storage", "ListMeetings"))
        );
        assert_eq!(
            known_method("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        assert_eq!(known_method("/kiroku.storage.v1.Storage/Nope"), None);
        assert_eq!(known_method("/wp-admin/login.php"), None);
        assert_eq!(known_method(""), None);
    }

    #[tokio::test]
    async fn a_call_is_counted_with_its_trailer_status() {
        use tower::{Layer as _, ServiceExt as _};
        // A body with data then trailers saying NotFound, as tonic sends a streamed error.
        #[derive(Debug)]
        struct Trailing(u8);
        impl Body for Trailing {
            type Data = bytes::Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
                self.0 += 1;
                Poll::Ready(match self.0 {
                    1 => Some(Ok(Frame::data(bytes::Bytes::from_static(b"x")))),
                    2 => {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
                        Some(Ok(Frame::trailers(trailers)))
                    }
                    _ => None,
                })
            }
        }
        let service = GrpcMetricsLayer::new(Side::Server).layer(tower::service_fn(
            |_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Trailing(0)))
            },
        ));
        let request = http::Request::builder()
            .uri("/kiroku.audit.v1.AuditService/VerifyChain")
            .body(())
            .expect("request");
        let response = service.oneshot(request).await.expect("response");
        let series = "kiroku_grpc_server_requests_total{service=\"kiroku.audit.v1.AuditService\",method=\"VerifyChain\",code=\"NotFound\"} 1";
        assert!(
            !crate::metrics::render().contains(series),
            "not before the trailers"
        );
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.expect("frame");
        }
        let text = crate::metrics::render();
        assert!(text.contains(series), "{text}");
    }
}
