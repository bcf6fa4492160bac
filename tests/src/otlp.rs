//! An in-process OTLP/gRPC trace collector: tests point `OTEL_EXPORTER_OTLP_ENDPOINT` at it
//! (services started as real processes, or exporters built in the test) and assert on the
//! spans that arrive, e.g. that one stream's spans from the gateway and the worker share
//! a trace id.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// One span as the collector received it; ids are lowercase hex as in `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The span name (a `tracing` span's name).
    pub name: String,
    /// The `service.name` resource attribute of the process that sent it.
    pub service_name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, `SPAN_KIND_CONSUMER`…
    pub kind: String,
}

/// A trace collector on `127.0.0.1`, serving until dropped.
#[derive(Debug)]
pub struct OtlpCollector {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    server: JoinHandle<()>,
}

impl OtlpCollector {
    /// Binds `127.0.0.1:0` and starts serving `TraceService/Export`.
    pub async fn start() -> Result<OtlpCollector> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the otlp collector")?;
        let address = listener
            .local_addr()
            .context("reading the collector's address")?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Receiver {
            spans: Arc::clone(&spans),
        });
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
            if let Err(error) = served {
                eprintln!("otlp collector stopped: {error}");
            }
        });
        Ok(OtlpCollector {
            address,
            spans,
            server,
        })
    }

    /// The URL to put in `OTEL_EXPORTER_OTLP_ENDPOINT`: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.spans).clone()
    }

    /// Waits until `predicate` holds for the spans received so far, or `timeout` passes;
    /// returns the spans either way (the caller's assertion then says what is missing).
    /// Exporters batch, so spans arrive seconds after they end unless flushed.
    pub async fn wait_for(
        &self,
        predicate: impl Fn(&[CollectedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<CollectedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if predicate(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A panicking test thread must not hide the spans from the next assertion.
fn lock(spans: &Mutex<Vec<CollectedSpan>>) -> MutexGuard<'_, Vec<CollectedSpan>> {
    spans
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Receiver {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut collected = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = service_name(resource_spans.resource.as_ref());
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    collected.push(CollectedSpan {
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        kind: span.kind().as_str_name().to_string(),
                        name: span.name,
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        lock(&self.spans).extend(collected);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn service_name(resource: Option<&Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|resource| &resource.attributes)
        .find(|attribute| attribute.key == "service.name")
        .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
        .map(|value| match value {
            any_value::Value::StringValue(name) => name.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}
