//! The tracing pipeline end to end, in one process: two "services", each with the
//! subscriber `kiroku serve` installs and a real OTLP/gRPC exporter, hand one trace over
//! as a `traceparent` string (as a session job does), and the collector receives both
//! spans under one trace id.

use std::time::Duration;

use kiroku_core::{telemetry, trace};
use kiroku_tests::otlp::OtlpCollector;

// Multi-threaded: dropping a guard blocks this thread until the collector, served on the
// runtime's workers, has the spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_crosses_services_via_traceparent_and_reaches_the_collector() {
    let collector = OtlpCollector::start().await.expect("start the collector");
    let endpoint = collector.endpoint();
    let (gateway, gateway_telemetry) =
        telemetry::service_subscriber("service-a", "info", Some(&endpoint));
    let (worker, worker_telemetry) =
        telemetry::service_subscriber("service-b", "info", Some(&endpoint));
    assert!(gateway_telemetry.is_exporting() && worker_telemetry.is_exporting());

    let (job_traceparent, gateway_trace_id) = tracing::dispatcher::with_default(&gateway, || {
        let stream = tracing::info_span!("stream_transcribe");
        let _entered = stream.enter();
        (
            trace::traceparent(&stream),
            trace::trace_id(&stream).expect("the gateway span has a trace id"),
        )
    });
    assert!(job_traceparent.contains(&gateway_trace_id));

    let worker_trace_id = tracing::dispatcher::with_default(&worker, || {
        let session = tracing::info_span!("decode_session");
        trace::set_parent(&session, trace::context_from_traceparent(&job_traceparent));
        let _entered = session.enter();
        trace::trace_id(&session).expect("the worker span has a trace id")
    });
    assert_eq!(worker_trace_id, gateway_trace_id);

    // What `kiroku serve` does when it exits: the guards flush the batched spans.
    drop(gateway_telemetry);
    drop(worker_telemetry);

    let spans = collector
        .wait_for(|spans| spans.len() >= 2, Duration::from_secs(10))
        .await;
    let gateway_span = spans
        .iter()
        .find(|span| span.service_name == "service-a")
        .unwrap_or_else(|| panic!("no span from service-a in {spans:#?}"));
    let worker_span = spans
        .iter()
        .find(|span| span.service_name == "service-b")
        .unwrap_or_else(|| panic!("no span from service-b in {spans:#?}"));
    assert_eq!(gateway_span.name, "stream_transcribe");
    assert_eq!(worker_span.name, "decode_session");
    assert_eq!(gateway_span.trace_id, gateway_trace_id);
    assert_eq!(worker_span.trace_id, gateway_span.trace_id);
    assert_eq!(worker_span.parent_span_id, gateway_span.span_id);
    assert!(
        gateway_span.parent_span_id.is_empty(),
        "the gateway span is the root"
    );
}
