//! W3C trace-context propagation, so one stream is one trace across processes:
//! gRPC metadata → gateway span → NATS headers (or a job's `traceparent` field) → worker
//! spans → NATS headers → gateway.
//!
//! The helpers always use the W3C TraceContext format (`traceparent`, `tracestate`),
//! whatever the global propagator is, and work whether or not spans are exported: they
//! need only the OpenTelemetry layer that [`crate::telemetry`] installs. Without it (a
//! library test with no subscriber) injection writes nothing and extraction yields a
//! context whose spans start new traces.
//!
//! A parent must be set before the span is first entered (or its context read): that is
//! when the span's ids are fixed, and a later [`set_parent`] is ignored. So a gRPC method
//! creates its span, sets the parent, then runs the inner function under it
//! (`inner(request).instrument(span).await`); `Span::current()` inside an
//! `#[instrument]`ed function is already entered and too late.

use std::collections::HashMap;
use std::str::FromStr as _;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header (and job field) name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The trace context of an incoming gRPC request; an empty context when it carries none.
pub fn extract_grpc(metadata: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataCarrier(metadata))
}

/// Writes `span`'s trace context into the metadata of an outgoing gRPC request.
pub fn inject_grpc(span: &tracing::Span, metadata: &mut MetadataMap) {
    TraceContextPropagator::new()
        .inject_context(&span.context(), &mut MetadataCarrierMut(metadata));
}

/// The trace context of incoming HTTP/2 headers (a gRPC call before tonic decodes it).
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpCarrier(headers))
}

/// Writes `span`'s trace context into outgoing HTTP/2 headers.
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut HttpCarrierMut(headers));
}

struct HttpCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HttpCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HttpCarrierMut<'a>(&'a mut http::HeaderMap);

impl Injector for HttpCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Writes `span`'s trace context into the headers of a NATS message about to be published.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut NatsCarrierMut(headers));
}

/// The trace context of a received NATS message; an empty context when it has no headers
/// or no valid `traceparent`.
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&NatsCarrier(headers)),
        None => Context::new(),
    }
}

/// `span`'s trace context as a W3C `traceparent` value
/// (`00-<trace id>-<span id>-<flags>`), for a message field; empty when `span` has none
/// (disabled, or no OpenTelemetry layer installed).
pub fn traceparent(span: &tracing::Span) -> String {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// The context named by a `traceparent` value; an empty context when it is empty or
/// malformed (spans under it then start a new trace).
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `cx` the parent of `span`, which must not have been entered yet. An empty `cx`,
/// a disabled span or a span already started is left as it is (logged at debug).
pub fn set_parent(span: &tracing::Span, cx: Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(cx) {
        tracing::debug!(%error, "trace parent not set");
    }
}

/// The trace id of `span` as 32 lowercase hex digits, for logs and responses; `None` when
/// the span has no trace context.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct MetadataCarrier<'a>(&'a MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                KeyRef::Ascii(key) => Some(key.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataCarrierMut<'a>(&'a mut MetadataMap);

impl Injector for MetadataCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // Propagator keys and values are always valid ASCII metadata; skip any that are not.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct NatsCarrier<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let name = async_nats::HeaderName::from_str(key).ok()?;
        self.0.get(name).map(async_nats::HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

struct NatsCarrierMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // `HeaderMap::insert` panics on invalid names or values; parse them first.
        if let (Ok(name), Ok(value)) = (
            async_nats::HeaderName::from_str(key),
            async_nats::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REMOTE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const REMOTE_TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` under the subscriber a service installs, with export off.
    fn with_service_subscriber<T>(f: impl FnOnce() -> T) -> T {
        let (dispatch, _guard) = crate::telemetry::service_subscriber("trace-test", "info", None);
        tracing::dispatcher::with_default(&dispatch, f)
    }

    #[test]
    fn span_under_an_extracted_parent_keeps_its_trace_id_without_export() {
        with_service_subscriber(|| {
            let span = tracing::info_span!("child");
            set_parent(&span, context_from_traceparent(REMOTE_TRACEPARENT));
            assert_eq!(trace_id(&span).as_deref(), Some(REMOTE_TRACE_ID));
            let child_traceparent = traceparent(&span);
            assert!(child_traceparent.starts_with(&format!("00-{REMOTE_TRACE_ID}-")));
            assert!(
                !child_traceparent.contains("00f067aa0ba902b7"),
                "a new span id"
            );
        });
    }

    #[test]
    fn grpc_metadata_carries_the_trace() {
        with_service_subscriber(|| {
            let client = tracing::info_span!("client");
            let mut metadata = MetadataMap::new();
            inject_grpc(&client, &mut metadata);
            assert!(metadata.get(TRACEPARENT).is_some());

            let server = tracing::info_span!("server");
            set_parent(&server, extract_grpc(&metadata));
            assert_eq!(trace_id(&server), trace_id(&client));
            assert!(trace_id(&server).is_some());
        });
    }

    #[test]
    fn nats_headers_carry_the_trace() {
        with_service_subscriber(|| {
            let publisher = tracing::info_span!("publish");
            let mut headers = async_nats::HeaderMap::new();
            inject_nats(&publisher, &mut headers);
            assert_eq!(
                headers.get(TRACEPARENT).map(|v| v.as_str().to_string()),
                Some(traceparent(&publisher))
            );

            let consumer = tracing::info_span!("consume");
            set_parent(&consumer, extract_nats(Some(&headers)));
            assert_eq!(trace_id(&consumer), trace_id(&publisher));
            assert!(trace_id(&consumer).is_some());
        });
    }

    #[test]
    fn missing_or_malformed_context_starts_a_new_trace() {
        with_service_subscriber(|| {
            for cx in [
                extract_nats(None),
                extract_grpc(&MetadataMap::new()),
                context_from_traceparent(""),
                context_from_traceparent("00-not-a-trace-01"),
            ] {
                let span = tracing::info_span!("root");
                set_parent(&span, cx);
                let id = trace_id(&span).expect("a root span gets a trace id");
                assert_ne!(id, REMOTE_TRACE_ID);
                assert_eq!(id.len(), 32);
            }
        });
    }

    #[test]
    fn parent_set_after_entering_is_ignored() {
        with_service_subscriber(|| {
            let span = tracing::info_span!("entered");
            let _entered = span.enter();
            set_parent(&span, context_from_traceparent(REMOTE_TRACEPARENT));
            assert_ne!(trace_id(&span).as_deref(), Some(REMOTE_TRACE_ID));
        });
    }

    #[test]
    fn without_the_layer_nothing_is_injected() {
        let span = tracing::info_span!("untracked");
        assert_eq!(traceparent(&span), "");
        assert_eq!(trace_id(&span), None);
        let mut headers = async_nats::HeaderMap::new();
        inject_nats(&span, &mut headers);
        assert!(headers.is_empty());
    }
}
